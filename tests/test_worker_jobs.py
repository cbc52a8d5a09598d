"""The search as separate worker jobs (Snakemake; on a cluster, SLURM jobs): two worker jobs on one
study and one record store make exactly the evaluations of one worker, none of them twice."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from conftest import SMALL_SEARCH, run_tool, snakemake_config, trained_records

pytestmark = pytest.mark.slow


def test_two_worker_jobs_make_the_evaluations_of_one_worker_once_each(searchable_project, one_worker_evolve,
                                                                       tmp_path):
    one, two = one_worker_evolve, tmp_path / "two"
    shutil.copytree(searchable_project, two, symlinks=True)

    config = snakemake_config([*SMALL_SEARCH, "search.workers=2"])
    res = run_tool(["snakemake", "--cores", "2", "data/search/evolve", *config], cwd=two, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    log = res.stdout + res.stderr
    assert "rule evolve_worker" in log and log.count("rule evolve_worker") == 2
    jobs = [json.loads((two / f"data/search/workers/evolve/{w}.json").read_text()) for w in (0, 1)]
    assert jobs[0]["worker"] != jobs[1]["worker"]  # two processes

    def evaluations(root):
        t = pd.read_parquet(root / "data/search/evolve/trials.parquet")
        return sorted(zip(t["config_key"], t["fidelity"], t["seed"], strict=True))

    assert evaluations(two) == evaluations(one)
    assert trained_records(two) == trained_records(one)  # the same records, so the same steps
    # one thread per evaluation in both: the same scores, so the same pick
    assert [json.loads((r / "data/search/evolve/best.json").read_text())["key"] for r in (one, two)] == \
        [json.loads((one / "data/search/evolve/best.json").read_text())["key"]] * 2
    metrics = json.loads((two / "data/search/evolve/metrics.json").read_text())
    # every record computed once: the workers' counts add up to the store's records, gather made none
    # beyond the stage's own comparison of its pick with the uniform arms
    assert sum(j["records_computed"] for j in jobs) == metrics["records_computed_this_run"]
    assert metrics["records_computed_this_run"] + metrics["comparison"]["records_computed"] == len(trained_records(two))
    again = run_tool(["snakemake", "-n", "data/search/evolve", *config], cwd=two)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    # stage 2 as two worker jobs too; then the pick's threshold, which chooses among scored results, re-runs
    # both stages' gather jobs and none of their workers
    res = run_tool(["snakemake", "--cores", "2", "data/search/refine", *config], cwd=two, timeout=1200)
    assert res.returncode == 0 and (res.stdout + res.stderr).count("rule refine_worker") == 2, res.stderr[-3000:]
    threshold = snakemake_config([*SMALL_SEARCH, "search.workers=2", "search.pick_confidence=0.9"])
    dry = run_tool(["snakemake", "-n", "data/search/refine", *threshold], cwd=two)
    assert dry.returncode == 0 and "rule evolve:" in dry.stdout and "rule refine:" in dry.stdout, dry.stdout[-3000:]
    assert "rule evolve_worker" not in dry.stdout and "rule refine_worker" not in dry.stdout, dry.stdout[-3000:]


def test_two_worker_processes_of_one_stage_command_make_the_evaluations_of_one_worker(searchable_project,
                                                                                      one_worker_evolve, tmp_path):
    """The DVC way (`dvc repro` runs each stage as one command): `search.workers: 2` is a pool of two processes."""
    from stages.params import compose, to_yaml

    two = tmp_path / "two"
    shutil.copytree(searchable_project, two, symlinks=True)
    (two / "two.yaml").write_text(to_yaml(compose([*SMALL_SEARCH, "search.workers=2"])))
    res = run_tool(["python", "-m", "stages.evolve", "--params", "two.yaml"], cwd=two, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((two / "data/search/evolve/metrics.json").read_text())
    trials = [pd.read_parquet(root / "data/search/evolve/trials.parquet") for root in (one_worker_evolve, two)]
    assert [sorted(zip(t["config_key"], t["fidelity"], t["seed"], strict=True)) for t in trials] == \
        [sorted(zip(trials[0]["config_key"], trials[0]["fidelity"], trials[0]["seed"], strict=True))] * 2
    assert trained_records(two) == trained_records(one_worker_evolve)
    # one thread per evaluation in both (2 cores, 2 workers): the same scores, so the same pick
    assert metrics["best"]["key"] == json.loads((one_worker_evolve / "data/search/evolve/metrics.json")
                                                .read_text())["best"]["key"]


def test_the_models_leave_one_out_ranks_the_frontier_beside_the_searchs_top_rung(one_worker_evolve):
    root = one_worker_evolve / "data/search/evolve"
    metrics = json.loads((root / "metrics.json").read_text())
    frontier = json.loads((root / "frontier.json").read_text())
    trials = pd.read_parquet(root / "trials.parquet")
    top = frontier["steps"]
    searched = set(trials[(trials["fidelity"] == top) & (trials["status"] == "ok")]["config_key"])
    outside = {u["key"] for u in frontier["uniforms"]} | {a["key"] for a in metrics["comparison"]["arms"].values()}
    alone = next(r for r in metrics["model"]["leave_one_out"] if r["fidelity"] == top)
    both = metrics["model"]["leave_one_out_with_frontier"]
    assert alone["configurations"] == len(searched) and outside - searched  # the frontier adds configurations
    assert both["fidelity"] == top and both["configurations"] == len(searched | outside)
    assert both["spearman"] is not None and -1 <= both["spearman"] <= 1  # defined: ≥ 3 configurations

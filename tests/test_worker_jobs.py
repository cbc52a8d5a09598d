"""The search as separate worker jobs (Snakemake; on a cluster, SLURM jobs): two worker jobs on one
study and one record store make exactly the evaluations of one worker, none of them twice."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from conftest import run_tool, snakemake_config, trained_records

from stages import params as P

pytestmark = pytest.mark.slow

SMALL = ["experiment=smoke", "search.population=4", "search.generations=2", "search.offspring=2"]


def test_two_worker_jobs_make_the_evaluations_of_one_worker_once_each(searchable_project, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for root in (one, two):
        shutil.copytree(searchable_project, root, symlinks=True)
    (one / "one.yaml").write_text(P.to_yaml(P.compose(SMALL)))
    res = run_tool(["python", "-m", "stages.evolve", "--params", "one.yaml"], cwd=one, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]

    config = snakemake_config([*SMALL, "search.workers=2"])
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
    metrics = json.loads((two / "data/search/evolve/metrics.json").read_text())
    # every record computed once: the workers' counts add up to the store's records, gather made none
    # beyond the stage's own comparison of its pick with the uniform arms
    assert sum(j["records_computed"] for j in jobs) == metrics["records_computed_this_run"]
    assert metrics["records_computed_this_run"] + metrics["comparison"]["records_computed"] == len(trained_records(two))
    again = run_tool(["snakemake", "-n", "data/search/evolve", *config], cwd=two)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

"""The evolve stage end to end on the smoke experiment: Snakemake runs it, a kill loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import BIN, run_tool

pytestmark = pytest.mark.slow


def _records(search_dir):
    """The evaluation records of the record cache `_evolve_cmd` gives `search_dir` (not the adapters)."""
    return {p: (p.stat().st_mtime_ns, p.read_text()) for p in (search_dir / "records").glob("??/*.json")}


def _evolve_cmd(search, params="smoke.yaml"):
    """The evolve stage on its own search folder `runs/<name>/search` and its own record cache beside it:
    its data root (`runs/<name>`) holds no other stage's manifests, so it starts from nothing (no record
    or study of another test is rehydrated into its cache)."""
    return [sys.executable, "-m", "stages.evolve", "--params", params, "--search", search, "--out", f"{search}/evolve",
            "--records", f"{search}/records", "--threads", "2"]


# uniform (bits, rank) within the smoke budget (the memory of uniform4_r8 on the tiny model)
FEASIBLE_SMOKE = {(2, 4), (2, 8), (4, 4), (4, 8), (8, 4)}


def test_snakemake_runs_evolve_within_budget(smoke_project):
    res = run_tool(["snakemake", "--cores", "2", "data/search/evolve", "--config", "experiment=smoke"],
                   cwd=smoke_project)
    assert res.returncode == 0, res.stderr[-3000:]
    out = smoke_project / "data/search/evolve"
    metrics = json.loads((out / "metrics.json").read_text())
    trials = pd.read_parquet(out / "trials.parquet")
    assert metrics["all_within_budget"] and len(trials) == metrics["trials"] > 0
    assert (trials["memory_bytes"] <= metrics["budget"]["limit"] * (1 + 1e-9)).all()
    assert metrics["evaluations_per_fidelity"]["4"] > metrics["evaluations_per_fidelity"]["12"] > 0
    # every evaluation trained once, and a promotion (seed 0, the only seed of rung 0) only its extra steps
    promoted = metrics["evaluations_per_fidelity"]["12"] // 2  # two seeds at rung 1
    assert metrics["steps_spent"] - metrics["steps_trained_this_run"] == 4 * promoted
    compared = metrics["comparison"]
    assert set(compared["arms"]) == {"pick", "best_uniform", "uniform4_r8"} and compared["fidelity"] == 12
    assert compared["seeds"] == [0, 1]  # the top rung's seeds, paired
    for arm in ("best_uniform", "uniform4_r8"):
        diff = compared["pick_minus"][arm]
        pick, other = compared["arms"]["pick"]["scores"], compared["arms"][arm]["scores"]
        # paired example by example: each seed's mean difference is the difference of the two scores
        assert diff["per_seed"] == pytest.approx([pick[s] - other[s] for s in ("0", "1")], abs=1e-5)
        assert diff["examples"] == 64 and diff["ci"][0] <= diff["diff"] <= diff["ci"][1]
        assert diff["verdict"] in ("better", "worse", "inconclusive", "identical")
    # the uniform frontier: every uniform configuration within the budget, at the arms' steps under the top
    # rung's seeds; the lowest validation mean is the best_uniform arm (and the comparison's)
    frontier = json.loads((out / "frontier.json").read_text())
    assert frontier["seeds"] == [0, 1] and frontier["steps"] == 12
    # the maximal ones (search.frontier): 2b r4, 2b r8 and 4b r4 are dominated by 4b r8
    assert {(u["bits"], u["rank"]) for u in frontier["uniforms"]} == {(4, 8), (8, 4)} < FEASIBLE_SMOKE
    chosen = next(u for u in frontier["uniforms"] if u["key"] == frontier["chosen"])
    assert chosen["mean"] == min(u["mean"] for u in frontier["uniforms"])
    assert compared["arms"]["best_uniform"]["key"] == chosen["key"]
    (agree,) = metrics["fidelity_agreement"]
    assert (agree["low"], agree["high"]) == (4, 12)
    assert 2 * agree["n"] == metrics["evaluations_per_fidelity"]["12"]  # two seeds per configuration
    assert (out / "trace.png").stat().st_size > 0 and len(pd.read_parquet(out / "front.parquet")) >= 1
    assert json.loads((out / "best.json").read_text())["key"] == metrics["best"]["key"]
    # lora.init=eora (the default): the profile measured each unit through its compensation at the ladder's
    # lowest rank and left the factors where the search reads them, so the search computed none of its own
    profiled = json.loads((smoke_project / "data/profile/metrics.json").read_text())
    assert profiled["compensation"]["init"] == "eora" and profiled["compensation"]["rank"] == 4
    assert len(list((smoke_project / "data/records/eora").glob("*.safetensors"))) == 3  # 2, 4 and 8 bits
    again = run_tool(["snakemake", "--cores", "2", "data/search/evolve", "--config", "experiment=smoke"],
                     cwd=smoke_project)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_killed_evolve_resumes_on_another_host_without_recomputing_finished_evaluations(smoke_project):
    # the killed worker ran on "node-a", the resumed one runs on "node-b" (as a SLURM job resubmitted to
    # another node): the dead worker's pid means nothing there, its trial is judged by its heartbeat
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "AUTOQRA_HOSTNAME": "node-a",
           "AUTOQRA_HEARTBEAT_S": "1"}
    search = smoke_project / "runs/kill/search"
    proc = subprocess.Popen(_evolve_cmd("runs/kill/search"), cwd=smoke_project, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(_records(search)) < 8 and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the search ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _records(search)
    assert len(before) >= 8 and not (search / "evolve/metrics.json").exists()

    start = time.monotonic()
    res = subprocess.run(_evolve_cmd("runs/kill/search"), cwd=smoke_project, capture_output=True, text=True,
                         timeout=900, env={**env, "AUTOQRA_HOSTNAME": "node-b", "AUTOQRA_STALE_S": "3"})
    assert res.returncode == 0, res.stderr[-3000:]
    print(f"resumed on another host in {time.monotonic() - start:.1f} s")
    after = _records(search)
    assert all(after[p] == before[p] for p in before)  # no finished evaluation was redone or rewritten
    new = [json.loads(after[p][1]) for p in after if p not in before]
    assert new  # the resumed run had work left
    metrics = json.loads((search / "evolve/metrics.json").read_text())
    compared = metrics["comparison"]
    assert metrics["steps_trained_this_run"] + compared["steps_trained"] == sum(r["train_steps"] for r in new)
    assert metrics["records_computed_this_run"] + compared["records_computed"] == len(new)

    reference = run_tool(_evolve_cmd("runs/ref/search"), cwd=smoke_project)
    assert reference.returncode == 0, reference.stderr[-3000:]
    columns = ["config_key", "fidelity", "seed"]
    jobs = [set(map(tuple, pd.read_parquet(d / "evolve/trials.parquet")[columns].values))
            for d in (search, smoke_project / "runs/ref/search")]
    assert jobs[0] == jobs[1]  # the resumed search made exactly the evaluations of an uninterrupted one
    best = [(d / "evolve/best.json").read_bytes() for d in (search, smoke_project / "runs/ref/search")]
    assert best[0] == best[1]


def _untimed(metrics):
    timing = ("wall_s", "search_s", "preflight_s")
    return {k: _untimed(v) if isinstance(v, dict) else v for k, v in metrics.items() if k not in timing}


def test_same_params_same_seed_from_scratch_gives_the_same_search(smoke_project):
    runs = ["runs/a/search", "runs/b/search"]
    for search in runs:
        res = run_tool(_evolve_cmd(search), cwd=smoke_project)
        assert res.returncode == 0, res.stderr[-3000:]
    best = [(smoke_project / d / "evolve/best.json").read_bytes() for d in runs]
    assert best[0] == best[1]  # byte-identical
    metrics = [json.loads((smoke_project / d / "evolve/metrics.json").read_text()) for d in runs]
    assert _untimed(metrics[0]) == _untimed(metrics[1])


def test_a_search_where_every_evaluation_fails_stops_with_the_reasons_and_keeps_them(smoke_project):
    from stages.params import compose, to_yaml

    (smoke_project / "nan.yaml").write_text(to_yaml(compose(["experiment=smoke", "finetune.lr=1e30",
                                                             "finetune.max_grad_norm=0", "search.max_failures=4"])))
    res = run_tool(_evolve_cmd("runs/nan/search", "nan.yaml"), cwd=smoke_project)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: search.max_failures=4: 4 evaluations failed in a row") and "non-finite" in last
    assert "Traceback" not in res.stderr
    assert len(_records(smoke_project / "runs/nan/search")) == 4  # kept
    (smoke_project / "nan100.yaml").write_text(to_yaml(compose(["experiment=smoke", "finetune.lr=1e30",
                                                                "finetune.max_grad_norm=0"])))
    res = run_tool(_evolve_cmd("runs/nan/search", "nan100.yaml"), cwd=smoke_project)
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode != 0 and last.startswith("error: no evaluation of the evolve stage succeeded (6 × non-finite")

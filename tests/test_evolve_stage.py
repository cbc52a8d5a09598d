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
    return {p: (p.stat().st_mtime_ns, p.read_text()) for p in (search_dir / "records").rglob("*.json")}


def _evolve_cmd(search, params="smoke.yaml"):
    return [sys.executable, "-m", "stages.evolve", "--params", params, "--search", search, "--out", f"{search}/evolve",
            "--threads", "2"]


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
    assert metrics["steps_trained_this_run"] == metrics["steps_spent"]  # every evaluation trained exactly once
    assert metrics["reference"]["arm"] == "uniform4_r8" and metrics["reference"]["fidelity"] == 12
    (agree,) = metrics["fidelity_agreement"]
    assert (agree["low"], agree["high"]) == (4, 12) and agree["n"] == metrics["evaluations_per_fidelity"]["12"]
    assert (out / "trace.png").stat().st_size > 0 and len(pd.read_parquet(out / "front.parquet")) >= 1
    assert json.loads((out / "best.json").read_text())["key"] == metrics["best"]["key"]
    again = run_tool(["snakemake", "--cores", "2", "data/search/evolve", "--config", "experiment=smoke"],
                     cwd=smoke_project)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_killed_evolve_resumes_without_recomputing_finished_evaluations(smoke_project):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    search = smoke_project / "data/search_kill"
    proc = subprocess.Popen(_evolve_cmd("data/search_kill"), cwd=smoke_project, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(_records(search)) < 8 and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _records(search)
    assert len(before) >= 8 and not (search / "evolve/metrics.json").exists()

    res = run_tool(_evolve_cmd("data/search_kill"), cwd=smoke_project)
    assert res.returncode == 0, res.stderr[-3000:]
    after = _records(search)
    assert all(after[p] == before[p] for p in before)  # no finished evaluation was redone or rewritten
    new = [json.loads(after[p][1]) for p in after if p not in before]
    metrics = json.loads((search / "evolve/metrics.json").read_text())
    reference_steps = metrics["reference"]["steps_trained"]
    assert metrics["steps_trained_this_run"] + reference_steps == sum(r["train_steps"] for r in new)
    assert metrics["records_computed_this_run"] + (reference_steps > 0) == len(new)

    reference = run_tool(_evolve_cmd("data/search_ref"), cwd=smoke_project)
    assert reference.returncode == 0, reference.stderr[-3000:]
    jobs = [set(map(tuple, pd.read_parquet(d / "evolve/trials.parquet")[["config_key", "fidelity"]].values))
            for d in (search, smoke_project / "data/search_ref")]
    assert jobs[0] == jobs[1]  # the resumed search made exactly the evaluations of an uninterrupted one

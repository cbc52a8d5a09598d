"""SLURM for real: a one-node cluster (munge, slurmctld, slurmd from apt) started for the test and
stopped after it; the smoke search's two workers run as two SLURM jobs through workflow/profiles/slurm.

Needs root and apt (as CI has). A machine where Slurm cannot be installed fails here, loudly; set
AUTOQRA_NO_SLURM=1 to switch this module off explicitly (reported as skipped)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import pandas as pd
import pytest
from conftest import ROOT, SMALL_SEARCH, run_tool, snakemake_config, trained_records

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "workflow/slurm/local-cluster.sh"


@pytest.fixture(scope="module")
def cluster():
    if os.environ.get("AUTOQRA_NO_SLURM") == "1":
        pytest.skip("AUTOQRA_NO_SLURM=1: the SLURM test is switched off")
    start = time.monotonic()
    res = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"a one-node Slurm could not be installed or started:\n{res.stdout}\n{res.stderr}"
    print(f"Slurm started in {time.monotonic() - start:.1f} s")
    try:
        yield
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, text=True, timeout=120)


def test_two_search_workers_run_as_two_slurm_jobs_and_make_one_workers_evaluations(cluster, searchable_project,
                                                                                   one_worker_evolve, tmp_path):
    one, two = one_worker_evolve, tmp_path / "two"
    shutil.copytree(searchable_project, two, symlinks=True)

    start = time.monotonic()
    res = run_tool(["snakemake", "data/search/evolve", "--workflow-profile", "workflow/profiles/slurm",
                    "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
                    "--slurm-no-account", "--set-threads", "evolve_worker=1", "evolve=2",
                    # small enough that both workers fit the node at once (the rules ask 16 GB for real runs)
                    "--set-resources", "evolve_worker:mem_mb=3000", "evolve:mem_mb=3000",
                    *snakemake_config([*SMALL_SEARCH, "search.workers=2"])], cwd=two, timeout=1500)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    print(f"two SLURM worker jobs and the gather job: {time.monotonic() - start:.1f} s")
    # "Job 7 has been submitted with SLURM jobid 1 (log: .../rule_evolve_worker/1/1.log)"
    submitted = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", log)
    assert sorted(rule for _, rule in submitted) == ["evolve", "evolve_worker", "evolve_worker"], log[-4000:]
    assert len({job for job, _ in submitted}) == 3  # three SLURM jobs
    assert log.count("(Rule: evolve_worker)") == 2
    jobs = [json.loads((two / f"data/search/workers/evolve/{w}.json").read_text()) for w in (0, 1)]
    assert jobs[0]["worker"] != jobs[1]["worker"]

    def evaluations(root):
        t = pd.read_parquet(root / "data/search/evolve/trials.parquet")
        return sorted(zip(t["config_key"], t["fidelity"], t["seed"], strict=True))

    assert evaluations(two) == evaluations(one)
    assert trained_records(two) == trained_records(one)  # no evaluation twice, none missing
    metrics = json.loads((two / "data/search/evolve/metrics.json").read_text())
    assert sum(j["records_computed"] for j in jobs) == metrics["records_computed_this_run"]

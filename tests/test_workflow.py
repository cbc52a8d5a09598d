"""Snakemake and DVC define the same stages and produce the same files; re-runs do nothing."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, copy_project, run_tool
from workflow_util import dvc_stages, snakemake_jobs

from autoqra import fingerprint
from stages.registry import STAGES


@pytest.mark.parametrize("config", [{}, {"experiment": "smoke"}])
def test_snakemake_and_dvc_define_the_same_stages(config):
    smk, dvc = snakemake_jobs(ROOT, config), dvc_stages(ROOT)
    assert smk.keys() == dvc.keys()
    for name, job in smk.items():
        assert job == dvc[name], name
        stage = STAGES[name.split("@")[0]]
        assert job["params"] == sorted(stage.params)
        assert set(stage.code) <= set(job["deps"])


def _hashes(folder):
    return {str(p.relative_to(folder)): fingerprint.of_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("metrics.json", ".gitignore", ".snakemake_timestamp")}


def _metrics_without_timing(folder):
    data = json.loads((folder / "metrics.json").read_text())
    return {k: v for k, v in data.items() if not k.endswith("_s")}


def _run_both(tmp_path, overrides):
    smk_dir = copy_project(tmp_path / "smk")
    dvc_dir = copy_project(tmp_path / "dvc", git_commit=True)
    cfg = ["--config", *overrides] if overrides else []
    res = run_tool(["snakemake", "--cores", "2", "data/prepare", *cfg], cwd=smk_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    if overrides:  # what `dvc exp run -S` does: recompose params.yaml through Hydra, then reproduce
        res = run_tool(["dvc", "exp", "run", "-S", *overrides, "prepare"], cwd=dvc_dir)
    else:
        res = run_tool(["dvc", "repro", "prepare"], cwd=dvc_dir)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return smk_dir, dvc_dir


def _assert_same_and_idempotent(smk_dir, dvc_dir, overrides):
    a, b = smk_dir / "data/prepare", dvc_dir / "data/prepare"
    assert _hashes(a) == _hashes(b) and len(_hashes(a)) >= 6
    assert _metrics_without_timing(a) == _metrics_without_timing(b)
    cfg = ["--config", *overrides] if overrides else []
    again = run_tool(["snakemake", "--cores", "2", "data/prepare", *cfg], cwd=smk_dir)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    again = run_tool(["dvc", "repro", "prepare"], cwd=dvc_dir)
    assert again.returncode == 0 and "didn't change, skipping" in again.stdout, again.stdout


@pytest.mark.slow
def test_prepare_smoke_same_files_from_both_and_reruns_do_nothing(tmp_path):
    smk_dir, dvc_dir = _run_both(tmp_path, ["experiment=smoke"])
    metrics = json.loads((dvc_dir / "data/prepare/metrics.json").read_text())
    assert metrics["source"] == "tiny" and metrics["examples"]["train"] == 512
    _assert_same_and_idempotent(smk_dir, dvc_dir, ["experiment=smoke"])


@pytest.mark.slow
def test_prepare_default_embedded_same_files_from_both(tmp_path):
    smk_dir, dvc_dir = _run_both(tmp_path, [])
    assert json.loads((dvc_dir / "data/prepare/metrics.json").read_text())["source"] == "embedded"
    _assert_same_and_idempotent(smk_dir, dvc_dir, [])

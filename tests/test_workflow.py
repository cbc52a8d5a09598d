"""Snakemake and DVC define the same stages and produce the same files; re-runs do nothing."""

from __future__ import annotations

import json
import time

import pytest
from conftest import BIN, ROOT, budget_three_ways, copy_project, nested_config, run_tool
from workflow_util import dvc_stages, snakemake_jobs

from autoqra.arms import SEARCH_OUTPUTS
from autoqra.params.rules import stage_workers
from autoqra.store import fingerprint
from stages import params as P
from stages.registry import STAGES


@pytest.mark.parametrize("overrides", [[], ["experiment=smoke", "quant.bits=[3,8,16]", "budget.reference=uniform8_r8",
                                            "finetune.arms=[autoqra,fp_lora,uniform8_r4]"],
                                       ["experiment=smoke", "sweep=budgets"]])
def test_snakemake_and_dvc_define_the_same_stages(tmp_path, overrides):
    root = ROOT
    if overrides:  # DVC reads params.yaml: write the composition `dvc exp run -S` would write
        root = copy_project(tmp_path, git_commit=True)
        (root / "params.yaml").write_text(P.to_yaml(P.compose(overrides)))
    smk, dvc = snakemake_jobs(root, nested_config(overrides)), dvc_stages(root)
    # what the pick's arm waits for goes first; the other arms fill the cores the search leaves idle
    priority = {name: job.pop("priority") for name, job in smk.items()}
    chain = {n for n in smk if n.split("@")[0] in ("quantize", "profile", "evolve", "evolve_worker", "refine",
                                                   "refine_worker", "export")
             or n in ("finetune@autoqra", "evaluate@autoqra")}
    rest = {n for n in smk if n.split("@")[0] in ("finetune", "evaluate")} - chain
    assert rest and min(priority[n] for n in chain) > max(priority[n] for n in rest)
    # Snakemake splits a search stage into its worker jobs and a gather job; DVC runs the workers in one command
    p = P.validated(P.compose(overrides))
    for stage in ("evolve", "refine"):
        workers = sorted(n for n in smk if n.startswith(f"{stage}_worker@"))
        assert workers == ([f"{stage}_worker@{i}" for i in range(stage_workers(p, stage))]
                           if stage_workers(p, stage) > 1 else [])
        for name in workers:
            del smk[name]
        smk[stage]["deps"] = [d for d in smk[stage]["deps"] if not d.startswith("data/search/workers/")]
    assert smk.keys() == dvc.keys()
    cells = [n for n in smk if n.startswith("sweep_cell@")]
    if "sweep=budgets" in overrides:  # 3 ablations x 2 seeds x 3 budgets, and one summary
        assert len(cells) == 18 and "sweep_cell@tpe-1-1.1" in cells and "sweep_summary@budgets" in smk
    else:
        assert not cells and not any(n.startswith("sweep_summary") for n in smk)
    searched = {"data/search/evolve", "data/search/refine"}
    for name, job in smk.items():
        if name.startswith("finetune@"):  # an arm waits for the search outputs it reads; DVC lists them all
            reads = {f"data/search/{s}" for s in SEARCH_OUTPUTS.get(name.split("@")[1], ())}
            assert searched & set(job["deps"]) == reads and (reads or name != "finetune@autoqra"), name
            job["deps"] = sorted({*job["deps"], *searched})
        # DVC depends on a folder where Snakemake lists its per-bit-width subfolders (DVC cannot loop)
        job["deps"] = sorted({next((d for d in dvc[name]["deps"] if dep.startswith(d + "/")), dep)
                              for dep in job["deps"]})
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
    # the budget `autoqra check` reports before prepare is the one the search binds on, to the byte
    ways = budget_three_ways(P.validated(P.compose([])), dvc_dir / "data/prepare", tmp_path / "records")
    assert ways[0] == ways[1] == ways[2] and ways[0][2] is not None, ways
    _assert_same_and_idempotent(smk_dir, dvc_dir, [])


# with lora.init=eora the profile measures each unit at the ladder's lowest rank: the ladder and the start re-run it
UNRELATED = {"search": "{population: 9, fidelities: [2, 6]}", "lora": "{alpha_ratio: 3.0, dropout: 0.1}",
             "finetune": "{lr: 0.001, steps: 7}"}


@pytest.mark.slow
def test_search_lora_finetune_changes_rerun_neither_quantize_nor_profile(tmp_path):
    smk_dir = copy_project(tmp_path / "smk")
    res = run_tool(["snakemake", "--cores", "2", "data/profile", "--config", "experiment=smoke"], cwd=smk_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    changed = [f"{k}={v}" for k, v in UNRELATED.items()]
    dry = run_tool(["snakemake", "-n", "data/profile", "--config", "experiment=smoke", *changed], cwd=smk_dir)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    # the test can fail: quant.* re-runs quantize and profile, profile.* re-runs profile only
    dry = run_tool(["snakemake", "-n", "data/profile", "--config", "experiment=smoke", "quant={damp: 0.02}"],
                   cwd=smk_dir)
    assert "rule quantize:" in dry.stdout and "rule profile:" in dry.stdout
    for changed in ("profile={samples: 8}", "lora={ranks: [4, 8, 16]}", "lora={init: zero}"):
        dry = run_tool(["snakemake", "-n", "data/profile", "--config", "experiment=smoke", changed], cwd=smk_dir)
        assert "rule quantize:" not in dry.stdout and "rule profile:" in dry.stdout, changed

    dvc_dir = copy_project(tmp_path / "dvc", git_commit=True)
    res = run_tool(["dvc", "exp", "run", "-S", "experiment=smoke", "profile"], cwd=dvc_dir)
    assert res.returncode == 0 and "Running stage 'quantize@2'" in res.stdout, res.stdout[-3000:]
    dotted = ["search.population=9", "search.fidelities=[2,6]", "lora.alpha_ratio=3.0", "lora.dropout=0.1",
              "finetune.lr=0.001", "finetune.steps=7"]
    res = run_tool(["dvc", "exp", "run", "-S", "experiment=smoke", *[a for d in dotted for a in ("-S", d)],
                    "profile"], cwd=dvc_dir)
    assert res.returncode == 0 and "Running stage" not in res.stdout, res.stdout[-3000:]
    res = run_tool(["dvc", "exp", "run", "-S", "experiment=smoke", "-S", "profile.samples=8", "profile"], cwd=dvc_dir)
    assert "Running stage 'profile'" in res.stdout and "Running stage 'quantize" not in res.stdout, res.stdout


def _changed_stages(root, edited: str) -> set[str]:
    """The stages `dvc status` lists after appending a comment to `edited` (restored afterwards)."""
    import re

    path = root / edited
    text = path.read_text()
    path.write_text(text + "\n# an edit that changes no result\n")
    try:
        status = run_tool(["dvc", "status"], cwd=root).stdout
    finally:
        path.write_text(text)
    return set(re.findall(r"^(\S+):$", status, re.M))


@pytest.mark.slow
def test_dvc_runs_the_whole_smoke_pipeline_and_then_has_nothing_to_do(tmp_path):
    root = copy_project(tmp_path / "dvc", git_commit=True)
    res = run_tool(["dvc", "exp", "run", "-S", "experiment=smoke"], cwd=root)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    from conftest import smoke_params

    arms = smoke_params().finetune.arms
    for stage in ("prepare", "quantize@2", "quantize@4", "quantize@8", "profile", "evolve", "refine", "report",
                  "export", *(f"finetune@{a}" for a in arms), *(f"evaluate@{a}" for a in arms)):
        assert f"Running stage '{stage}'" in res.stdout
    metrics = json.loads((root / "data/search/evolve/metrics.json").read_text())
    assert metrics["all_within_budget"] and metrics["trials"] > 0
    shown = run_tool(["dvc", "metrics", "show", "--json"], cwd=root)
    assert shown.returncode == 0 and "WARNING" not in shown.stdout + shown.stderr, shown.stderr
    listed = json.loads(shown.stdout)[""]["data"]
    assert {"data/search/evolve/metrics.json", "data/report/metrics.json"} <= set(listed)
    assert set(listed["data/report/metrics.json"]["data"]["arms"]) == set(arms)  # every arm's numbers, via the report
    plots = run_tool(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], cwd=root)
    assert plots.returncode == 0 and "WARNING" not in plots.stdout + plots.stderr and "failed" not in plots.stdout, \
        plots.stdout + plots.stderr
    again = run_tool(["dvc", "repro"], cwd=root)
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout
    start = time.monotonic()
    status = run_tool(["dvc", "status"], cwd=root)
    print(f"dvc status after a complete run: {time.monotonic() - start:.1f} s")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout
    # code deps come from the list the record keys hash: scoring re-runs the search and the arms' stages
    scoring = _changed_stages(root, "src/autoqra/train/scoring.py")
    assert {"evolve", "refine", *(f"finetune@{a}" for a in arms), *(f"evaluate@{a}" for a in arms)} <= scoring
    assert not {"prepare", "report"} & scoring and not any(s.startswith("quantize") for s in scoring)
    assert _changed_stages(root, "src/autoqra/report/arms.py") == {"report"}

    # share through a local DVC remote: a fresh clone pulls and has nothing to run (so trains nothing)
    remote = tmp_path / "remote"
    assert run_tool(["dvc", "remote", "add", "-d", "shared", str(remote)], cwd=root).returncode == 0
    pushed = run_tool(["dvc", "push"], cwd=root)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"]):
        assert run_tool(cmd, cwd=root).returncode == 0
    clone = tmp_path / "clone"
    assert run_tool(["git", "clone", "-q", str(root), str(clone)], cwd=tmp_path).returncode == 0
    pulled = run_tool(["dvc", "pull"], cwd=clone)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert (clone / "data/report/summary.md").exists() and (clone / "data/final/autoqra/export/model").is_dir()
    # the record cache is no output, but the stages' manifests carry it: rebuilt from them, the clone has
    # every record (and its studies), and trains nothing
    from conftest import trained_records

    assert not trained_records(clone)
    res = run_tool(["autoqra", "records", "rehydrate"], cwd=clone)
    assert res.returncode == 0 and json.loads(res.stdout)["records"] > 0, res.stdout + res.stderr
    assert trained_records(clone) == trained_records(root) and trained_records(clone)
    assert (clone / "data/records/studies/evolve.journal").exists()
    assert (clone / "data/search/evolve/study.journal").exists()
    repro = run_tool(["dvc", "repro"], cwd=clone)
    assert repro.returncode == 0 and "Running stage" not in repro.stdout, repro.stdout
    assert trained_records(clone) == trained_records(root)


@pytest.mark.slow
def test_a_dvc_experiment_neither_loses_nor_retrains_records_even_after_a_kill(searchable_project, tmp_path):
    """DVC checks an experiment's outputs out before it runs (deleting what its lock does not list): the
    record cache is no output, so a search Snakemake ran survives `dvc exp run` untouched and is not
    trained again, and a `dvc exp run` killed mid-search keeps every record it wrote and resumes."""
    import os
    import shutil
    import signal
    import subprocess

    from conftest import SMALL_SEARCH, snakemake_config, trained_records

    root = tmp_path / "project"
    shutil.copytree(searchable_project, root, symlinks=True)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=root, check=True)
    res = run_tool(["snakemake", "--cores", "2", "data/search/evolve", *snakemake_config(SMALL_SEARCH)], cwd=root)
    assert res.returncode == 0, res.stderr[-3000:]
    before = trained_records(root)
    assert before
    dotted = [a for o in SMALL_SEARCH for a in ("-S", o)]
    res = run_tool(["dvc", "exp", "run", *dotted, "evolve"], cwd=root, timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert trained_records(root) == before  # nothing lost, nothing trained again
    assert json.loads((root / "data/search/evolve/metrics.json").read_text())["steps_trained_this_run"] == 0

    # a new search, killed once it has written a few records of its own, then run again
    bigger = [*dotted, "-S", "search.population=10"]  # enough new configurations to be killed mid-search
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(["dvc", "exp", "run", *bigger, "evolve"], cwd=root, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900
    while len(trained_records(root)) < len(before) + 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(1)
    assert proc.poll() is None, "the search finished or failed before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = trained_records(root)
    assert len(killed) >= len(before) + 3, "the search finished or wrote nothing before the kill"
    res = run_tool(["dvc", "exp", "run", *bigger, "evolve"], cwd=root, timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    after = trained_records(root)
    assert killed.items() <= after.items()  # every record of the killed run is still there
    metrics = json.loads((root / "data/search/evolve/metrics.json").read_text())
    trained = metrics["steps_trained_this_run"] + metrics["comparison"]["steps_trained"]  # search + frontier
    assert trained == sum(after.values()) - sum(killed.values())  # and was not trained again

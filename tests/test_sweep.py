"""A sweep is cells of the same pipeline sharing one record store: a two-cell sweep trains the records the
two single runs would, each once, for no more steps (fewer where a cell continues a rung from the state the
other kept); a second run trains nothing; Snakemake and DVC produce the same summary."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from conftest import SMALL_SEARCH, run_tool, snakemake_config, training_records
from conftest import trained_records as _trained

from stages import params as P

pytestmark = pytest.mark.slow

# a smaller search than the smoke experiment's: the test runs it four times
SMALL = [*SMALL_SEARCH, "finetune.seeds=[100,101]", "evaluate.exact_match=false"]
ABLATIONS = ("none", "no_surrogate")


@pytest.fixture(scope="module")
def base(searchable_project):
    return searchable_project


@pytest.fixture(scope="module")
def singles(base, tmp_path_factory):
    """Each cell's pipeline run alone, by the stage commands, each in its own copy with its own store."""
    out = {}
    for ablation in ABLATIONS:
        root = tmp_path_factory.mktemp("single") / ablation
        shutil.copytree(base, root, symlinks=True)
        (root / "cell.yaml").write_text(P.to_yaml(P.compose([*SMALL, f"search.ablation={ablation}"])))
        for cmd in (["evolve"], ["refine"], ["finetune", "--arm", "autoqra"], ["evaluate", "--arm", "autoqra"]):
            res = run_tool(["python", "-m", f"stages.{cmd[0]}", "--params", "cell.yaml", *cmd[1:]], cwd=root,
                           timeout=1200)
            assert res.returncode == 0, res.stderr[-3000:]
        out[ablation] = root
    return out


@pytest.fixture(scope="module")
def swept(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("swept") / "project"
    shutil.copytree(base, root, symlinks=True)
    config = snakemake_config([*SMALL, "sweep=pair"])
    res = run_tool(["snakemake", "--cores", "2", "data/sweep/pair", *config], cwd=root, timeout=2400)
    assert res.returncode == 0, res.stderr[-3000:]
    return root, config


def test_two_cells_train_what_two_single_runs_would_minus_what_they_share(singles, swept):
    root, _ = swept
    a, b = (_trained(singles[x]) for x in ABLATIONS)
    shared = a.keys() & b.keys()
    assert shared  # the two searches share their start (same priors, same generation 0)
    sweep = _trained(root)
    assert sweep.keys() == a.keys() | b.keys()  # no record the single runs would not make, none missing
    # each record for no more steps than a single run that made it: a cell may continue a rung from the state
    # the other cell kept (a run cut at 4 of 12 steps) where its single run trained it whole; the same record
    assert sum(sweep.values()) <= sum(max(a.get(k, 0), b.get(k, 0)) for k in sweep)
    alone = [training_records(singles[x]) for x in ABLATIONS]
    for key, record in training_records(root).items():
        theirs = [r[key] for r in alone if key in r]
        if all(r["train_steps"] != record["train_steps"] for r in theirs):
            assert record.get("continued_from", 0) > max(r.get("continued_from", 0) for r in theirs), key
            assert record["train_steps"] + record["continued_from"] == record["fidelity"], key  # the whole run
            assert all(r["score"] == record["score"] for r in theirs), key
    # the cells' own bookkeeping agrees with the store, and each cell's result is its single run's
    cells = {x: json.loads((root / f"data/sweep/cells/{x}-s0-b1.0/metrics.json").read_text()) for x in ABLATIONS}
    assert sum(sum(c["steps_trained"].values()) for c in cells.values()) == sum(sweep.values())
    for x in ABLATIONS:
        single = json.loads((singles[x] / "data/final/autoqra/metrics.json").read_text())
        assert cells[x]["arms"]["autoqra"]["answer_loss"] == [r["answer_loss"] for r in single["seeds"]]
    table = pd.read_csv(root / "data/sweep/pair/summary.csv")
    assert sorted(table["ablation"]) == sorted(ABLATIONS) and table["test_answer_loss"].notna().all()
    assert (root / "data/sweep/pair/best_so_far.png").stat().st_size > 0
    assert "no_surrogate" in (root / "data/sweep/pair/summary.md").read_text()


def test_a_second_sweep_run_trains_nothing_and_dvc_gives_the_same_summary(swept):
    root, config = swept
    dry = run_tool(["snakemake", "-n", "data/sweep/pair", *config], cwd=root)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-2000:]
    before = _trained(root)
    forced = run_tool(["snakemake", "--cores", "2", "data/sweep/pair", "--forcerun", "sweep_cell", *config],
                      cwd=root, timeout=1200)
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert _trained(root) == before
    for cell in root.glob("data/sweep/cells/*/metrics.json"):
        assert sum(json.loads(cell.read_text())["steps_trained"].values()) == 0
    snakemake_table = pd.read_csv(root / "data/sweep/pair/summary.csv")

    # DVC: adopt the shared stages' outputs, then reproduce the sweep's stages through dvc.yaml
    (root / "params.yaml").write_text(P.to_yaml(P.compose([*SMALL, "sweep=pair"])))
    assert run_tool(["git", "init", "-q"], cwd=root).returncode == 0  # .dvc/ came with the project files
    stages = ["prepare", "profile", *(f"quantize@{b}" for b in P.compose(SMALL)["quant"]["bits"])]
    committed = run_tool(["dvc", "commit", "-f", *stages], cwd=root)
    assert committed.returncode == 0, committed.stdout + committed.stderr
    res = run_tool(["dvc", "repro", "sweep_summary@pair"], cwd=root, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for stage in ("sweep_cell@none-0-1.0", "sweep_cell@no_surrogate-0-1.0", "sweep_summary@pair"):
        assert f"Running stage '{stage}'" in res.stdout
    assert "Running stage 'prepare'" not in res.stdout and _trained(root) == before
    dvc_table = pd.read_csv(root / "data/sweep/pair/summary.csv")
    timing = ["steps_trained", "records_computed"]
    pd.testing.assert_frame_equal(snakemake_table.drop(columns=timing), dvc_table.drop(columns=timing))
    again = run_tool(["dvc", "repro", "sweep_summary@pair"], cwd=root)
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout

"""The sweep's summary: best-so-far traces and paired differences to the full method (no training)."""

from __future__ import annotations

import json

import pandas as pd

from autoqra import sweep
from autoqra.report import sweep as summary
from stages import params as P


def _trials(rows):
    return pd.DataFrame([{"number": i, "fidelity": f, "status": "ok", "score": s, "config_key": k}
                         for i, (f, s, k) in enumerate(rows)])


def test_best_so_far_counts_every_step_and_takes_the_mean_over_seeds_at_the_top_fidelity(tmp_path):
    (tmp_path / "evolve").mkdir()
    (tmp_path / "refine").mkdir()
    _trials([(4, 0.1, "a"), (12, 2.0, "a"), (12, 1.0, "a"), (12, 1.2, "b")]).to_parquet(
        tmp_path / "evolve/trials.parquet")
    _trials([(12, 1.6, "c"), (12, 0.2, "c")]).to_parquet(tmp_path / "refine/trials.parquet")
    trace = summary.best_so_far(tmp_path, "answer_loss")
    # the low-fidelity 0.1 never counts; "a" is the mean of its seeds (1.5), then "b" 1.2, then "c" 0.9
    assert trace == [[16, 2.0], [28, 1.5], [40, 1.2], [52, 1.2], [64, 0.9]]
    # higher is better: "a" led at 2.0 until its second seed brought its mean to 1.5; "c" led at 1.6
    # until its second seed brought it to 0.9
    assert [v for _, v in summary.best_so_far(tmp_path, "exact_match")] == [2.0, 1.5, 1.5, 1.6, 1.5]


def test_summary_gives_paired_differences_to_the_full_method_over_search_seeds(tmp_path):
    tree = P.compose(["sweep=pair", "sweep.seeds=[0,1,2]"])
    p = P.validated(tree)
    losses = {("none", 0): 1.0, ("none", 1): 1.2, ("none", 2): 1.1,
              ("no_surrogate", 0): 1.3, ("no_surrogate", 1): 1.45, ("no_surrogate", 2): 1.42}
    for c in sweep.cells(tree):
        folder = tmp_path / c["name"]
        folder.mkdir()
        loss = losses[(c["ablation"], c["seed"])]
        arm = {"summary": "x", "memory_bytes": 1, "within_budget": True, "answer_loss_mean": loss,
               "answer_loss_se": 0.01, "exact_match_mean": None}
        (folder / "metrics.json").write_text(json.dumps({
            "arms": {"autoqra": arm}, "search_steps": 100, "search_best": {"mean": loss - 0.1},
            "steps_trained": {"evolve": 10}, "records_computed": {"evolve": 1}, "trace": [[10, loss]]}))
    table, text = summary.summarise(p, tree, tmp_path)
    assert len(table) == 6 and set(table["cell"]) == {c["name"] for c in sweep.cells(tree)}
    row = next(line for line in text.splitlines() if "| no_surrogate |" in line)
    # paired differences 0.30, 0.25, 0.32: mean 0.29, se 0.0208, the 95 % t interval at 2 degrees of
    # freedom 0.29 ± 4.303 * 0.0208 excludes 0
    assert "+0.2900 [+0.2004, +0.3796] (worse)" in row
    summary.write(p, tree, tmp_path, tmp_path / "out")
    assert (tmp_path / "out/summary.md").read_text() == text
    assert (tmp_path / "out/best_so_far.png").stat().st_size > 0 and (tmp_path / "out/score_vs_budget.png").exists()

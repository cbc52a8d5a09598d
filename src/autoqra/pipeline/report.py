"""The report stage's work: every arm side by side, and the pictures that explain the run.

Reads `<final>/<arm>/metrics.json` for every arm of `finetune.arms`, the search stages' trials and the
priors; writes `<out>/summary.csv`, `summary.md` (mean ± standard error over seeds, paired differences
to `autoqra`), `pareto.png`, `allocation.png`, `search.png`; returns the metrics (the table, each GPTQ
pass's and each arm's headline numbers: what `dvc metrics show` lists).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from autoqra.memory import ModelSpec, from_params
from autoqra.params import ParamError, Params
from autoqra.pipeline.setup import load_prices
from autoqra.report import arms as arm_table
from autoqra.report import plots


def _header(p: Params) -> str:
    relative = f" × {p.budget.reference}" if p.budget.kind == "relative" else ""
    return (f"# AutoQRA run: {p.model.source}, budget {p.budget.kind} {p.budget.value:g}{relative}\n\n"
            f"Test split; every arm trained {p.finetune.steps} steps under the fresh seeds "
            f"{list(p.finetune.seeds)} (paired: the same seeds for every arm, none of them a seed the search "
            f"trained under). Each score: the mean over seeds and test examples with its 95 % interval; "
            f"Δ = arm − autoqra, paired seed by seed and example by example, with its 95 % interval, which "
            f"carries the seed noise and the test set's own sampling error (t quantiles at the seeds used; "
            f"`autoqra.stats`). 'arm better'/'arm worse' only when the interval excludes 0.\n\n")


def _frontier(search: Path) -> str:
    path = search / "evolve" / "frontier.json"
    if not path.exists():
        return ""
    frontier = json.loads(path.read_text())
    return (f"\n## The uniform frontier\n\nEvery uniform configuration within the budget, trained "
            f"{frontier['steps']} steps under the seeds {frontier['seeds']} (search.frontier_seeds) and scored on the "
            f"validation split (mean ± standard error over seeds and examples); the lowest is the "
            f"`best_uniform` arm above, retrained on the fresh seeds.\n\n" + arm_table.frontier_markdown(frontier))


def write(p: Params, dirs: dict[str, str], final: Path, out: Path) -> dict[str, Any]:
    arms = {}
    for arm in p.finetune.arms:
        path = final / arm / "metrics.json"
        if not path.exists():
            raise ParamError(f"{path}: missing (run the evaluate stage for {arm})")
        arms[arm] = json.loads(path.read_text())
    table = arm_table.summary(arms)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "summary.csv", index=False)
    search = Path(dirs["search"])
    trials = {name: pd.read_parquet(search / name / "trials.parquet") for name in ("evolve", "refine")
              if (search / name / "trials.parquet").exists()}
    (out / "summary.md").write_text(_header(p) + arm_table.markdown(table) + _frontier(search))
    budget = next(iter(arms.values()))["budget_limit"]
    plots.pareto(pd.concat(trials.values()) if trials else pd.DataFrame(), arms, budget,
                 p.search.metric).savefig(out / "pareto.png", dpi=120)
    space, _, _ = from_params(p, ModelSpec.from_pretrained(Path(dirs["prepare"]) / "model", p.quant.targets))  # units
    if "autoqra" in arms:
        winner = space.parse(arms["autoqra"]["config"])
        i_q, i_r = load_prices(Path(dirs["profile"]), space, p).importance()
        plots.allocation(list(space.units), list(winner.bits), list(winner.ranks), i_q, i_r).savefig(
            out / "allocation.png", dpi=120)
    if trials:
        plots.search_progress(trials).savefig(out / "search.png", dpi=120)
    quantize = {}
    for b in p.quant.bits:
        path = Path(dirs["quantize"]) / f"b{b}" / "metrics.json"
        if path.exists():
            m = json.loads(path.read_text())
            quantize[f"b{b}"] = {"gptq_s": m.get("gptq_s"), **{f"val_{k}": v for k, v in m.get("val", {}).items()}}
    rows = table.where(pd.notna(table), None).to_dict("records")
    return {"arms": {r["arm"]: {k: v for k, v in r.items() if k not in ("arm", "configuration")} for r in rows},
            "quantize": quantize, "pick_gap": _pick_gap(search, arms.get("autoqra"))}


def _pick_gap(search: Path, arm: dict[str, Any] | None) -> dict[str, Any] | None:
    """The pick's validation mean at the top rung (the search's seeds) next to its test score under the
    fresh seeds: how much of the pick's lead was the search's selection (winner's curse) and how much
    the split; and the refine stage's decision (`guarded_pick`'s report: was greedy kept, and why)."""
    best = search / "refine" / "best.json"
    if arm is None or not best.exists():
        return None
    top = json.loads(best.read_text())["top_rung"]
    tests = [s["answer_loss"] for s in arm["seeds"] if s.get("answer_loss") is not None]
    test = sum(tests) / len(tests) if tests else None
    metrics = search / "refine" / "metrics.json"  # the guarded pick's decision (greedy kept, or why not)
    decision = json.loads(metrics.read_text()).get("pick") if metrics.exists() else None
    return {"validation_mean": top["mean"], "test_mean": test,
            "test_minus_validation": None if test is None else test - top["mean"], "decision": decision}

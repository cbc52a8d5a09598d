"""report: every arm side by side, and the pictures that explain the run.

Reads `data/final/<arm>/metrics.json` for every arm of `finetune.arms`, the search stages' trials and
the priors; writes `<out>/summary.csv`, `summary.md` (mean ± standard error over seeds, paired
differences to `autoqra`), `pareto.png`, `allocation.png`, `search.png` and `metrics.json` (the table,
each GPTQ pass's and each arm's headline numbers: what `dvc metrics show` lists).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from autoqra import final_report, priors
from autoqra.config import Params
from stages import common
from stages.registry import STAGES
from stages.search_setup import _base

PARAMS = STAGES["report"].params


def run(p: Params, dirs: dict[str, str], final: Path, out: Path) -> dict[str, Any]:
    arms = {}
    for arm in p.finetune.arms:
        path = final / arm / "metrics.json"
        if not path.exists():
            raise SystemExit(f"error: {path}: missing (run the evaluate stage for {arm})")
        arms[arm] = json.loads(path.read_text())
    table = final_report.summary(arms)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "summary.csv", index=False)
    search = Path(dirs["search"])
    trials = {name: pd.read_parquet(search / name / "trials.parquet") for name in ("evolve", "refine")
              if (search / name / "trials.parquet").exists()}
    header = (f"# AutoQRA run: {p.model.source}, budget {p.budget.kind} {p.budget.value:g}"
              f"{' × ' + p.budget.reference if p.budget.kind == 'relative' else ''}\n\n"
              f"Test split; mean ± standard error over seeds {list(p.finetune.seeds)} (paired: every arm trained "
              f"under the same seeds). Δ = arm − autoqra, seed by seed; 'tie' within one standard error, "
              f"'inconclusive' within two.\n\n")
    (out / "summary.md").write_text(header + final_report.markdown(table))
    budget = next(iter(arms.values()))["budget_limit"]
    final_report.pareto(pd.concat(trials.values()) if trials else pd.DataFrame(), arms, budget,
                        p.search.metric).savefig(out / "pareto.png", dpi=120)
    _, space, _ = _base(p, dirs)
    unit_priors = priors.for_units(pd.read_parquet(Path(dirs["profile"]) / "priors.parquet"),
                                   {u: list(m) for u, m in space.members.items()})
    if "autoqra" in arms:
        winner = space.parse(arms["autoqra"]["config"])
        final_report.allocation(list(space.units), list(winner.bits), list(winner.ranks),
                                unit_priors.loc[list(space.units), "I_q"].to_numpy(),
                                unit_priors.loc[list(space.units), "I_r"].to_numpy()).savefig(out / "allocation.png",
                                                                                               dpi=120)
    if trials:
        final_report.search_progress(trials).savefig(out / "search.png", dpi=120)
    quantize = {}
    for b in p.quant.bits:
        path = Path(dirs["quantize"]) / f"b{b}" / "metrics.json"
        if path.exists():
            m = json.loads(path.read_text())
            quantize[f"b{b}"] = {"gptq_s": m.get("gptq_s"), **{f"val_{k}": v for k, v in m.get("val", {}).items()}}
    rows = table.where(pd.notna(table), None).to_dict("records")
    return {"arms": {r["arm"]: {k: v for k, v in r.items() if k not in ("arm", "configuration")} for r in rows},
            "quantize": quantize}


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    common.add_dirs(ap)
    ap.add_argument("--final", default="data/final")
    ap.add_argument("--out", default="data/report")
    args = ap.parse_args(argv)
    common.setup(args.threads)
    p, _ = common.load(args.params, PARAMS)
    dirs = common.dirs(args)
    out = Path(args.out)
    with common.user_errors():
        metrics = common.timed(lambda: run(p, dirs, Path(args.final), out))
    common.write_json(out / "metrics.json", metrics)


if __name__ == "__main__":
    main()

"""What stage 1's metrics report of its own decisions: how well the performance model predicted the
children it chose, its leave-one-out rank correlation and exchange rate at the pick, and each promotion
next to the one the other rule would have made."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from autoqra.search import promotion
from autoqra.search.evolution import Evolution
from autoqra.search.history import Result, seed_means, seed_scores
from autoqra.search.performance import Observation, PerformanceModel
from autoqra.space import Config
from autoqra.stats import rank_correlation

GIB = 2.0**30


def model_report(evo: Evolution, history: list[Result], pick: Config | None,
                 beside: Sequence[Observation] = ()) -> dict[str, Any]:
    """The performance model fitted on the whole history: its leave-one-configuration-out rank correlation
    at every fidelity, its noise and prior scales, and at `pick` the exchange rate of a bit step against
    a rank step (score lost per GiB saved, the mean over units of one step down; the margin the budget
    binds at, not the 2-bit collapse). With `beside` (results scored outside the search at the top
    fidelity: the uniform frontier, the comparison), also the top fidelity's leave-one-out over the
    search's configurations and those together (`leave_one_out_with_frontier`): the search's top rung
    holds neighbours of one allocation whose differences are the size of the seed noise, the frontier
    configurations the search's own model has to rank apart."""
    model = evo.model(history)
    n, table = len(evo.space), evo.budget.table
    out: dict[str, Any] = {"observations": len(model.obs), "tau_sigma": model.scale,
                           "leave_one_out": [model.leave_one_out(f) for f in evo.fidelities]}
    if beside:
        seen = {(o.config.key, o.fidelity, o.seed) for o in model.obs}
        extra = {(o.config.key, o.fidelity, o.seed): o for o in beside}
        both = [*model.obs, *(o for k, o in sorted(extra.items()) if k not in seen)]
        out["leave_one_out_with_frontier"] = PerformanceModel(evo.space, evo.prices, both).leave_one_out(
            evo.fidelities[-1])
    if pick is None or not model.obs:
        return out
    x, values = evo.space.encode(pick), model.values()
    b, r, units = x[:n], x[n:], np.arange(n)
    rates = {}
    for kind, lb, lr, can in (("bit", np.maximum(b - 1, 0), r, b > 0), ("rank", b, np.maximum(r - 1, 0), r > 0)):
        saved = (table[units, b, r] - table[units, lb, lr])[can]
        lost = (values[units, lb, lr] - values[units, b, r])[can]
        rates[kind] = float(np.mean(lost / saved) * GIB) if can.any() else None
    out["exchange_at_pick"] = {"bit_per_gib": rates["bit"], "rank_per_gib": rates["rank"],
                               "ratio": rates["bit"] / rates["rank"] if rates["bit"] and rates["rank"] else None}
    return out


def screening_quality(evo: Evolution, history: list[Result]) -> list[dict[str, Any]]:
    """Per generation: rank correlation of the performance model's screening predictions (made before
    the generation ran) with the true lowest-fidelity scores of the children it chose, and per rung."""
    out = []
    last = max((r.generation for r in history), default=0)
    for g in range(1, last + 1):
        view = evo.screening(g, [r for r in history if r.generation < g])
        if view["predicted"] is None:
            continue
        truth = {key: float(np.mean(list(v.values()))) for (key, f), v in
                 seed_scores([r for r in history if r.generation == g and r.rung == 0]).items()
                 if None not in v.values()}
        keys = [k for k in truth if k in view["predicted"]]
        corr = rank_correlation([view["predicted"][k] for k in keys], [truth[k] for k in keys])
        # and at every rung: the prediction at that rung's fidelity against the scores there
        by_rung = {}
        scores = seed_scores([r for r in history if r.generation == g])
        for f, pred in view["predicted_at"].items():
            at_f = {key: float(np.mean(list(v.values()))) for (key, ff), v in scores.items()
                    if ff == f and None not in v.values()}
            ks = [k for k in at_f if k in pred]
            by_rung[str(f)] = rank_correlation([pred[k] for k in ks], [at_f[k] for k in ks])
        out.append({"generation": g, "candidates": view["candidates"], **corr, "by_fidelity": by_rung})
    return out

def promotions(evo: Evolution, history: list[Result]) -> dict[str, Any]:
    """Each promotion made so far, raw (the rung's mean) next to the model's (the predicted top-rung
    score), whichever the search used; `differs` counts the decisions where the model was ready and
    chose another set."""
    rows = []
    for g in range(max((r.generation for r in history), default=-1) + 1):
        rungs = evo.rungs(g, history)
        for k, (low, high) in enumerate(zip(rungs, rungs[1:])):
            means = seed_means(history, g, k, evo.settings.seeds(k), low)
            quota = math.ceil(len(low) / evo.settings.eta)
            raw = promotion.choose(low, means, None, quota)
            predicted = evo.predicted(g, k, low, history)
            model = promotion.choose(low, means, predicted, quota) if predicted else None
            rows.append({"generation": g, "rung": k, "members": len(low), "promoted": [c.key for c in high],
                         "raw": [c.key for c in raw], "model": None if model is None else [c.key for c in model],
                         "differs": model is not None and {c.key for c in model} != {c.key for c in raw}})
    ready = [r for r in rows if r["model"] is not None]
    return {"used": evo.settings.promotion, "decisions": len(rows), "model_ready": len(ready),
            "differs": sum(r["differs"] for r in ready), "rows": rows}

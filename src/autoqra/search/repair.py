"""Repair: make any configuration fit the memory budget before anything is spent on it.

While over budget, apply the single one-step downgrade (one unit's bits or rank one rung down
its ladder) that adds the least predicted loss per byte saved: the step's price in the priors' tables
(`Prices`: q[u, i-1] - q[u, i] for a bit step, r[u, j-1] - r[u, j] for a rank step), plus a small
epsilon (a thousandth of the largest step price) so units whose steps cost nothing still order by
bytes. Ties go to the earlier unit, so the result is deterministic. Repair never upgrades anything and
leaves feasible configurations alone; `fill` spends what is left.
"""

from __future__ import annotations

import numpy as np

from autoqra.memory import Budget
from autoqra.search.prices import Prices
from autoqra.space import Config

EPS = 1e-3


def _epsilon(prices: Prices) -> float:
    steps = np.concatenate([-np.diff(prices.q, axis=1).ravel(), -np.diff(prices.r, axis=1).ravel(), [0.0]])
    return EPS * (float(steps.max()) or 1.0)


def repair(config: Config, budget: Budget, prices: Prices | None = None, axis: str | None = None) -> Config:
    """The least-predicted-loss sequence of downgrades that brings `config` within `budget` (`prices`:
    the priors' tables, `Prices.flat` when None); `axis` "bits" or "rank": downgrades along that ladder
    only (a ValueError where that alone cannot fit)."""
    if axis not in (None, "bits", "rank"):
        raise ValueError(f"axis={axis!r}: allowed None, 'bits', 'rank'")
    space = budget.space
    n = len(space)
    prices = Prices.flat(space) if prices is None else prices
    eps = _epsilon(prices)
    x = space.encode(config)
    bi, ri = x[:n].copy(), x[n:].copy()
    units = np.arange(n)
    cost = budget.constant + budget.table[units, bi, ri].sum()
    while not budget.fits(cost):
        best, choice = np.inf, None
        down_b = bi > 0
        if down_b.any() and axis != "rank":
            saved = budget.table[units, bi, ri] - budget.table[units, np.maximum(bi - 1, 0), ri]
            lost = prices.q[units, np.maximum(bi - 1, 0)] - prices.q[units, bi] + eps
            score = np.where(down_b & (saved > 0), lost / np.where(saved > 0, saved, 1), np.inf)
            u = int(np.argmin(score))
            if score[u] < best:
                best, choice = score[u], ("bits", u)
        down_r = ri > 0
        if down_r.any() and axis != "bits":
            saved = budget.table[units, bi, ri] - budget.table[units, bi, np.maximum(ri - 1, 0)]
            lost = prices.r[units, np.maximum(ri - 1, 0)] - prices.r[units, ri] + eps
            score = np.where(down_r & (saved > 0), lost / np.where(saved > 0, saved, 1), np.inf)
            u = int(np.argmin(score))
            if score[u] < best:
                best, choice = score[u], ("rank", u)
        if choice is None:
            along = f" along the {axis} ladder alone" if axis else ""
            raise ValueError(f"cannot repair{along}: no downgrade saves memory "
                             "(budget below the minimum configuration)")
        kind, u = choice
        old = budget.table[u, bi[u], ri[u]]
        if kind == "bits":
            bi[u] -= 1
        else:
            ri[u] -= 1
        cost += budget.table[u, bi[u], ri[u]] - old
    return space.decode(np.concatenate([bi, ri]))


def fill(config: Config, budget: Budget, values: np.ndarray) -> Config:
    """Spend what `config` leaves of the budget: while some unit's one-step upgrade (bits or rank one
    rung up) fits, take the one that `values` (U, |bits|, |ranks|: predicted score, lower is better)
    says gains most per byte (ties: the earlier unit, bits before rank). Afterwards no unit's cheapest
    upgrade fits; a configuration over the budget is returned unchanged (repair it first)."""
    space = budget.space
    n, (nb, nr) = len(space), (len(space.bits), len(space.ranks))
    x = space.encode(config)
    bi, ri = x[:n].copy(), x[n:].copy()
    units = np.arange(n)
    cost = budget.constant + budget.table[units, bi, ri].sum()
    if not budget.fits(cost):
        return config
    while True:
        best, choice = np.inf, None
        for kind, up_b, up_r in (("bits", np.minimum(bi + 1, nb - 1), ri), ("rank", bi, np.minimum(ri + 1, nr - 1))):
            extra = budget.table[units, up_b, up_r] - budget.table[units, bi, ri]
            gain = values[units, up_b, up_r] - values[units, bi, ri]   # negative: the upgrade helps
            can = ((up_b != bi) | (up_r != ri)) & budget.fits(cost + extra)
            score = np.where(can, gain / np.maximum(extra, 1e-12), np.inf)
            u = int(np.argmin(score))
            if score[u] < best:
                best, choice = score[u], (kind, u, extra[u])
        if choice is None:
            return space.decode(np.concatenate([bi, ri]))
        kind, u, extra = choice
        if kind == "bits":
            bi[u] += 1
        else:
            ri[u] += 1
        cost += extra


def exchange_rates(means: dict[tuple[Config, int], float], budget: Budget, prices: Prices) -> list[dict[str, float]]:
    """Repair's exchange rate between a bit step and a rank step, checked against measured scores.

    `means`: (configuration, fidelity) -> mean score. Per fidelity with uniform configurations one bit
    step apart (same rank) and one rank step apart (same bits): the measured score lost per GiB saved by
    each kind of step (mean over the pairs), and what repair charges per GiB for the same steps over all
    units (the price tables' sum); `measured_ratio` / `charged_ratio` = bit step's rate over rank step's. A
    charged ratio above the measured one means repair gives up bits where ranks would cost less."""
    space, gib = budget.space, 2.0**30
    eps = _epsilon(prices) * len(space)
    at: dict[int, dict[tuple[int, int], float]] = {}
    for (c, f), m in means.items():
        if len(set(c.bits)) == 1 and len(set(c.ranks)) == 1:
            at.setdefault(f, {})[(space.bits.index(c.bits[0]), space.ranks.index(c.ranks[0]))] = m
    out = []
    for f, cells in sorted(at.items()):
        steps: dict[str, list[tuple[float, float]]] = {"bit": [], "rank": []}
        for (i, j), m in cells.items():
            for kind, lo in (("bit", (i - 1, j)), ("rank", (i, j - 1))):
                if lo in cells:
                    saved = (budget.cost(space.uniform(space.bits[i], space.ranks[j]))
                             - budget.cost(space.uniform(space.bits[lo[0]], space.ranks[lo[1]]))) / gib
                    lost = (prices.q[:, i - 1] - prices.q[:, i]).sum() if kind == "bit" else \
                        (prices.r[:, j - 1] - prices.r[:, j]).sum()
                    steps[kind].append(((cells[lo] - m) / saved, (lost + eps) / saved))
        if steps["bit"] and steps["rank"]:
            bit, rank = np.mean(steps["bit"], axis=0), np.mean(steps["rank"], axis=0)
            out.append({"fidelity": f, "pairs_bit": len(steps["bit"]), "pairs_rank": len(steps["rank"]),
                        "measured_bit_per_gib": float(bit[0]), "measured_rank_per_gib": float(rank[0]),
                        "measured_ratio": float(bit[0] / rank[0]) if rank[0] else float("nan"),
                        "charged_ratio": float(bit[1] / rank[1])})
    return out

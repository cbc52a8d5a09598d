"""Variation operators of stage 1: the prior warm start, crossover and importance-guided mutation.

Every operator takes an explicit `rng` (numpy Generator) and returns new configurations; repair to
the budget is applied by the caller, once, after variation.
"""

from __future__ import annotations

import numpy as np

from autoqra.memory import Budget, BudgetError
from autoqra.search.knapsack import solve
from autoqra.search.prices import Prices
from autoqra.search.repair import fill, repair
from autoqra.space import Config, Space


def _ladder_index(importance: np.ndarray, size: int) -> np.ndarray:
    """Rank-based map of importance onto a ladder: the most important units get the top rung."""
    if size == 1 or len(importance) == 1:
        return np.full(len(importance), size - 1)
    ranks = np.argsort(np.argsort(importance, kind="stable"), kind="stable") / (len(importance) - 1)
    return np.rint(ranks * (size - 1)).astype(int)


def prior_config(space: Space, budget: Budget, prices: Prices) -> Config:
    """The paper's warm start: bits follow each unit's quantization price, ranks its rank price (by rank
    order, `Prices.importance`), repaired to the budget and filled to it under the priors' prices."""
    i_q, i_r = prices.importance()
    x = np.concatenate([_ladder_index(i_q, len(space.bits)), _ladder_index(i_r, len(space.ranks))])
    return fill(repair(space.decode(x), budget, prices), budget, prices.values())


def greedy_config(space: Space, budget: Budget, prices: Prices) -> Config:
    """The optimum under the priors' prices, solved exactly: the allocation a user gets from the priors
    alone, with no search."""
    return solve(prices.values(), budget)


def sequential_config(budget: Budget, prices: Prices, ranks: tuple[int, ...]) -> Config:
    """Quantize first, then adapt: bits from the quantization prices alone under the budget at the largest
    uniform rank of `ranks` where that fits (repair along the bit ladder only)."""
    space = budget.space
    for rank in sorted(ranks, reverse=True):
        try:
            c = repair(space.uniform(space.bits[-1], rank), budget, prices, axis="bits")
        except ValueError:  # bits alone cannot bring this rank within the budget
            continue
        if budget.feasible(c):
            return c
    raise BudgetError("finetune.arms: sequential: no uniform rank admits a bit allocation within the budget")


def feasible_uniforms(space: Space, budget: Budget, maximal: bool = False) -> list[Config]:
    """Uniform configurations on the ladders that fit the budget, most expensive first; `maximal`: only
    those that no other fitting one dominates (at least as many bits and as high a rank)."""
    out = [space.uniform(b, r) for b in space.bits for r in space.ranks]
    fits = [c for c in out if budget.feasible(c)]
    if maximal:
        fits = [c for c in fits if not any(o != c and o.bits[0] >= c.bits[0] and o.ranks[0] >= c.ranks[0]
                                           for o in fits)]
    return sorted(fits, key=budget.cost, reverse=True)


def boundary_uniforms(space: Space, budget: Budget) -> list[Config]:
    """Uniform configurations just over the budget: over it, with a one-rung-lower neighbour (in bits or in
    rank) that fits; their repairs are the configurations just inside the budget next to them."""
    out = []
    for i, b in enumerate(space.bits):
        for j, r in enumerate(space.ranks):
            c = space.uniform(b, r)
            below = [space.uniform(space.bits[i - 1], r)] * (i > 0) + [space.uniform(b, space.ranks[j - 1])] * (j > 0)
            if not budget.feasible(c) and any(budget.feasible(o) for o in below):
                out.append(c)
    return sorted(out, key=budget.cost)


def boundary_repairs(space: Space, budget: Budget, prices: Prices) -> list[Config]:
    """The configurations just inside the budget next to each uniform just over it: its repair along the
    rank ladder alone (its bits everywhere, a few units at a lower rank), along the bit ladder alone, and
    repair's own mix, where each fits (unique, in that order per uniform). The single-axis repairs are there
    because repair's exchange rate between a bit step and a rank step is a prior, not a measurement (on the
    embedded model the measured rate was 49 loss/GiB for a bit step over a rank step's, repair charged 4)."""
    out: list[Config] = []
    for c in boundary_uniforms(space, budget):
        for axis in ("rank", "bits", None):
            try:
                r = repair(c, budget, prices, axis=axis)
            except ValueError:  # that ladder alone cannot bring it within the budget
                continue
            if r not in out:
                out.append(r)
    return out


def jitter(config: Config, space: Space, rng: np.random.Generator, p: float = 0.3) -> Config:
    """Move each gene one rung up or down with probability `p` (clamped to the ladder)."""
    x = space.encode(config)
    n = len(space)
    top = np.array([len(space.bits) - 1] * n + [len(space.ranks) - 1] * n)
    step = np.where(rng.random(2 * n) < p, rng.choice([-1, 1], 2 * n), 0)
    return space.decode(np.clip(x + step, 0, top))


def crossover(a: Config, b: Config, rng: np.random.Generator) -> Config:
    """Uniform crossover: each unit's bits and rank come from either parent with probability 1/2."""
    n = len(a.units)
    take_bits, take_rank = rng.random(n) < 0.5, rng.random(n) < 0.5
    bits = tuple(x if t else y for x, y, t in zip(a.bits, b.bits, take_bits))
    ranks = tuple(x if t else y for x, y, t in zip(a.ranks, b.ranks, take_rank))
    return Config(a.units, bits, ranks)


def mutate(config: Config, space: Space, prices: Prices, rng: np.random.Generator, units: int = 2) -> Config:
    """Importance-guided mutation (as in the authors' code, where it was written but never called), with
    I_q, I_r = `prices.importance()` in [0, 1]: pick `units` units, half of the probability ∝
    ((I_q + I_r) / 2)^1.5 and half uniform (so a unit whose prior is zero is still mutated: the authors'
    weights gave it ~3e-5); move a picked unit's bits up with probability I_q and its rank up with
    probability I_r, both clipped to [0.1, 0.9] (so the lowest-prior unit is not always moved down), down
    otherwise."""
    n = len(space)
    i_q, i_r = prices.importance()
    weight = (0.5 * i_q + 0.5 * i_r) ** 1.5
    weight = 0.5 * weight / weight.sum() + 0.5 / n if weight.sum() > 0 else np.full(n, 1 / n)
    picked = rng.choice(n, size=min(units, n), replace=False, p=weight / weight.sum())
    up_q, up_r = np.clip(i_q, 0.1, 0.9), np.clip(i_r, 0.1, 0.9)
    x = space.encode(config)
    for u in picked:
        if rng.random() < 0.5:
            x[u] = np.clip(x[u] + (1 if rng.random() < up_q[u] else -1), 0, len(space.bits) - 1)
        else:
            x[n + u] = np.clip(x[n + u] + (1 if rng.random() < up_r[u] else -1), 0, len(space.ranks) - 1)
    return space.decode(x)


def tournament(scores: list[float], rng: np.random.Generator, size: int = 2) -> int:
    """Index of the best (lowest score) of `size` entries drawn at random."""
    picks = rng.choice(len(scores), size=min(size, len(scores)), replace=False)
    return int(min(picks, key=lambda i: scores[i]))

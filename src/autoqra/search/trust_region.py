"""The trust region of stage 2: a Hamming ball over units around the incumbent, TuRBO's rules.

Notation: a configuration x has U units; its distance to the centre c is the number of units whose
(bits, rank) differ. The region of radius L holds the configurations within distance L (a Hamming
ball, as CASMOPOLITAN's for categorical inputs; a differing unit may take any rungs). After
`success_tolerance` consecutive successes (a new evaluation better than the best so far by more than
`tolerance`·|best|) L grows ×`factor`; after `failure_tolerance` consecutive failures it shrinks
÷`factor` (rounded down, CASMOPOLITAN's discrete rule); below `length_min` the region restarts around
a new centre, at the initial radius.

`TrustRegion` is a small frozen dataclass and `update` a pure function, so the state of a run is
the fold of `update` over its evaluations: a killed run replays its history and resumes exactly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from autoqra.space import Config, Space


@dataclass(frozen=True)
class TrustRegion:
    length: int
    length_init: int
    length_min: int = 1
    length_max: int = 30
    factor: float = 1.5
    success_tolerance: int = 2
    failure_tolerance: int = 3
    tolerance: float = 1e-3
    successes: int = 0
    failures: int = 0
    best: float = math.inf
    restarts: int = 0

    def __post_init__(self) -> None:
        assert 1 <= self.length_min <= self.length_init <= self.length_max, "need length_min <= init <= max"
        assert self.length_min <= self.length <= self.length_max or self.length < self.length_min

    @property
    def collapsed(self) -> bool:
        return self.length < self.length_min


def update(state: TrustRegion, value: float) -> TrustRegion:
    """The state after one evaluation scored `value` (lower is better): count a success or a failure,
    grow or shrink the radius when a counter reaches its tolerance, and restart when it collapses."""
    improved = value < state.best - state.tolerance * abs(state.best) if math.isfinite(state.best) else True
    best = min(state.best, value)
    successes, failures = (state.successes + 1, 0) if improved else (0, state.failures + 1)
    length = state.length
    if successes >= state.success_tolerance:
        length, successes = min(state.length_max, math.ceil(length * state.factor)), 0
    elif failures >= state.failure_tolerance:
        length, failures = int(length / state.factor), 0
    new = dataclasses.replace(state, length=length, successes=successes, failures=failures, best=best)
    if new.collapsed:
        return restart(new)
    return new


def restart(state: TrustRegion) -> TrustRegion:
    """A fresh region at the initial radius (the caller picks the new centre); the best so far is
    the new centre's to beat from scratch, so it is reset too."""
    return dataclasses.replace(state, length=state.length_init, successes=0, failures=0, best=math.inf,
                               restarts=state.restarts + 1)


def distance(a: Config, b: Config) -> int:
    """Units whose (bits, rank) differ."""
    return sum(x != y or r != s for x, y, r, s in zip(a.bits, b.bits, a.ranks, b.ranks))


def inside(centre: Config, x: Config, length: int) -> bool:
    """Within `length` differing units of `centre` (a unit may take any rungs of its ladders)."""
    return distance(centre, x) <= length


def sample(space: Space, centre: Config, length: int, n: int, rng: np.random.Generator) -> list[Config]:
    """`n` configurations inside the region (unrepaired; the caller repairs and filters): pick
    1..length units and give each a random (bits, rank) other than its current one (CASMOPOLITAN's
    Hamming ball: categorical moves, so an upgrade and a downgrade can trade several rungs)."""
    units, nb, nr = len(space), len(space.bits), len(space.ranks)
    x0 = space.encode(centre)
    out = []
    for _ in range(n):
        k = int(rng.integers(1, max(1, min(length, units)) + 1))
        x = x0.copy()
        for u in rng.choice(units, size=k, replace=False):
            pair = int(rng.integers(0, nb * nr - 1))  # one of the other nb*nr - 1 pairs
            pair += pair >= x0[u] * nr + x0[units + u]
            x[u], x[units + u] = divmod(pair, nr)
        out.append(space.decode(x))
    return out

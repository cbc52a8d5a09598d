"""The final arms: the search's pick and what it is compared with, every one trained and scored alike.

- `autoqra`: the search's pick (stage 2's best.json; stage 1's when refinement is off);
- `fp_lora`: the unquantized base with one uniform rank, the quality ceiling (outside the budget);
- `best_uniform`: the best uniform configuration that fits the budget, by the search's own evidence;
- `sequential`: quantize first, then adapt: bits from I_q alone under the budget (greedy importance per
  byte, bits only) at one uniform rank, the largest at which they fit;
- `uniform{b}_r{r}`: any uniform configuration (`uniform3_r16`, the default budget's reference;
  `uniform4_r16`, the classic QLoRA setting).
"""

from __future__ import annotations

import numpy as np

from autoqra.config import ARMS, UNIFORM_ARM, ParamError, check_arms
from autoqra.memory import Budget
from autoqra.search.repair import repair
from autoqra.space import Config, Space

__all__ = ["ARMS", "arm_space", "check_arms", "sequential", "uniform_of"]


def arm_space(space: Space, ranks: list[int]) -> Space:
    """The search space's units with ladders widened to every arm: 16 bits, and the arms' ranks."""
    return Space(space.members, tuple(sorted({*space.bits, 16})), tuple(sorted({*space.ranks, *ranks})),
                 space.granularity)


def uniform_of(arm: str) -> tuple[int, int] | None:
    m = UNIFORM_ARM.match(arm)
    return (int(m[1]), int(m[2])) if m else None


def sequential(budget: Budget, i_q: np.ndarray, ranks: tuple[int, ...]) -> Config:
    """Bits from I_q alone under the budget at the largest uniform rank where that fits."""
    space = budget.space
    for rank in sorted(ranks, reverse=True):
        # rank steps made prohibitively important: repair takes bit downgrades only
        c = repair(space.uniform(space.bits[-1], rank), budget, i_q, np.full(len(space), 1e12))
        if set(c.ranks) == {rank} and budget.feasible(c):
            return c
    raise ParamError("finetune.arms: sequential: no uniform rank admits a bit allocation within the budget")

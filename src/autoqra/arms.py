"""The final arms: the search's pick and what it is compared with, every one trained and scored alike.

- `autoqra`: the search's pick (stage 2's best.json; stage 1's when refinement is off);
- `fp_lora`: the unquantized base with one uniform rank, the quality ceiling (outside the budget);
- `best_uniform`: the best uniform configuration that fits the budget: every feasible uniform
  configuration scored at the arms' steps under `search.frontier_seeds` seeds (the uniform frontier,
  `data/search/evolve/frontier.json`), the lowest validation mean chosen; never the test split;
- `greedy`: the exact optimum of the priors' prices under the budget, and `prior`: the prior-derived
  configuration (bits and ranks follow the prices by rank order), exactly what the search's warm start
  injects: the zero-search alternatives, so the table says what the search buys over its starting point;
- `sequential`: quantize first, then adapt: bits from the quantization prices alone under the budget
  (repair along the bit ladder) at one uniform rank, the largest at which they fit;
- `uniform{b}_r{r}`: any uniform configuration (`uniform3_r16`, the default budget's reference;
  `uniform4_r16`, the classic QLoRA setting).

Every arm is trained under `finetune.seeds`, fresh seeds no search stage trained under.

This module is the arms' vocabulary, a leaf every layer may import (the parameters check the arms with
it); training and testing an arm is `autoqra.pipeline.arms`.
"""

from __future__ import annotations

import re

from autoqra.errors import ParamError
from autoqra.space import UNQUANTIZED, Space

ARMS = ("autoqra", "fp_lora", "best_uniform", "greedy", "prior", "sequential")
# the search stages whose outputs an arm's configuration is read from (`pipeline.arms.resolve`; refine reads
# evolve's): Snakemake starts every other arm as soon as the profile is done
SEARCH_OUTPUTS = {"autoqra": ("evolve", "refine"), "best_uniform": ("evolve",)}


def uniform_pattern(bits: tuple[int, ...] | list[int] | None = None) -> str:
    """The grammar of a uniform arm's name, `uniform{bits}_r{rank}` (bits among `bits` when given)."""
    b = "|".join(map(str, bits)) if bits else r"\d+"
    return rf"^uniform({b})_r(\d+)$"


def parse_uniform(arm: str) -> tuple[int, int] | None:
    """`uniform4_r16` -> (4, 16); None for any other name."""
    m = re.match(uniform_pattern(), arm)
    return (int(m[1]), int(m[2])) if m else None


def check_arms(arms: list[str], bits: list[int]) -> None:
    """One line for an unknown final arm, or a uniform arm whose bit-width has no GPTQ cache."""
    for arm in arms:
        if arm in ARMS:
            continue
        uniform = parse_uniform(arm)
        if uniform is None:
            raise ParamError(f"finetune.arms: unknown arm {arm!r} (allowed: {', '.join(ARMS)}, "
                             "uniform<bits>_r<rank>)")
        b, r = uniform
        if b != UNQUANTIZED and b not in bits or r < 1:
            raise ParamError(f"finetune.arms: {arm!r} needs bits in quant.bits={bits} or {UNQUANTIZED}, "
                             "and a rank >= 1")


def arm_space(space: Space, ranks: list[int]) -> Space:
    """The search space's units with ladders widened to every arm: unquantized, and the arms' ranks."""
    return Space(space.members, tuple(sorted({*space.bits, UNQUANTIZED})), tuple(sorted({*space.ranks, *ranks})),
                 space.granularity)

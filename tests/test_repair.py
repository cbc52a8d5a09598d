"""Repair always meets the budget, never upgrades, and leaves feasible configurations alone."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from autoqra.memory import MemoryModel, ModelSpec, ModuleShape, Training, make_budget
from autoqra.search.prices import Prices
from autoqra.search.repair import repair
from autoqra.space import Space

SHAPES = tuple(ModuleShape(f"model.layers.{i}.{kind}", fan_in, fan_out) for i in range(6)
               for kind, fan_in, fan_out in (("self_attn.q_proj", 64, 64), ("mlp.up_proj", 64, 192),
                                             ("mlp.down_proj", 192, 64)))
SPEC = ModelSpec(SHAPES, other_params=5000, hidden=64, intermediate=192, layers=6, heads=4, kv_heads=2, vocab=300)
MEMORY = MemoryModel(SPEC, 64, Training(batch_size=2, seq_len=16))


@settings(max_examples=150, deadline=None)
@given(granularity=st.sampled_from(["block", "module"]), kind=st.sampled_from(["relative", "bits_per_param"]),
       slack=st.floats(0.0, 1.0), seed=st.integers(0, 2**31), ranks=st.sampled_from([[4, 8, 16], [0, 4, 16]]))
def test_repair_meets_budget_never_upgrades_and_keeps_feasible(granularity, kind, slack, seed, ranks):
    space = Space.from_modules([m.name for m in SHAPES], granularity, [2, 3, 4, 8, 16], ranks)
    rng = np.random.default_rng(seed)
    probe = make_budget(kind, 1.0 if kind == "relative" else 8.0, "uniform4_r16", MEMORY, space)
    floor = probe.cost(space.minimum()) / (probe.limit / (1.0 if kind == "relative" else 8.0))
    top = probe.cost(space.uniform(16, max(ranks))) / (probe.limit / (1.0 if kind == "relative" else 8.0))
    budget = make_budget(kind, floor + slack * (top - floor), "uniform4_r16", MEMORY, space)
    prices = Prices.from_importance(space, rng.random(len(space)), rng.random(len(space)))
    config = space.random(rng)
    fixed = repair(config, budget, prices)
    assert budget.feasible(fixed)
    assert all(a <= b for a, b in zip(fixed.bits, config.bits))
    assert all(a <= b for a, b in zip(fixed.ranks, config.ranks))
    if budget.feasible(config):
        assert fixed == config
    assert fixed == repair(config, budget, prices)  # deterministic


def test_repair_downgrades_the_least_important_unit_first():
    space = Space.from_modules([m.name for m in SHAPES], "block", [2, 4, 8], [4, 8])
    start = space.uniform(8, 8)
    budget = make_budget("relative", 1.0, "uniform8_r8", MEMORY, space)
    one_step = budget.cost(start) - budget.cost(start.replace(0, bits=4))
    tight = make_budget("bytes", budget.cost(start) - one_step / 2, "uniform4_r16", MEMORY, space)
    i_q = np.array([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])  # block 2 loses nothing by going to 4 bits
    fixed = repair(start, tight, Prices.from_importance(space, i_q, np.ones(6)))
    assert fixed.bits == (8, 8, 4, 8, 8, 8) and fixed.ranks == start.ranks

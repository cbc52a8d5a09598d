"""The search learns what a bit and a rank are worth: the exact budget solver, filling, the performance
model, and a planted objective whose priors are wrong, where the search must beat greedy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from autoqra.memory import MemoryModel, ModelSpec, ModuleShape, Training, make_budget
from autoqra.search import EvolveSettings, evolve
from autoqra.search.knapsack import solve
from autoqra.search.operators import greedy_config
from autoqra.search.optuna import history
from autoqra.search.performance import PICK_CONFIDENCE, Observation, PerformanceModel, guarded_pick
from autoqra.search.prices import Prices
from autoqra.search.repair import fill, repair
from autoqra.space import Space

SHAPES = tuple(ModuleShape(f"model.layers.{i}.mlp.up_proj", 64 * (1 + i % 3), 128) for i in range(8))
SPEC = ModelSpec(SHAPES, other_params=100, hidden=64, intermediate=128, layers=8, heads=4, kv_heads=2, vocab=100)
SPACE = Space.from_modules([m.name for m in SHAPES], "block", [2, 3, 4, 8], [4, 8, 16])
BUDGET = make_budget("relative", 1.0, "uniform3_r8", MemoryModel(SPEC, 64, Training(1, 4)), SPACE)
N = len(SPACE)


class Planted:
    """A separable truth the priors get wrong: per unit, a bit law exp(-1.3 (b - 2)) (not the priors'
    4^-b) times a sensitivity, a rank law 1/sqrt(r) times a need; the priors are each unit's sensitivity
    and need times a random factor in [1/3, 3]. Observations add 1/sqrt(f) and seeded noise."""

    def __init__(self, seed: int, sigma: float = 0.01):
        rng = np.random.default_rng(seed)
        self.seed, self.sigma = seed, sigma
        s, h = rng.uniform(0.2, 1.0, N), rng.uniform(0.2, 1.0, N)
        bits, ranks = np.array(SPACE.bits, float), np.array(SPACE.ranks, float)
        q = s[:, None] * (np.exp(-1.3 * (bits - 2)) - np.exp(-1.3 * (bits[-1] - 2)))[None, :]
        r = h[:, None] * (1 / np.sqrt(ranks) - 1 / np.sqrt(ranks[-1]))[None, :] * 2
        self.table = q[:, :, None] + r[:, None, :]
        self.prices = Prices.from_importance(SPACE, s * np.exp(rng.uniform(-np.log(3), np.log(3), N)),
                                             h * np.exp(rng.uniform(-np.log(3), np.log(3), N)))

    def value(self, config) -> float:
        x = SPACE.encode(config)
        return float(self.table[np.arange(N), x[:N], x[N:]].sum())

    def __call__(self, config, fidelity: int, seed: int) -> float:
        x = SPACE.encode(config)
        noise = np.random.default_rng([self.seed, fidelity, seed, *x]).normal(0, self.sigma)
        return self.value(config) + 1 / np.sqrt(fidelity) + noise


def test_the_solver_finds_the_exact_optimum_and_meets_the_budget():
    rng = np.random.default_rng(0)
    small = Space.from_modules([m.name for m in SHAPES[:3]], "block", [2, 3, 4, 8], [4, 8, 16])
    spec = ModelSpec(SHAPES[:3], other_params=100, hidden=64, intermediate=128, layers=3, heads=4, kv_heads=2,
                     vocab=100)
    for value in (0.3, 0.7, 1.0, 1.4):
        budget = make_budget("relative", value, "uniform3_r8", MemoryModel(spec, 64, Training(1, 4)), small)
        values = rng.uniform(0, 1, (3, 4, 3))
        best = min((values[np.arange(3), [k // 3 for k in ch], [k % 3 for k in ch]].sum(), ch)
                   for ch in itertools.product(range(12), repeat=3)
                   if budget.feasible(small.decode(np.array([k // 3 for k in ch] + [k % 3 for k in ch]))))
        got = solve(values, budget)
        x = small.encode(got)
        assert budget.feasible(got)
        assert solve(values * 1e30 + 1e28, budget) == got  # the prices' scale and offset do not matter
        assert values[np.arange(3), x[:3], x[3:]].sum() == pytest.approx(best[0])


def test_greedy_is_the_priors_optimum_and_fill_leaves_no_upgrade_that_fits():
    obj = Planted(0)
    prices = obj.prices.values()
    greedy = greedy_config(SPACE, BUDGET, obj.prices)
    cut = repair(SPACE.uniform(8, 16), BUDGET, obj.prices)  # the old greedy: downgrades only
    x, y = SPACE.encode(greedy), SPACE.encode(cut)
    assert prices[np.arange(N), x[:N], x[N:]].sum() <= prices[np.arange(N), y[:N], y[N:]].sum() + 1e-12
    rng = np.random.default_rng(1)
    for _ in range(10):
        c = fill(repair(SPACE.random(rng), BUDGET, obj.prices), BUDGET, prices)
        assert BUDGET.feasible(c)
        x = SPACE.encode(c)
        for u, (db, dr) in itertools.product(range(N), ((1, 0), (0, 1))):
            up = x.copy()
            up[u], up[N + u] = up[u] + db, up[N + u] + dr
            if up[u] < len(SPACE.bits) and up[N + u] < len(SPACE.ranks):
                assert not BUDGET.feasible(SPACE.decode(up))  # the upgrade would not fit


def test_the_model_learns_the_truth_from_results_and_ranks_held_out_configurations():
    obj = Planted(1)
    rng = np.random.default_rng(2)
    configs = [repair(SPACE.random(rng), BUDGET) for _ in range(48)]
    obs = [Observation(c, 9, s, obj(c, 9, s)) for c in configs for s in (0, 1)]
    model = PerformanceModel(SPACE, obj.prices, obs)
    loo = model.leave_one_out(9)
    assert loo["configurations"] == 48 and loo["spearman"] > 0.8
    optimum = obj.value(solve(obj.table, BUDGET))
    greedy = obj.value(greedy_config(SPACE, BUDGET, obj.prices))
    learned = obj.value(solve(model.values(), BUDGET))
    assert learned - optimum < 0.5 * (greedy - optimum)
    # a Thompson draw is a valid price table whose optimum fits
    assert BUDGET.feasible(solve(model.draw(np.random.default_rng(0)), BUDGET))


def test_the_search_beats_greedy_on_a_planted_objective_with_wrong_priors():
    regrets = []
    for seed in range(5):
        obj = Planted(10 + seed)
        optimum = obj.value(solve(obj.table, BUDGET))
        greedy = obj.value(greedy_config(SPACE, BUDGET, obj.prices))
        settings = EvolveSettings(population=8, offspring=4, candidates=40, generations=4, fidelities=(3, 9), eta=2,
                                  max_steps=0, seed=seed, seeds_per_rung=(1, 2))
        study, evolution = evolve(obj, SPACE, BUDGET, obj.prices, settings)
        found = obj.value(evolution.pick(history(study, SPACE)))
        regrets.append((found - optimum, greedy - optimum))
    print("regret (search, greedy):", [(round(a, 4), round(b, 4)) for a, b in regrets])
    assert all(g > 0 for _, g in regrets)  # the priors are wrong enough that greedy misses the optimum
    assert sum(a < 0.5 * g for a, g in regrets) >= 4


def test_the_pick_keeps_greedy_unless_the_model_is_confident_that_a_configuration_beats_it():
    obj = Planted(3)
    greedy, optimum = greedy_config(SPACE, BUDGET, obj.prices), solve(obj.table, BUDGET)
    rng = np.random.default_rng(4)
    others = [fill(repair(SPACE.random(rng), BUDGET), BUDGET, obj.prices.values()) for _ in range(30)]
    configs = [greedy, optimum, *others]
    # evidence enough (small noise, two seeds each): a configuration better than greedy, and the report says why
    sharp = PerformanceModel(SPACE, obj.prices, [Observation(c, 9, s, obj(c, 9, s)) for c in configs for s in (0, 1)])
    pick, report = guarded_pick(sharp, configs, 9, greedy)
    assert pick.key != greedy.key and obj.value(pick) < obj.value(greedy)
    assert report["pick"]["key"] == pick.key and report["pick"]["p_better"] >= PICK_CONFIDENCE
    assert not report["kept_reference"] and report["reference_scored"] and report["beating"] >= 1
    # noise larger than the differences, one seed each: some other configuration has the lowest posterior mean,
    # but the model is not confident it beats greedy, so greedy stays; at confidence 0.5 the challenger is taken
    loud = Planted(3, sigma=0.3)
    few = configs[:8]
    noisy = PerformanceModel(SPACE, obj.prices, [Observation(c, 9, 0, loud(c, 9, 0)) for c in few])
    pick, report = guarded_pick(noisy, few, 9, greedy)
    challenger = report["challenger"]
    assert challenger["key"] != greedy.key and challenger["difference"] < 0
    assert pick.key == greedy.key and report["kept_reference"] and challenger["p_better"] < PICK_CONFIDENCE
    assert report["pick"] == {"key": greedy.key, "difference": 0.0, "difference_sd": 0.0, "p_better": 0.0}
    assert guarded_pick(noisy, few, 9, greedy, confidence=0.5)[0].key == challenger["key"]
    # greedy never scored at this fidelity: nothing measured to keep, the lowest posterior mean
    pick, report = guarded_pick(noisy, few[1:], 9, greedy)
    assert pick.key == challenger["key"] and not report["reference_scored"] and not report["kept_reference"]
    assert report["pick"]["p_better"] is None and report["reference"] == greedy.key

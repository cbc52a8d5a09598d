"""Ablation switches and the alternative searches (random, TPE) on the synthetic objective."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from test_search import BUDGET, SPACE, _settings

from autoqra.params import ParamError
from autoqra.search import evolve, make_plan
from autoqra.search import operators as ops
from autoqra.search.baselines import BaselineSettings, RandomSearch, TPESearch
from autoqra.search.evolution import Evolution
from autoqra.search.optuna import history
from autoqra.search.prices import Prices
from autoqra.search.synthetic import SyntheticObjective

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_without_priors_generation_zero_is_random_feasible_and_ignores_the_priors():
    obj = SyntheticObjective(SPACE, 0)
    prices = obj.priors()
    members = Evolution(SPACE, BUDGET, prices, _settings(0, priors=False)).warm_start()
    assert len(members) == 12 and all(BUDGET.feasible(c) for c in members)
    assert ops.prior_config(SPACE, BUDGET, prices) not in members
    # the same members whatever the priors say
    i_q, i_r = prices.importance()
    flipped = Evolution(SPACE, BUDGET, Prices.from_importance(SPACE, 1 - i_q, 1 - i_r),
                        _settings(0, priors=False)).warm_start()
    assert [c.key for c in flipped] == [c.key for c in members]


def test_without_surrogate_the_offspring_are_a_random_subset_of_the_candidates():
    obj = SyntheticObjective(SPACE, 2)
    with_s = evolve(obj, SPACE, BUDGET, obj.priors(), _settings(2, generations=2, max_steps=0))
    without = evolve(obj, SPACE, BUDGET, obj.priors(), _settings(2, generations=2, max_steps=0, surrogate=False))
    hist = history(without[0], SPACE)
    view = without[1].screening(1, [r for r in hist if r.generation < 1])
    assert view["predicted"] is None and len(view["chosen"]) == 6 and view["candidates"] > 6
    chosen_with = with_s[1].screening(1, [r for r in history(with_s[0], SPACE) if r.generation < 1])["chosen"]
    assert {c.key for c in view["chosen"]} != {c.key for c in chosen_with}


def test_mutation_reaches_units_whose_prior_is_zero_and_moves_the_lowest_unit_up_too():
    n = len(SPACE)
    i_q = np.zeros(n)
    i_q[0] = 1.0
    start = SPACE.uniform(3, 8)
    rng = np.random.default_rng(0)
    moved, up = set(), 0
    for _ in range(400):
        child = ops.mutate(start, SPACE, Prices.from_importance(SPACE, i_q, i_q), rng, units=1)
        diff = [u for u in range(n) if child.bits[u] != start.bits[u] or child.ranks[u] != start.ranks[u]]
        moved.update(diff)
        up += sum(child.bits[u] > start.bits[u] or child.ranks[u] > start.ranks[u] for u in diff if u != 0)
    assert moved == set(range(n))  # the authors' weights (~3e-5) would never pick units 1..5
    assert up > 0  # a zero prior no longer means "always down"


@pytest.mark.parametrize("cls", [RandomSearch, TPESearch])
def test_alternative_searches_spend_the_step_budget_on_new_feasible_configs_at_the_top_rung(cls):
    obj = SyntheticObjective(SPACE, 3)
    settings = _settings(3, max_steps=9 * 2 * 12 + 5, seeds_per_rung=(1, 1, 2), method=cls.__name__[:-6].lower())
    study, plan = evolve(obj, SPACE, BUDGET, obj.priors(), settings)
    assert isinstance(plan, cls)
    hist = history(study, SPACE)
    assert len(hist) == 24 and sum(r.fidelity for r in hist) <= settings.max_steps
    assert {r.fidelity for r in hist} == {9} and all(BUDGET.feasible(r.config) for r in hist)
    by_config = {}
    for r in hist:
        by_config.setdefault(r.config.key, set()).add(r.seed)
    assert len(by_config) == 12 and all(s == {3, 4} for s in by_config.values())  # paired with stage 1's top


def test_tpe_proposals_follow_the_scores_it_was_told():
    """After its random start-up trials, TPE's proposal depends on the observed scores (the same
    configurations with the scores reversed lead elsewhere): it uses the history."""
    from autoqra.search.history import Result

    obj = SyntheticObjective(SPACE, 0)
    plan = TPESearch(SPACE, BUDGET, BaselineSettings(fidelity=9, seeds=(0,), max_steps=9 * 40, seed=0))
    own = []
    for i in range(14):
        c = plan.propose(i, own)
        assert BUDGET.feasible(c) and c.key not in {r.config.key for r in own}
        own.append(Result(c, 9, i, 0, score=obj(c, 9, 0)["score"] if isinstance(obj(c, 9, 0), dict) else obj(c, 9, 0)))
    reversed_ = [Result(r.config, 9, r.generation, 0, score=-r.score) for r in own]
    told = [plan.propose(14 + k, own).key for k in range(3)]
    flipped = [TPESearch(SPACE, BUDGET, plan.settings).propose(14 + k, reversed_).key for k in range(3)]
    assert told != flipped


def test_an_unknown_ablation_is_a_one_line_error():
    from stages.params import compose, validated

    with pytest.raises(ParamError, match="search.ablation"):
        validated(compose(["search.ablation=no_search"]))


def test_make_plan_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="search method 'grid'"):
        make_plan(SPACE, BUDGET, Prices.flat(SPACE), _settings(0, method="grid"))


def test_the_thompson_share_sets_how_many_offspring_are_optima_of_draws_from_the_model():
    obj = SyntheticObjective(SPACE, 2)
    study, plan = evolve(obj, SPACE, BUDGET, obj.priors(), _settings(2, generations=2, max_steps=0))
    before = [r for r in history(study, SPACE) if r.generation < 1]
    for share, drawn in ((0.0, 0), (0.3, 2), (0.5, 3), (1.0, 6)):  # of 6 offspring, rounded up
        view = Evolution(SPACE, BUDGET, obj.priors(), _settings(2, generations=2, thompson=share)).screening(1, before)
        assert view["thompson"] == drawn and len(view["chosen"]) == 6
        assert all(BUDGET.feasible(c) for c in view["chosen"][:drawn])

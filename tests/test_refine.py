"""Stage 2: trust-region transitions, proposals inside the region and the budget, resumption, never worse."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from scipy.stats import norm
from test_search import BUDGET, SPACE, _settings

from autoqra.search import RefineSettings, evolve, refine
from autoqra.search import trust_region as tr
from autoqra.search.operators import greedy_config
from autoqra.search.optuna import PlanSampler, drive, history, open_study
from autoqra.search.performance import PICK_CONFIDENCE
from autoqra.search.refinement import Refinement
from autoqra.search.synthetic import SyntheticObjective

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _region(**kw):
    base = dict(length=4, length_init=4, length_min=1, length_max=8, success_tolerance=2, failure_tolerance=3)
    return tr.TrustRegion(**{**base, **kw})


def test_successes_grow_the_region_up_to_its_maximum():
    state = _region(best=10.0)
    state = tr.update(state, 9.0)
    assert (state.length, state.successes, state.best) == (4, 1, 9.0)
    state = tr.update(state, 8.0)  # second success in a row: ×1.5, rounded up
    assert (state.length, state.successes) == (6, 0)
    for value in (7.0, 6.0, 5.0, 4.0):
        state = tr.update(state, value)
    assert state.length == 8  # capped at length_max


def test_failures_shrink_the_region_and_a_collapse_restarts_it():
    state = _region(best=1.0)
    for _ in range(3):
        state = tr.update(state, 2.0)
    assert (state.length, state.failures) == (2, 0)  # int(4 / 1.5)
    state = tr.update(tr.update(tr.update(state, 2.0), 2.0), 2.0)
    assert state.length == 1  # int(2 / 1.5)
    for _ in range(3):
        state = tr.update(state, 2.0)
    assert state.restarts == 1 and state.length == 4 and math.isinf(state.best)  # int(1 / 1.5) = 0 < 1


def test_a_tiny_improvement_is_not_a_success():
    state = tr.update(_region(best=1.0), 1.0 - 1e-4)  # within tolerance·|best|
    assert state.failures == 1 and state.successes == 0 and state.best == pytest.approx(1.0 - 1e-4)


def test_samples_stay_inside_the_region():
    rng = np.random.default_rng(0)
    centre = SPACE.uniform(4, 8)
    for length in (1, 2, 4):
        for c in tr.sample(SPACE, centre, length, 200, rng):
            assert 1 <= tr.distance(centre, c) <= length and tr.inside(centre, c, length)


@pytest.fixture(scope="module")
def stage_one():
    obj = SyntheticObjective(SPACE, 3, shared=0.6)
    prices = obj.priors()
    study, _ = evolve(obj, SPACE, BUDGET, prices, _settings(3, max_steps=200, seeds_per_rung=(1, 1, 2)))
    return obj, prices, history(study, SPACE)


def _refine_settings(**kw):
    return RefineSettings(**{**dict(evaluations=6, fidelity=9, seeds=(3, 4), seed=3, candidates=64), **kw})


def test_every_proposal_is_within_budget_and_inside_its_region_and_new(stage_one):
    obj, prices, prior = stage_one
    study, plan = refine(obj, SPACE, BUDGET, prior, _refine_settings(), prices)
    own = history(study, SPACE)
    steps, state, _, _ = plan.replay(own)
    assert len(steps) == 6 and len(own) == 12  # every proposal under both seeds
    seen = {r.config.key for r in prior}
    for s in steps:
        assert BUDGET.feasible(s.config) and tr.inside(s.centre, s.config, s.length)
        assert s.config.key not in seen
        seen.add(s.config.key)
    kernel, quality = plan.kernel()
    assert kernel in ("additive", "ordinal", "categorical") and set(quality) == {"additive", "ordinal", "categorical"}


def test_the_answer_is_greedy_unless_the_model_is_confident_that_a_fully_scored_one_beats_it(stage_one):
    """Not the raw minimum over two seeds nor the lowest posterior mean (both the winner's curse): greedy,
    unless the performance model gives a configuration of stage 1's top rung or of the proposals scored under
    every top seed a posterior probability ≥ 0.95 of scoring lower; then the lowest posterior mean of those."""
    obj, prices, prior = stage_one
    greedy = greedy_config(SPACE, BUDGET, prices)
    study, plan = refine(obj, SPACE, BUDGET, prior, _refine_settings(evaluations=3), prices, reference=greedy)
    own = history(study, SPACE)
    best, mean, scores, report = plan.incumbent(own)
    results = plan.prior + [r for r in own if r.done]
    seeds = set(plan.settings.seeds)
    full = {r.config.key: r.config for r in results
            if {s.seed for s in results if s.config.key == r.config.key and s.fidelity == 9} >= seeds}
    assert best.key in full and len(full) > 3 and len(scores) == 2 and mean == pytest.approx(np.mean(scores))
    assert greedy.key in full  # stage 1 scored the warm start's greedy at the top rung
    model = plan.performance(plan.history1 + [r for r in own if r.done])
    predicted = dict(zip(full, model.predict(list(full.values()), 9)))
    diff, sd = model.difference(list(full.values()), greedy, 9)
    p_better = dict(zip(full, norm.cdf(-diff / np.maximum(sd, 1e-300))))
    confident = {k for k, pb in p_better.items() if pb >= PICK_CONFIDENCE and k != greedy.key}
    if confident:
        assert best.key in confident and predicted[best.key] == min(predicted[k] for k in confident)
    else:
        assert best.key == greedy.key
    assert report["kept_reference"] == (not confident) and report["reference"] == greedy.key
    assert report["pick"]["key"] == best.key and report["challenger"]["key"] == min(predicted, key=predicted.get)
    # the threshold is the plan's (`search.pick_confidence`): at 0.5 the lowest posterior mean is the answer
    loose = Refinement(SPACE, BUDGET, prices, prior, plan.settings, greedy, confidence=0.5).incumbent(own)
    assert loose[0].key == report["challenger"]["key"] and loose[3]["confidence"] == 0.5


def test_a_killed_refinement_resumes_exactly(stage_one, tmp_path):
    obj, prices, prior = stage_one
    settings = _refine_settings()
    calls = []

    def dies_after_5(config, fidelity, seed):
        if len(calls) == 5:
            raise KeyboardInterrupt  # killed mid-evaluation
        calls.append((config.key, seed))
        return obj(config, fidelity, seed)

    journal = str(tmp_path / "r.journal")
    sampler = PlanSampler(Refinement(SPACE, BUDGET, prices, prior, settings))
    study = open_study("r", None, journal, sampler)
    with pytest.raises(KeyboardInterrupt):
        drive(study, sampler, dies_after_5)
    running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    study.tell(running[0].number, state=optuna.trial.TrialState.FAIL)  # what a restart does for a dead worker
    resumed = []
    sampler = PlanSampler(Refinement(SPACE, BUDGET, prices, prior, settings))  # a fresh process
    drive(open_study("r", None, journal, sampler), sampler,
          lambda c, f, s: resumed.append((c.key, s)) or obj(c, f, s))
    reference = []
    refine(lambda c, f, s: reference.append((c.key, s)) or obj(c, f, s), SPACE, BUDGET, prior, settings, prices)
    assert not set(calls) & set(resumed) and calls + resumed == reference

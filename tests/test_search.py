"""Stage 1 as a library on synthetic objectives: warm start, successive halving, quality, resumption."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import optuna
import pandas as pd
import pytest

from autoqra.memory import MemoryModel, ModelSpec, ModuleShape, Training, make_budget
from autoqra.report import search as report
from autoqra.search import EvolveSettings, evolve, ranking
from autoqra.search import operators as ops
from autoqra.search.evolution import Evolution, cost, spent_steps
from autoqra.search.history import Job, Result
from autoqra.search.optuna import PlanSampler, SearchFailed, drive, failure_counts, history, open_study
from autoqra.search.prices import Prices
from autoqra.search.repair import repair
from autoqra.search.synthetic import SyntheticObjective
from autoqra.space import Space

optuna.logging.set_verbosity(optuna.logging.WARNING)

SHAPES = tuple(ModuleShape(f"model.layers.{i}.mlp.up_proj", 64 * (1 + i % 3), 128) for i in range(6))
SPEC = ModelSpec(SHAPES, other_params=100, hidden=64, intermediate=128, layers=6, heads=4, kv_heads=2, vocab=100)
SPACE = Space.from_modules([m.name for m in SHAPES], "block", [2, 3, 4, 8], [4, 8, 16])
BUDGET = make_budget("relative", 1.0, "uniform3_r8", MemoryModel(SPEC, 64, Training(1, 4)), SPACE)


def _settings(seed, **kw):
    base = dict(population=12, offspring=6, candidates=60, generations=50, fidelities=(1, 3, 9), eta=3,
                max_steps=300, seed=seed)
    return EvolveSettings(**{**base, **kw})


def test_generation_zero_starts_with_the_prior_config_and_fits_the_budget():
    obj = SyntheticObjective(SPACE, 0)
    prices = obj.priors()
    evo = Evolution(SPACE, BUDGET, prices, _settings(0))
    members = evo.warm_start()
    assert members[0] == ops.prior_config(SPACE, BUDGET, prices)
    assert len(members) == 12 and len({c.key for c in members}) == 12
    assert all(BUDGET.feasible(c) for c in members)
    assert set(ops.feasible_uniforms(SPACE, BUDGET)) <= {c for c in members}
    fits, maximal = ops.feasible_uniforms(SPACE, BUDGET), ops.feasible_uniforms(SPACE, BUDGET, maximal=True)
    assert set(maximal) < set(fits)  # none dominates another, every other one is dominated by one of them
    for c in fits:
        assert (c in maximal) != any(o != c and o.bits[0] >= c.bits[0] and o.ranks[0] >= c.ranks[0] for o in fits)
    # the prior spends bits where I_q is high: the most sensitive unit has at least the least one's bits
    prior = members[0]
    i_q = prices.importance()[0]
    assert prior.bits[int(np.argmax(i_q))] >= prior.bits[int(np.argmin(i_q))]


def test_successive_halving_rung_counts_and_promotions():
    obj = SyntheticObjective(SPACE, 1)
    settings = _settings(1, population=9, offspring=6, generations=3, max_steps=0)
    study, evo = evolve(obj, SPACE, BUDGET, obj.priors(), settings)
    hist = history(study, SPACE)
    counts = {(g, k): sum(1 for r in hist if r.generation == g and r.rung == k) for g in range(3) for k in range(3)}
    assert [counts[(0, k)] for k in range(3)] == [9, 3, 1]
    assert [counts[(g, k)] for g in (1, 2) for k in range(3)] == [6, 2, 1, 6, 2, 1]
    for g in range(3):
        for k in range(2):
            rung = sorted((r for r in hist if r.generation == g and r.rung == k), key=lambda r: r.score)
            promoted = {r.config.key for r in hist if r.generation == g and r.rung == k + 1}
            assert promoted == {r.config.key for r in rung[: math.ceil(len(rung) / 3)]}
            assert all(r.fidelity == settings.fidelities[k] for r in rung)
    assert all(BUDGET.feasible(r.config) for r in hist)


@pytest.mark.parametrize("seed", range(5))
def test_search_beats_random_feasible_search_with_the_same_fidelity_budget(seed):
    obj = SyntheticObjective(SPACE, seed)
    optimum, _ = obj.optimum(BUDGET)
    study, _ = evolve(obj, SPACE, BUDGET, obj.priors(), _settings(seed))
    best = ranking(history(study, SPACE))[0][2]
    spent = obj.steps
    rng, rand = np.random.default_rng(seed + 100), SyntheticObjective(SPACE, seed)
    found = []
    while rand.steps + 9 <= spent:  # random feasible configurations, each at the highest fidelity
        config = repair(SPACE.random(rng), BUDGET)
        found.append((rand(config, 9), config))
    random_best = min(found, key=lambda x: x[0])[1]
    assert BUDGET.feasible(best)
    assert obj.true_value(best) < obj.true_value(random_best)
    assert obj.true_value(best) - optimum < 0.3


def test_same_seed_same_search():
    runs = []
    for _ in range(2):
        obj = SyntheticObjective(SPACE, 3)
        study, _ = evolve(obj, SPACE, BUDGET, obj.priors(), _settings(3, max_steps=120))
        runs.append([(t.params["fidelity"], t.value, t.user_attrs["config_key"]) for t in study.trials])
    assert runs[0] == runs[1]
    hist = history(study, SPACE)  # the step budget's one-pass sum is the per-job costs' sum, within the budget
    assert spent_steps(hist) == sum(cost(r, hist) for r in hist) <= 120 < sum(r.fidelity for r in hist)


def test_resume_after_a_dead_worker_repeats_only_the_unfinished_evaluation(tmp_path):
    obj = SyntheticObjective(SPACE, 4)
    settings = _settings(4, max_steps=150, seeds_per_rung=(1, 1, 2))
    calls = []

    def dies_after_20(config, fidelity, seed):
        if len(calls) == 20:
            raise KeyboardInterrupt  # the process is killed mid-evaluation
        calls.append((config.key, fidelity, seed))
        return obj(config, fidelity, seed)

    journal = str(tmp_path / "study.journal")
    evo = Evolution(SPACE, BUDGET, obj.priors(), settings)
    first = PlanSampler(evo)
    study = open_study("s", None, journal, first)
    with pytest.raises(KeyboardInterrupt):
        drive(study, first, dies_after_20)
    running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert len(running) == 1
    study.tell(running[0].number, state=optuna.trial.TrialState.FAIL)  # what a restart does for a dead pid

    resumed = []
    sampler = PlanSampler(Evolution(SPACE, BUDGET, obj.priors(), settings))
    study = open_study("s", None, journal, sampler)
    drive(study, sampler, lambda c, f, s: resumed.append((c.key, f, s)) or obj(c, f, s))
    reference = []
    ref_obj = SyntheticObjective(SPACE, 4)
    evolve(lambda c, f, s: reference.append((c.key, f, s)) or ref_obj(c, f, s), SPACE, BUDGET, obj.priors(),
           settings)
    assert not set(calls) & set(resumed)  # nothing finished was evaluated again
    assert calls + resumed == reference  # and the search went on exactly as if uninterrupted


def test_two_workers_share_one_study_without_duplicates(tmp_path):
    obj = SyntheticObjective(SPACE, 2)
    # a step budget may overshoot by a concurrent trial; two seeds at the upper rungs
    settings = _settings(2, generations=6, max_steps=0, seeds_per_rung=(1, 2, 2))
    journal = str(tmp_path / "shared.journal")
    lock, seen = threading.Lock(), []

    def objective(config, fidelity, seed):
        with lock:
            seen.append((config.key, fidelity, seed))
        return obj(config, fidelity, seed)

    def work():
        sampler = PlanSampler(Evolution(SPACE, BUDGET, obj.priors(), settings))
        drive(open_study("shared", None, journal, sampler), sampler, objective, poll_s=0.05)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    single = []
    evolve(lambda c, f, s: single.append((c.key, f, s)) or SyntheticObjective(SPACE, 2)(c, f, s), SPACE, BUDGET,
           obj.priors(), settings)
    assert sorted(seen) == sorted(single) and len(set(seen)) == len(seen)


def test_a_running_duplicate_does_not_end_a_rung_early():
    # a concurrent worker's trial holding a job that another trial already finished (it is about to
    # be skipped) must not make the rung look unfinished: that made the generation look done at
    # this rung, and the next generation was bred from part of the evidence (seen in CI, 4 workers)
    obj = SyntheticObjective(SPACE, 0)
    evo = Evolution(SPACE, BUDGET, obj.priors(), _settings(0))
    members = evo.warm_start()
    done = [Result(c, 1, 0, 0, score=obj(c, 1)) for c in members]
    duplicate = Result(members[0], 1, 0, 0, score=None, done=False)
    job = evo.next(done + [duplicate])
    assert isinstance(job, Job) and (job.generation, job.rung, job.fidelity) == (0, 1, 3)
    assert job == evo.next(done)


def test_fidelity_agreement_pairs_each_configuration_across_consecutive_rungs():
    rows = [("a", 8, 3.0), ("b", 8, 2.0), ("c", 8, 1.0), ("d", 8, 0.5),
            ("a", 24, 1.0), ("b", 24, 2.0), ("c", 24, 3.0), ("a", 72, 5.0), ("b", 72, 4.0)]
    trials = pd.DataFrame([{"config_key": k, "fidelity": f, "score": s, "status": "ok"} for k, f, s in rows])
    low_mid, mid_high = report.fidelity_agreement(trials)
    assert (low_mid["low"], low_mid["high"], low_mid["n"]) == (8, 24, 3)
    assert low_mid["spearman"] == pytest.approx(-1.0) and low_mid["kendall"] == pytest.approx(-1.0)
    assert (mid_high["n"], np.isnan(mid_high["spearman"])) == (2, True)  # too few pairs to say


def test_space_contains_exactly_the_configurations_check_accepts():
    inside = SPACE.uniform(4, 8)
    assert SPACE.contains(inside)
    SPACE.check(inside)
    other_units = Space.from_modules(["model.layers.0.mlp.up_proj"], "block", [4], [8]).uniform(4, 8)
    for outside in (SPACE.uniform(16, 8), SPACE.uniform(4, 32), other_units):
        assert not SPACE.contains(outside)
        with pytest.raises(ValueError):
            SPACE.check(outside)


def test_a_configuration_survives_json_with_sorted_keys():
    # stage outputs are written with sorted keys, which puts model.layers.10 before model.layers.2
    space = Space.from_modules([f"model.layers.{i}.mlp.up_proj" for i in range(12)], "block", [2, 4], [4, 8])
    config = space.random(np.random.default_rng(3))
    text = json.dumps(config.to_dict(), sort_keys=True)
    assert list(json.loads(text)["units"]) != list(space.units)
    assert space.parse(json.loads(text)) == config
    units = dict(config.to_dict()["units"])
    units.pop(space.units[-1])
    with pytest.raises(ValueError, match="missing unit"):
        space.parse({"units": units})
    with pytest.raises(ValueError, match="unknown unit"):
        space.parse({"units": {**config.to_dict()["units"], "lm_head": [4, 8]}})
    with pytest.raises(ValueError, match="outside the ladders"):
        space.parse({"units": {**config.to_dict()["units"], space.units[0]: [3, 8]}})


def test_consecutive_failures_stop_the_search_naming_the_reasons(tmp_path):
    obj = SyntheticObjective(SPACE, 5)
    calls = []

    def breaks_after_3(config, fidelity, seed):
        calls.append(config.key)
        if len(calls) <= 3:
            return obj(config, fidelity, seed)
        return {"score": None, "status": "failed", "reason": f"non-finite training loss (nan) at step {len(calls)}"}

    settings = _settings(5, max_steps=0)
    sampler = PlanSampler(Evolution(SPACE, BUDGET, obj.priors(), settings))
    study = open_study("f", None, str(tmp_path / "f.journal"), sampler)
    with pytest.raises(SearchFailed, match=r"search.max_failures=4: 4 evaluations failed in a row \(failures so far: "
                                           r"4 × non-finite training loss\)"):
        drive(study, sampler, breaks_after_3, max_failures=4)
    assert len(calls) == 7
    hist = history(study, SPACE)
    assert sum(r.score is not None for r in hist) == 3  # what finished before is kept
    assert failure_counts(study) == {"non-finite training loss": 4}


def test_ranking_uses_the_mean_over_seeds_and_its_standard_error():
    a, b = SPACE.uniform(4, 8), SPACE.uniform(8, 4)
    hist = [Result(a, 9, 0, 2, score=1.0, seed=0), Result(a, 9, 0, 2, score=3.0, seed=1),   # mean 2.0
            Result(b, 9, 0, 2, score=1.5, seed=0), Result(b, 9, 0, 2, score=2.1, seed=1),   # mean 1.8: better
            Result(a, 3, 0, 1, score=0.1, seed=0)]                                   # lower fidelity: not used
    first, second = ranking(hist)
    assert first.config == b and first.score == pytest.approx(1.8) and first.se == pytest.approx(0.3)
    assert second.config == a and second.seeds == (0, 1)
    failed = hist + [Result(b, 9, 0, 2, score=None, seed=2)]  # a failed seed: b falls back to no top evidence
    assert ranking(failed)[0].config == a


def test_seeds_of_a_rung_are_separate_records_and_more_seeds_compute_only_the_new_ones(tmp_path):
    from autoqra.store.records import RecordStore

    obj = SyntheticObjective(SPACE, 6, shared=0.6)
    store = RecordStore(tmp_path / "records")

    def cached(config, fidelity, seed):
        key = f"{config.key[:40]}{fidelity:08d}{seed:016d}"
        return store.get(key, lambda: {"status": "ok", "score": obj(config, fidelity, seed), "reason": None})[0]

    # one generation: the next one is bred by a model of every result, the top rung's seeds included
    base = dict(generations=1, max_steps=0, population=9, offspring=6)
    evolve(cached, SPACE, BUDGET, obj.priors(), _settings(6, seeds_per_rung=(1, 1, 2), **base), study_name="k2")
    first = store.computed
    assert first == len(store.keys())
    evolve(cached, SPACE, BUDGET, obj.priors(), _settings(6, seeds_per_rung=(1, 1, 3), **base), study_name="k3")
    # the same promotions (lower rungs unchanged), one more seed for the configuration at the top rung
    assert store.computed - first == 1  # 9 -> 3 -> 1


def test_four_workers_with_random_delays_never_train_an_evaluation_twice():
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("stress", ROOT / "bench" / "stress_workers.py")
    stress = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stress)
    for seed in range(3):  # bench/stress_workers.py repeats this 50 times with processes
        r = stress.one_repeat(seed, workers=4, threads=True)
        assert r["duplicates"] == 0 and r["steps_trained"] == r["steps_needed"] and r["jobs"] > 20


def test_an_injected_out_of_memory_is_retried_within_the_search_and_the_configuration_is_scored(tmp_path):
    """The first evaluation runs out of memory (a co-worker's fault, say) with attempts left: the trial is
    failed without an evaluation's status, the plan hands the same job out again, and the study ends with
    that configuration scored, as the search without the OOM would have."""
    obj = SyntheticObjective(SPACE, 0)
    settings = _settings(0)
    hit = []

    def once_out_of_memory(config, fidelity, seed):
        if not hit:
            hit.append((config.key, fidelity, seed))
            return {"score": None, "status": "failed", "reason": "out of memory: injected", "retry": True}
        return obj(config, fidelity, seed)

    sampler = PlanSampler(Evolution(SPACE, BUDGET, obj.priors(), settings))
    study = open_study("oom", None, str(tmp_path / "s.journal"), sampler)
    drive(study, sampler, once_out_of_memory)
    done = {(r.config.key, r.fidelity, r.seed): r.score for r in history(study, SPACE)}
    assert hit[0] in done and done[hit[0]] is not None  # retried and scored
    assert failure_counts(study) == {}  # no evaluation counts as failed
    assert [t.user_attrs["status"] for t in study.trials if t.state == optuna.trial.TrialState.FAIL] == ["retry"]
    reference, _ = evolve(obj, SPACE, BUDGET, obj.priors(), settings)
    assert sorted(done) == sorted((r.config.key, r.fidelity, r.seed) for r in history(reference, SPACE))


def test_the_boundary_warm_start_holds_the_repairs_of_the_uniforms_just_over_the_budget():
    obj = SyntheticObjective(SPACE, 0)
    prices = obj.priors()
    over = ops.boundary_uniforms(SPACE, BUDGET)
    assert over and not any(BUDGET.feasible(c) for c in over)
    fits = set(ops.feasible_uniforms(SPACE, BUDGET))
    for c in over:  # each has a one-rung-lower neighbour that fits, and nothing over the budget is left out
        b, r = SPACE.bits.index(c.bits[0]), SPACE.ranks.index(c.ranks[0])
        assert {SPACE.uniform(SPACE.bits[b - 1], c.ranks[0]) if b else None,
                SPACE.uniform(c.bits[0], SPACE.ranks[r - 1]) if r else None} & fits
    members = Evolution(SPACE, BUDGET, prices, _settings(0, warm_start="boundary")).warm_start()
    plain = Evolution(SPACE, BUDGET, prices, _settings(0)).warm_start()
    repaired = [repair(c, BUDGET, prices) for c in over]
    assert all(c in members for c in repaired) and not all(c in plain for c in repaired)
    # each one's repair along one ladder alone: the uniform's bits everywhere with a few ranks lower, and
    # the reverse (where that ladder alone fits); the first is what repair's own mix need not propose
    for c in over:
        by_rank = repair(c, BUDGET, prices, axis="rank")
        assert by_rank in members and BUDGET.feasible(by_rank) and set(by_rank.bits) == set(c.bits)
        assert len(set(by_rank.ranks)) > 1 and max(by_rank.ranks) == c.ranks[0]
    with pytest.raises(ValueError, match="along the bits ladder alone"):
        repair(SPACE.uniform(SPACE.bits[0], SPACE.ranks[-1]), make_budget(
            "relative", 0.0, "uniform3_r8", MemoryModel(SPEC, 64, Training(1, 4)), SPACE), axis="bits")
    # "also": beyond the population, so no uniform or prior gives way, whatever the population
    assert members[:12] == plain and len(members) > 12 and len(set(members)) == len(members)
    tight = Evolution(SPACE, BUDGET, prices, _settings(0, warm_start="boundary", population=2 + len(fits)))
    assert fits <= set(tight.warm_start())
    assert all(BUDGET.feasible(c) for c in members)
    assert "warm_start='boundary'" in repr(_settings(0, warm_start="boundary"))  # the study's name hashes it


def test_model_promotion_keeps_the_quota_and_what_already_runs_and_reports_against_raw():
    from autoqra.search import diagnostics, promotion

    a, b, c = SPACE.uniform(2, 4), SPACE.uniform(3, 4), SPACE.uniform(4, 4)
    means = {a.key: 1.0, b.key: 2.0, c.key: 3.0}
    assert promotion.choose([a, b, c], means, None, 1) == [a]  # raw: the rung's mean
    assert promotion.choose([a, b, c], means, {a.key: 5.0, b.key: 4.0, c.key: 0.5}, 1) == [c]
    assert promotion.choose([a, b, c], means, {a.key: 5.0, b.key: 4.0, c.key: 0.5}, 2, running=[b.key]) == [b, c]
    obj = SyntheticObjective(SPACE, 2, crossing=1.0)
    settings = _settings(2, population=9, offspring=6, generations=3, max_steps=0, promotion="model")
    study, evo = evolve(obj, SPACE, BUDGET, obj.priors(), settings)
    hist = history(study, SPACE)
    report_ = diagnostics.promotions(evo, hist)
    assert report_["decisions"] == 6 and report_["model_ready"] >= 3  # generation 0 has nothing above its rungs
    for row in report_["rows"]:
        assert len(row["promoted"]) == math.ceil(row["members"] / 3)
        assert set(row["promoted"]) == set(row["model"] if row["model"] is not None else row["raw"])
    again, _ = evolve(SyntheticObjective(SPACE, 2, crossing=1.0), SPACE, BUDGET, obj.priors(), settings)
    assert [t.params for t in again.trials] == [t.params for t in study.trials]


def test_repair_exchange_rate_is_checked_against_the_measured_steps():
    from autoqra.search.repair import exchange_rates

    cells = {(b, r): 0.0 for b in (3, 4) for r in (8, 16)}
    cells = {SPACE.uniform(b, r): (4 - b) * 1.0 + (16 - r) * 0.01 for b, r in cells}
    rows = exchange_rates({(c, 9): m for c, m in cells.items()}, BUDGET, Prices.flat(SPACE))
    assert [r["fidelity"] for r in rows] == [9] and rows[0]["pairs_bit"] == 2 and rows[0]["pairs_rank"] == 2
    gib = 2.0**30
    bit = 1.0 / ((BUDGET.cost(SPACE.uniform(4, 8)) - BUDGET.cost(SPACE.uniform(3, 8))) / gib)
    bit2 = 1.0 / ((BUDGET.cost(SPACE.uniform(4, 16)) - BUDGET.cost(SPACE.uniform(3, 16))) / gib)
    assert rows[0]["measured_bit_per_gib"] == pytest.approx((bit + bit2) / 2)
    assert rows[0]["measured_ratio"] > 1 and rows[0]["charged_ratio"] > 0

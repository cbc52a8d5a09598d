"""The verdict holds on pure noise and finds a planted difference: the report's own comparison function."""

from __future__ import annotations

import numpy as np
import pytest

from autoqra import stats

N = 200  # test examples, as the default test split


def _draw(rng, seeds, delta=0.0, sd_seed=0.016, sd_example=0.4, sd_residual=0.05):
    """Two arms scored on a fresh test set under `seeds` paired seeds: each example has its own
    difficulty for each arm (the test set's sampling error), each seed its own offset per arm (seed
    noise), plus per-run noise. `delta` is the true difference (arm a − arm b)."""
    ex_a, ex_b = rng.normal(0, sd_example, N), rng.normal(0, sd_example, N)
    a = {s: delta + ex_a + rng.normal(0, sd_seed) + rng.normal(0, sd_residual, N) for s in range(seeds)}
    b = {s: ex_b + rng.normal(0, sd_seed) + rng.normal(0, sd_residual, N) for s in range(seeds)}
    return a, b


def _true_se(seeds, sd_seed=0.016, sd_example=0.4, sd_residual=0.05):
    return np.sqrt(2 * sd_seed**2 / seeds + 2 * sd_example**2 / N + 2 * sd_residual**2 / (seeds * N))


# seed noise dominating the standard error, and the mix bench/noise.py measured on the embedded model (sd of
# a paired difference 0.016 per seed; 0.027 for the validation sample's error at 200 examples)
NOISE = {"seed": {"sd_seed": 0.05, "sd_example": 0.1}, "measured": {"sd_seed": 0.0113, "sd_example": 0.27}}


@pytest.mark.parametrize("seeds", [2, 3, 5])
@pytest.mark.parametrize("noise", sorted(NOISE))
def test_on_pure_noise_at_most_five_percent_of_comparisons_claim_a_difference(seeds, noise):
    rng = np.random.default_rng(seeds)
    scale = NOISE[noise]
    calls = [stats.compare(*_draw(rng, seeds, **scale))["verdict"] for _ in range(2000)]
    false = np.mean([v in ("better", "worse") for v in calls])
    assert false <= 0.05, false
    assert set(calls) <= {"better", "worse", "inconclusive"}


def test_a_planted_difference_of_six_standard_errors_is_found_in_four_of_five_draws_at_three_seeds():
    rng = np.random.default_rng(0)
    scale = NOISE["seed"]  # seed noise dominates: the t test at 2 df is all there is
    delta = 6 * _true_se(3, **scale)
    calls = [stats.compare(*_draw(rng, 3, delta, **scale))["verdict"] for _ in range(2000)]
    assert np.mean([v == "worse" for v in calls]) >= 0.8  # a − b > 0 on a loss: a is worse
    assert not any(v == "better" for v in calls)


def test_identical_runs_are_identical_and_one_seed_never_claims_a_difference():
    same = {0: [0.5, 0.7], 1: [0.4, 0.9]}
    assert stats.compare(same, same)["verdict"] == "identical"
    assert stats.compare(same, same)["ci"] == [0.0, 0.0]
    one = stats.compare({0: [1.0, 1.2, 1.1]}, {0: [0.0, 0.1, 0.2]})
    assert one["verdict"] == "single seed" and one["ci"][0] > 0  # the examples' error only: no verdict


def test_two_answers_out_of_two_hundred_the_same_under_every_seed_are_not_a_sure_difference():
    """Exact match paired per example: 2 of 200 answers differ, identically under 3 seeds. The old
    seed-only standard error was 0 (an infinite z and a "worse"); the test set's sampling error is not."""
    a = {s: np.r_[np.zeros(2), np.ones(198)] for s in range(3)}
    b = {s: np.ones(200) for s in range(3)}
    c = stats.compare(a, b, lower_is_better=False)
    assert c["diff"] == pytest.approx(-0.01) and c["se"] > 0 and c["verdict"] == "inconclusive"


def test_contributions_average_to_the_pooled_token_weighted_loss():
    per = [(2.0, 4), (3.0, 2), (0.5, 1)]
    assert np.mean(stats.contributions(per)) == pytest.approx(5.5 / 7)

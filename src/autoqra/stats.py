"""Paired comparisons that hold on pure noise: over training seeds *and* evaluation examples.

Notation. Two configurations A and B are trained under the same seeds s = 1..S (a seed fixes the data
order and the adapters' initialisation, so the two runs of one seed are paired) and scored on the same
examples i = 1..n. d[s, i] = a[s, i] − b[s, i] is the per-example difference of seed s (a loss
contribution, or an exact-match outcome 0/1). The quantity compared is the mean difference
D = mean_{s,i} d[s, i], and its uncertainty has three parts (a two-way crossed random-effects model,
seeds × examples):

    Var(D) = σ²_seed / S + σ²_example / n + σ²_residual / (S n)

the seed noise (another seed, another run), the test set's own sampling error (another sample of
examples, another test set: shared by all seeds, so no number of seeds removes it) and their
interaction. From the mean squares of the S × n table,

    MS_seed = n Σ_s (D_s − D)² / (S − 1)       MS_example = S Σ_i (D_i − D)² / (n − 1)

with D_s, D_i the row and column means, E[MS_seed] = n σ²_seed + σ²_residual and E[MS_example] =
S σ²_example + σ²_residual, so SE² = (MS_seed + MS_example) / (S n) estimates Var(D) plus
σ²_residual/(S n): a conservative standard error. The 95 % interval combines each part at its own
degrees of freedom, the seeds used for the seed noise and the examples for the test set's error:

    D ± sqrt(t²(S − 1) · MS_seed / (S n) + t²(n − 1) · MS_example / (S n))

(t = the 0.975 quantile), which is the t interval at S − 1 degrees of freedom when seed noise dominates
and the one at n − 1 when the test set's error does, and conservative in between (Satterthwaite's
single df is not: it calls 8-13 % of pure-noise comparisons "different" at 2-3 seeds when seed noise
dominates). The verdict is read from the interval: `better`/`worse` only when it excludes 0,
`inconclusive` when it does not, `identical` when every paired difference is exactly zero. With one
seed the seed noise is not measured: the interval covers the test set's error only and the verdict
says `single seed`. tests/test_stats.py checks the false-call rate on pure noise and the power at a
planted difference; `bench/verdict_power.py` prints the power table the README quotes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as st

LEVEL = 0.95


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    m = float(np.mean(values))
    return m, float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def _verdict(lo: float, hi: float, diff: float, lower_is_better: bool) -> str:
    if not lo <= 0 <= hi:
        return "better" if (diff < 0) == lower_is_better else "worse"
    return "inconclusive"


def difference(d: np.ndarray, lower_is_better: bool = True) -> dict[str, Any]:
    """The mean of paired differences `d` (S seeds × n examples; one column for per-seed scores only),
    its standard error (seed noise and the examples' sampling error, see the module docstring), the 95 %
    t interval and the verdict read from it."""
    d = np.atleast_2d(np.asarray(d, dtype=float))
    s, n = d.shape
    mean = float(d.mean())
    out: dict[str, Any] = {"diff": mean, "seeds": s, "examples": n}
    if np.all(d == d.flat[0]) and mean == 0.0:
        return {**out, "se": 0.0, "df": s - 1, "ci": [0.0, 0.0], "verdict": "identical"}
    ms_seed = n * float(((d.mean(axis=1) - mean) ** 2).sum()) / (s - 1) if s > 1 else 0.0
    ms_example = s * float(((d.mean(axis=0) - mean) ** 2).sum()) / (n - 1) if n > 1 else 0.0
    se = math.sqrt((ms_seed + ms_example) / (s * n))
    q = 0.5 + LEVEL / 2
    half = math.sqrt((float(st.t.ppf(q, s - 1)) ** 2 * ms_seed if s > 1 else 0.0)
                     + (float(st.t.ppf(q, n - 1)) ** 2 * ms_example if n > 1 else 0.0)) / math.sqrt(s * n)
    if se == 0.0:  # nothing varies that could be measured: no interval to read
        return {**out, "se": se, "df": s - 1, "ci": [mean, mean], "verdict": "inconclusive"}
    lo, hi = mean - half, mean + half
    verdict = "single seed" if s == 1 else _verdict(lo, hi, mean, lower_is_better)
    return {**out, "se": se, "df": s - 1, "ci": [lo, hi], "verdict": verdict}


def compare(a: Mapping[int, Sequence[float]], b: Mapping[int, Sequence[float]],
            lower_is_better: bool = True) -> dict[str, Any]:
    """`a − b` over the seeds both have, each seed's values paired example by example (the same examples
    in the same order; a single value per seed pairs the seeds only). Returns `difference`'s fields, the
    seeds, and each seed's mean difference."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("no seed in common: the configurations were not scored under the same seeds")
    rows = [np.atleast_1d(np.asarray(a[s], dtype=float)) - np.atleast_1d(np.asarray(b[s], dtype=float))
            for s in seeds]
    if len({len(r) for r in rows}) != 1:
        raise ValueError("the seeds hold different numbers of examples: not paired example by example")
    d = np.stack(rows)
    return {**difference(d, lower_is_better), "seeds": seeds, "per_seed": d.mean(axis=1).tolist()}


def paired(a: Mapping[int, float], b: Mapping[int, float], lower_is_better: bool = True) -> dict[str, Any]:
    """`compare` of one score per seed: the seed noise only (no per-example values to pair)."""
    return compare({s: [v] for s, v in a.items()}, {s: [v] for s, v in b.items()}, lower_is_better)


def describe(c: Mapping[str, Any], digits: int = 4) -> str:
    """`+0.0310 [−0.0120, +0.0740] (inconclusive)`: a difference, its 95 % interval and the verdict."""
    lo, hi = c["ci"]
    return f"{c['diff']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] ({c['verdict']})"


def contributions(per_example: Sequence[Sequence[float]]) -> np.ndarray:
    """Each example's share of a token-weighted mean loss, from its (summed loss, tokens): values whose
    plain mean is the pooled loss, so that two configurations' losses on the same examples are compared
    example by example (the token counts are the same for both)."""
    sums, counts = np.asarray(per_example, dtype=float).reshape(-1, 2).T
    return sums * len(sums) / max(counts.sum(), 1.0)


def rank_correlation(predicted: Sequence[float], actual: Sequence[float]) -> dict[str, float]:
    """Spearman's rho and Kendall's tau of predictions against the true scores (NaN below 3 points)."""
    if len(actual) < 3 or np.ptp(actual) == 0 or np.ptp(predicted) == 0:
        return {"spearman": float("nan"), "kendall": float("nan"), "n": len(actual)}
    return {"spearman": float(st.spearmanr(predicted, actual).statistic),
            "kendall": float(st.kendalltau(predicted, actual).statistic), "n": len(actual)}

"""Means with standard errors, and paired differences between configurations scored under the same seeds.

A seed fixes the data order and the adapters' initialisation, so two configurations trained under the
same seeds are compared seed by seed: the difference's spread over seeds is what decides, not the
spread of each score. A difference smaller than its standard error is a tie, never a win.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    m = float(np.mean(values))
    return m, float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def verdict(diff: float, se: float, lower_is_better: bool = True) -> str:
    """'better' / 'worse' when the difference exceeds two standard errors, 'tie' within one, else
    'inconclusive' (one or two standard errors: a hint, not a result)."""
    if se == 0 and diff == 0:
        return "tie"
    z = abs(diff) / se if se > 0 else math.inf
    if z < 1:
        return "tie"
    if z < 2:
        return "inconclusive"
    return "better" if (diff < 0) == lower_is_better else "worse"


def paired(a: Mapping[int, float], b: Mapping[int, float], lower_is_better: bool = True) -> dict[str, Any]:
    """`a - b` seed by seed over the seeds both have: mean, standard error, the seeds, and a verdict."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("no seed in common: the configurations were not scored under the same seeds")
    diffs = [a[s] - b[s] for s in seeds]
    m, se = mean_se(diffs)
    return {"diff": m, "se": se, "seeds": seeds, "per_seed": diffs, "verdict": verdict(m, se, lower_is_better)
            if len(seeds) > 1 else "single seed"}

"""The performance model that screens offspring before any of them is fine-tuned.

Bayesian ridge regression (scikit-learn) on all evaluations so far predicts the score of a
configuration at a fidelity. Features: the configuration (one-hot ladder rung of every unit's bits
and rank), its memory cost relative to the budget, importance-weighted coverage of bits and of
ranks (how much of the prior mass sits on high rungs), log fidelity, and the configuration's best
score at a lower fidelity when it has one (0 plus an indicator otherwise). A linear model in these
features matches the near-additive effect of per-unit choices and stays well-behaved on the few,
noisy evaluations a search has; on a synthetic benchmark it screened better than a random forest
(bench/search_synthetic.py). In these features the fidelity only shifts every prediction alike, so the
ranking is the same at every fidelity; `search.surrogate_model=fidelity` adds the configuration's
features times the fidelity, so that a prediction at the top rung can rank otherwise than one at the
lowest (learning curves cross).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import kendalltau, spearmanr

from autoqra.memory import Budget
from autoqra.space import Config, Space

MIN_FIT = 6  # evaluations needed before the surrogate is trusted to screen


def features(space: Space, budget: Budget, i_q: np.ndarray, i_r: np.ndarray, configs: Sequence[Config],
             fidelities: Sequence[int], lower: Sequence[float | None], one_hot: bool = False,
             top: int | None = None) -> np.ndarray:
    """(N, 2U + 5) feature matrix (one-hot genes instead of ordinal ones with `one_hot`); with `top` (the
    top fidelity), the genes, memory and coverage again times φ = log f / log top, so that how much a gene
    matters may change with the fidelity (learning curves that cross)."""
    n, nb, nr = len(space), len(space.bits), len(space.ranks)
    rows = []
    for config, fidelity, low in zip(configs, fidelities, lower):
        x = space.encode(config)
        xb = x[:n] / max(nb - 1, 1)
        xr = x[n:] / max(nr - 1, 1)
        cover_q = float((i_q * xb).sum() / max(i_q.sum(), 1e-12))
        cover_r = float((i_r * xr).sum() / max(i_r.sum(), 1e-12))
        genes = np.concatenate([np.eye(nb)[x[:n]].ravel(), np.eye(nr)[x[n:]].ravel()]) if one_hot \
            else np.concatenate([xb, xr])
        shared = np.concatenate([genes, [budget.cost(config) / budget.limit, cover_q, cover_r]])
        if top is not None:
            phi = np.log(fidelity) / np.log(top) if top > 1 else 1.0
            shared = np.concatenate([shared, shared * phi])
        rows.append(np.concatenate([shared, [np.log(fidelity), np.nan if low is None else low]]))
    return np.array(rows)


class Surrogate:
    """Fit on (configuration, fidelity, lower-fidelity score) -> score; predict for new ones."""

    def __init__(self, space: Space, budget: Budget, i_q: np.ndarray, i_r: np.ndarray, top: int | None = None):
        """With `top` (the top fidelity), the prediction's dependence on the configuration changes with the
        fidelity asked about (`features`); without, the fidelity only shifts every prediction alike."""
        self.space, self.budget, self.i_q, self.i_r, self.top = space, budget, i_q, i_r, top
        self.model = None

    def _x(self, configs: Sequence[Config], fidelities: Sequence[int], lower: Sequence[float | None]) -> np.ndarray:
        x = features(self.space, self.budget, self.i_q, self.i_r, configs, fidelities, lower, one_hot=True,
                     top=self.top)
        has = ~np.isnan(x[:, -1])
        return np.concatenate([x[:, :-1], np.where(has, x[:, -1], 0.0)[:, None], has[:, None]], axis=1)

    def fit(self, configs: Sequence[Config], fidelities: Sequence[int], lower: Sequence[float | None],
            scores: Sequence[float]) -> Surrogate:
        from sklearn.linear_model import BayesianRidge

        if len(scores) < MIN_FIT:
            self.model = None
            return self
        self.model = BayesianRidge().fit(self._x(configs, fidelities, lower), np.asarray(scores, dtype=float))
        return self

    @property
    def ready(self) -> bool:
        return self.model is not None

    def predict(self, configs: Sequence[Config], fidelities: Sequence[int],
                lower: Sequence[float | None] | None = None) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("surrogate not fitted (fewer than MIN_FIT evaluations)")
        lower = [None] * len(configs) if lower is None else lower
        return self.model.predict(self._x(configs, fidelities, lower))


def rank_correlation(predicted: Sequence[float], actual: Sequence[float]) -> dict[str, float]:
    """Spearman's rho and Kendall's tau of predictions against the true scores (NaN below 3 points)."""
    if len(actual) < 3 or np.ptp(actual) == 0 or np.ptp(predicted) == 0:
        return {"spearman": float("nan"), "kendall": float("nan"), "n": len(actual)}
    return {"spearman": float(spearmanr(predicted, actual).statistic),
            "kendall": float(kendalltau(predicted, actual).statistic), "n": len(actual)}

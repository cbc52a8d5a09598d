"""One performance model of the score: additive per unit, Bayesian, with the priors as its prior means.

Notation: configuration c gives unit u the bit level b_u and the rank level r_u; f is the fidelity (steps)
and s the training seed of a result y (lower is better). The model is

    y = μ_f + δ_s + a_q · Σ_u Q[u, b_u] + a_r · Σ_u R[u, r_u] + Σ_u β[u, b_u] + Σ_u γ[u, r_u] + ε,

- Q, R: the priors' price tables (`Prices.q`, `Prices.r`: the loss a unit's bit level and rank level are
  predicted to add; zero at the top of each ladder);
- a_q, a_r: the priors' scale on this score (prior mean 1, standard deviation `SCALE_SD`, wide: the
  rank prices come from gradients, not losses, and their scale is a guess): what the search learns first;
- β[u, ·], γ[u, ·]: each unit's departure from its prior (zero at the top level, prior mean 0, scale τ):
  what the search learns where the priors are wrong for one unit;
- μ_f: one intercept per fidelity (a short run scores worse); δ_s: one effect per seed (scores under a
  shared seed are paired), prior mean 0; ε: noise of scale σ.

Everything is Gaussian, so the posterior is exact (Bayesian linear regression); τ and σ are those of the
highest evidence (marginal likelihood) on a grid. The model prices every (unit, bits, rank): `values()`
(posterior mean) and `draw(rng)` (a Thompson sample), what `knapsack.solve` minimises.

The search's answer is `guarded_pick`: the zero-cost allocation (greedy, the optimum of the priors' prices)
unless the model's joint posterior gives a configuration scored at the top fidelity a probability of at
least `PICK_CONFIDENCE` of scoring lower. The lowest posterior mean alone is an argmin over noisy
predictions of configurations within the noise of each other: it selects the one whose prediction errs
lowest (the winner's curse), and on the embedded model it lost to greedy on fresh seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm, spearmanr

from autoqra.search.prices import Prices
from autoqra.space import Config, Space

GRID = (0.01, 0.03, 0.1, 0.3, 1.0)  # τ and σ, as fractions of the scores' standard deviation
SCALE_SD = 3.0  # prior standard deviation of a_q and a_r (prior mean 1)
PICK_CONFIDENCE = 0.95  # the probability of beating the reference a pick needs (`guarded_pick`; search.pick_confidence)


@dataclass(frozen=True)
class Observation:
    config: Config
    fidelity: int
    seed: int
    score: float


class PerformanceModel:
    """Fit on observations, then price configurations; refit by building a new one (it is cheap)."""

    def __init__(self, space: Space, prices: Prices, observations: Sequence[Observation] = (),
                 like: PerformanceModel | None = None):
        """`like`: a fitted model whose τ, σ, score scale, fidelities and seeds to keep instead of choosing
        them from these observations (leave-one-out refits)."""
        self.space, self.prices = space, prices
        self.q, self.r = prices.q, prices.r   # (U, nb), (U, nr)
        self.n_units, self.nb, self.nr = len(space), len(space.bits), len(space.ranks)
        if self.q.shape != (self.n_units, self.nb) or self.r.shape != (self.n_units, self.nr):
            raise ValueError(f"prices of shapes {self.q.shape}, {self.r.shape}: the space needs "
                             f"({self.n_units}, {self.nb}), ({self.n_units}, {self.nr})")
        self.obs = sorted(observations, key=lambda o: (o.config.key, o.fidelity, o.seed))
        self.fidelities = like.fidelities if like else tuple(sorted({o.fidelity for o in self.obs}))
        self.seeds = like.seeds if like else tuple(sorted({o.seed for o in self.obs}))
        y = np.array([o.score for o in self.obs], dtype=float)
        self.sd = float(y.std()) if len(y) > 1 and y.std() > 0 else 1.0
        self.sd = like.sd if like else self.sd
        self.centre = float(y.mean()) if len(y) else 0.0
        self.scale = like.scale if like else None
        if len(y):
            x = self._design(self.obs)
            options = [self.scale] if self.scale else [(t, s) for t in GRID for s in GRID]
            fits = [self._posterior(x, y, t * self.sd, s * self.sd) for t, s in options]
            best = int(np.argmax([f[2] for f in fits]))
            self.mean, self.cov, self.evidence = fits[best]
            self.scale = options[best]
        else:
            self.mean, self.cov = self._prior_moments(0.1 * self.sd)
            self.evidence = float("nan")

    # ------------------------------------------------------------------ parameters
    @property
    def width(self) -> int:
        return len(self.fidelities) + len(self.seeds) + 2 + self.n_units * (self.nb - 1 + self.nr - 1)

    def _prior_moments(self, tau: float) -> tuple[np.ndarray, np.ndarray]:
        nf, ns = len(self.fidelities), len(self.seeds)
        mean = np.concatenate([np.full(nf, self.centre), np.zeros(ns), [1.0, 1.0], np.zeros(self.width - nf - ns - 2)])
        var = np.concatenate([np.full(nf, (10 * self.sd) ** 2), np.full(ns, (0.5 * self.sd) ** 2), [SCALE_SD**2] * 2,
                              np.full(self.width - nf - ns - 2, tau**2)])
        return mean, np.diag(var)

    def _design(self, obs: Sequence[Observation]) -> np.ndarray:
        n, nf, ns = self.n_units, len(self.fidelities), len(self.seeds)
        units = np.arange(n)
        rows = np.zeros((len(obs), self.width))
        for i, o in enumerate(obs):
            x = self.space.encode(o.config)
            b, r = x[:n], x[n:]
            if o.fidelity in self.fidelities:
                rows[i, self.fidelities.index(o.fidelity)] = 1.0
            if o.seed in self.seeds:
                rows[i, nf + self.seeds.index(o.seed)] = 1.0
            rows[i, nf + ns] = self.q[units, b].sum()
            rows[i, nf + ns + 1] = self.r[units, r].sum()
            rows[i, self._beta(units[b < self.nb - 1], b[b < self.nb - 1])] = 1.0
            rows[i, self._gamma(units[r < self.nr - 1], r[r < self.nr - 1])] = 1.0
        return rows

    def _beta(self, u: np.ndarray, b: np.ndarray) -> np.ndarray:
        return len(self.fidelities) + len(self.seeds) + 2 + u * (self.nb - 1) + b

    def _gamma(self, u: np.ndarray, r: np.ndarray) -> np.ndarray:
        return len(self.fidelities) + len(self.seeds) + 2 + self.n_units * (self.nb - 1) + u * (self.nr - 1) + r

    def _posterior(self, x: np.ndarray, y: np.ndarray, tau: float, sigma: float) -> tuple[np.ndarray, np.ndarray,
                                                                                              float]:
        m0, s0 = self._prior_moments(tau)
        k = x @ s0 @ x.T + sigma**2 * np.eye(len(y))       # (N, N): the scores' prior covariance
        chol = np.linalg.cholesky(k)
        resid = y - x @ m0
        alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, resid))
        evidence = -0.5 * resid @ alpha - np.log(np.diag(chol)).sum() - 0.5 * len(y) * np.log(2 * np.pi)
        gain = s0 @ x.T @ np.linalg.solve(chol.T, np.linalg.solve(chol, np.eye(len(y))))   # (P, N)
        return m0 + gain @ resid, s0 - gain @ x @ s0, float(evidence)

    # ------------------------------------------------------------------ prices and predictions
    def _table(self, w: np.ndarray) -> np.ndarray:
        """(U, nb, nr) predicted score added by each unit's choice, for parameters `w`."""
        n, nf, ns = self.n_units, len(self.fidelities), len(self.seeds)
        a_q, a_r = w[nf + ns], w[nf + ns + 1]
        beta = np.zeros((n, self.nb))
        gamma = np.zeros((n, self.nr))
        beta[:, :-1] = w[self._beta(np.repeat(np.arange(n), self.nb - 1), np.tile(np.arange(self.nb - 1), n))
                         ].reshape(n, self.nb - 1)
        gamma[:, :-1] = w[self._gamma(np.repeat(np.arange(n), self.nr - 1), np.tile(np.arange(self.nr - 1), n))
                          ].reshape(n, self.nr - 1)
        return (a_q * self.q + beta)[:, :, None] + (a_r * self.r + gamma)[:, None, :]

    def values(self) -> np.ndarray:
        """The posterior mean price of every (unit, bits, rank), (U, nb, nr)."""
        return self._table(self.mean)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """A Thompson sample of the prices, (U, nb, nr)."""
        w = rng.multivariate_normal(self.mean, self.cov, method="cholesky")
        return self._table(w)

    def predict(self, configs: Sequence[Config], fidelity: int) -> np.ndarray:
        """Posterior mean score of each configuration at `fidelity` (averaged over seeds)."""
        x = self._design([Observation(c, fidelity, -1, 0.0) for c in configs])
        if fidelity not in self.fidelities:  # an unseen fidelity: the mean intercept
            x[:, : len(self.fidelities)] = 1.0 / max(len(self.fidelities), 1)
        return x @ self.mean

    def difference(self, configs: Sequence[Config], reference: Config, fidelity: int) -> tuple[np.ndarray,
                                                                                               np.ndarray]:
        """Posterior mean and standard deviation of each configuration's score minus `reference`'s at
        `fidelity`, from the joint posterior (the parameters the two share cancel: not two marginal means)."""
        x = self._design([Observation(c, fidelity, -1, 0.0) for c in [*configs, reference]])
        d = x[:-1] - x[-1]
        return d @ self.mean, np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.cov, d), 0.0))

    def leave_one_out(self, fidelity: int) -> dict[str, float | int | None]:
        """Leave-one-configuration-out at `fidelity`: each configuration's mean over its seeds against the
        model fitted without it (the full fit's τ and σ), as a Spearman rank correlation."""
        keys = sorted({o.config.key for o in self.obs if o.fidelity == fidelity})
        if len(keys) < 3:
            return {"fidelity": fidelity, "configurations": len(keys), "spearman": None}
        observed, predicted = [], []
        for key in keys:
            mine = [o for o in self.obs if o.config.key == key and o.fidelity == fidelity]
            others = [o for o in self.obs if not (o.config.key == key and o.fidelity == fidelity)]
            fit = PerformanceModel(self.space, self.prices, others, like=self)
            observed.append(np.mean([o.score for o in mine]))
            predicted.append(float(fit.predict([mine[0].config], fidelity)[0]))
        rho = spearmanr(observed, predicted).statistic
        return {"fidelity": fidelity, "configurations": len(keys), "spearman": None if np.isnan(rho) else float(rho)}



def guarded_pick(model: PerformanceModel, configs: Sequence[Config], fidelity: int, reference: Config | None,
                 confidence: float = PICK_CONFIDENCE) -> tuple[Config, dict[str, Any]]:
    """The answer among `configs` (each scored at `fidelity`): `reference` (the zero-cost allocation) unless
    some configuration beats it with posterior probability ≥ `confidence` (then the lowest posterior mean of
    those that do). Without a reference, or with one that was never scored at `fidelity` (stage 1 did not
    promote it), the lowest posterior mean: there is nothing measured to keep. Also what the decision read:
    the pick and the challenger (the lowest posterior mean), each one's difference to the reference, its
    standard deviation and the probability that it is lower (None where there is no scored reference)."""
    if not configs:
        raise ValueError("guarded_pick: no configuration to pick from")
    configs = sorted({c.key: c for c in configs}.values(), key=lambda c: c.key)
    mean = model.predict(configs, fidelity)
    challenger = configs[int(np.argmin(mean))]
    scored = reference is not None and reference.key in {c.key for c in configs}
    if scored:
        diff, sd = model.difference(configs, reference, fidelity)
        with np.errstate(divide="ignore", invalid="ignore"):
            p = np.where(sd > 0, norm.cdf(-diff / np.where(sd > 0, sd, 1.0)), (diff < 0).astype(float))
        beating = [i for i in np.argsort(mean, kind="stable")
                   if p[i] >= confidence and configs[i].key != reference.key]
        pick = configs[beating[0]] if beating else reference
    else:
        beating, pick = [], challenger

    def versus(c: Config) -> dict[str, Any]:
        if not scored:
            return {"key": c.key, "difference": None, "difference_sd": None, "p_better": None}
        i = configs.index(c)
        return {"key": c.key, "difference": float(diff[i]), "difference_sd": float(sd[i]), "p_better": float(p[i])}

    return pick, {"confidence": confidence, "reference": None if reference is None else reference.key,
                  "reference_scored": scored, "kept_reference": scored and pick.key == reference.key,
                  "beating": len(beating) if scored else None, "pick": versus(pick), "challenger": versus(challenger)}

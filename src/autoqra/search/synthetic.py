"""A synthetic multi-fidelity objective with interacting units and a known constrained optimum.

For tests and benchmarks of the search apart from fine-tuning. Lower is better. The true value of a
configuration sums, per unit, a quantization penalty s_u·4^-(b-2) that a larger rank partly offsets
(LoRA compensates quantization error), a capacity penalty h_u·(1 - log(1+r)/log(1+r_max)), and a
penalty t_u when two neighbouring units are both at the lowest bit-width (interaction). A fidelity-f
observation adds a bias 1/√f and noise of scale σ/√f, fixed by (configuration, fidelity, seed); with
`shared` > 0 part of it is common to all configurations under the same training seed; with `crossing`
> 0 the bias grows with the ranks (large ranks start slower), so a low rung ranks otherwise than the top.
"""

from __future__ import annotations

import itertools

import numpy as np

from autoqra.memory import Budget
from autoqra.search.prices import Prices
from autoqra.space import UNQUANTIZED, Config, Space
from autoqra.store import fingerprint


class SyntheticObjective:
    def __init__(self, space: Space, seed: int, sigma: float = 0.3, shared: float = 0.0, crossing: float = 0.0):
        rng = np.random.default_rng(seed)
        n = len(space)
        self.space, self.seed, self.sigma, self.shared, self.crossing = space, seed, sigma, shared, crossing
        self.s = rng.uniform(0.2, 2.0, n)   # quantization sensitivity
        self.h = rng.uniform(0.1, 1.0, n)   # capacity need
        self.t = rng.uniform(0.0, 1.0, n)   # interaction with the next unit
        self.steps = 0

    def true_value(self, config: Config) -> float:
        return float(self.values(self.space.encode(config)[None, :])[0])

    def values(self, x: np.ndarray) -> np.ndarray:
        """True values of a batch of ordinal encodings (B, 2U)."""
        n = len(self.space)
        bits = np.array(self.space.bits)[x[:, :n]]
        ranks = np.array(self.space.ranks)[x[:, n:]]
        rq = np.log1p(ranks) / np.log1p(max(self.space.ranks))
        noise = 4.0 ** -(np.minimum(bits, UNQUANTIZED) - 2.0)
        quant = np.where(bits >= UNQUANTIZED, 0.0, noise) * self.s * (1 - 0.3 * rq)
        low = bits == min(self.space.bits)
        inter = (low[:, :-1] & low[:, 1:]) * self.t[:-1]
        return quant.sum(1) + (self.h * (1 - rq)).sum(1) + inter.sum(1)

    def __call__(self, config: Config, fidelity: int, seed: int = 0) -> float:
        """A noisy observation; a fraction `shared` of the noise (as a correlation) is common to every
        configuration under one training seed, as data order is, so paired differences are less noisy."""
        self.steps += fidelity
        own = np.random.default_rng(int(fingerprint.of_data([config.key, fidelity, self.seed, seed])[:12], 16))
        shared = np.random.default_rng(int(fingerprint.of_data([fidelity, self.seed, seed])[:12], 16))
        z = self.shared * shared.normal() + np.sqrt(1 - self.shared**2) * own.normal()
        return self.true_value(config) + self.bias(config) / np.sqrt(fidelity) + self.sigma / np.sqrt(fidelity) * z

    def bias(self, config: Config) -> float:
        """How far above its true value a configuration starts: 1, plus `crossing` times its mean rank (on a
        log scale, 0 to 1): with `crossing` > 0 larger ranks learn more slowly, so learning curves cross."""
        rq = np.log1p(np.array(config.ranks, float)) / np.log1p(max(self.space.ranks))
        return 1.0 + self.crossing * float(rq.mean()) * len(self.space)

    def priors(self, noise: float = 0.3) -> Prices:
        """Noisy importance priors (each unit's true sensitivity times a random factor within ±`noise`,
        over the largest), priced by `Prices.from_importance`'s law, as a profile stage would measure them."""
        rng = np.random.default_rng(self.seed + 1)
        i_q = self.s * rng.uniform(1 - noise, 1 + noise, len(self.s))
        i_r = self.h * rng.uniform(1 - noise, 1 + noise, len(self.h))
        return Prices.from_importance(self.space, i_q / i_q.max(), i_r / i_r.max())

    def optimum(self, budget: Budget) -> tuple[float, Config]:
        """Exhaustive constrained optimum (small spaces only)."""
        n, nb, nr = len(self.space), len(self.space.bits), len(self.space.ranks)
        if (nb * nr) ** n > 5e6:
            raise ValueError("space too large to enumerate")
        grid = np.array(list(itertools.product(range(nb * nr), repeat=n)))
        x = np.concatenate([grid // nr, grid % nr], axis=1)
        cost = budget.constant + budget.table[np.arange(n), x[:, :n], x[:, n:]].sum(1)
        vals = np.where(budget.fits(cost), self.values(x), np.inf)
        i = int(np.argmin(vals))
        return float(vals[i]), self.space.decode(x[i])

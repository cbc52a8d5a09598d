"""The alternative searches AutoQRA is measured against: random feasible search and Optuna's TPE.

Both are plans like `Evolution` and `Refinement` (a pure function of the history: `next(history,
slot)` returns a `Job`, `WAIT` or `DONE`), so they run through the same sampler, study storage,
record store and workers. Proposal i is evaluated at the top fidelity under the top rung's seeds
(paired with stage 1); its `generation` is i. Proposals stop when the next one would exceed
`max_steps` (every proposal costs `len(seeds) × fidelity` steps).

- `RandomSearch`: proposal i is a uniformly random configuration (drawn from a generator seeded by
  (seed, i)), repaired to the budget with flat importance, not a repeat of an earlier proposal.
- `TPESearch`: proposal i is asked of Optuna's `TPESampler` (multivariate, seeded by (seed, i)) on an
  in-memory study that holds proposals 0..i-1 with their mean score. The budget is a constraint
  (`constraints_func`: bytes over the limit): an infeasible ask is told as infeasible at no training
  cost and asked again (up to 50 times, then repaired), so TPE learns where the budget is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from autoqra.memory import Budget
from autoqra.search.history import DONE, Job, Result, proposal_in_flight, seed_scores
from autoqra.search.prices import Prices
from autoqra.search.repair import repair
from autoqra.space import Config, Space

METHODS = ("random", "tpe")


@dataclass(frozen=True)
class BaselineSettings:
    fidelity: int             # every proposal at this fidelity (stage 1's top)
    seeds: tuple[int, ...]    # under these training seeds (stage 1's top rung)
    max_steps: int            # training steps for the whole search
    seed: int = 0


class _Baseline:
    def __init__(self, space: Space, budget: Budget, settings: BaselineSettings):
        self.space, self.budget, self.settings = space, budget, settings
        self.fidelities = (settings.fidelity,)
        self.flat = Prices.flat(space)  # repair without priors
        self._memo: dict[int, Config | None] = {}

    @property
    def evaluations(self) -> int:
        s = self.settings
        return s.max_steps // (s.fidelity * len(s.seeds)) if s.max_steps else 0

    def propose(self, index: int, own: list[Result]) -> Config | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def next(self, history: list[Result], slot: int = 0) -> Job | str:
        s = self.settings
        own = list(history)
        index = proposal_in_flight(own, s.fidelity, s.seeds, self.evaluations, slot)
        if not isinstance(index, int):
            return index
        if index not in self._memo:
            self._memo[index] = self.propose(index, [r for r in own if r.generation < index])
        config = self._memo[index]
        if config is None:
            return DONE
        return Job(config, s.fidelity, index, 0, s.seeds[min(slot, len(s.seeds) - 1)])

    def means(self, own: list[Result]) -> list[tuple[Config, float | None]]:
        """Per earlier proposal, in order: its configuration and mean score (None: a seed failed)."""
        by_seed = seed_scores(own)
        out = []
        for i in sorted({r.generation for r in own}):
            config = next(r.config for r in own if r.generation == i)
            vals = list(by_seed.get((config.key, self.settings.fidelity), {}).values())
            out.append((config, None if not vals or None in vals else float(np.mean(vals))))
        return out


class RandomSearch(_Baseline):
    def propose(self, index: int, own: list[Result]) -> Config | None:
        seen = {r.config.key for r in own}
        rng = np.random.default_rng([self.settings.seed, index])
        for _ in range(1000):
            c = repair(self.space.random(rng), self.budget, self.flat)
            if c.key not in seen:
                return c
        return None


class TPESearch(_Baseline):
    def propose(self, index: int, own: list[Result]) -> Config | None:
        import optuna
        from optuna.distributions import CategoricalDistribution

        space, budget = self.space, self.budget
        dists = {**{f"b{u}": CategoricalDistribution(list(space.bits)) for u in range(len(space))},
                 **{f"r{u}": CategoricalDistribution(list(space.ranks)) for u in range(len(space))}}

        def config_of(params: dict) -> Config:
            return Config(space.units, tuple(params[f"b{u}"] for u in range(len(space))),
                          tuple(params[f"r{u}"] for u in range(len(space))))

        def params_of(c: Config) -> dict:
            return {**{f"b{u}": int(b) for u, b in enumerate(c.bits)},
                    **{f"r{u}": int(r) for u, r in enumerate(c.ranks)}}

        def excess(c: Config) -> float:
            return (budget.cost(c) - budget.limit) / budget.limit

        history = self.means(own)
        done = [(c, v) for c, v in history if v is not None]
        worst = max((v for _, v in done), default=0.0)
        seed = int(np.random.default_rng([self.settings.seed, index]).integers(2**31))
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10,
                                             constraints_func=lambda t: (t.user_attrs["excess"],))
        study = optuna.create_study(direction="minimize", sampler=sampler)
        for c, v in history:
            value = worst if v is None else v  # a failed proposal counts as the worst seen
            study.add_trial(optuna.trial.create_trial(params=params_of(c), distributions=dists, value=value,
                                                      user_attrs={"excess": excess(c)},
                                                      system_attrs={"constraints": (excess(c),)}))
        seen = {c.key for c, _ in history}
        for _ in range(50):
            trial = study.ask(dists)
            c = config_of(trial.params)
            x = excess(c)
            trial.set_user_attr("excess", x)
            if x <= 0 and c.key not in seen:
                return c
            study.tell(trial, worst)  # infeasible (or a repeat): told at no training cost
        c = repair(c, budget, self.flat)
        return None if c.key in seen else c


def baseline_plan(method: str, space: Space, budget: Budget, settings: BaselineSettings) -> _Baseline:
    if method == "random":
        return RandomSearch(space, budget, settings)
    if method == "tpe":
        return TPESearch(space, budget, settings)
    raise ValueError(f"search method {method!r}: must be one of {', '.join(METHODS)}")


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> float:
    """The first step count at which a best-so-far curve [(steps, value)] is at or below `target`."""
    return next((s for s, v in curve if v <= target), math.inf)

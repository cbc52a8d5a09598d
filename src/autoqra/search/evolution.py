"""Stage 1: multi-fidelity evolutionary search, as a pure function of the evaluation history.

Generation 0 is the warm start: the prior-derived configuration first, greedy (the exact optimum of
the priors' prices), every uniform configuration that fits, jittered copies of the prior and random
feasible ones. Every later generation breeds `candidates` children from the best configurations so
far (tournament selection, uniform crossover, importance-guided mutation, repair and fill); the exact
optima of Thompson draws from the performance model (a share `thompson` of the `offspring`) and the
children it predicts best are fine-tuned.

Within each generation, successive halving: all members are evaluated at the lowest fidelity; the
best ⌈n/eta⌉ of each rung are promoted to the next. A configuration is judged by its evidence at
the highest fidelity it reached (a configuration that reached a higher rung beats one that did not).

`Evolution.next(history)` returns the next evaluation to run, `WAIT` (the rest of the current rung
is still running elsewhere) or `DONE`. It keeps no state of its own: a killed search resumes from
its history, and several workers can share one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoqra.memory import Budget
from autoqra.params.rules import search_seeds
from autoqra.search import operators as ops
from autoqra.search import promotion
from autoqra.search.history import DONE, WAIT, Job, Result, ranking, seed_means, seed_scores, unique
from autoqra.search.knapsack import solve
from autoqra.search.performance import PICK_CONFIDENCE, Observation, PerformanceModel, guarded_pick
from autoqra.search.prices import Prices
from autoqra.search.repair import fill, repair
from autoqra.space import Config, Space


@dataclass(frozen=True)
class EvolveSettings:
    """Stage 1's settings; the study's name hashes all of them (`Setup.identity`)."""

    population: int
    offspring: int
    candidates: int
    generations: int
    fidelities: tuple[int, ...]
    eta: int
    max_steps: int
    seed: int
    seeds_per_rung: tuple[int, ...] = ()  # training seeds per rung (default: one)
    priors: bool = True     # ablation off: generation 0 random feasible, mutation and repair without priors
    surrogate: bool = True  # ablation off: the offspring are drawn at random among the candidates
    method: str = "evolution"  # or an alternative search of `autoqra.search.baselines` ("random", "tpe")
    promotion: str = "raw"  # or "model": the predicted top-rung score
    warm_start: str = "uniforms"  # or "boundary": also repaired just-over uniforms
    thompson: float = 0.5  # share of the offspring (rounded up) that are optima of Thompson draws from the model

    def seeds(self, rung: int) -> tuple[int, ...]:
        """The training seeds of a rung: the same for every configuration, so scores are paired."""
        return tuple(search_seeds(self.seed, [self.seeds_per_rung[rung] if self.seeds_per_rung else 1]))


class Evolution:
    def __init__(self, space: Space, budget: Budget, prices: Prices, settings: EvolveSettings,
                 confidence: float = PICK_CONFIDENCE):
        """`prices`: the priors' tables (`Prices`), what greedy, repair, mutation and the model start from;
        `confidence`: what the answer needs to be other than greedy (`pick`). It changes no evaluation, so it is
        not one of the `settings` the study's name hashes."""
        if len(prices) != len(space):
            raise ValueError(f"prices for {len(prices)} units: the space has {len(space)}")
        self.space, self.budget, self.settings, self.confidence = space, budget, settings, confidence
        self.fidelities = settings.fidelities
        # ablation off: every unit alike (uniform mutation, repair by bytes)
        self.prices = prices if settings.priors else Prices.flat(space)
        self._memo: dict[Any, Any] = {}

    # ------------------------------------------------------------------ generations
    def warm_start(self) -> list[Config]:
        """Generation 0 (the prior-derived configuration first)."""
        s = self.settings
        rng = np.random.default_rng([s.seed, 0])
        if not s.priors:
            pool = [repair(self.space.random(rng), self.budget, self.prices) for _ in range(50 * s.population)]
            return unique(pool)[: s.population]
        prior = ops.prior_config(self.space, self.budget, self.prices)
        pool = [prior, self.reference()]
        pool += ops.feasible_uniforms(self.space, self.budget)
        attempts = 0
        while len({c.key for c in pool}) < s.population and attempts < 50 * s.population:
            attempts += 1
            base = ops.jitter(prior, self.space, rng) if attempts % 2 else self.space.random(rng)
            pool.append(repair(base, self.budget, self.prices))
        members = unique(pool)[: s.population]
        if s.warm_start == "boundary":  # also (beyond the population) the region just inside the budget next
            # to the uniforms just over it, so no uniform or prior gives way to it
            members = unique(members + ops.boundary_repairs(self.space, self.budget, self.prices))
        return members

    def _history_key(self, history: list[Result]) -> tuple:
        return tuple(sorted((r.config.key, r.fidelity, r.seed, r.score) for r in history if r.done))

    def screening(self, generation: int, before: list[Result]) -> dict[str, Any]:
        """Children of `generation`, bred from the results of earlier generations (repaired and filled to
        the budget under the performance model's prices), and the model's view of them: `chosen` (to
        evaluate: the exact optima of Thompson draws from the model first, then the children of lowest
        predicted top-rung score) and the predictions at every fidelity."""
        memo_key = ("screen", generation, self._history_key(before))
        if memo_key in self._memo:
            return self._memo[memo_key]
        s = self.settings
        rng = np.random.default_rng([s.seed, generation])
        ranked = ranking(before)[: s.population]
        seen = {r.config.key for r in before}
        model = self.model(before) if s.surrogate else None
        prices = model.values() if model else self.prices.values()
        children: list[Config] = []
        for _ in range(20 * s.candidates):
            if len(children) >= s.candidates or not ranked:
                break
            scores = list(range(len(ranked)))  # rank order: lower is better
            a = ranked[ops.tournament(scores, rng)].config
            b = ranked[ops.tournament(scores, rng)].config
            child = ops.mutate(ops.crossover(a, b, rng), self.space, self.prices, rng,
                               units=int(rng.integers(1, 3)))
            child = fill(repair(child, self.budget, self.prices), self.budget, prices)
            if child.key not in seen:
                seen.add(child.key)
                children.append(child)
        if model is None:
            picks = rng.permutation(len(children))[: s.offspring]
            out = {"chosen": [children[i] for i in sorted(picks)], "candidates": len(children), "predicted": None,
                   "predicted_at": None}
            self._memo[memo_key] = out
            return out
        drawn = []
        for _ in range(4 * s.offspring if ranked else 0):  # Thompson: each draw's exact optimum, new ones only
            if len(drawn) >= math.ceil(round(s.offspring * s.thompson, 9)):
                break
            c = solve(model.draw(rng), self.budget)
            if c.key not in seen:
                seen.add(c.key)
                drawn.append(c)
        pool = drawn + children
        predicted_at = {f: dict(zip((c.key for c in pool), model.predict(pool, f))) for f in s.fidelities}
        order = np.argsort([predicted_at[s.fidelities[-1]][c.key] for c in children], kind="stable")
        chosen = drawn + [children[i] for i in order[: s.offspring - len(drawn)]]
        out = {"chosen": chosen, "candidates": len(pool), "predicted": predicted_at[s.fidelities[0]],
               "predicted_at": predicted_at, "thompson": len(drawn)}
        self._memo[memo_key] = out
        return out

    def model(self, history: list[Result]) -> PerformanceModel:
        """The performance model fitted on every finished result of `history` (one observation per seed)."""
        obs = [Observation(r.config, r.fidelity, r.seed, r.score) for r in history if r.done and r.score is not None]
        key = ("model", self._history_key(history))
        if key not in self._memo:
            self._memo[key] = PerformanceModel(self.space, self.prices, obs)
        return self._memo[key]

    def pick(self, history: list[Result]) -> Config | None:
        """The search's answer among the configurations scored at the top fidelity under every top-rung seed:
        greedy (the zero-cost allocation) unless the performance model gives one of them a posterior
        probability ≥ `confidence` of scoring lower (`guarded_pick`; not the raw minimum of a few seeds,
        nor the argmin of noisy predictions: both are the winner's curse)."""
        found = self.decision(history)
        return None if found is None else found[0]

    def decision(self, history: list[Result]) -> tuple[Config, dict[str, Any]] | None:
        """`pick` and what it read (`guarded_pick`'s report)."""
        top, seeds = self.fidelities[-1], self.settings.seeds(len(self.fidelities) - 1)
        scores = seed_scores(history)
        done = {k for (k, f), v in scores.items() if f == top and all(v.get(sd) is not None for sd in seeds)}
        configs = list({r.config.key: r.config for r in history if r.config.key in done}.values())
        if not configs:
            return None
        return guarded_pick(self.model(history), configs, top, self.reference(), self.confidence)

    def reference(self) -> Config | None:
        """What the search answers without evidence against it: greedy (None in the ablation without priors)."""
        if not self.settings.priors:
            return None
        if ("reference",) not in self._memo:
            self._memo[("reference",)] = ops.greedy_config(self.space, self.budget, self.prices)
        return self._memo[("reference",)]

    def members(self, generation: int, history: list[Result]) -> list[Config]:
        if generation == 0:
            key = ("warm",)
            if key not in self._memo:
                self._memo[key] = self.warm_start()
            return self._memo[key]
        before = [r for r in history if r.generation < generation]
        return self.screening(generation, before)["chosen"]

    # ------------------------------------------------------------------ scheduling
    def rungs(self, generation: int, history: list[Result]) -> list[list[Config]]:
        """The rungs of a generation determined so far (a rung is known once the one below is done:
        every member finished under every seed of that rung); promotion by the mean over seeds."""
        s = self.settings
        mine = [r for r in history if r.generation == generation]
        rungs = [self.members(generation, history)]
        for k in range(len(s.fidelities) - 1):
            # a finished result wins over a running duplicate of the same job (a concurrent worker's
            # trial about to be skipped): otherwise the rung would look unfinished, the generation
            # would look done at this rung, and the next one would be bred from part of the evidence
            at_k: dict[tuple[str, int], Result] = {}
            for r in mine:
                j = (r.config.key, r.seed)
                if r.rung == k and (j not in at_k or (r.done and not at_k[j].done)):
                    at_k[j] = r
            seeds = s.seeds(k)
            if any((c.key, sd) not in at_k or not at_k[(c.key, sd)].done for c in rungs[k] for sd in seeds):
                break
            means = seed_means(mine, generation, k, seeds, rungs[k])
            quota = math.ceil(len(rungs[k]) / s.eta)
            if s.promotion == "model":
                running = sorted({r.config.key for r in mine if r.rung == k + 1})
                keep = promotion.choose(rungs[k], means, self.predicted(generation, k, rungs[k], history), quota,
                                        running)
            else:
                keep = promotion.choose(rungs[k], means, None, quota)
            if not keep:
                break
            rungs.append(keep)
        return rungs

    def predicted(self, generation: int, rung: int, members: list[Config], history: list[Result]) -> dict | None:
        """The model's predicted top-rung score of each member of a finished rung (None: not ready)."""
        evidence = promotion.evidence_at(history, generation, rung)
        memo_key = ("promote", generation, rung, self._history_key(evidence))
        if memo_key not in self._memo:
            self._memo[memo_key] = promotion.predicted_top(
                self.space, evidence, members, self.fidelities[rung], self.fidelities[-1],
                seed=self.settings.seed * 1000 + 10 * generation + rung)
        return self._memo[memo_key]

    def generation_done(self, generation: int, history: list[Result]) -> bool:
        """Every member of the last rung there will be has finished under all its seeds (`rungs` adds
        the next rung as soon as one is due, so a finished last rung means there is no further one)."""
        rungs = self.rungs(generation, history)
        last = len(rungs) - 1
        done = {(r.config.key, r.seed) for r in history if r.generation == generation and r.rung == last and r.done}
        return all((c.key, sd) in done for c in rungs[-1] for sd in self.settings.seeds(last))

    def next(self, history: list[Result], slot: int = 0) -> Job | str:
        """The next evaluation to run (the `slot`-th free one, for workers asking at the same time)."""
        s = self.settings
        spent = spent_steps(history)
        for g in range(s.generations):
            rungs = self.rungs(g, history)
            if not rungs[0]:
                return DONE  # no new child could be bred: the space is exhausted
            taken = {(r.config.key, r.rung, r.seed) for r in history if r.generation == g}
            free = [Job(c, s.fidelities[k], g, k, sd) for k, rung in enumerate(rungs) for c in rung
                    for sd in s.seeds(k) if (c.key, k, sd) not in taken]
            if free:
                job = free[min(slot, len(free) - 1)]
                if s.max_steps and spent + cost(job, history) > s.max_steps:
                    return DONE
                return job
            if not self.generation_done(g, history):
                return WAIT
        return DONE


def cost(job: Job, history: list[Result]) -> int:
    """The training steps `job` costs: its fidelity less the highest lower fidelity the same configuration
    finished under the same seed (a rung continues that run: `FidelityRun`'s `lower`)."""
    below = [r.fidelity for r in history if r.done and r.score is not None and r.seed == job.seed
             and r.fidelity < job.fidelity and r.config.key == job.config.key]
    return job.fidelity - max(below, default=0)


def spent_steps(history: list[Result]) -> int:
    """What every entry of `history` cost (`cost`, summed) in one pass over it."""
    finished: dict[tuple[str, int], list[int]] = {}
    for r in history:
        if r.done and r.score is not None:
            finished.setdefault((r.config.key, r.seed), []).append(r.fidelity)
    return sum(r.fidelity - max((f for f in finished.get((r.config.key, r.seed), ()) if f < r.fidelity), default=0)
               for r in history)

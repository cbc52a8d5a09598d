"""Stage 1: multi-fidelity evolutionary search, as a pure function of the evaluation history.

Generation 0 is the warm start: the prior-derived configuration first, the greedy importance-per-
byte allocation, every uniform configuration that fits, jittered copies of the prior and random
feasible ones. Every later generation breeds `candidates` children from the best configurations so
far (tournament selection, uniform crossover, importance-guided mutation, repair), the surrogate
keeps the `offspring` most promising ones, and only those are fine-tuned.

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
from autoqra.search.repair import repair
from autoqra.search.surrogate import Surrogate, rank_correlation
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
    surrogate_model: str = "additive"  # or "fidelity": gene × fidelity terms

    def seeds(self, rung: int) -> tuple[int, ...]:
        """The training seeds of a rung: the same for every configuration, so scores are paired."""
        return tuple(search_seeds(self.seed, [self.seeds_per_rung[rung] if self.seeds_per_rung else 1]))


class Evolution:
    def __init__(self, space: Space, budget: Budget, i_q: np.ndarray, i_r: np.ndarray, settings: EvolveSettings):
        self.space, self.budget, self.settings = space, budget, settings
        self.fidelities = settings.fidelities
        self.i_q, self.i_r = np.asarray(i_q, float), np.asarray(i_r, float)
        if not settings.priors:  # flat importance: uniform mutation (up or down alike), repair by bytes
            self.i_q, self.i_r = np.full(len(space), 0.5), np.full(len(space), 0.5)
        self._memo: dict[Any, Any] = {}

    # ------------------------------------------------------------------ generations
    def warm_start(self) -> list[Config]:
        """Generation 0 (the prior-derived configuration first)."""
        s = self.settings
        rng = np.random.default_rng([s.seed, 0])
        if not s.priors:
            pool = [repair(self.space.random(rng), self.budget, self.i_q, self.i_r) for _ in range(50 * s.population)]
            return unique(pool)[: s.population]
        prior = ops.prior_config(self.space, self.budget, self.i_q, self.i_r)
        pool = [prior, ops.greedy_config(self.space, self.budget, self.i_q, self.i_r)]
        pool += ops.feasible_uniforms(self.space, self.budget)
        attempts = 0
        while len({c.key for c in pool}) < s.population and attempts < 50 * s.population:
            attempts += 1
            base = ops.jitter(prior, self.space, rng) if attempts % 2 else self.space.random(rng)
            pool.append(repair(base, self.budget, self.i_q, self.i_r))
        members = unique(pool)[: s.population]
        if s.warm_start == "boundary":  # also (beyond the population) the region just inside the budget next
            # to the uniforms just over it, so no uniform or prior gives way to it
            members = unique(members + ops.boundary_repairs(self.space, self.budget, self.i_q, self.i_r))
        return members

    def _history_key(self, history: list[Result]) -> tuple:
        return tuple(sorted((r.config.key, r.fidelity, r.seed, r.score) for r in history if r.done))

    def screening(self, generation: int, before: list[Result]) -> dict[str, Any]:
        """Children of `generation`, bred from the results of earlier generations, and the surrogate's
        view of them: `chosen` (to evaluate) and the predictions at the lowest fidelity."""
        memo_key = ("screen", generation, self._history_key(before))
        if memo_key in self._memo:
            return self._memo[memo_key]
        s = self.settings
        rng = np.random.default_rng([s.seed, generation])
        ranked = ranking(before)[: s.population]
        seen = {r.config.key for r in before}
        children: list[Config] = []
        for _ in range(20 * s.candidates):
            if len(children) >= s.candidates or not ranked:
                break
            scores = list(range(len(ranked)))  # rank order: lower is better
            a = ranked[ops.tournament(scores, rng)].config
            b = ranked[ops.tournament(scores, rng)].config
            child = ops.mutate(ops.crossover(a, b, rng), self.space, self.i_q, self.i_r, rng,
                               units=int(rng.integers(1, 3)))
            child = repair(child, self.budget, self.i_q, self.i_r)
            if child.key not in seen:
                seen.add(child.key)
                children.append(child)
        predicted = None
        if not s.surrogate:
            picks = rng.permutation(len(children))[: s.offspring]
            out = {"chosen": [children[i] for i in sorted(picks)], "candidates": len(children), "predicted": None,
                   "predicted_at": None}
            self._memo[memo_key] = out
            return out
        surrogate = self._surrogate(before)
        if surrogate.ready and children:
            top = surrogate.predict(children, [s.fidelities[-1]] * len(children))
            order = np.argsort(top, kind="stable")
            predicted_at = {f: dict(zip((c.key for c in children), surrogate.predict(children, [f] * len(children))))
                            for f in s.fidelities}
            predicted = predicted_at[s.fidelities[0]]
            chosen = [children[i] for i in order[: s.offspring]]
        else:
            chosen, predicted_at = children[: s.offspring], None
        out = {"chosen": chosen, "candidates": len(children), "predicted": predicted, "predicted_at": predicted_at}
        self._memo[memo_key] = out
        return out

    def _surrogate(self, history: list[Result]) -> Surrogate:
        # one observation per (configuration, fidelity): the mean over its seeds; sorted, so the fit
        # does not depend on the order in which workers happened to finish
        means = {k: float(np.mean(list(v.values()))) for k, v in seed_scores(history).items()
                 if all(x is not None for x in v.values())}
        configs = {r.config.key: r.config for r in history}
        obs = sorted(means)
        lower = []
        for key, fidelity in obs:
            below = [means[(k, f)] for k, f in obs if k == key and f < fidelity]
            lower.append(min(below) if below else None)
        model = Surrogate(self.space, self.budget, self.i_q, self.i_r,
                          top=self.fidelities[-1] if self.settings.surrogate_model == "fidelity" else None)
        return model.fit([configs[k] for k, _ in obs], [f for _, f in obs], lower, [means[o] for o in obs])

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
        spent = sum(r.fidelity for r in history)
        for g in range(s.generations):
            rungs = self.rungs(g, history)
            if not rungs[0]:
                return DONE  # no new child could be bred: the space is exhausted
            taken = {(r.config.key, r.rung, r.seed) for r in history if r.generation == g}
            free = [Job(c, s.fidelities[k], g, k, sd) for k, rung in enumerate(rungs) for c in rung
                    for sd in s.seeds(k) if (c.key, k, sd) not in taken]
            if free:
                job = free[min(slot, len(free) - 1)]
                if s.max_steps and spent + job.fidelity > s.max_steps:
                    return DONE
                return job
            if not self.generation_done(g, history):
                return WAIT
        return DONE

    # ------------------------------------------------------------------ reporting
    def surrogate_quality(self, history: list[Result]) -> list[dict[str, Any]]:
        """Per generation: rank correlation of the surrogate's screening predictions (made before
        the generation ran) with the true lowest-fidelity scores of the children it chose."""
        out = []
        last = max((r.generation for r in history), default=0)
        for g in range(1, last + 1):
            view = self.screening(g, [r for r in history if r.generation < g])
            if view["predicted"] is None:
                continue
            truth = {key: float(np.mean(list(v.values()))) for (key, f), v in
                     seed_scores([r for r in history if r.generation == g and r.rung == 0]).items()
                     if None not in v.values()}
            keys = [k for k in truth if k in view["predicted"]]
            corr = rank_correlation([view["predicted"][k] for k in keys], [truth[k] for k in keys])
            # and at every rung: the prediction at that rung's fidelity against the scores there
            by_rung = {}
            scores = seed_scores([r for r in history if r.generation == g])
            for f, pred in view["predicted_at"].items():
                at_f = {key: float(np.mean(list(v.values()))) for (key, ff), v in scores.items()
                        if ff == f and None not in v.values()}
                ks = [k for k in at_f if k in pred]
                by_rung[str(f)] = rank_correlation([pred[k] for k in ks], [at_f[k] for k in ks])
            out.append({"generation": g, "candidates": view["candidates"], **corr, "by_fidelity": by_rung})
        return out

    def promotions(self, history: list[Result]) -> dict[str, Any]:
        """Each promotion made so far, raw (the rung's mean) next to the model's (the predicted top-rung
        score), whichever the search used; `differs` counts the decisions where the model was ready and
        chose another set."""
        rows = []
        for g in range(max((r.generation for r in history), default=-1) + 1):
            rungs = self.rungs(g, history)
            for k, (low, high) in enumerate(zip(rungs, rungs[1:])):
                means = seed_means(history, g, k, self.settings.seeds(k), low)
                quota = math.ceil(len(low) / self.settings.eta)
                raw = promotion.choose(low, means, None, quota)
                predicted = self.predicted(g, k, low, history)
                model = promotion.choose(low, means, predicted, quota) if predicted else None
                rows.append({"generation": g, "rung": k, "members": len(low), "promoted": [c.key for c in high],
                             "raw": [c.key for c in raw], "model": None if model is None else [c.key for c in model],
                             "differs": model is not None and {c.key for c in model} != {c.key for c in raw}})
        ready = [r for r in rows if r["model"] is not None]
        return {"used": self.settings.promotion, "decisions": len(rows), "model_ready": len(ready),
                "differs": sum(r["differs"] for r in ready), "rows": rows}



"""Stage 2: trust-region Bayesian refinement around the best stage-1 configurations.

Every proposal is evaluated for real at the top fidelity under the top rung's seeds (paired with
stage 1). Proposal i is made from everything known when proposals 0..i-1 have finished:

1. a GP (`autoqra.search.gp`, kernel chosen by held-out rank correlation on the stage-1 evidence)
   is fitted to every observation, one per seed, with the fidelity as an input: the top rung holds a
   few configurations, the rungs below many more, and they inform the prediction at the top;
2. the region's centre is the configuration with the lowest posterior mean among the region's
   members (its starting centre and what was proposed inside it): observations are noisy;
3. candidates are drawn inside the region (`trust_region.sample`), repaired to the budget, kept only
   if still inside the region and not evaluated before;
4. the candidate with the best acquisition (qLogNEI, or a Thompson sample) is the proposal.

After each proposal the region is updated with TuRBO's rules (`trust_region.update`) on the mean of
its seeds; when it collapses it restarts around the next-best stage-1 configuration not yet used
as a centre. The whole state is replayed from the history, so a killed run resumes exactly and
several workers can share one study (the seeds of a proposal run in parallel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoqra.memory import Budget
from autoqra.search import gp
from autoqra.search import trust_region as tr
from autoqra.search.history import DONE, Job, Result, proposal_in_flight, seed_scores
from autoqra.search.performance import PICK_CONFIDENCE, Observation, PerformanceModel, guarded_pick
from autoqra.search.prices import Prices
from autoqra.search.repair import fill, repair
from autoqra.space import Config, Space


@dataclass(frozen=True)
class RefineSettings:
    evaluations: int              # proposals to evaluate (each under every seed)
    fidelity: int                 # the top fidelity
    seeds: tuple[int, ...]        # the top rung's training seeds
    seed: int = 0
    candidates: int = 256         # drawn inside the region per proposal
    kernel: str = "auto"          # auto | ordinal | categorical
    acquisition: str = "logei"    # logei | thompson
    length_init: int = 4
    length_min: int = 1
    length_max: int = 16
    success_tolerance: int = 2
    failure_tolerance: int = 3


@dataclass(frozen=True)
class Step:
    """What happened at one proposal: the region it came from and how it scored."""

    index: int
    config: Config
    centre: Config
    length: int
    restarts: int
    value: float | None = None     # mean over seeds (None: running, or failed)
    success: bool | None = None


class Refinement:
    def __init__(self, space: Space, budget: Budget, prices: Prices, prior: list[Result], settings: RefineSettings,
                 reference: Config | None = None, confidence: float = PICK_CONFIDENCE):
        """`prices`: the priors' tables (`Prices`), what the performance model starts from; `reference`: what
        the answer is unless the model gives another a posterior probability ≥ `confidence` of beating it
        (stage 1's, greedy; None: the lowest posterior mean). Neither changes a proposal."""
        self.space, self.budget, self.settings, self.prices = space, budget, settings, prices
        self.reference, self.confidence = reference, confidence
        self.fidelities = (settings.fidelity,)
        self.history1 = [r for r in prior if r.done and r.fidelity <= settings.fidelity]  # every rung: the GP's
        self.prior = [r for r in self.history1 if r.fidelity == settings.fidelity and r.seed in settings.seeds]
        self._memo: dict[Any, Any] = {}

    # ------------------------------------------------------------------ evidence
    def _means(self, results: list[Result]) -> dict[str, float | None]:
        """Mean over the full seed set per configuration (None: a seed failed); incomplete ones left out."""
        out = {}
        for (key, _), by_seed in seed_scores(results).items():
            if set(self.settings.seeds) <= set(by_seed):
                vals = [by_seed[s] for s in self.settings.seeds]
                out[key] = None if None in vals else float(np.mean(vals))
        return out

    def x(self, config: Config, fidelity: int | None = None) -> np.ndarray:
        """The GP's input: ladder indices, then φ = log f / log f_top (1 at the top fidelity)."""
        f = self.settings.fidelity if fidelity is None else fidelity
        phi = math.log(f) / math.log(self.settings.fidelity) if self.settings.fidelity > 1 else 1.0
        return np.append(self.space.encode(config).astype(float), phi)

    def _data(self, results: list[Result]) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
        ok = [r for r in results if r.done and r.score is not None]
        x = np.array([self.x(r.config, r.fidelity) for r in ok], dtype=float)
        top = np.array([r.fidelity == self.settings.fidelity for r in ok])
        return x, np.array([r.score for r in ok]), [r.config.key for r in ok], top

    @property
    def sizes(self) -> list[int]:
        return [len(self.space.bits)] * len(self.space) + [len(self.space.ranks)] * len(self.space) + [0]

    def kernel(self) -> tuple[str, dict[str, Any]]:
        """The GP kernel to use and each kernel's held-out rank correlation on the stage-1 evidence."""
        if "kernel" not in self._memo:
            x, y, groups, _ = self._data(self.history1)
            kinds = gp.KINDS if self.settings.kernel == "auto" else (self.settings.kernel,)  # the others: not needed
            quality = {k: gp.held_out_rank(x, y, groups, self.sizes, k, self.settings.seed) for k in kinds}
            if self.settings.kernel != "auto":
                choice = self.settings.kernel
            else:
                score = {k: (-1.0 if math.isnan(q["spearman"]) else q["spearman"]) for k, q in quality.items()}
                choice = max(gp.KINDS, key=lambda k: (score[k], -gp.KINDS.index(k)))
            self._memo["kernel"] = (choice, quality)
        return self._memo["kernel"]

    def _model(self, index: int, results: list[Result]) -> Any:
        key = ("model", index)
        if key not in self._memo:
            x, y, _, _ = self._data(results)
            self._memo[key] = gp.fit(x, y, self.sizes, self.kernel()[0], self.settings.seed + index)
        return self._memo[key]

    def starts(self) -> list[Config]:
        """Stage-1 configurations with full top-fidelity evidence, best (lowest observed mean) first:
        the centres of the first region and of every restart."""
        means = self._means(self.prior)
        configs = {r.config.key: r.config for r in self.prior}
        ok = sorted((m, k) for k, m in means.items() if m is not None)
        return [configs[k] for _, k in ok]

    # ------------------------------------------------------------------ replay
    def replay(self, own: list[Result]) -> tuple[list[Step], tr.TrustRegion, Config | None, set[str]]:
        """The steps so far, the region's state after them, its current centre and the centres used."""
        s = self.settings
        state = tr.TrustRegion(length=s.length_init, length_init=s.length_init, length_min=s.length_min,
                               length_max=s.length_max, success_tolerance=s.success_tolerance,
                               failure_tolerance=s.failure_tolerance)
        starts = self.starts()
        if not starts:
            return [], state, None, set()
        start, used, members = starts[0], {starts[0].key}, [starts[0]]
        means = self._means(self.prior)
        state = tr.TrustRegion(**{**state.__dict__, "best": means[start.key]})
        steps: list[Step] = []
        by_index: dict[int, list[Result]] = {}
        for r in own:
            by_index.setdefault(r.generation, []).append(r)
        for i in sorted(by_index):
            centre = self._centre(i, own, members)
            config = by_index[i][0].config
            done = {r.seed: r for r in by_index[i] if r.done}
            if set(s.seeds) - set(done):
                steps.append(Step(i, config, centre, state.length, state.restarts))
                break  # still running: nothing after it is known
            vals = [done[sd].score for sd in s.seeds]
            value = None if None in vals else float(np.mean(vals))
            before = state
            state = tr.update(state, math.inf if value is None else value)
            steps.append(Step(i, config, centre, before.length, before.restarts, value,
                              value is not None and value < before.best - before.tolerance * abs(before.best)))
            members.append(config)
            if state.restarts > before.restarts:
                fresh = [c for c in starts if c.key not in used]
                if not fresh:
                    return steps, state, None, used
                start = fresh[0]
                used.add(start.key)
                members = [start]
                state = tr.TrustRegion(**{**state.__dict__, "best": means[start.key]})
        return steps, state, self._centre(len(steps), own, members), used

    def _centre(self, index: int, own: list[Result], members: list[Config]) -> Config:
        """The region member with the lowest posterior mean, given everything before proposal `index`."""
        if len(members) == 1:
            return members[0]
        known = self.history1 + [r for r in own if r.generation < index]
        model = self._model(index, known)
        x = np.array([self.x(c) for c in members])
        return members[int(np.argmin(gp.posterior_mean(model, x)))]

    # ------------------------------------------------------------------ proposing
    def propose(self, index: int, own: list[Result], state: tr.TrustRegion, centre: Config) -> Config | None:
        key = ("propose", index, state.restarts, state.length, centre.key)
        if key in self._memo:
            return self._memo[key]
        s = self.settings
        seen = {r.config.key for r in self.history1 + own}  # nothing stage 1 evaluated, at any rung
        rng = np.random.default_rng([s.seed, index, state.restarts])
        cands, keys = [], set()
        prices = self.performance(self.history1 + [r for r in own if r.generation < index and r.done]).values()
        for c in tr.sample(self.space, centre, state.length, s.candidates, rng):
            c = fill(repair(c, self.budget, self.prices), self.budget, prices)
            if c.key in seen or c.key in keys or not tr.inside(centre, c, state.length):
                continue
            keys.add(c.key)
            cands.append(c)
        choice = None
        if cands:
            known = self.history1 + [r for r in own if r.generation < index]
            model = self._model(index, known)
            x, _, _, top = self._data(known)
            xc = np.array([self.x(c) for c in cands])
            choice = cands[gp.acquire(model, xc, np.unique(x[top], axis=0), s.acquisition, s.seed + index)]
        self._memo[key] = choice
        return choice

    def next(self, history: list[Result], slot: int = 0) -> Job | str:
        """The next evaluation: a free seed of the current proposal, WAIT while it runs, a new proposal
        once it has finished, DONE after `evaluations` proposals (or when no region has candidates)."""
        s = self.settings
        own = list(history)
        index = proposal_in_flight(own, s.fidelity, s.seeds, s.evaluations, slot)
        if not isinstance(index, int):
            return index
        steps, state, centre, used = self.replay(own)
        while centre is not None:
            config = self.propose(index, own, state, centre)
            if config is not None:
                return Job(config, s.fidelity, index, 0, s.seeds[min(slot, len(s.seeds) - 1)])
            # no candidate left in this region: restart around the next unused stage-1 configuration
            fresh = [c for c in self.starts() if c.key not in used]
            if not fresh:
                break
            state, centre = tr.restart(state), fresh[0]
            used.add(centre.key)
        return DONE

    # ------------------------------------------------------------------ results
    def performance(self, results: list[Result]) -> PerformanceModel:
        """The performance model on `results` (every finished one, any fidelity: one observation per seed)."""
        obs = [Observation(r.config, r.fidelity, r.seed, r.score) for r in results if r.done and r.score is not None]
        key = ("performance", tuple(sorted((o.config.key, o.fidelity, o.seed, o.score) for o in obs)))
        if key not in self._memo:
            self._memo[key] = PerformanceModel(self.space, self.prices, obs)
        return self._memo[key]

    def incumbent(self, history: list[Result]) -> tuple[Config, float, list[float], dict[str, Any]] | None:
        """The answer among the configurations scored at the top fidelity under every top seed (stage 1's
        and this stage's), with its observed mean, its per-seed scores and what the decision read: greedy
        unless the performance model (on every stage-1 and stage-2 result) gives one of them a posterior
        probability ≥ `confidence` of scoring lower (`guarded_pick`): not the raw minimum of a few seeds, nor
        the argmin of noisy predictions, which favour the luckiest (winner's curse)."""
        found = self.decision(history)
        if found is None:
            return None
        config, report = found
        results = self.prior + [r for r in history if r.done]
        by_seed = seed_scores(results)[(config.key, self.settings.fidelity)]
        return config, self._means(results)[config.key], [by_seed[s] for s in self.settings.seeds], report

    def decision(self, history: list[Result]) -> tuple[Config, dict[str, Any]] | None:
        """`incumbent`'s configuration and what it read (`guarded_pick`'s report)."""
        results = self.prior + [r for r in history if r.done]
        means = {k: m for k, m in self._means(results).items() if m is not None}
        if not means:
            return None
        configs = {r.config.key: r.config for r in results}
        model = self.performance(self.history1 + [r for r in history if r.done])
        return guarded_pick(model, [configs[k] for k in sorted(means)], self.settings.fidelity, self.reference,
                            self.confidence)

"""The vocabulary every search method shares: a job to run, a result in the history, the evidence about
a configuration, and the ranking by evidence.

A plan (stage 1's `Evolution`, stage 2's `Refinement`, the baselines) is a pure function of the history
(`list[Result]`): `next(history, slot)` returns a `Job`, `WAIT` (the rest of the current step runs
elsewhere) or `DONE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from autoqra.space import Config
from autoqra.stats import mean_se

WAIT, DONE = "wait", "done"


@dataclass(frozen=True)
class Job:
    """One evaluation to run: a configuration at a fidelity under a seed, and where it stands in the plan."""

    config: Config
    fidelity: int
    generation: int
    rung: int
    seed: int = 0


@dataclass(frozen=True)
class Result(Job):
    """A job in the history: finished (`done`, score None when the evaluation failed) or running."""

    score: float | None = None
    done: bool = True


class Evidence(NamedTuple):
    """What is known of a configuration at one fidelity: the mean over its seeds, their standard error."""

    fidelity: int
    score: float
    config: Config
    se: float
    seeds: tuple[int, ...]


def seed_scores(history: list[Result]) -> dict[tuple[str, int], dict[int, float | None]]:
    """Per (configuration key, fidelity): the finished score of every seed (None: failed). The same
    seed evaluated twice (two generations) counts once: the records are the same."""
    out: dict[tuple[str, int], dict[int, float | None]] = {}
    for r in history:
        if r.done:
            out.setdefault((r.config.key, r.fidelity), {})[r.seed] = r.score
    return out


def proposal_in_flight(own: list[Result], fidelity: int, seeds: tuple[int, ...], total: int,
                       slot: int = 0) -> Job | str | int:
    """For plans that evaluate one proposal at a time under every seed (its `generation` is its index):
    a free seed of the latest proposal, WAIT while its seeds run elsewhere, DONE after `total`
    proposals, else the index of the next proposal to make."""
    taken = {(r.generation, r.seed) for r in own}
    current = max((r.generation for r in own), default=-1)
    if current >= 0:
        config = next(r.config for r in own if r.generation == current)
        free = [Job(config, fidelity, current, 0, sd) for sd in seeds if (current, sd) not in taken]
        if free:
            return free[min(slot, len(free) - 1)]
        if any(not r.done for r in own if r.generation == current):
            return WAIT
    return current + 1 if current + 1 < total else DONE


def best_evidence(history: list[Result]) -> dict[str, Evidence]:
    """Per configuration key: the highest fidelity at which every finished seed succeeded, with the
    mean and standard error over those seeds."""
    configs = {r.config.key: r.config for r in history}
    out: dict[str, Evidence] = {}
    for (key, fidelity), by_seed in seed_scores(history).items():
        if any(v is None for v in by_seed.values()) or (key in out and out[key].fidelity >= fidelity):
            continue
        seeds = tuple(sorted(by_seed))
        m, se = mean_se([by_seed[s] for s in seeds])
        out[key] = Evidence(fidelity, m, configs[key], se, seeds)
    return out


def ranking(history: list[Result]) -> list[Evidence]:
    """Configurations best first: highest fidelity reached, then lowest mean score, then key (for ties)."""
    return sorted(best_evidence(history).values(), key=lambda e: (-e.fidelity, e.score, e.config.key))


def seed_means(history: list[Result], generation: int, rung: int, seeds: tuple[int, ...],
               members: list[Config]) -> dict[str, float]:
    """Each member's mean over the rung's seeds (members with a failed or missing seed left out)."""
    got = {(r.config.key, r.seed): r.score for r in history if r.generation == generation and r.rung == rung and r.done}
    out = {}
    for c in members:
        v = [got.get((c.key, sd)) for sd in seeds]
        if None not in v:
            out[c.key] = float(np.mean(v))
    return out



def unique(configs: list[Config]) -> list[Config]:
    """`configs` without repeats, in first-seen order."""
    seen, out = set(), []
    for c in configs:
        if c.key not in seen:
            seen.add(c.key)
            out.append(c)
    return out

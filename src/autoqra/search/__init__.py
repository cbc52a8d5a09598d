"""The two search stages and their operators: repair, warm start, evolution, surrogate, trust region.

Library entry point for stage 1 on any black-box objective::

    from autoqra.search import evolve
    study, evolution = evolve(objective, space, budget, i_q, i_r, settings)

`objective(config, fidelity, seed)` returns a score to minimise (or a dict with `score`, None on failure);
the seeds of a rung (`Settings.seeds_per_rung`) are the same for every configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from autoqra.memory import Budget
from autoqra.search.evolution import DONE, WAIT, Evolution, Job, Result, Settings, ranking
from autoqra.space import Config, Space

__all__ = ["DONE", "WAIT", "Evolution", "Job", "Result", "Settings", "evolve", "ranking"]


def evolve(objective: Callable[[Config, int, int], Any], space: Space, budget: Budget, i_q: np.ndarray, i_r: np.ndarray,
           settings: Settings, *, study_name: str = "autoqra-evolve", storage: str | None = None,
           journal: str | None = None,
           describe: Callable[[Config], dict[str, Any]] | None = None) -> tuple[Any, Evolution]:
    """Run (or resume) stage 1 to completion in this process; returns the Optuna study and the plan."""
    from autoqra.search.samplers import EvolutionSampler, drive, open_study

    evolution = Evolution(space, budget, i_q, i_r, settings)
    sampler = EvolutionSampler(evolution)
    study = open_study(study_name, storage, journal, sampler)
    drive(study, sampler, objective, describe=describe)
    return study, evolution

"""The two search stages and their parts: repair and fill, the exact budget solver, the performance model,
the warm start, evolution, trust region.

Library entry points on any black-box objective, stage 1 then stage 2::

    from autoqra.search import evolve, refine
    study, evolution = evolve(objective, space, budget, prices, settings)
    study2, refinement = refine(objective, space, budget, history(study, space), refine_settings, prices)

`prices` (`Prices`): the priors' tables (`Prices.from_importance(space, i_q, i_r)` from one importance
number per unit, `Prices.flat(space)` with none). `objective(config, fidelity, seed)` returns a score to
minimise (or a dict with `score`, None on failure);
the seeds of a rung (`EvolveSettings.seeds_per_rung`) are the same for every configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autoqra.memory import Budget
from autoqra.search.ablations import REFINE_OFF, ablated
from autoqra.search.evolution import Evolution, EvolveSettings
from autoqra.search.history import DONE, WAIT, Job, Result, ranking
from autoqra.search.performance import PICK_CONFIDENCE
from autoqra.search.prices import Prices
from autoqra.search.refinement import Refinement, RefineSettings
from autoqra.space import Config, Space

__all__ = ["DONE", "REFINE_OFF", "WAIT", "Evolution", "Job", "Prices", "RefineSettings", "Refinement", "Result",
           "EvolveSettings",
           "ablated", "evolve", "make_plan", "ranking", "refine"]


def make_plan(space: Space, budget: Budget, prices: Prices, settings: EvolveSettings,
              confidence: float = PICK_CONFIDENCE) -> Any:
    """Stage 1's plan: the evolution (its answer greedy unless the performance model gives another
    configuration a probability ≥ `confidence` of beating it), or (`settings.method`) random search or TPE
    at the top fidelity under the top rung's seeds with the same step budget."""
    if settings.method == "evolution":
        return Evolution(space, budget, prices, settings, confidence)
    from autoqra.search.baselines import BaselineSettings, baseline_plan

    top = len(settings.fidelities) - 1
    return baseline_plan(settings.method, space, budget,
                BaselineSettings(settings.fidelities[top], settings.seeds(top), settings.max_steps, settings.seed))


def evolve(objective: Callable[[Config, int, int], Any], space: Space, budget: Budget, prices: Prices,
           settings: EvolveSettings, *, confidence: float = PICK_CONFIDENCE, study_name: str = "autoqra-evolve",
           storage: str | None = None, journal: str | None = None,
           describe: Callable[[Config], dict[str, Any]] | None = None) -> tuple[Any, Evolution]:
    """Run (or resume) stage 1 to completion in this process; returns the Optuna study and the plan
    (`settings.method` "random" or "tpe": the alternative search in its place)."""
    from autoqra.search.optuna import PlanSampler, drive, open_study

    evolution = make_plan(space, budget, prices, settings, confidence)
    sampler = PlanSampler(evolution)
    study = open_study(study_name, storage, journal, sampler)
    drive(study, sampler, objective, describe=describe)
    return study, evolution


def refine(objective: Callable[[Config, int, int], Any], space: Space, budget: Budget, history: list[Result],
           settings: RefineSettings, prices: Prices | None = None, *, reference: Config | None = None,
           confidence: float = PICK_CONFIDENCE, study_name: str = "autoqra-refine", storage: str | None = None,
           journal: str | None = None,
           describe: Callable[[Config], dict[str, Any]] | None = None) -> tuple[Any, Refinement]:
    """Run (or resume) stage 2 from stage 1's `history` (its top-fidelity results are the prior);
    returns the Optuna study of the proposals and the plan (`plan.incumbent(...)` is the answer: `reference`,
    stage 1's greedy, unless the evidence says otherwise; without one, the lowest posterior mean)."""
    from autoqra.search.optuna import PlanSampler, drive, open_study

    refinement = Refinement(space, budget, Prices.flat(space) if prices is None else prices, history, settings,
                            reference, confidence)
    sampler = PlanSampler(refinement)
    study = open_study(study_name, storage, journal, sampler)
    drive(study, sampler, objective, describe=describe)
    return study, refinement

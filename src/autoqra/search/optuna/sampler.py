"""The Optuna adapter: trials of a study are the evaluations of the search.

Each trial's params are the configuration (`bits|<unit>`, `rank|<unit>`, categorical) and its
`fidelity`; its value is the score (minimised); its job (configuration, fidelity, generation, rung,
seed) is the system attribute `JOB`, written by the sampler in the same step as the trial is asked, so
a job counts as taken from that moment; user attributes carry memory, the record key and status.
`PlanSampler` proposes the next trial from the study's history alone, so a killed search resumes where
it stopped and several workers can share one study (journal file on one machine, an RDB URL on a
cluster). Only Optuna's public API is used (the storage's own methods), so an upgrade cannot break
resume.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from autoqra.search.history import Job, Result
from autoqra.search.optuna.liveness import orphan
from autoqra.space import Config, Space

FIDELITY = "fidelity"
ObjectiveFn = Callable[[Config, int, int], "float | dict[str, Any]"]  # (config, fidelity, seed)


def distributions(space: Space, fidelities: tuple[int, ...]) -> dict[str, BaseDistribution]:
    out: dict[str, BaseDistribution] = {}
    for unit in space.units:
        out[f"bits|{unit}"] = CategoricalDistribution(list(space.bits))
        out[f"rank|{unit}"] = CategoricalDistribution(list(space.ranks))
    out[FIDELITY] = CategoricalDistribution(list(fidelities))
    return out


def params_of(job: Job) -> dict[str, Any]:
    c = job.config
    out: dict[str, Any] = {f"bits|{u}": b for u, b in zip(c.units, c.bits)}
    out.update({f"rank|{u}": r for u, r in zip(c.units, c.ranks)})
    out[FIDELITY] = job.fidelity
    return out


JOB = "autoqra:job"   # the system attribute holding a trial's job
SKIP = "autoqra:skip"  # a trial that lost its job to a concurrent worker (told failed, never evaluated)


def job_attr(job: Job) -> dict[str, Any]:
    return {"units": job.config.to_dict()["units"], "fidelity": job.fidelity, "generation": job.generation,
            "rung": job.rung, "seed": job.seed}


def job_of(attr: dict[str, Any]) -> Job:
    return Job(Config.from_dict({"units": attr["units"]}), attr["fidelity"], attr["generation"], attr["rung"],
               attr.get("seed", 0))


def history(study: optuna.Study, space: Space, trials: list[FrozenTrial] | None = None) -> list[Result]:
    """Finished evaluations (completed, or failed *as an evaluation*) and running ones. A trial's job
    is the system attribute its sampler wrote in one step, so it counts as taken from that moment.
    A trial that failed because its worker died has no status and is dropped: its job is redone."""
    out = []
    for t in study.get_trials(deepcopy=False) if trials is None else trials:
        if JOB not in t.system_attrs or t.system_attrs.get(SKIP):
            continue
        job = job_of(t.system_attrs[JOB])
        if job.config.units != space.units:
            continue
        if t.state == TrialState.COMPLETE:
            out.append(Result(job.config, job.fidelity, job.generation, job.rung, job.seed, score=t.value))
        elif t.state == TrialState.FAIL and t.user_attrs.get("status") == "failed":
            out.append(Result(job.config, job.fidelity, job.generation, job.rung, job.seed))
        elif t.state == TrialState.RUNNING:
            out.append(Result(job.config, job.fidelity, job.generation, job.rung, job.seed, done=False))
    return out


class Plan(Protocol):
    """What a search stage is to the sampler: a space, its fidelities, and `next(history, slot)`, a
    pure function of the history returning a `Job`, `WAIT` or `DONE`."""

    space: Space
    fidelities: tuple[int, ...]

    def next(self, history: list[Result], slot: int = 0) -> Job | str: ...


class PlanSampler(BaseSampler):
    """Optuna sampler whose proposals come from a plan (`Evolution`, `Refinement`) on the study's history."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.pending: Job | None = None  # the job the driver saw; used if a concurrent ask took it
        self.space = distributions(plan.space, plan.fidelities)
        self.storage: BaseStorage | None = None  # the study's storage (`bind`): where claims are written

    def bind(self, storage: BaseStorage) -> None:
        """The storage of the study this sampler serves (`storage.open_study` binds it)."""
        self.storage = storage

    def trial_id(self, study: optuna.Study, number: int) -> int:
        """A trial's storage id from its number, through the storage's public API."""
        assert self.storage is not None, "a PlanSampler writes claims: open its study with open_study"
        return self.storage.get_trial_id_from_study_id_trial_number(
            self.storage.get_study_id_from_name(study.study_name), number)

    def system_attrs(self, study: optuna.Study, number: int) -> dict[str, Any]:
        return self.storage.get_trial_system_attrs(self.trial_id(study, number))

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self.space)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        # One snapshot for both the history and the trials asked before this one that have no job yet,
        # so that workers asking at the same time take different jobs.
        trials = study.get_trials(deepcopy=False)
        unassigned = [t for t in trials if t.state == TrialState.RUNNING and JOB not in t.system_attrs
                      and t.number < trial.number and not orphan(t, JOB)]
        job = self.plan.next(history(study, self.plan.space, trials), slot=len(unassigned))
        if not isinstance(job, Job):
            # a concurrent worker took the last free job since the driver looked: mark this trial to
            # be skipped (params must still be valid, so reuse the driver's job)
            if self.pending is None:
                raise RuntimeError("PlanSampler asked for a trial while the search has nothing to run")
            job = self.pending
            self.storage.set_trial_system_attr(self.trial_id(study, trial.number), SKIP, True)
        self.storage.set_trial_system_attr(self.trial_id(study, trial.number), JOB, job_attr(job))
        return params_of(job)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        raise RuntimeError(f"{param_name}: not part of the AutoQRA search space")


"""Optuna adapter: trials of a study are the evaluations of the search.

Each trial's params are the configuration (`bits|<unit>`, `rank|<unit>`, categorical) and its
`fidelity`; its value is the score (minimised); user attributes carry generation, rung, memory, the
record key and status. `EvolutionSampler` proposes the next trial from the study's history alone,
so a killed search resumes where it stopped and several workers can share one study (journal
file on one machine, an RDB URL on a cluster).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from autoqra.process import is_dead, worker_id
from autoqra.search.evolution import DONE, WAIT, Job, Result
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


JOB = "autoqra:job"


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
        if JOB not in t.system_attrs or t.system_attrs.get("autoqra:skip"):
            continue
        job = job_of(t.system_attrs[JOB])
        if job.config.units != space.units:
            continue
        if t.state == TrialState.COMPLETE:
            out.append(Result(job.config, job.fidelity, job.generation, job.rung, t.value, seed=job.seed))
        elif t.state == TrialState.FAIL and t.user_attrs.get("status") == "failed":
            out.append(Result(job.config, job.fidelity, job.generation, job.rung, None, seed=job.seed))
        elif t.state == TrialState.RUNNING:
            out.append(Result(job.config, job.fidelity, job.generation, job.rung, None, done=False, seed=job.seed))
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
        self._space = distributions(plan.space, plan.fidelities)

    @property
    def evolution(self) -> Plan:
        return self.plan

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._space)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        # One snapshot for both the history and the trials asked before this one that have no job yet,
        # so that workers asking at the same time take different jobs.
        trials = study.get_trials(deepcopy=False)
        unassigned = [t for t in trials if t.state == TrialState.RUNNING and JOB not in t.system_attrs
                      and t.number < trial.number and not _orphan(t)]
        job = self.plan.next(history(study, self.plan.space, trials), slot=len(unassigned))
        if not isinstance(job, Job):
            # a concurrent worker took the last free job since the driver looked: mark this trial to
            # be skipped (params must still be valid, so reuse the driver's job)
            if self.pending is None:
                raise RuntimeError("PlanSampler asked for a trial while the search has nothing to run")
            job = self.pending
            study._storage.set_trial_system_attr(trial._trial_id, "autoqra:skip", True)
        study._storage.set_trial_system_attr(trial._trial_id, JOB, job_attr(job))
        return params_of(job)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        raise RuntimeError(f"{param_name}: not part of the AutoQRA search space")


def open_study(name: str, storage: str | None, journal: str | None, sampler: BaseSampler,
               readonly: bool = False) -> optuna.Study:
    """Create or load a study (direction: minimise). `storage` is an Optuna URL; without one a
    journal file is used (several processes on one machine may share it). `readonly` loads an
    existing study without writing to its storage (creating, even an existing study, appends to a
    journal: another stage's journal, a DVC output of that stage, must not change when read)."""
    if storage is None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        if journal is None:
            storage_obj: Any = optuna.storages.InMemoryStorage()
        else:
            # absolute: Optuna's lock is a symlink to this path, and a relative target dangles,
            # which makes a stale lock left by a killed worker spin forever instead of expiring
            journal = os.path.abspath(journal)
            os.makedirs(os.path.dirname(journal), exist_ok=True)
            storage_obj = JournalStorage(JournalFileBackend(journal))
    elif storage.startswith(("sqlite", "postgresql", "mysql")):
        storage_obj = optuna.storages.RDBStorage(storage, heartbeat_interval=60, grace_period=180)
    else:
        storage_obj = storage
    if readonly:
        try:
            return optuna.load_study(study_name=name, storage=storage_obj, sampler=sampler)
        except KeyError:
            raise SearchFailed(f"study {name} not found in {journal or storage} (run the stage that "
                               "creates it first)") from None
    return optuna.create_study(study_name=name, storage=storage_obj, sampler=sampler, direction="minimize",
                               load_if_exists=True)


# A worker's trial carries a heartbeat (a user attribute, refreshed while it evaluates): a worker on
# another host that stops beating for STALE_S is dead (killed by SLURM, preempted, its node gone).
HEARTBEAT_S = float(os.environ.get("AUTOQRA_HEARTBEAT_S", 60))
STALE_S = float(os.environ.get("AUTOQRA_STALE_S", 10 * HEARTBEAT_S))


def _silent(t: FrozenTrial) -> bool:
    """No heartbeat for STALE_S (a trial from before heartbeats counts from its start)."""
    beat = t.user_attrs.get("heartbeat")
    last = beat if beat is not None else (t.datetime_start.timestamp() if t.datetime_start else time.time())
    return time.time() - last > STALE_S


def fail_dead_trials(study: optuna.Study) -> int:
    """Mark RUNNING trials of dead workers as failed (their jobs will be redone): on this host by
    process liveness, on any host by a silent heartbeat; RDB storages also use Optuna's own."""
    failed = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_dead(t.user_attrs.get("worker", "")) or _orphan(t) or (JOB in t.system_attrs and _silent(t)):
            study.tell(t.number, state=TrialState.FAIL)
            failed += 1
    with contextlib.suppress(Exception), warnings.catch_warnings():  # storages without heartbeats
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return failed


ORPHAN_S = 120.0  # a live worker writes its claim within seconds of asking


def _orphan(t: FrozenTrial) -> bool:
    """A running trial that never got a job: its worker died between ask and claim."""
    age = (datetime.datetime.now() - t.datetime_start).total_seconds() if t.datetime_start else 0.0
    return JOB not in t.system_attrs and age > ORPHAN_S


def _claimed_earlier(study: optuna.Study, number: int, claim: dict[str, Any], poll_s: float,
                     patience_s: float = 60.0) -> bool:
    """True if an earlier trial holds the same job. Waits (up to `patience_s`, for dead workers)
    until every earlier running trial has written its claim, so the earliest claimant always wins."""
    deadline = time.monotonic() + patience_s
    while True:
        earlier = [t for t in study.get_trials(deepcopy=False) if t.number < number]
        pending = [t for t in earlier if t.state == TrialState.RUNNING and JOB not in t.system_attrs
                   and not _orphan(t)]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(min(poll_s, 0.05))
    return any(t.system_attrs.get(JOB) == claim and not t.system_attrs.get("autoqra:skip") for t in earlier
               if t.state in (TrialState.RUNNING, TrialState.COMPLETE)
               or (t.state == TrialState.FAIL and t.user_attrs.get("status") == "failed"))


@contextlib.contextmanager
def _beating(trial: optuna.Trial) -> Any:
    """Refresh the trial's heartbeat every HEARTBEAT_S while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):
                trial.set_user_attr("heartbeat", time.time())

    trial.set_user_attr("heartbeat", time.time())
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class SearchFailed(RuntimeError):
    """Too many evaluations failed in a row: the search stops (everything computed so far is kept)."""


def failure_counts(study: optuna.Study) -> dict[str, int]:
    """How many evaluations failed for each kind of reason (the reason's text before any detail)."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.user_attrs.get("status") == "failed":
            kind = re.split(r"[(:]", t.user_attrs.get("reason") or "unknown")[0].strip()
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def describe_failures(study: optuna.Study) -> str:
    counts = failure_counts(study)
    return ", ".join(f"{n} × {kind}" for kind, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


EvolutionSampler = PlanSampler


def drive(study: optuna.Study, sampler: PlanSampler, objective: ObjectiveFn,
          describe: Callable[[Config], dict[str, Any]] | None = None, poll_s: float = 2.0,
          on_trial: Callable[[FrozenTrial], None] | None = None, max_failures: int = 0) -> int:
    """Ask, evaluate and tell until the search is done; returns the number of trials this worker ran.
    `objective(config, fidelity, seed)`. After `max_failures` failed evaluations in a row (0: never)
    raises `SearchFailed` naming the failure reasons; every finished evaluation stays recorded."""
    space = sampler.plan.space
    fail_dead_trials(study)
    ran = streak = 0
    while True:
        job = sampler.plan.next(history(study, space))
        if job == DONE:
            return ran
        if job == WAIT:  # the rung's last evaluations run elsewhere; a worker may also have died
            time.sleep(poll_s)
            fail_dead_trials(study)
            continue
        sampler.pending = job
        trial = study.ask()
        trial.set_user_attr("worker", worker_id())
        for name, dist in sampler._space.items():
            trial.suggest_categorical(name, dist.choices)
        attrs = study._storage.get_trial(trial._trial_id).system_attrs
        job = job_of(attrs[JOB])
        config, fidelity = job.config, job.fidelity
        if attrs.get("autoqra:skip") or _claimed_earlier(study, trial.number, attrs[JOB], poll_s):
            trial.set_user_attr("status", "skipped")
            study.tell(trial, state=TrialState.FAIL)
            continue
        trial.set_user_attr("config_key", config.key)
        trial.set_user_attr("seed", job.seed)
        if describe is not None:
            for k, v in describe(config).items():
                trial.set_user_attr(k, v)
        with _beating(trial):
            out = objective(config, fidelity, job.seed)
        out = {"score": out, "status": "ok"} if isinstance(out, (int, float)) else dict(out)
        if out.get("score") is None:
            out.update(status="failed", reason=out.get("reason") or "no score")
        for k in ("status", "reason", "key"):
            if out.get(k) is not None:
                trial.set_user_attr("record_key" if k == "key" else k, out[k])
        if out.get("score") is None:
            study.tell(trial, state=TrialState.FAIL)
            streak += 1
        else:
            study.tell(trial, float(out["score"]))
            streak = 0
        ran += 1
        if on_trial is not None:
            on_trial(study.trials[trial.number])
        if max_failures and streak >= max_failures:
            raise SearchFailed(f"search.max_failures={max_failures}: {streak} evaluations failed in a row "
                               f"(failures so far: {describe_failures(study)}); every finished evaluation "
                               "is kept in the record store and the study")

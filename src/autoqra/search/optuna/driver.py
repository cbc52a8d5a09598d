"""The driver of a search stage: ask, claim, evaluate, tell, until the plan is done.

A worker asks a trial (the sampler writes its job in that step), waits until every earlier running
trial has written its claim, and evaluates only if no earlier trial holds the same job: the earliest
claim wins, so several workers sharing one study never evaluate a job twice.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoqra.search.history import DONE, WAIT
from autoqra.search.optuna.liveness import beating, fail_dead_trials, orphan
from autoqra.search.optuna.sampler import JOB, SKIP, ObjectiveFn, PlanSampler, history, job_of
from autoqra.space import Config
from autoqra.store.process import worker_id


def _claimed_earlier(study: optuna.Study, number: int, claim: dict[str, Any], poll_s: float,
                     patience_s: float = 60.0) -> bool:
    """True if an earlier trial holds the same job. Waits (up to `patience_s`, for dead workers)
    until every earlier running trial has written its claim, so the earliest claimant always wins."""
    deadline = time.monotonic() + patience_s
    while True:
        earlier = [t for t in study.get_trials(deepcopy=False) if t.number < number]
        pending = [t for t in earlier if t.state == TrialState.RUNNING and JOB not in t.system_attrs
                   and not orphan(t, JOB)]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(min(poll_s, 0.05))
    return any(t.system_attrs.get(JOB) == claim and not t.system_attrs.get(SKIP) for t in earlier
               if t.state in (TrialState.RUNNING, TrialState.COMPLETE)
               or (t.state == TrialState.FAIL and t.user_attrs.get("status") == "failed"))



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



def drive(study: optuna.Study, sampler: PlanSampler, objective: ObjectiveFn,
          describe: Callable[[Config], dict[str, Any]] | None = None, poll_s: float = 2.0,
          on_trial: Callable[[FrozenTrial], None] | None = None, max_failures: int = 0) -> int:
    """Ask, evaluate and tell until the search is done; returns the number of trials this worker ran.
    `objective(config, fidelity, seed)`. After `max_failures` failed evaluations in a row (0: never)
    raises `SearchFailed` naming the failure reasons; every finished evaluation stays recorded."""
    space = sampler.plan.space
    fail_dead_trials(study, JOB)
    ran = streak = 0
    while True:
        job = sampler.plan.next(history(study, space))
        if job == DONE:
            return ran
        if job == WAIT:  # the rung's last evaluations run elsewhere; a worker may also have died
            time.sleep(poll_s)
            fail_dead_trials(study, JOB)
            continue
        sampler.pending = job
        trial = study.ask()
        trial.set_user_attr("worker", worker_id())
        for name, dist in sampler.space.items():
            trial.suggest_categorical(name, dist.choices)
        attrs = sampler.system_attrs(study, trial.number)
        job = job_of(attrs[JOB])
        config, fidelity = job.config, job.fidelity
        if attrs.get(SKIP) or _claimed_earlier(study, trial.number, attrs[JOB], poll_s):
            trial.set_user_attr("status", "skipped")
            study.tell(trial, state=TrialState.FAIL)
            continue
        trial.set_user_attr("config_key", config.key)
        trial.set_user_attr("seed", job.seed)
        if describe is not None:
            for k, v in describe(config).items():
                trial.set_user_attr(k, v)
        with beating(trial):
            out = objective(config, fidelity, job.seed)
        out = {"score": out, "status": "ok"} if isinstance(out, (int, float)) else dict(out)
        if out.get("score") is None and out.get("retry"):
            # a transient failure (out of memory: perhaps a co-worker's) with attempts left: the trial
            # fails without an evaluation's status, so the plan hands the same job out again
            trial.set_user_attr("status", "retry")
            trial.set_user_attr("reason", str(out.get("reason"))[:300])
            study.tell(trial, state=TrialState.FAIL)
            continue
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

"""Which running trials belong to dead workers: on this host by process liveness, on any host by a
heartbeat (a user attribute the driver refreshes while it evaluates), and trials that never got a job.
A dead worker's trial is failed, so its job is redone by another worker."""

from __future__ import annotations

import contextlib
import datetime
import os
import threading
import time
import warnings
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoqra.store.process import is_dead

# A worker's trial carries a heartbeat (a user attribute, refreshed while it evaluates): a worker on
# another host that stops beating for STALE_S is dead (killed by SLURM, preempted, its node gone).
HEARTBEAT_S = float(os.environ.get("AUTOQRA_HEARTBEAT_S", 60))
STALE_S = float(os.environ.get("AUTOQRA_STALE_S", 10 * HEARTBEAT_S))


def _silent(t: FrozenTrial) -> bool:
    """No heartbeat for STALE_S (a trial from before heartbeats counts from its start)."""
    beat = t.user_attrs.get("heartbeat")
    last = beat if beat is not None else (t.datetime_start.timestamp() if t.datetime_start else time.time())
    return time.time() - last > STALE_S



def fail_dead_trials(study: optuna.Study, job_attr: str) -> int:
    """Mark RUNNING trials of dead workers as failed (their jobs will be redone): on this host by
    process liveness, on any host by a silent heartbeat; RDB storages also use Optuna's own.
    `job_attr` is the system attribute a trial's claim is written to."""
    failed = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_dead(t.user_attrs.get("worker", "")) or orphan(t, job_attr) or (job_attr in t.system_attrs
                                                                              and _silent(t)):
            study.tell(t.number, state=TrialState.FAIL)
            failed += 1
    with contextlib.suppress(Exception), warnings.catch_warnings():  # storages without heartbeats
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return failed


ORPHAN_S = 120.0  # a live worker writes its claim within seconds of asking


def orphan(t: FrozenTrial, job_attr: str) -> bool:
    """A running trial that never got a job: its worker died between ask and claim."""
    age = (datetime.datetime.now() - t.datetime_start).total_seconds() if t.datetime_start else 0.0
    return job_attr not in t.system_attrs and age > ORPHAN_S


@contextlib.contextmanager
def beating(trial: optuna.Trial) -> Any:
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

"""The search on Optuna: trials are evaluations (`sampler`), studies live in a journal or an RDB
(`storage`), dead workers' trials are failed and redone (`liveness`), and `driver.drive` runs a stage."""

from autoqra.search.optuna.driver import SearchFailed, describe_failures, drive, failure_counts
from autoqra.search.optuna.liveness import fail_dead_trials
from autoqra.search.optuna.sampler import JOB, SKIP, PlanSampler, distributions, history, job_attr, job_of, params_of
from autoqra.search.optuna.storage import open_study

__all__ = ["JOB", "SKIP", "PlanSampler", "SearchFailed", "describe_failures", "distributions", "drive",
           "fail_dead_trials", "failure_counts", "history", "job_attr", "job_of", "open_study", "params_of"]

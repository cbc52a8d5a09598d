"""Tables of a search: one row per trial, the configurations' means over seeds, the memory/score Pareto
front, and how well consecutive fidelities agree."""

from __future__ import annotations

from typing import Any

import pandas as pd
from optuna.trial import TrialState

from autoqra.search.optuna import JOB
from autoqra.space import Space
from autoqra.stats import rank_correlation

COLUMNS = ["number", "state", "generation", "rung", "fidelity", "seed", "score", "status", "reason", "config_key",
           "record_key", "memory_bytes", "avg_bits", "avg_bits_with_lora", "summary", "config", "worker", "duration_s"]


def trials_frame(study: Any, space: Space) -> pd.DataFrame:
    """Every finished trial of a search study (running and crashed ones are left out)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state not in (TrialState.COMPLETE, TrialState.FAIL) or "fidelity" not in t.params:
            continue
        if t.state == TrialState.FAIL and t.user_attrs.get("status") != "failed":
            continue  # its worker died; the evaluation was redone in another trial
        u, job = t.user_attrs, t.system_attrs.get(JOB, {})
        rows.append({"number": t.number, "state": t.state.name, "generation": job.get("generation"),
                     "rung": job.get("rung"), "fidelity": t.params["fidelity"], "seed": job.get("seed", 0),
                     "score": t.value,
                     "status": u.get("status", "ok"), "reason": u.get("reason"), "config_key": u.get("config_key"),
                     "record_key": u.get("record_key"), "memory_bytes": u.get("memory_bytes"),
                     "avg_bits": u.get("avg_bits"), "avg_bits_with_lora": u.get("avg_bits_with_lora"),
                     "summary": u.get("summary"), "config": u.get("config"), "worker": u.get("worker"),
                     "duration_s": t.duration.total_seconds() if t.duration else None})
    return with_means(pd.DataFrame(rows, columns=COLUMNS))


def with_means(trials: pd.DataFrame) -> pd.DataFrame:
    """Add, to every row, the mean, standard error and count of its configuration's successful scores
    at that fidelity over the seeds (`mean`, `se`, `n_seeds`): what ranking at a rung uses."""
    trials = trials.drop(columns=[c for c in ("mean", "se", "n_seeds") if c in trials])  # recomputed, not merged
    ok = trials[(trials["status"] == "ok") & trials["score"].notna()]
    agg = ok.groupby(["config_key", "fidelity"])["score"].agg(mean="mean", sd="std", n_seeds="count").reset_index()
    agg["se"] = (agg["sd"] / agg["n_seeds"] ** 0.5).fillna(0.0)
    out = trials.merge(agg.drop(columns="sd"), on=["config_key", "fidelity"], how="left")
    return out.sort_values("number").reset_index(drop=True)


def pareto_front(trials: pd.DataFrame) -> pd.DataFrame:
    """Memory/score Pareto set among configurations evaluated at the highest fidelity reached (one row
    per configuration, scored by its mean over seeds)."""
    ok = trials[(trials["status"] == "ok") & trials["score"].notna()]
    if ok.empty:
        return ok
    top = ok[ok["fidelity"] == ok["fidelity"].max()].drop_duplicates("config_key")
    top = top.sort_values(["memory_bytes", "mean"])
    keep, best = [], float("inf")
    for _, row in top.iterrows():
        if row["mean"] < best:
            keep.append(row)
            best = row["mean"]
    return pd.DataFrame(keep).drop(columns=["score", "seed"]).reset_index(drop=True)


def fidelity_agreement(trials: pd.DataFrame) -> list[dict[str, Any]]:
    """For each pair of consecutive fidelities: rank correlation of the scores of the configurations
    evaluated at both. Low values mean the lower rung promotes the wrong configurations."""
    ok = trials[(trials["status"] == "ok") & trials["score"].notna()]
    table = ok.pivot_table(index="config_key", columns="fidelity", values="score", aggfunc="mean")
    levels = sorted(table.columns)
    out = []
    for lo, hi in zip(levels, levels[1:], strict=False):
        both = table[[lo, hi]].dropna()
        out.append({"low": int(lo), "high": int(hi), **rank_correlation(list(both[lo]), list(both[hi]))})
    return out

"""Tables and plots of a search: one row per trial, the memory/score Pareto front, the search trace."""

from __future__ import annotations

from typing import Any

import pandas as pd
from optuna.trial import TrialState

from autoqra.search.surrogate import rank_correlation
from autoqra.space import Space

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
        u, job = t.user_attrs, t.system_attrs.get("autoqra:job", {})
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
    ok = trials[(trials["status"] == "ok") & trials["score"].notna()]
    agg = ok.groupby(["config_key", "fidelity"])["score"].agg(mean="mean", sd="std", n_seeds="count").reset_index()
    agg["se"] = (agg["sd"] / agg["n_seeds"] ** 0.5).fillna(0.0)
    out = trials.merge(agg.drop(columns="sd"), on=["config_key", "fidelity"], how="left")
    return out.sort_values("number").reset_index(drop=True)


def front(trials: pd.DataFrame) -> pd.DataFrame:
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


def search_trace(trials: pd.DataFrame, title: str) -> Any:
    """Score of every trial in order, coloured by fidelity, with the best-so-far at each fidelity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ok = trials[trials["score"].notna()].sort_values("number")
    for i, (fidelity, group) in enumerate(ok.groupby("fidelity")):
        color = plt.cm.viridis(i / max(ok["fidelity"].nunique() - 1, 1))
        ax.scatter(group["number"], group["score"], s=14, color=color, label=f"{fidelity} steps", alpha=0.8)
        ax.step(group["number"], group["score"].cummin(), where="post", color=color, linewidth=1)
    failed = trials[trials["score"].isna()]
    if len(failed):
        ax.scatter(failed["number"], [ok["score"].max()] * len(failed), marker="x", color="red", label="failed")
    if len(ok) and ok["score"].min() > 0 and ok["score"].max() > 5 * ok["score"].min():
        ax.set_yscale("log")  # a few broken configurations (2-bit) would flatten everything else
    ax.set_xlabel("trial")
    ax.set_ylabel("validation score (lower is better)")
    ax.set_title(title)
    ax.legend(title="fidelity", fontsize=8)
    fig.tight_layout()
    return fig


def refine_trace(trace: list[dict[str, Any]], stage_one: float, title: str) -> Any:
    """Each proposal's mean score (successes filled), the best so far from stage 1's pick on, and the
    trust region's radius (right axis), proposal by proposal; restarts marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = [t["proposal"] for t in trace]
    scores = [t["score"] for t in trace]
    best, running = stage_one, []
    for s in scores:
        best = min(best, s) if s is not None else best
        running.append(best)
    ax.axhline(stage_one, color="grey", linestyle=":", label="stage 1's pick")
    ax.step(xs, running, where="post", color="black", label="best so far")
    for x, s, t in zip(xs, scores, trace):
        if s is not None:
            ax.scatter([x], [s], color="tab:green" if t["success"] else "tab:blue",
                       marker="o" if t["success"] else "x", zorder=3)
    for x, a, b in zip(xs[1:], trace, trace[1:]):
        if b["restarts"] > a["restarts"]:
            ax.axvline(x - 0.5, color="tab:red", alpha=0.4, linestyle="--")
    ax.set_xlabel("proposal (each scored under every top seed)")
    ax.set_ylabel("mean validation score (lower is better)")
    ax2 = ax.twinx()
    ax2.step(xs, [t["radius"] for t in trace], where="mid", color="tab:orange", alpha=0.6)
    ax2.set_ylabel("trust-region radius (units)", color="tab:orange")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig

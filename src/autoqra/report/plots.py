"""The pictures of a run: the search's trace and refinement, the Pareto front with the arms, the winner's
allocation, the best-so-far of every stage. Each function returns a matplotlib figure."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from autoqra.report.search import pareto_front, with_means

GIB = 2**30


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt



def search_trace(trials: pd.DataFrame, title: str) -> Any:
    """Score of every trial in order, coloured by fidelity, with the best-so-far at each fidelity."""
    plt = _plt()
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
    plt = _plt()
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


def pareto(trials: pd.DataFrame, arms: dict[str, dict[str, Any]], budget: float, metric: str) -> Any:
    """Every configuration evaluated at the top fidelity (mean over its seeds) by memory and
    validation score, its Pareto front, the arms marked (their own validation runs), the budget line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    ok = trials[(trials["status"] == "ok") & trials["score"].notna()]
    top = ok[ok["fidelity"] == ok["fidelity"].max()].groupby("config_key").agg(
        memory=("memory_bytes", "first"), score=("score", "mean")).sort_values("memory")
    ax.scatter(top["memory"] / GIB, top["score"], s=16, color="tab:gray", alpha=0.7, label="searched (top rung)")
    pareto_set = pareto_front(with_means(trials)) if len(ok) else ok
    if len(pareto_set):
        ax.step(pareto_set["memory_bytes"] / GIB, pareto_set["mean"], where="post", color="tab:gray", linewidth=1)
    for i, (name, arm) in enumerate(arms.items()):
        vals = [r["val_score"] for r in arm["seeds"] if r.get("val_score") is not None]
        if vals:
            ax.errorbar(arm["memory"]["total"] / GIB, np.mean(vals),
                        yerr=np.std(vals, ddof=1) / np.sqrt(len(vals)) if len(vals) > 1 else 0,
                        fmt="o*^sDvP"[i % 7], markersize=9, capsize=3, label=name)
    ax.axvline(budget / GIB, color="tab:red", linestyle="--", label="budget")
    ax.set_xlabel("memory to fine-tune (GiB, memory model)")
    ax.set_ylabel(f"validation {metric} (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def allocation(units: list[str], bits: list[int], ranks: list[int], i_q: np.ndarray, i_r: np.ndarray) -> Any:
    """The winner's bits and rank per unit, next to the priors' prices at the bottom of each ladder (over the
    largest unit's: `Prices.importance`)."""
    plt = _plt()
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    x = np.arange(len(units))
    labels = [u.rsplit(".", 1)[-1] if "layers." in u else u for u in units]
    for ax, values, prior, name, color in ((axes[0], bits, i_q, "bits", "tab:blue"),
                                           (axes[1], ranks, i_r, "LoRA rank", "tab:green")):
        ax.bar(x, values, color=color, alpha=0.8, label=name)
        ax.set_ylabel(name)
        twin = ax.twinx()
        twin.plot(x, prior, color="black", marker=".", linewidth=1, label="prior")
        twin.set_ylabel("loss at the lowest bits" if name == "bits" else "rank shortfall at the lowest rank")
        ax.set_yticks(sorted(set(values)))
    axes[1].set_xticks(x, labels, fontsize=7)
    axes[1].set_xlabel("unit (transformer block)")
    axes[0].set_title("the winner's allocation (bars) and the priors' prices, relative (line)", fontsize=10)
    fig.tight_layout()
    return fig


def search_progress(stages: dict[str, pd.DataFrame]) -> Any:
    """Best mean score so far at each fidelity against training steps spent, stage after stage."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    offset = 0
    for name, trials in stages.items():
        t = trials.sort_values("number")
        steps = offset + t["fidelity"].cumsum()
        for fid in sorted(t["fidelity"].unique()):
            at = t["fidelity"] == fid
            means = t[at & (t["status"] == "ok")].groupby("config_key")["score"].transform("mean")
            best = means.reindex(t.index).where(at).cummin().ffill()
            ax.step(steps, best, where="post", label=f"{name}, {fid} steps")
        ax.axvline(offset, color="grey", linestyle=":", alpha=0.6)
        offset = int(steps.max()) if len(steps) else offset
    ax.set_xlabel("training steps spent (cumulative)")
    ax.set_ylabel("best mean validation score so far")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def score_vs_budget(table: pd.DataFrame, ablations: list[str], arm: str) -> Any:
    """A sweep's test answer loss of one arm per method against the budget (mean ± SE over search seeds)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    t = table[table["arm"] == arm]
    for ablation in ablations:
        g = t[t["ablation"] == ablation].groupby("budget_value")["test_answer_loss"]
        mean, se = g.mean(), g.std(ddof=1).fillna(0) / np.sqrt(g.count())
        ax.errorbar(mean.index, mean.values, yerr=se.values, marker="o", capsize=3, label=ablation)
    ax.set(xlabel="budget.value", ylabel=f"test answer loss ({arm})", title="score vs budget (mean ± SE over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def best_so_far(traces: dict[str, list[list[list[float]]]], metric: str, budget: Any) -> Any:
    """Per method: the best top-fidelity validation score after n training steps of the search, mean and
    range over its cells' traces ([(steps, best so far)] each)."""
    import warnings

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    grid_max = max([0] + [s for runs in traces.values() for tr in runs for s, _ in tr])
    grid = np.linspace(0, grid_max, 200)
    for ablation, runs in traces.items():
        curves = np.array([[next((v for s, v in reversed(tr) if s <= x), np.nan) for x in grid] for tr in runs])
        with warnings.catch_warnings():  # before a run's first top-fidelity result its curve is NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            ax.plot(grid, np.nanmean(curves, axis=0), label=ablation)
            if len(runs) > 1:
                ax.fill_between(grid, np.nanmin(curves, axis=0), np.nanmax(curves, axis=0), alpha=0.15)
    ax.set(xlabel="training steps spent by the search", ylabel=f"best top-fidelity {metric}",
           title=f"best so far (budget {budget}; mean, range over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig

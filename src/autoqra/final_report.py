"""The report of a run: every arm side by side (mean ± standard error over seeds, paired differences to
`autoqra`), and the pictures that explain it (Pareto front, the winner's allocation, the search)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from autoqra import stats

GIB = 2**30


def _per_seed(arm: dict[str, Any], metric: str) -> dict[int, float]:
    return {r["seed"]: r[metric] for r in arm["seeds"] if r.get("status") == "ok" and r.get(metric) is not None}


def summary(arms: dict[str, dict[str, Any]], metrics: tuple[str, ...] = ("answer_loss", "exact_match"),
            reference: str = "autoqra") -> pd.DataFrame:
    """One row per arm: memory and bits, each metric's mean ± SE over seeds and its paired difference
    to the reference arm (arm − reference; answer loss: lower is better, exact match: higher)."""
    rows = []
    ref = arms.get(reference)
    for name, arm in arms.items():
        mem = arm["memory"]
        row: dict[str, Any] = {"arm": name, "configuration": arm["summary"], "memory_gib": mem["total"] / GIB,
                               "within_budget": arm["within_budget"], "avg_bits": mem["avg_bits"],
                               "avg_bits_with_lora": mem["avg_bits_with_lora"], "steps": arm["steps"],
                               "seeds": len(arm["seeds"]),
                               "failed_seeds": sum(r.get("status") != "ok" for r in arm["seeds"]),
                               "train_s": float(np.mean([r["train_s"] or 0 for r in arm["seeds"]])),
                               "eval_s": float(np.mean([r.get("eval_s") or 0 for r in arm["seeds"]]))}
        peaks = [r["peak_memory_bytes"] for r in arm["seeds"] if r.get("peak_memory_bytes")]
        row["measured_peak_gib"] = max(peaks) / GIB if peaks else None
        for metric in metrics:
            values = _per_seed(arm, metric)
            if not values:
                continue
            row[f"{metric}_mean"], row[f"{metric}_se"] = stats.mean_se(list(values.values()))
            if ref is not None and name != reference and _per_seed(ref, metric):
                diff = stats.paired(values, _per_seed(ref, metric), lower_is_better=metric != "exact_match")
                row[f"{metric}_vs_{reference}"] = diff["diff"]
                row[f"{metric}_vs_{reference}_se"] = diff["se"]
                row[f"{metric}_vs_{reference}_verdict"] = _verdict(diff["verdict"])
        rows.append(row)
    return pd.DataFrame(rows)


def _verdict(v: str) -> str:
    """From the arm's side: 'better'/'worse' than the reference arm."""
    return {"better": "arm better", "worse": "arm worse"}.get(v, v)


def markdown(table: pd.DataFrame, reference: str = "autoqra") -> str:
    """The summary as a Markdown table, each mean with its standard error."""
    def pm(row: pd.Series, metric: str, digits: int = 4) -> str:
        m, s = row.get(f"{metric}_mean"), row.get(f"{metric}_se")
        return "–" if m is None or pd.isna(m) else f"{m:.{digits}f} ± {s:.{digits}f}"

    def diff(row: pd.Series, metric: str, digits: int = 4) -> str:
        d = row.get(f"{metric}_vs_{reference}")
        if d is None or pd.isna(d):
            return "–"
        se, verdict = row[f"{metric}_vs_{reference}_se"], row[f"{metric}_vs_{reference}_verdict"]
        return f"{d:+.{digits}f} ± {se:.{digits}f} ({verdict})"

    head = ("| arm | configuration | memory GiB | in budget | bits | bits+LoRA | test answer loss | "
            f"Δ vs {reference} | exact match | Δ vs {reference} | steps × seeds | train s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for _, r in table.iterrows():
        cells = [r["arm"], r["configuration"], f"{r['memory_gib']:.3f}", "yes" if r["within_budget"] else "no",
                 f"{r['avg_bits']:.2f}", f"{r['avg_bits_with_lora']:.2f}", pm(r, "answer_loss"),
                 diff(r, "answer_loss"), pm(r, "exact_match", 3), diff(r, "exact_match", 3),
                 f"{r['steps']} × {r['seeds']}", f"{r['train_s']:.0f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto(trials: pd.DataFrame, arms: dict[str, dict[str, Any]], budget: float, metric: str) -> Any:
    """Every configuration evaluated at the top fidelity (mean over its seeds) by memory and
    validation score, its Pareto front, the arms marked (their own validation runs), the budget line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    ok = trials[(trials["status"] == "ok") & trials["score"].notna()]
    top = ok[ok["fidelity"] == ok["fidelity"].max()].groupby("config_key").agg(
        memory=("memory_bytes", "first"), score=("score", "mean")).sort_values("memory")
    ax.scatter(top["memory"] / GIB, top["score"], s=16, color="tab:gray", alpha=0.7, label="searched (top rung)")
    front, best = [], np.inf
    for m, s in zip(top["memory"], top["score"]):
        if s < best:
            front.append((m / GIB, s))
            best = s
    if front:
        ax.step(*zip(*front), where="post", color="tab:gray", linewidth=1)
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
    """The winner's bits and rank per unit, next to the normalised priors I_q and I_r."""
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
        twin.set_ylabel("I_q" if name == "bits" else "I_r")
        ax.set_yticks(sorted(set(values)))
    axes[1].set_xticks(x, labels, fontsize=7)
    axes[1].set_xlabel("unit (transformer block)")
    axes[0].set_title("the winner's allocation (bars) and the importance priors (line)", fontsize=10)
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

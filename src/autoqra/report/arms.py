"""The report of a run's arms: every arm side by side (mean ± standard error over seeds, paired
differences to `autoqra`)."""

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

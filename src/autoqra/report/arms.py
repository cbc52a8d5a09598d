"""The report of a run's arms: every arm side by side, each metric's mean with its 95 % interval over
training seeds and test examples, and each arm's paired difference to `autoqra` with its interval and
the verdict read from it (`autoqra.stats`); and the uniform frontier the `best_uniform` arm came from."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from autoqra import stats

GIB = 2**30
LOWER_IS_BETTER = {"answer_loss": True, "exact_match": False}


def values(arm: dict[str, Any], metric: str) -> dict[int, list[float]]:
    """Per seed, the test split's per-example values of `metric` whose mean is the seed's score (each
    example's share of the answer loss; each example's exact match), or the score alone where an older
    evaluation kept no per-example values."""
    out = {}
    for r in arm["seeds"]:
        if r.get("status") != "ok" or r.get(metric) is None:
            continue
        if metric == "answer_loss" and r.get("answer_nll"):
            out[r["seed"]] = stats.contributions(r["answer_nll"]).tolist()
        elif metric == "exact_match" and r.get("exact_match_per_example"):
            out[r["seed"]] = list(r["exact_match_per_example"])
        else:
            out[r["seed"]] = [r[metric]]
    return out


def summary(arms: dict[str, dict[str, Any]], metrics: tuple[str, ...] = ("answer_loss", "exact_match"),
            reference: str = "autoqra") -> pd.DataFrame:
    """One row per arm: memory and bits, each metric's mean and 95 % interval, and its paired difference
    to the reference arm (arm − reference; answer loss: lower is better, exact match: higher) with its
    interval and verdict (`stats.compare`: seeds and test examples both paired)."""
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
            own = values(arm, metric)
            if not own:
                continue
            spread = stats.difference([own[s] for s in sorted(own)])
            row[f"{metric}_mean"], row[f"{metric}_se"] = spread["diff"], spread["se"]
            row[f"{metric}_lo"], row[f"{metric}_hi"] = spread["ci"]
            theirs = values(ref, metric) if ref is not None and name != reference else {}
            if theirs:
                c = stats.compare(own, theirs, lower_is_better=LOWER_IS_BETTER[metric])
                row[f"{metric}_vs_{reference}"] = c["diff"]
                row[f"{metric}_vs_{reference}_se"] = c["se"]
                row[f"{metric}_vs_{reference}_lo"], row[f"{metric}_vs_{reference}_hi"] = c["ci"]
                row[f"{metric}_vs_{reference}_verdict"] = _verdict(c["verdict"])
        rows.append(row)
    return pd.DataFrame(rows)


def _verdict(v: str) -> str:
    """From the arm's side: 'better'/'worse' than the reference arm."""
    return {"better": "arm better", "worse": "arm worse"}.get(v, v)


def markdown(table: pd.DataFrame, reference: str = "autoqra") -> str:
    """The summary as a Markdown table: each mean with its 95 % interval, each difference with its
    interval and verdict."""
    def ci(row: pd.Series, metric: str, digits: int = 4) -> str:
        m = row.get(f"{metric}_mean")
        if m is None or pd.isna(m):
            return "–"
        return f"{m:.{digits}f} [{row[f'{metric}_lo']:.{digits}f}, {row[f'{metric}_hi']:.{digits}f}]"

    def diff(row: pd.Series, metric: str, digits: int = 4) -> str:
        d = row.get(f"{metric}_vs_{reference}")
        if d is None or pd.isna(d):
            return "–"
        lo, hi = row[f"{metric}_vs_{reference}_lo"], row[f"{metric}_vs_{reference}_hi"]
        return f"{d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] ({row[f'{metric}_vs_{reference}_verdict']})"

    head = ("| arm | configuration | memory GiB | in budget | bits | bits+LoRA | test answer loss | "
            f"Δ vs {reference} | exact match | Δ vs {reference} | steps × seeds | train s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for _, r in table.iterrows():
        cells = [r["arm"], r["configuration"], f"{r['memory_gib']:.3f}", "yes" if r["within_budget"] else "no",
                 f"{r['avg_bits']:.2f}", f"{r['avg_bits_with_lora']:.2f}", ci(r, "answer_loss"),
                 diff(r, "answer_loss"), ci(r, "exact_match", 3), diff(r, "exact_match", 3),
                 f"{r['steps']} × {r['seeds']}", f"{r['train_s']:.0f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def frontier_markdown(frontier: dict[str, Any]) -> str:
    """Every feasible uniform configuration with its validation score (mean ± standard error over the
    frontier's seeds and the validation examples) and its paired difference to the chosen one
    (95 % interval), the chosen `best_uniform` marked."""
    lines = [f"| uniform configuration | memory GiB | validation {frontier['metric']} | Δ vs chosen | chosen |",
             "|---|---|---|---|---|"]
    for u in frontier["uniforms"]:
        score = "failed" if u["mean"] is None else f"{u['mean']:.4f} ± {u['se']:.4f}"
        chosen = u["key"] == frontier["chosen"]
        diff = "–" if chosen or "minus_chosen" not in u else stats.describe(u["minus_chosen"])
        lines.append(f"| {u['bits']}b r{u['rank']} | {u['memory_bytes'] / GIB:.3f} | {score} | {diff} | "
                     f"{'**best_uniform**' if chosen else ''} |")
    return "\n".join(lines) + "\n"

"""Sweeps: a grid of pipeline runs (cells: search ablation x search seed x budget), each the pipeline from
the search on, through the shared GPTQ caches, priors and record stores (the keys of single runs: a
cell trains only what no run and no other cell has trained). The cells' names, read by the Snakefile,
DVC's matrix and the report; running a cell is `autoqra.pipeline.sweep`, its summary `autoqra.report.sweep`."""

from __future__ import annotations

import json
from typing import Any


def cell_name(ablation: Any, seed: Any, budget: Any) -> str:
    """The cell's folder name, from the values as written in params.yaml (`1` and `1.0` stay apart):
    Snakemake's wildcards and DVC's matrix items render them the same way."""
    return f"{ablation}-s{seed}-b{budget}"


def cells(tree: dict[str, Any]) -> list[dict[str, Any]]:
    """The sweep's cells, from the composed params as a plain tree."""
    sw = tree["sweep"]
    return [{"ablation": a, "seed": s, "budget": b, "name": cell_name(a, s, b)}
            for a in sw["ablations"] for s in sw["seeds"] for b in sw["budgets"]]


def cell_tree(tree: dict[str, Any], ablation: str, seed: int, budget: float) -> dict[str, Any]:
    out = json.loads(json.dumps(tree))
    out["search"]["ablation"], out["seed"], out["budget"]["value"] = ablation, seed, budget
    return out

"""Sweeps: a grid of pipeline runs (cells: search ablation x search seed x budget), each the pipeline from
the search on, through the shared GPTQ caches, priors and record stores (the keys of single runs: a
cell trains only what no run and no other cell has trained). Its summary is `autoqra.report.sweep`."""

from __future__ import annotations

import json
from pathlib import Path
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


def run_cell(p: Any, params_path: Path, dirs: dict[str, str], out: Path, threads: int = 0) -> dict[str, Any]:
    """One cell (`p`: the cell's params, as written to `params_path`): evolve, refine, then every arm of
    `sweep.arms` trained and tested, into `out/` (the stages' own outputs, each with its metrics.json),
    its records in the one record cache every run shares and its studies in the cache's journal
    `studies/cells/<cell>.journal`. Returns what the summary needs of the cell."""
    from autoqra import arms
    from autoqra.report.sweep import arm_summary, best_so_far
    from autoqra.search import runs
    from autoqra.search.setup import SearchSetup
    from autoqra.store.files import write_json

    store = f"cells/{out.name}"
    cell = {**dirs, "store": store, "stage1_store": store}
    evolve = runs.evolve(p, str(params_path), cell, out / "evolve", threads)
    write_json(out / "evolve" / "metrics.json", evolve)
    refine = runs.refine(p, str(params_path), cell, out / "refine", threads)
    write_json(out / "refine" / "metrics.json", refine)
    tested = {}
    for arm in p.sweep.arms:
        setup = SearchSetup(p, cell, progress=True, arm_ladders=True)  # one per arm: its own step counts
        train, metrics = out / "final" / arm / "train", out / "final" / arm / "metrics.json"
        trained = arms.finetune(setup, arm, train, out)  # the cell's own evolve/ and refine/
        write_json(train / "metrics.json", trained)
        test = arms.evaluate(setup, arm, train, metrics.parent)
        write_json(metrics, test)
        tested[arm] = {"train": trained, "test": test}
    return {
        "cell": out.name, "ablation": p.search.ablation, "seed": p.seed, "budget": p.budget.value,
        "metric": p.search.metric,
        "search_steps": int(evolve["steps_spent"] + refine["steps_spent"]),
        # optimizer steps this cell ran (records already in the store cost none): the search workers' and
        # the evolve stage's own comparison of its pick with the uniform arms
        "steps_trained": {"evolve": evolve["steps_trained_this_run"] + evolve["comparison"]["steps_trained"],
                          "refine": refine["steps_trained_this_run"],
                          **{f"finetune/{a}": m["train"]["trained_steps"] for a, m in tested.items()}},
        "records_computed": {"evolve": evolve["records_computed_this_run"] + evolve["comparison"]["records_computed"],
                             "refine": refine["records_computed_this_run"],
                             **{f"finetune/{a}": m["train"]["records_computed"] for a, m in tested.items()}},
        "search_best": refine["best"],
        "trace": best_so_far(out, p.search.metric),
        "arms": {a: arm_summary(m["test"]) for a, m in tested.items()},
    }

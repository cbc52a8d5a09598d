"""One cell of a sweep (search ablation x search seed x budget): the pipeline from the search on, through
the shared GPTQ caches, priors and record cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoqra.pipeline import arms
from autoqra.pipeline import search as runs
from autoqra.pipeline.setup import Setup
from autoqra.report.sweep import arm_summary, best_so_far
from autoqra.store.files import write_json


def run_cell(p: Any, params_path: Path, dirs: dict[str, str], out: Path, threads: int = 0) -> dict[str, Any]:
    """One cell (`p`: the cell's params, as written to `params_path`): evolve, refine, then every arm of
    `sweep.arms` trained and tested, into `out/` (the stages' own outputs, each with its metrics.json),
    its records in the one record cache every run shares and its studies in the cache's journal
    `studies/cells/<cell>.journal`. Returns what the summary needs of the cell."""
    journal = f"cells/{out.name}"
    cell = {**dirs, "journal": journal, "stage1_journal": journal}
    evolve = runs.evolve_stage(p, str(params_path), cell, out / "evolve", threads)
    write_json(out / "evolve" / "metrics.json", evolve)
    refine = runs.refine_stage(p, str(params_path), cell, out / "refine", threads)
    write_json(out / "refine" / "metrics.json", refine)
    tested = {}
    for arm in p.sweep.arms:
        setup = Setup(p, cell, progress=True, arm_ladders=True)  # one per arm: its own step counts
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

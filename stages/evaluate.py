"""evaluate: one final arm on the held-out test split, every seed.

Rebuilds each seed's model (the arm's configuration from the GPTQ caches, its adapters from the
finetune stage), scores the test answer loss and, through lm-evaluation-harness, exact match (plus any
`evaluate.lm_eval_tasks`). Writes `<out>` (default `data/final/<arm>/metrics.json`): one record per
seed, and the arm's memory (predicted by the memory model; the measured peak on a GPU), average bits
with and without LoRA, steps and wall time.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from autoqra import final, tasks
from autoqra.config import Params
from stages import common
from stages.registry import STAGES
from stages.search_setup import SearchSetup

PARAMS = STAGES["evaluate"].params


def run(p: Params, arm: str, dirs: dict[str, str], train: Path) -> dict[str, Any]:
    setup = SearchSetup(p, dirs, arms=True)
    ev, space = setup.evaluator, setup.arm_space
    spec = json.loads((train / "arm.json").read_text())
    runs = {r["seed"]: r for r in json.loads((train / "runs.json").read_text())["runs"]}
    config = space.parse(spec["config"])
    test = tasks.read_split(Path(dirs["prepare"]) / "task", "test")
    seeds, built = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in p.finetune.seeds:
            start = time.perf_counter()
            row: dict[str, Any] = {"seed": seed, "status": runs[seed]["status"], "val_score": runs[seed]["score"],
                                   "train_s": runs[seed]["train_s"], "steps": runs[seed]["train_steps"],
                                   "peak_memory_bytes": runs[seed].get("peak_memory_bytes")}
            if row["status"] == "ok":
                # a record of the shared store keyed by the training record: two arms that are one
                # configuration (best_uniform is often the budget's reference uniform) are scored once
                record, computed = ev.store.get(final.evaluation_key(runs[seed]["key"], p.task.max_length, p.evaluate), lambda s=seed: final.score_seed(
                    ev, config, train / f"seed{s}.safetensors", test, p.task.max_length, p.evaluate, Path(tmp), built))
                row.update(record["scores"], test_record=record["key"], test_cached=not computed)
            row["eval_s"] = round(time.perf_counter() - start, 2)
            common.log.info("%s seed %d: %s", arm, seed, {k: row.get(k) for k in ("answer_loss", "exact_match")})
            seeds.append(row)
    mem = spec["memory"]
    return {"arm": arm, "key": spec["key"], "summary": spec["summary"], "config": spec["config"],
            "steps": spec["steps"],
            "memory": {k: mem[k] for k in ("total", "weights", "metadata", "lora", "activations", "avg_bits",
                                           "avg_bits_with_lora")},
            "budget_limit": spec["budget_limit"], "within_budget": spec["within_budget"], "seeds": seeds}


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--arm", required=True)
    common.add_dirs(ap)
    ap.add_argument("--train", help="the finetune stage's folder (default data/final/<arm>/train)")
    ap.add_argument("--store", help="this stage's record store under <search>/records/ (default evaluate/<arm>)")
    ap.add_argument("--out", help="default data/final/<arm>/metrics.json")
    args = ap.parse_args(argv)
    common.setup(args.threads)
    p, _ = common.load(args.params, PARAMS)
    if args.arm not in p.finetune.arms:
        raise SystemExit(f"error: --arm {args.arm}: not in finetune.arms={p.finetune.arms}")
    checked_s = common.preflight(p, args.prepare, args.search)
    train = Path(args.train or f"data/final/{args.arm}/train")
    if not (train / "runs.json").exists():
        raise SystemExit(f"error: --train {train}: no runs.json (run the finetune stage for {args.arm})")
    dirs = {**common.dirs(args), "store": args.store or f"evaluate/{args.arm}"}
    with common.user_errors():
        metrics = common.timed(lambda: run(p, args.arm, dirs, train))
    common.write_json(Path(args.out or f"data/final/{args.arm}/metrics.json"), {**metrics, "preflight_s": checked_s})


if __name__ == "__main__":
    main()

"""finetune: one final arm, trained `finetune.steps` steps under every seed of `finetune.seeds`.

The arm's configuration comes from the search (`autoqra`: refine's best.json; `best_uniform`: the
best feasible uniform configuration by stage 1's evidence), from the priors (`sequential`) or from its
name (`fp_lora`, `uniform{b}_r{r}`). Each seed is a record of the shared store, trained like a
fidelity run (same evaluator, same key): when `finetune.steps` is the top fidelity, the runs the
search already made are read, not repeated. Writes `<out>/arm.json` (configuration, memory, average
bits), `<out>/runs.json` (per seed: record, validation score, time) and `<out>/seed{n}.safetensors`
(the trained adapters, for the evaluate and export stages).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from autoqra import arms
from autoqra.config import Params
from autoqra.space import Config
from stages import common
from stages.registry import STAGES
from stages.search_setup import SearchSetup

PARAMS = STAGES["finetune"].params


def resolve(arm: str, setup: SearchSetup, refine: Path) -> Config:
    """The configuration of an arm (on the search's units); `refine` is the refine stage's folder."""
    import json

    p, space = setup.p, setup.arm_space
    if arm == "autoqra":
        best = refine / "best.json"
        if not best.exists():
            raise SystemExit(f"error: {best}: missing (run the refine stage)")
        return space.parse(json.loads(best.read_text())["config"])
    if arm == "best_uniform":
        from stages.evolve import settings

        study, _ = setup.study("evolve", settings(p), readonly=True)
        return setup.best_uniform(setup.history(study))
    if arm == "sequential":
        ranks = tuple(r for r in setup.space.ranks if r <= p.finetune.arm_rank) or setup.space.ranks[:1]
        return arms.sequential(setup.budget, setup.i_q, ranks)
    if arm == "fp_lora":
        return space.uniform(16, p.finetune.arm_rank)
    bits, rank = arms.uniform_of(arm)
    return Config(space.units, (bits,) * len(space), (rank,) * len(space))


def run(p: Params, arm: str, dirs: dict[str, str], out: Path, refine: Path | None = None) -> dict[str, Any]:
    setup = SearchSetup(p, dirs, progress=True, arms=True)
    space = setup.arm_space
    config = resolve(arm, setup, refine or Path(dirs["search"]) / "refine")
    space.check(config)
    top = list(p.search.fidelities)
    val = p.search.val_per_rung[-1] if p.search.val_per_rung else 0
    val = val if p.finetune.steps == top[-1] else 0  # the top rung's runs are these very runs
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in p.finetune.seeds:
        record = setup.evaluator(config, p.finetune.steps, seed, val_samples=val, keep_adapter=True)
        if record["status"] == "ok":
            shutil.copyfile(setup.evaluator.adapter_path(record["key"]), out / f"seed{seed}.safetensors")
        runs.append({k: record.get(k) for k in ("seed", "key", "status", "reason", "score", "train_steps", "train_s",
                                                  "wall_s", "peak_memory_bytes")})
        common.log.info("%s seed %d: %s %s", arm, seed, record["status"], record.get("score"))
    mem = setup.memory.breakdown(space, config)
    common.write_json(out / "arm.json", {
        "arm": arm, "config": config.to_dict(), "key": config.key, "summary": config.describe(),
        "memory": mem, "budget_limit": setup.budget.limit, "within_budget": bool(mem["total"] <= setup.budget.limit
                                                                                 * (1 + 1e-9)),
        "steps": p.finetune.steps, "seeds": list(p.finetune.seeds)})
    common.write_json(out / "runs.json", {"runs": runs})
    return {"arm": arm, "summary": config.describe(), "trained_steps": setup.evaluator.steps_trained,
            "records_computed": setup.evaluator.computed, "failed": sum(r["status"] != "ok" for r in runs)}


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--arm", required=True, help="autoqra, fp_lora, best_uniform, sequential, uniform<b>_r<r>")
    common.add_dirs(ap)
    ap.add_argument("--store", help="this stage's record store under <search>/records/ (default finetune/<arm>)")
    ap.add_argument("--stage1-store", default="evolve", help="the store holding stage 1's study (default evolve)")
    ap.add_argument("--refine", help="the refine stage's folder, for the autoqra arm (default <search>/refine)")
    ap.add_argument("--out", help="output folder (default data/final/<arm>/train)")
    args = ap.parse_args(argv)
    common.setup(args.threads)
    p, _ = common.load(args.params, PARAMS)
    if args.arm not in p.finetune.arms:
        raise SystemExit(f"error: --arm {args.arm}: not in finetune.arms={p.finetune.arms}")
    checked_s = common.preflight(p, args.prepare, args.search)
    args.store = args.store or f"finetune/{args.arm}"
    dirs = common.store_dirs(args)
    SearchSetup.check_inputs(p, dirs)
    out = Path(args.out or f"data/final/{args.arm}/train")
    with common.user_errors():
        metrics = common.timed(lambda: run(p, args.arm, dirs, out, Path(args.refine) if args.refine else None))
    common.write_json(out / "metrics.json", {**metrics, "preflight_s": checked_s})


if __name__ == "__main__":
    main()

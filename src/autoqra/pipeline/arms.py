"""The final arms' work: resolve an arm to its configuration, train it under the fresh seeds
(`finetune`), score every seed on the test split (`evaluate`). The arm names are `autoqra.arms`."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from autoqra.arms import SEARCH_OUTPUTS, parse_uniform
from autoqra.data import read_split
from autoqra.params import ParamError
from autoqra.pipeline.setup import Setup
from autoqra.search import operators as ops
from autoqra.space import UNQUANTIZED, Config
from autoqra.store import manifest
from autoqra.store.files import write_json
from autoqra.train import evaluation

log = logging.getLogger("autoqra")


def _read(path: Path, stage: str) -> dict[str, Any]:
    if not path.exists():
        raise ParamError(f"{path}: missing (run the {stage} stage)")
    return json.loads(path.read_text())


def resolve(arm: str, setup: Setup, search: Path | None) -> Config:
    """The configuration of an arm, on the arms' ladders; `search` holds the search stages' folders
    (`evolve/frontier.json`: the uniform frontier, `refine/best.json`: the pick), read for the arms of
    `arms.SEARCH_OUTPUTS` only (any other arm gets no folder: Snakemake does not wait for the search for it)."""
    p, space = setup.p, setup.arm_space
    search = search if arm in SEARCH_OUTPUTS else None
    if arm == "autoqra":
        return space.parse(_read(search / "refine" / "best.json", "refine")["config"])
    if arm == "best_uniform":
        frontier = _read(search / "evolve" / "frontier.json", "evolve")
        return space.parse(next(u for u in frontier["uniforms"] if u["key"] == frontier["chosen"])["config"])
    if arm in ("greedy", "prior"):
        make = ops.greedy_config if arm == "greedy" else ops.prior_config
        return make(setup.space, setup.budget, setup.prices)
    if arm == "sequential":
        ranks = tuple(r for r in setup.space.ranks if r <= p.finetune.arm_rank) or setup.space.ranks[:1]
        return ops.sequential_config(setup.budget, setup.prices, ranks)
    if arm == "fp_lora":
        return space.uniform(UNQUANTIZED, p.finetune.arm_rank)
    return space.uniform(*parse_uniform(arm))


def finetune(setup: Setup, arm: str, out: Path, search: Path) -> dict[str, Any]:
    """Train an arm `finetune.steps` steps under every seed of `finetune.seeds` (fresh seeds: no run a
    search selected on; records of the shared store, so an arm that is another arm's configuration is
    trained once), keeping each seed's adapters in `out`, with `arm.json` (configuration, memory,
    budget) and `runs.json` (per seed: record, validation score, time). Returns the stage's metrics."""
    p, space = setup.p, setup.arm_space
    config = resolve(arm, setup, search)
    space.check(config)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in p.finetune.seeds:
        record = setup.fidelity_run(config, p.finetune.steps, seed, keep_adapter=True)
        if record["status"] == "ok":
            shutil.copyfile(setup.fidelity_run.adapter_path(record["key"]), out / f"seed{seed}.safetensors")
        runs.append({k: record.get(k) for k in ("seed", "key", "status", "reason", "score", "train_steps", "train_s",
                                                  "wall_s", "peak_memory_bytes")})
        log.info("%s seed %d: %s %s", arm, seed, record["status"], record.get("score"))
    mem = setup.memory.breakdown(space, config)
    write_json(out / "arm.json", {
        "arm": arm, "config": config.to_dict(), "key": config.key, "summary": config.describe(), "memory": mem,
        "budget_limit": setup.budget.limit, "within_budget": within_budget(setup, config),
        "steps": p.finetune.steps, "seeds": list(p.finetune.seeds)})
    write_json(out / "runs.json", {"runs": runs})
    adapters = {r["key"]: f"seed{r['seed']}.safetensors" for r in runs if r["status"] == "ok"}
    held = manifest.write(out, setup.fidelity_run.store, {r["key"] for r in runs}, adapters)
    return {"arm": arm, "manifest": held, "summary": config.describe(),
            "trained_steps": setup.fidelity_run.steps_trained,
            "records_computed": setup.fidelity_run.computed, "failed": sum(r["status"] != "ok" for r in runs)}


def within_budget(setup: Setup, config: Config) -> bool:
    """Whether an arm's configuration fits the budget, in the budget's unit: bytes, or bits of weights,
    metadata and LoRA at 16 bits (`bits_per_param`); any arm's, not only the search space's."""
    mem = setup.memory.breakdown(setup.arm_space, config)
    bits_per_param = setup.budget.kind == "bits_per_param"
    return bool(setup.budget.fits(mem["avg_bits_with_lora"] * setup.spec.target_params if bits_per_param
                                  else mem["total"]))


def evaluate(setup: Setup, arm: str, train: Path, out: Path) -> dict[str, Any]:
    """Score every seed of a trained arm (`train`: the finetune stage's folder) on the test split: one
    record per seed in the shared store, keyed by the training record and the adapter's bytes (two arms
    that are one configuration are scored once), their manifest in `out`. Returns the arm's metrics:
    per seed scores, memory, bits, steps."""
    p, ev = setup.p, setup.fidelity_run
    spec = json.loads((train / "arm.json").read_text())
    runs = {r["seed"]: r for r in json.loads((train / "runs.json").read_text())["runs"]}
    config = setup.arm_space.parse(spec["config"])
    test = read_split(Path(setup.dirs["prepare"]) / "task", "test")
    seeds, built, used = [], [], set()
    with ev.workdir() as tmp:  # a packed checkpoint, the harness's files: under the cache, never /tmp
        for seed in p.finetune.seeds:
            start = time.perf_counter()
            run = runs[seed]
            row: dict[str, Any] = {"seed": seed, "status": run["status"], "val_score": run["score"],
                                   "train_s": run["train_s"], "steps": run["train_steps"],
                                   "peak_memory_bytes": run.get("peak_memory_bytes")}
            if row["status"] == "ok":
                adapter = train / f"seed{seed}.safetensors"
                if not adapter.exists():
                    raise ParamError(f"--train {train}: {adapter.name} is missing (seed {seed} trained, its adapter "
                                     "gone: run the finetune stage again)")
                key = evaluation.evaluation_key(run["key"], p.task.max_length, p.evaluate, adapter)
                record, computed = ev.store.get(key, lambda a=adapter: evaluation.score_seed(
                    ev, config, a, test, p.task.max_length, p.evaluate, tmp, built))
                row.update(record["scores"], test_record=record["key"], test_cached=not computed)
                used.add(key)
            row["eval_s"] = round(time.perf_counter() - start, 2)
            log.info("%s seed %d: %s", arm, seed, {k: row.get(k) for k in ("answer_loss", "exact_match")})
            seeds.append(row)
    mem = spec["memory"]
    out.mkdir(parents=True, exist_ok=True)
    held = manifest.write(out, ev.store, used)
    return {"arm": arm, "key": spec["key"], "manifest": held, "summary": spec["summary"], "config": spec["config"],
            "steps": spec["steps"],
            "memory": {k: mem[k] for k in ("total", "weights", "metadata", "lora", "activations", "avg_bits",
                                           "avg_bits_with_lora")},
            "budget_limit": spec["budget_limit"], "within_budget": spec["within_budget"], "seeds": seeds}

"""Wiring shared by the search stages: space, memory model, budget, priors, evaluator and study."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autoqra import fingerprint, priors, quant, stats
from autoqra.arms import arm_space
from autoqra.config import Params
from autoqra.evaluate import Evaluator
from autoqra.memory import MemoryModel, ModelSpec, Training, make_budget, parse_reference
from autoqra.search import make_plan
from autoqra.search import operators as ops
from autoqra.search.evolution import Evidence, Result, Settings, best_evidence
from autoqra.search.refinement import Refinement, RefineSettings
from autoqra.search.samplers import PlanSampler, history, open_study
from autoqra.space import Config, Space


def _base(p: Params, dirs: dict[str, str]) -> tuple[ModelSpec, Space, MemoryModel]:
    spec = ModelSpec.from_pretrained(Path(dirs["prepare"]) / "model", p.quant.targets)
    space = Space.build([m.name for m in spec.modules], p.search.granularity, p.quant.bits, p.lora.ranks)
    training = Training(batch_size=p.finetune.batch_size, seq_len=p.task.max_length,
                        gradient_checkpointing=p.finetune.gradient_checkpointing, lora_dropout=p.lora.dropout > 0)
    return spec, space, MemoryModel(spec, p.quant.group_size, training)


def prepared_fingerprints(prepare: Path) -> dict[str, str] | None:
    """The model and task fingerprints the prepare stage computed (no need to hash them again)."""
    metrics = prepare / "metrics.json"
    if not metrics.exists():
        return None
    m = json.loads(metrics.read_text())
    if "model_fingerprint" not in m or "task_fingerprint" not in m:
        return None
    return {"model": m["model_fingerprint"], "task": m["task_fingerprint"]}


def records_root(dirs: dict[str, str]) -> Path:
    """The folder of record stores: `<search>/records/`, one store per stage (`evolve`, `refine`,
    `finetune/<arm>`, `evaluate/<arm>`, `cells/<cell>`), each reading all the others."""
    return Path(dirs["search"]) / "records"


class SearchSetup:
    def __init__(self, p: Params, dirs: dict[str, str], progress: bool = False, arms: bool = False):
        """With `arms`, the evaluator's ladders are widened to the final arms' (16 bits, `arm_rank`)."""
        self.p, self.dirs = p, dirs
        self.spec, self.space, self.memory = _base(p, dirs)
        self.arm_space = arm_space(self.space, [p.finetune.arm_rank])
        self.budget = make_budget(p.budget.kind, p.budget.value, p.budget.reference, self.memory, self.space)
        table = pd.read_parquet(Path(dirs["profile"]) / "priors.parquet")
        unit_priors = priors.for_units(table, {u: list(m) for u, m in self.space.members.items()})
        self.i_q = unit_priors.loc[list(self.space.units), "I_q"].to_numpy()
        self.i_r = unit_priors.loc[list(self.space.units), "I_r"].to_numpy()
        caches = {b: quant.QuantCache(Path(dirs["quantize"]) / f"b{b}") for b in p.quant.bits if b != quant.UNQUANTIZED}
        prepare = Path(dirs["prepare"])
        self.evaluator = Evaluator(model_dir=prepare / "model", task_dir=prepare / "task", caches=caches,
                                   space=self.arm_space if arms else self.space, lora=p.lora, finetune=p.finetune,
                                   max_length=p.task.max_length,
                                   records=records_root(dirs) / dirs.get("store", "evolve"),
                                   shared_records=records_root(dirs), metric=p.search.metric,
                                   backend=p.search.backend, oom_attempts=p.search.oom_attempts,
                                   fingerprints=prepared_fingerprints(prepare), progress=progress)

    @staticmethod
    def check_inputs(p: Params, dirs: dict[str, str]) -> None:
        """One-line errors for missing inputs or an unattainable budget, before any work."""
        for key in ("prepare", "profile"):
            if not Path(dirs[key]).exists():
                raise SystemExit(f"error: --{key} {dirs[key]}: no such folder (run the {key} stage)")
        for b in p.quant.bits:
            if b != quant.UNQUANTIZED and not (Path(dirs["quantize"]) / f"b{b}" / "quantize_config.json").exists():
                raise SystemExit(f"error: quant.bits contains {b} but {dirs['quantize']}/b{b} holds no GPTQ cache")

    def identity(self, settings: Settings) -> dict[str, Any]:
        """Everything that defines stage 1's search: its study's name hashes it."""
        return {"units": self.space.units, "bits": self.space.bits, "ranks": self.space.ranks,
                "budget": [self.budget.kind, round(self.budget.limit, 3)], "settings": settings,
                "priors": [np.round(self.i_q, 6).tolist(), np.round(self.i_r, 6).tolist()],
                "evaluator": self.evaluator.key(self.space.minimum(), 0, self.p.seed)}

    def open(self, name: str, sampler: Any, store: str, readonly: bool = False) -> Any:
        """A study in `search.storage`, by default the journal file of record store `store` (so the
        studies travel with the records: both are the stage's DVC output)."""
        journal = records_root(self.dirs) / store / "optuna.journal"
        return open_study(name, self.p.search.storage, str(journal), sampler, readonly=readonly)

    def study(self, stage: str, settings: Settings, readonly: bool = False) -> tuple[Any, PlanSampler]:
        """Stage 1's Optuna study (in the stage-1 store's journal); its name hashes everything that
        defines the search. The later stages read it `readonly`: it is the evolve stage's output."""
        sampler = PlanSampler(make_plan(self.space, self.budget, self.i_q, self.i_r, settings))
        name = f"{stage}-{fingerprint.of_data(self.identity(settings))[:16]}"
        return self.open(name, sampler, self.dirs.get("stage1_store", "evolve"), readonly), sampler

    def refine_study(self, settings: Settings, refine: RefineSettings) -> tuple[Any, PlanSampler, list[Result]]:
        """Stage 2's study, named after stage 1's search and its own settings, and stage 1's history."""
        stage1, _ = self.study("evolve", settings, readonly=True)
        prior = self.history(stage1)
        sampler = PlanSampler(Refinement(self.space, self.budget, self.i_q, self.i_r, prior, refine))
        name = f"refine-{fingerprint.of_data([self.identity(settings), refine])[:16]}"
        return self.open(name, sampler, self.dirs.get("store", "refine")), sampler, prior

    def objective(self, config: Config, fidelity: int, seed: int) -> dict[str, Any]:
        """A fidelity evaluation: at the top rung the adapters are kept (the final arms reuse them)."""
        s = self.p.search
        rung = s.fidelities.index(fidelity)
        val = s.val_per_rung[rung] if s.val_per_rung else 0
        return self.evaluator(config, fidelity, seed, val_samples=val, keep_adapter=rung == len(s.fidelities) - 1)

    def describe(self, config: Config) -> dict[str, Any]:
        m = self.memory.breakdown(self.space, config)
        return {"memory_bytes": m["total"], "avg_bits": m["avg_bits"], "avg_bits_with_lora": m["avg_bits_with_lora"],
                "summary": config.describe(), "config": json.dumps(config.to_dict()["units"])}

    def history(self, study: Any) -> list[Result]:
        return history(study, self.space)

    def reference_config(self) -> Config:
        bits, rank = parse_reference(self.p.budget.reference)
        return self.space.uniform(bits, rank)

    def configs(self, trials: pd.DataFrame) -> list[Config]:
        return [self.space.parse({"units": json.loads(c)}) for c in trials["config"]]

    def best_uniform(self, hist: list[Result]) -> Config:
        """The best uniform configuration that fits the budget, by the search's own evidence (highest
        fidelity reached, then mean score); the most expensive one when none was evaluated."""
        evidence = best_evidence(hist)
        uniforms = ops.feasible_uniforms(self.space, self.budget)
        scored = [(-evidence[c.key].fidelity, evidence[c.key].score, i) for i, c in enumerate(uniforms)
                  if c.key in evidence]
        return uniforms[min(scored)[2]] if scored else uniforms[0]

    def compare(self, pick: Config, hist: list[Result], settings: Settings) -> dict[str, Any]:
        """The search's pick next to the best feasible uniform configuration and the budget's reference
        arm, all at the top rung under the top rung's seeds (records the search made are reused): each
        arm's mean ± standard error, and the pick's paired difference to each (negative: pick better)."""
        rung = len(settings.fidelities) - 1
        fidelity, seeds = settings.fidelities[rung], settings.seeds(rung)
        arms = {"pick": pick, "best_uniform": self.best_uniform(hist)}
        if self.space.contains(self.reference_config()):
            arms[self.p.budget.reference] = self.reference_config()
        out: dict[str, Any] = {"fidelity": fidelity, "seeds": list(seeds), "arms": {}, "pick_minus": {}}
        scores: dict[str, dict[int, float]] = {}
        for name, config in arms.items():
            records = {sd: self.objective(config, fidelity, sd) for sd in seeds}
            scores[name] = {sd: r["score"] for sd, r in records.items() if r["status"] == "ok"}
            m, se = stats.mean_se(list(scores[name].values())) if scores[name] else (None, None)
            out["arms"][name] = {"key": config.key, "summary": config.describe(), "mean": m, "se": se,
                                 "scores": scores[name], "memory_bytes": self.memory.total(self.space, config),
                                 "failed": [sd for sd, r in records.items() if r["status"] != "ok"]}
        for name in arms:
            if name != "pick" and scores[name] and scores["pick"]:
                out["pick_minus"][name] = stats.paired(scores["pick"], scores[name])
        return out

    def best_json(self, best: Evidence, top: dict[str, Any]) -> dict[str, Any]:
        """The chosen configuration: per-unit bits and ranks by module name, memory, and its score
        (mean ± standard error over seeds) at the highest fidelity it reached and at the top rung."""
        return {"config": best.config.to_dict(), "key": best.config.key, "summary": best.config.describe(),
                "fidelity": best.fidelity, "score": best.score, "se": best.se, "seeds": list(best.seeds),
                "top_rung": top, "memory": self.memory.breakdown(self.space, best.config)}


def _worker(stage: str, params_path: str, dirs: dict[str, str], threads: int) -> dict[str, int]:
    """One search worker process: load the params, build everything, search until the stage is done."""
    import importlib

    from stages import common
    from stages.registry import STAGES

    common.setup(threads)
    p, _ = common.load(params_path, STAGES[stage].params)
    return importlib.import_module(f"stages.{stage}").search(SearchSetup(p, dirs))


def run_worker_job(stage: str, p: Params, dirs: dict[str, str], out: Path) -> None:
    """One worker of a search run as separate jobs (Snakemake/SLURM: `search.workers` jobs on one
    study and one record store): search until the stage's plan is done, write this worker's counts to
    `out`. A killed worker job resubmitted anywhere resumes: trials and records are shared."""
    import importlib
    import time

    from autoqra.process import worker_id
    from autoqra.search.samplers import SearchFailed

    start = time.perf_counter()
    try:
        counts = importlib.import_module(f"stages.{stage}").search(SearchSetup(p, dirs, progress=True))
    except SearchFailed as exc:
        raise SystemExit(f"error: {exc}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**counts, "worker": worker_id(), "search_s": round(time.perf_counter() - start, 1)}))


def run_workers(stage: str, p: Params, params_path: str, dirs: dict[str, str], threads: int,
                gathered: list[str] = ()) -> tuple[SearchSetup, list[dict[str, int]], float]:
    """Run a search stage with `search.workers` worker processes sharing its study and the record store
    (one worker: in this process, with progress bars). Returns a setup for the outputs, each worker's
    counts and the seconds spent; a search stopped by failures ends the stage with its one line.

    With `gathered` (the files of worker jobs that already ran the search) the counts come from them,
    and this process finishes whatever they left (normally nothing: it reads the finished study)."""
    import importlib
    import multiprocessing as mp
    import time

    from autoqra.search.samplers import SearchFailed

    start = time.perf_counter()
    try:
        if gathered:
            jobs = [json.loads(Path(f).read_text()) for f in gathered]
            setup = SearchSetup(p, dirs, progress=True)
            left = importlib.import_module(f"stages.{stage}").search(setup)
            return setup, [*jobs, left], max(j.get("search_s", 0.0) for j in jobs) + time.perf_counter() - start
        if p.search.workers == 1:
            setup = SearchSetup(p, dirs, progress=True)
            return setup, [importlib.import_module(f"stages.{stage}").search(setup)], time.perf_counter() - start
        per_worker = max(1, (threads or mp.cpu_count()) // p.search.workers)
        with mp.get_context("spawn").Pool(p.search.workers) as pool:
            mine = pool.starmap(_worker, [(stage, params_path, dirs, per_worker)] * p.search.workers)
    except SearchFailed as exc:
        raise SystemExit(f"error: {exc}") from None
    return SearchSetup(p, dirs), mine, time.perf_counter() - start

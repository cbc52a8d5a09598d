"""The pipeline's one setup object: from parameters and the prepared folders to the space, memory model,
budget, priors, validation fidelity run and studies that every search stage and final arm works with.
Building it loads no model: the fidelity run loads what it needs on its first run.

`dirs` names the folders a run reads and writes (`prepare`, `quantize`, `profile`, `search`; `records`:
the record cache, default `data/records`; `journal`: the name of this stage's study journal in it,
`stage1_journal`: the one holding stage 1's study).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from autoqra import arms, priors, quant, stats
from autoqra.memory import ModelSpec, from_params
from autoqra.params import ParamError, Params
from autoqra.params.rules import search_seeds
from autoqra.pipeline.fidelity import FidelityRun
from autoqra.search import make_plan
from autoqra.search import operators as ops
from autoqra.search.ablations import REFINE_OFF, ablated
from autoqra.search.evolution import Evolution, EvolveSettings
from autoqra.search.history import Evidence, Result
from autoqra.search.optuna import PlanSampler, SearchFailed, history, open_study
from autoqra.search.prices import Prices
from autoqra.search.refinement import Refinement, RefineSettings
from autoqra.space import Config, Space
from autoqra.store import fingerprint, manifest


def evolve_settings(p: Params) -> EvolveSettings:
    """Stage 1's settings, with `search.ablation` applied."""
    s = p.search
    base = EvolveSettings(population=s.population, offspring=s.offspring, candidates=s.candidates,
                    generations=s.generations, fidelities=tuple(s.fidelities), eta=s.eta, max_steps=s.max_steps,
                    seed=p.seed, seeds_per_rung=tuple(s.seeds_per_rung), promotion=s.promotion,
                    warm_start=s.warm_start, thompson=s.thompson)
    return ablated(base, s.ablation, s.refine.evaluations * s.seeds_per_rung[-1] * s.fidelities[-1])


def refine_settings(p: Params) -> RefineSettings:
    """Stage 2's settings: every proposal at stage 1's top fidelity under its top rung's seeds."""
    r, top = p.search.refine, evolve_settings(p)
    off = p.search.ablation in REFINE_OFF
    return RefineSettings(evaluations=0 if off else r.evaluations, fidelity=top.fidelities[-1],
                          seeds=top.seeds(len(top.fidelities) - 1), seed=p.seed, candidates=r.candidates,
                          kernel=r.kernel, acquisition=r.acquisition, length_init=r.length_init,
                          length_min=r.length_min, length_max=r.length_max, success_tolerance=r.success_tolerance,
                          failure_tolerance=r.failure_tolerance)


def prepared_labelled(prepare: Path) -> int | None:
    """The most labelled tokens of one training sequence, as the prepare stage counted them."""
    metrics = prepare / "metrics.json"
    return json.loads(metrics.read_text()).get("train_labelled_max") if metrics.exists() else None


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
    """The record cache: one store for every stage and worker, at a path no stage declares as an
    output (so no orchestrator's clean-up or checkout deletes it); manifests in the stages' outputs
    carry its records (`autoqra.store.manifest`)."""
    return Path(dirs.get("records") or Path(dirs["search"]).parent / "records")


def data_root(dirs: dict[str, str]) -> Path:
    """The folder holding the pipeline's outputs (and their manifests)."""
    return Path(dirs["search"]).parent


def check_inputs(p: Params, dirs: dict[str, str]) -> None:
    """One-line errors for missing inputs, before any work."""
    for key in ("prepare", "profile"):
        if not Path(dirs[key]).exists():
            raise ParamError(f"--{key} {dirs[key]}: no such folder (run the {key} stage)")
    for b in p.quant.bits:
        if b != quant.UNQUANTIZED and not (Path(dirs["quantize"]) / f"b{b}" / "quantize_config.json").exists():
            raise ParamError(f"quant.bits contains {b} but {dirs['quantize']}/b{b} holds no GPTQ cache")


def load_prices(profile: Path, space: Space, p: Params) -> Prices:
    """The space's `Prices` from the profile stage's folder; the rank prices' scale ρ is `finetune.lr`
    (`autoqra.priors`)."""
    if not (profile / "losses.parquet").exists():
        raise ParamError(f"--profile {profile}: holds no losses.parquet (made by an older profile stage: re-run it)")
    try:
        return priors.unit_prices(pd.read_parquet(profile / "priors.parquet"),
                                  pd.read_parquet(profile / "losses.parquet"), space,
                                  p.finetune.lr)
    except KeyError as e:
        raise ParamError(f"--profile {profile}: {e.args[0]}") from None


class Setup:
    """Everything a search stage or a final arm works with, from `p` and the folders `dirs`."""

    def __init__(self, p: Params, dirs: dict[str, str], progress: bool = False, arm_ladders: bool = False):
        """With `arm_ladders`, the fidelity run's ladders are widened to the final arms' (unquantized, `arm_rank`)."""
        self.p, self.dirs = p, dirs
        self.spec = ModelSpec.from_pretrained(Path(dirs["prepare"]) / "model", p.quant.targets)
        self.space, self.memory, self.budget = from_params(p, self.spec, prepared_labelled(Path(dirs["prepare"])))
        self.arm_space = arms.arm_space(self.space, [p.finetune.arm_rank])
        self.prices = load_prices(Path(dirs["profile"]), self.space, p)
        caches = {b: quant.QuantCache(Path(dirs["quantize"]) / f"b{b}") for b in p.quant.bits if b != quant.UNQUANTIZED}
        prepare = Path(dirs["prepare"])
        self.fidelity_run = FidelityRun(model_dir=prepare / "model", task_dir=prepare / "task", caches=caches,
                                   space=self.arm_space if arm_ladders else self.space, lora=p.lora,
                                   finetune=p.finetune, max_length=p.task.max_length,
                                   records=records_root(dirs),
                                   legacy_records=Path(dirs["search"]) / "records", metric=p.search.metric,
                                   backend=p.search.backend, oom_attempts=p.search.oom_attempts,
                                   fingerprints=prepared_fingerprints(prepare), progress=progress,
                                   calibration=(p.quant.calib_samples, p.quant.max_length))
        self.rehydrated = manifest.rehydrate(self.fidelity_run.store, data_root(dirs))  # after a pull: records back

    def identity(self, settings: EvolveSettings) -> dict[str, Any]:
        """Everything that defines stage 1's search: its study's name hashes it."""
        return {"units": self.space.units, "bits": self.space.bits, "ranks": self.space.ranks,
               "budget": [self.budget.kind, round(self.budget.limit, 3)], "settings": settings,
               "priors": self.prices.summary(),
               "evaluator": self.fidelity_run.key(self.space.minimum(), 0, self.p.seed)}

    def open(self, name: str, sampler: Any, store: str, readonly: bool = False) -> Any:
        """A study in `search.storage`, by default the journal `store` in the record cache (the search
        stages snapshot it into their outputs: `manifest.write`)."""
        journal = manifest.journal_path(records_root(self.dirs), store)
        return open_study(name, self.p.search.storage, str(journal), sampler, readonly=readonly)

    def study(self, readonly: bool = False) -> tuple[Any, PlanSampler]:
        """Stage 1's Optuna study (in the stage-1 store's journal); its name hashes everything that
        defines the search. The later stages read it `readonly`: it is the evolve stage's output."""
        settings = evolve_settings(self.p)
        sampler = PlanSampler(make_plan(self.space, self.budget, self.prices, settings,
                                        self.p.search.pick_confidence))
        name = f"evolve-{fingerprint.of_data(self.identity(settings))[:16]}"
        return self.open(name, sampler, self.dirs.get("stage1_journal", "evolve"), readonly), sampler

    def refine_study(self) -> tuple[Any, PlanSampler, list[Result]]:
        """Stage 2's study, named after stage 1's search and its own settings, and stage 1's history."""
        stage1, stage1_sampler = self.study(readonly=True)
        prior = history(stage1, self.space)
        plan = stage1_sampler.plan  # its reference (greedy) guards the answer; an ablation's search has none
        reference = plan.reference() if isinstance(plan, Evolution) else None
        sampler = PlanSampler(Refinement(self.space, self.budget, self.prices, prior, refine_settings(self.p),
                                         reference, self.p.search.pick_confidence))
        name = f"refine-{fingerprint.of_data([self.identity(evolve_settings(self.p)), refine_settings(self.p)])[:16]}"
        return self.open(name, sampler, self.dirs.get("journal", "refine")), sampler, prior

    def objective(self, config: Config, fidelity: int, seed: int) -> dict[str, Any]:
        """A fidelity evaluation (a rung's validation subset, `search.val_per_rung`; off the rungs: all of it);
        a transient failure with attempts left (`search.oom_attempts`) is marked `retry`. A rung trains under
        the top rung's schedule and continues the run of the highest rung below it that this configuration
        reached under this seed, so a promotion pays only the extra steps."""
        s = self.p.search
        rung = s.fidelities.index(fidelity) if fidelity in s.fidelities else None
        val = s.val_per_rung[rung] if s.val_per_rung and rung is not None else 0
        horizon = max(s.fidelities[-1], fidelity)
        lower = tuple(s.fidelities[:rung]) if rung is not None else ()
        record = self.fidelity_run(config, fidelity, seed, horizon=horizon, val_samples=val, lower=lower)
        # out of memory with attempts left: not a result yet, the search hands the job out again
        return {**record, "retry": not self.fidelity_run.store.usable(record)}

    def describe(self, config: Config) -> dict[str, Any]:
        m = self.memory.breakdown(self.space, config)
        return {"memory_bytes": m["total"], "avg_bits": m["avg_bits"], "avg_bits_with_lora": m["avg_bits_with_lora"],
                "summary": config.describe(), "config": json.dumps(config.to_dict()["units"])}

    def reference_config(self) -> Config:
        return self.space.uniform(*arms.parse_uniform(self.p.budget.reference))

    def configs(self, trials: pd.DataFrame) -> list[Config]:
        return [self.space.parse({"units": json.loads(c)}) for c in trials["config"]]

    def values(self, record: dict[str, Any]) -> list[float]:
        """A record's validation score as values paired example by example with any other record on the
        same examples, whose mean is the score: each example's share of the answer loss, or the score
        alone when no per-example values are kept (exact match)."""
        if self.p.search.metric == "answer_loss" and record.get("val_nll"):
            return stats.contributions(record["val_nll"]).tolist()
        return [record["score"]]

    def scored(self, config: Config, fidelity: int, seeds: tuple[int, ...]) -> dict[str, Any]:
        """`config` at `fidelity` under `seeds` (records reused, the missing ones computed): per seed the
        score and per-example values, the mean ± standard error over seeds and examples, the failures."""
        records = {}
        for sd in seeds:
            records[sd] = self.objective(config, fidelity, sd)
            for _ in range(self.fidelity_run.store.max_attempts):  # out of memory with attempts left: again
                if not records[sd]["retry"]:
                    break
                records[sd] = self.objective(config, fidelity, sd)
        ok = {sd: r for sd, r in records.items() if r["status"] == "ok"}
        values = {sd: self.values(r) for sd, r in ok.items()}
        spread = stats.difference([values[sd] for sd in sorted(values)]) if values else None
        return {"key": config.key, "summary": config.describe(), "memory_bytes": self.memory.total(self.space, config),
                "scores": {sd: r["score"] for sd, r in ok.items()}, "values": values,
                "mean": spread["diff"] if spread else None, "se": spread["se"] if spread else None,
                "failed": [sd for sd, r in records.items() if r["status"] != "ok"]}

    def frontier(self) -> dict[str, Any]:
        """The uniform frontier: the uniform configurations that fit the budget (`search.frontier`: all, or
        the maximal ones), scored at the arms' steps (`finetune.steps`) under `search.frontier_seeds` seeds
        (or the top rung's, if more; the first ones are the search's) on the validation split, most expensive
        first; `chosen` (the `best_uniform` arm) is the lowest mean (ties: the cheaper one).
        The test split is never looked at."""
        settings = evolve_settings(self.p)
        top = settings.seeds(len(settings.fidelities) - 1)
        seeds = tuple(search_seeds(self.p.seed, [max(self.p.search.frontier_seeds, len(top))]))
        rows = [{"bits": c.bits[0], "rank": c.ranks[0], "config": c.to_dict(), **self.scored(c, self.p.finetune.steps,
                                                                                             seeds)}
                for c in ops.feasible_uniforms(self.space, self.budget, self.p.search.frontier == "maximal")]
        ok = [r for r in rows if r["mean"] is not None and not r["failed"]]
        if not ok:
            raise SearchFailed(f"no uniform configuration within the budget trained under seeds {list(seeds)}: "
                               "no best_uniform arm")
        chosen = min(ok, key=lambda r: (r["mean"], r["memory_bytes"], r["key"]))
        for r in ok:  # how far each is from the chosen one, paired over seeds and validation examples
            r["minus_chosen"] = stats.compare(r["values"], chosen["values"])
        return {"steps": self.p.finetune.steps, "seeds": list(seeds), "metric": self.p.search.metric,
                "chosen": chosen["key"], "uniforms": [{k: v for k, v in r.items() if k != "values"} for r in rows]}

    def compare(self, pick: Config, best_uniform: Config) -> dict[str, Any]:
        """The search's pick next to the best feasible uniform configuration and the budget's reference
        arm, all at the top rung under the top rung's seeds (records the search made are reused): each
        arm's mean ± standard error, and the pick's paired difference to each with its 95 % interval
        over seeds and validation examples (negative: pick better)."""
        settings = evolve_settings(self.p)
        rung = len(settings.fidelities) - 1
        fidelity, seeds = settings.fidelities[rung], settings.seeds(rung)
        configs = {"pick": pick, "best_uniform": best_uniform}
        if self.space.contains(self.reference_config()):
            configs[self.p.budget.reference] = self.reference_config()
        scored = {name: self.scored(config, fidelity, seeds) for name, config in configs.items()}
        out: dict[str, Any] = {"fidelity": fidelity, "seeds": list(seeds), "pick_minus": {},
                               "arms": {n: {k: v for k, v in a.items() if k != "values"} for n, a in scored.items()}}
        for name in configs:
            if name != "pick" and scored[name]["values"] and scored["pick"]["values"]:
                out["pick_minus"][name] = stats.compare(scored["pick"]["values"], scored[name]["values"])
        return out

    def best_json(self, best: Evidence, top: dict[str, Any]) -> dict[str, Any]:
        """The chosen configuration: per-unit bits and ranks by module name, memory, and its score
        (mean ± standard error over seeds) at the highest fidelity it reached and at the top rung."""
        return {"config": best.config.to_dict(), "key": best.config.key, "summary": best.config.describe(),
                "fidelity": best.fidelity, "score": best.score, "se": best.se, "seeds": list(best.seeds),
                "top_rung": top, "memory": self.memory.breakdown(self.space, best.config)}

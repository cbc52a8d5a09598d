"""Wiring shared by the search stages: space, memory model, budget, priors, evaluator and study."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autoqra import fingerprint, priors, quant
from autoqra.config import Params
from autoqra.evaluate import Evaluator
from autoqra.memory import BudgetError, MemoryModel, ModelSpec, Training, make_budget, parse_reference
from autoqra.search.evolution import Evolution, Result, Settings
from autoqra.search.samplers import EvolutionSampler, history, open_study
from autoqra.space import Config, Space


def _base(p: Params, dirs: dict[str, str]) -> tuple[ModelSpec, Space, MemoryModel]:
    spec = ModelSpec.from_pretrained(Path(dirs["prepare"]) / "model", p.quant.targets)
    space = Space.build([m.name for m in spec.modules], p.search.granularity, p.quant.bits, p.lora.ranks)
    training = Training(batch_size=p.finetune.batch_size, seq_len=p.finetune.max_length,
                        gradient_checkpointing=p.finetune.gradient_checkpointing, lora_dropout=p.lora.dropout > 0)
    return spec, space, MemoryModel(spec, p.quant.group_size, training)


class SearchSetup:
    def __init__(self, p: Params, dirs: dict[str, str], progress: bool = False):
        self.p, self.dirs = p, dirs
        self.spec, self.space, self.memory = _base(p, dirs)
        self.budget = make_budget(p.budget.kind, p.budget.value, p.budget.reference, self.memory, self.space)
        table = pd.read_parquet(Path(dirs["profile"]) / "priors.parquet")
        unit_priors = priors.for_units(table, {u: list(m) for u, m in self.space.members.items()})
        self.i_q = unit_priors.loc[list(self.space.units), "I_q"].to_numpy()
        self.i_r = unit_priors.loc[list(self.space.units), "I_r"].to_numpy()
        caches = {b: quant.QuantCache(Path(dirs["quantize"]) / f"b{b}") for b in p.quant.bits if b != quant.UNQUANTIZED}
        prepare = Path(dirs["prepare"])
        self.evaluator = Evaluator(model_dir=prepare / "model", task_dir=prepare / "task", caches=caches,
                                   space=self.space, lora=p.lora, finetune=p.finetune,
                                   records=Path(dirs["search"]) / "records", metric=p.search.metric,
                                   backend=p.search.backend, memory=self.memory, progress=progress)

    @staticmethod
    def check_inputs(p: Params, dirs: dict[str, str]) -> None:
        """One-line errors for missing inputs or an unattainable budget, before any work."""
        for key in ("prepare", "profile"):
            if not Path(dirs[key]).exists():
                raise SystemExit(f"error: --{key} {dirs[key]}: no such folder (run the {key} stage)")
        for b in p.quant.bits:
            if b != quant.UNQUANTIZED and not (Path(dirs["quantize"]) / f"b{b}" / "quantize_config.json").exists():
                raise SystemExit(f"error: quant.bits contains {b} but {dirs['quantize']}/b{b} holds no GPTQ cache")
        _, space, memory = _base(p, dirs)
        try:
            make_budget(p.budget.kind, p.budget.value, p.budget.reference, memory, space)
        except BudgetError as exc:
            raise SystemExit(f"error: {exc}") from None

    def study(self, stage: str, settings: Settings) -> tuple[Any, EvolutionSampler]:
        """The stage's Optuna study; its name hashes everything that defines the search."""
        evolution = Evolution(self.space, self.budget, self.i_q, self.i_r, settings)
        sampler = EvolutionSampler(evolution)
        identity = {"units": self.space.units, "bits": self.space.bits, "ranks": self.space.ranks,
                    "budget": [self.budget.kind, round(self.budget.limit, 3)], "settings": settings,
                    "priors": [np.round(self.i_q, 6).tolist(), np.round(self.i_r, 6).tolist()],
                    "evaluator": self.evaluator.key(self.space.minimum(), 0, self.p.seed)}
        name = f"{stage}-{fingerprint.of_data(identity)[:16]}"
        journal = str(Path(self.dirs["search"]) / "optuna.journal")
        return open_study(name, self.p.search.storage, journal, sampler), sampler

    def objective(self, config: Config, fidelity: int) -> dict[str, Any]:
        return self.evaluator(config, fidelity, self.p.seed)

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

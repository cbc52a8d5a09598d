"""The budget every configuration must meet, resolved from `budget.*` to a limit on an additive cost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from autoqra import arms
from autoqra.memory.model import MemoryModel, Training
from autoqra.memory.spec import ModelSpec
from autoqra.params import ParamError
from autoqra.space import Config, Space

TOLERANCE = 1e-12  # relative: a cost summed in another order may exceed the limit by rounding alone


class BudgetError(ParamError):
    """The memory budget is invalid or cannot be met by any configuration."""


@dataclass(frozen=True)
class Budget:
    """A limit on an additive cost: constant + Σ_u table[u, bits index, rank index]."""

    kind: str
    limit: float
    constant: float
    table: np.ndarray
    space: Space
    description: str

    def cost(self, config: Config) -> float:
        x = self.space.encode(config)
        n = len(self.space)
        return float(self.constant + self.table[np.arange(n), x[:n], x[n:]].sum())

    def fits(self, cost: float) -> bool:
        """Whether `cost` (bytes, or bits for `bits_per_param`) is within the limit: the one tolerance."""
        return cost <= self.limit * (1 + TOLERANCE)

    def feasible(self, config: Config) -> bool:
        return self.fits(self.cost(config))


def make_budget(kind: str, value: float, reference: str, memory: MemoryModel, space: Space) -> Budget:
    """Resolve `budget.*` to a limit; an unattainable budget is a one-line `BudgetError`."""
    n_params = memory.spec.target_params
    if kind == "bits_per_param":
        table, constant, limit = memory.unit_table(space, "storage_bits"), 0.0, value * n_params
        desc = f"{value:g} bits per target parameter (weights, GPTQ metadata and LoRA at 16 bits)"
    else:
        table, constant = memory.unit_table(space, "bytes"), sum(memory.fixed_bytes().values())
        if kind == "bytes":
            limit, desc = value, f"{value / 2**30:.3f} GiB to fine-tune"
        elif kind == "relative":
            bits, rank = arms.parse_uniform(reference)
            ref = memory.total(space, space.uniform(bits, rank))
            limit = value * ref
            desc = f"{value:g} × {reference} ({ref / 2**30:.3f} GiB) = {limit / 2**30:.3f} GiB"
        else:
            raise BudgetError(f"budget.kind={kind!r}: must be bytes, bits_per_param or relative")
    budget = Budget(kind, limit, constant, table, space, desc)
    floor = budget.cost(space.minimum())
    if not budget.fits(floor):
        need = floor / (limit / value)
        raise BudgetError(f"budget.value={value:g}: infeasible, {desc} is below the smallest configuration "
                          f"(all {space.bits[0]}-bit, rank {space.ranks[0]}); allowed: budget.value >= {need:.4g}")
    return budget


def from_params(p: Any, spec: ModelSpec) -> tuple[Space, MemoryModel, Budget]:
    """The search space, memory model and budget that parameters `p` define for a model of `spec`."""
    space = Space.build([m.name for m in spec.modules], p.search.granularity, p.quant.bits, p.lora.ranks)
    training = Training(batch_size=p.finetune.batch_size, seq_len=p.task.max_length,
                        gradient_checkpointing=p.finetune.gradient_checkpointing, lora_dropout=p.lora.dropout > 0)
    memory = MemoryModel(spec, p.quant.group_size, training)
    return space, memory, make_budget(p.budget.kind, p.budget.value, p.budget.reference, memory, space)

"""The budget every configuration must meet, resolved from `budget.*` to a limit on an additive cost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from autoqra import arms
from autoqra.memory.estimate import MemoryModel, Training
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


def size(n: float) -> str:
    """Bytes for a reader: GiB, or MiB below a tenth of one."""
    return f"{n / 2**30:.3f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.2f} MiB"


def make_budget(kind: str, value: float, reference: str, memory: MemoryModel, space: Space) -> Budget:
    """Resolve `budget.*` to a limit; an unattainable budget is a one-line `BudgetError`.

    `relative` measures from the smallest configuration of the space (all lowest bits, lowest rank) to
    the reference arm: the limit is the smallest configuration's bytes plus `value` times the bytes the
    reference needs beyond them. So 0 is the smallest configuration, 1 the reference, 0.9 and 1.1 take 10 %
    off or add 10 % of what the allocation can move; the fixed bytes (embeddings, norms, head, the
    base's activations, and each unit's bytes that no choice on the ladders changes) are never scaled.
    `value_range` gives the values at which the smallest and the largest configuration fit.
    """
    budget = _budget(kind, value, reference, memory, space)
    low, _ = value_range(kind, reference, memory, space)
    if not budget.fits(budget.cost(space.minimum())):
        raise BudgetError(f"budget.value={value:g}: infeasible, {budget.description} is below the smallest "
                          f"configuration (all {space.bits[0]}-bit, rank {space.ranks[0]}); allowed: "
                          f"budget.value >= {low:.4g}")
    return budget


def _budget(kind: str, value: float, reference: str, memory: MemoryModel, space: Space) -> Budget:
    n_params = memory.spec.target_params
    if kind == "bits_per_param":
        table, constant, limit = memory.unit_table(space, "storage_bits"), 0.0, value * n_params
        desc = f"{value:g} bits per target parameter (weights, GPTQ metadata and LoRA at 16 bits)"
    elif kind in ("bytes", "relative"):
        table, constant = memory.unit_table(space, "bytes"), sum(memory.fixed_bytes().values())
        if kind == "bytes":
            limit, desc = value, f"{size(value)} to fine-tune"
        else:
            floor = Budget(kind, 0.0, constant, table, space, "").cost(space.minimum())
            ref = memory.total(space, space.uniform(*arms.parse_uniform(reference)))
            limit = floor + value * (ref - floor)
            desc = (f"the smallest configuration ({size(floor)}) + {value:g} × what {reference} needs beyond it "
                    f"({size(ref - floor)}) = {size(limit)}")
    else:
        raise BudgetError(f"budget.kind={kind!r}: must be bytes, bits_per_param or relative")
    return Budget(kind, limit, constant, table, space, desc)


def value_range(kind: str, reference: str, memory: MemoryModel, space: Space) -> tuple[float, float]:
    """The `budget.value` at which the smallest configuration just fits, and the one from which the
    largest fits too (above it the budget binds nothing)."""
    unit, zero = (_budget(kind, v, reference, memory, space) for v in (1.0, 0.0))
    offset = zero.limit if kind == "relative" else 0.0  # the limit is affine in the value
    top = space.uniform(space.bits[-1], space.ranks[-1])
    low, high = ((unit.cost(c) - offset) / (unit.limit - offset) for c in (space.minimum(), top))
    return low, high


def from_params(p: Any, spec: ModelSpec, labelled: int | None = None) -> tuple[Space, MemoryModel, Budget]:
    """The search space, memory model and budget that parameters `p` define for a model of `spec`;
    `labelled`: the most answer tokens of one training sequence (the prepare stage's
    `train_labelled_max`; None: every position, an upper bound). The model is of the run on a GPU
    (fused attention) wherever the search runs: the budget is GPU memory."""
    space = Space.from_modules([m.name for m in spec.modules], p.search.granularity, p.quant.bits, p.lora.ranks)
    training = Training(batch_size=p.finetune.batch_size, seq_len=p.task.max_length,
                        gradient_checkpointing=p.finetune.gradient_checkpointing, lora_dropout=p.lora.dropout > 0,
                        labelled=labelled)
    memory = MemoryModel(spec, p.quant.group_size, training)
    return space, memory, make_budget(p.budget.kind, p.budget.value, p.budget.reference, memory, space)

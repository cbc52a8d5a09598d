"""The memory model (`model`: bytes to fine-tune a configuration, every term checkable against real
tensors), what it reads of a base model (`spec`) and the budget every candidate must meet (`budget`)."""

from autoqra.memory.budget import TOLERANCE, Budget, BudgetError, from_params, make_budget, value_range
from autoqra.memory.estimate import LORA_BYTES_PER_PARAM, MemoryModel, Training, measured_bytes
from autoqra.memory.spec import ModelSpec, ModuleShape

__all__ = ["LORA_BYTES_PER_PARAM", "TOLERANCE", "Budget", "BudgetError", "MemoryModel", "ModelSpec", "ModuleShape",
           "Training", "from_params", "make_budget", "measured_bytes", "value_range"]

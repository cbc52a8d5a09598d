"""AutoQRA: per-layer GPTQ bit-widths and LoRA ranks found jointly under a GPU-memory budget.

The public API (imported lazily, so `import autoqra` stays cheap for the Snakefile)::

    from autoqra import Space, Prices, make_budget, evolve, refine, EvolveSettings, RefineSettings
    study, evolution = evolve(objective, space, budget, Prices.from_importance(space, i_q, i_r), EvolveSettings(...))

Parameters (`Params`, `load_params`), the search space (`Space`, `Config`), memory (`ModelSpec`,
`MemoryModel`, `make_budget`), the priors' price tables (`Prices`), repair, the two search stages on
any objective (`evolve`, `refine`, a study's `history`),
a fidelity run on a real model (`FidelityRun`), the pipeline's composition root (`Setup`) and the
paired statistics (`paired`, `mean_se`).
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "Params": "autoqra.params", "ParamError": "autoqra.params", "load_params": "autoqra.params",
    "load_file": "autoqra.params",
    "Space": "autoqra.space", "Config": "autoqra.space", "UNQUANTIZED": "autoqra.space",
    "ModelSpec": "autoqra.memory", "MemoryModel": "autoqra.memory", "Training": "autoqra.memory",
    "Budget": "autoqra.memory", "make_budget": "autoqra.memory",
    "repair": "autoqra.search.repair", "Prices": "autoqra.search.prices",
    "evolve": "autoqra.search", "refine": "autoqra.search", "EvolveSettings": "autoqra.search",
    "RefineSettings": "autoqra.search", "ranking": "autoqra.search", "history": "autoqra.search.optuna",
    "FidelityRun": "autoqra.pipeline.fidelity", "Setup": "autoqra.pipeline.setup",
    "paired": "autoqra.stats", "mean_se": "autoqra.stats",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'autoqra' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return __all__

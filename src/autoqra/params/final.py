"""The sections of what a run produces: the final evaluation, the export (and the engine that serves it),
and the sweep's grid of runs."""

from __future__ import annotations

from dataclasses import dataclass

from autoqra.params.fields import ParamError, spec
from autoqra.serving import TARGETS

ABLATIONS = ("none", "no_priors", "no_surrogate", "single_fidelity", "no_refine", "random", "tpe")


@dataclass
class EvaluateParams:
    """The final evaluation of every arm on the test split."""

    exact_match: bool = spec(True, help="greedy exact match through lm-evaluation-harness (a local task written "
                             "from the test split), next to the answer loss")
    lm_eval_tasks: list[str] = spec([], help="extra lm-evaluation-harness task names (their datasets must be in "
                                    "the local cache: the hub is offline)")
    batch_size: int = spec(32, help="sequences per evaluation batch", min=1)


@dataclass
class ExportParams:
    """The export (`data/final/autoqra/export/`) and the engine it is for: a target's kernels and LoRA loader
    restrict the search (bits, fused layers, ranks), checked before any work (`autoqra.serving`)."""

    target: str = spec("gptqmodel", help="where the export is served: 'gptqmodel' (GPTQModel + PEFT: any bits, "
                       "per-module ranks), 'vllm' or 'sglang' (their GPTQ kernels and LoRA loaders: see "
                       "docs/serving.md for what each loads; the adapter is written at one rank, zero-padded)",
                       choices=list(TARGETS))


@dataclass
class SweepParams:
    """A grid of pipeline runs (cells): search ablations x search seeds x budgets, one table over them.

    Each cell is the composed params with `search.ablation`, `seed` and `budget.value` set; it runs
    evolve, refine and the final arms of `sweep.arms` into `data/sweep/cells/<ablation>-s<seed>-b<budget>/`
    through the shared GPTQ caches, priors and record store (the keys of single runs: nothing two runs
    share is computed twice). The summary goes to `data/sweep/<name>/`."""

    name: list[str] = spec([], help="the sweep's name as a one-element list, [] for no sweep (DVC expands its "
                           "summary stage over this list, so the stage exists only while a sweep is set)",
                           items={"pattern": r"^[A-Za-z0-9_]+$"})
    ablations: list[str] = spec([], help=f"values of search.ablation ({', '.join(ABLATIONS)})",
                                items={"choices": list(ABLATIONS)}, unique=True)
    seeds: list[int] = spec([], help="values of the top-level seed (the search's seed)", items={"min": 0},
                            unique=True)
    budgets: list[float] = spec([], help="values of budget.value (in budget.kind's unit)",
                                items={"min": 0.0, "exclusive_min": True}, unique=True)
    arms: list[str] = spec(["autoqra"], help="final arms trained (finetune.seeds) and tested in every cell "
                           "(each one of finetune.arms)",
                           min_items=1, unique=True)

    def __post_init__(self) -> None:
        axes = {"ablations": self.ablations, "seeds": self.seeds, "budgets": self.budgets}
        if len(self.name) > 1 or self.name == ["cells"]:
            raise ParamError(f"sweep.name={self.name}: one name or none, not 'cells' (the cells' folder)")
        if self.name:
            empty = [k for k, v in axes.items() if not v]
            if empty:
                raise ParamError(f"sweep.{empty[0]}=[]: a sweep needs at least one value on every axis "
                                 f"(ablations, seeds, budgets)")
        elif any(axes.values()):
            axis = next(k for k, v in axes.items() if v)
            raise ParamError(f"sweep.name=[]: sweep.{axis} is set but the sweep has no name (e.g. sweep.name=[mine])")

"""Each stage's declared interface: the params keys it reads and the code it depends on.

The single home of what a stage depends on. The Snakemake rules read it; `dvc.yaml` lists the same
keys and files, and a test keeps the two orchestrators equal. Code dependencies are the stage's
own entry point and the library modules holding its algorithm (not shared plumbing such as the
config module, so that adding a parameter does not invalidate hours of GPTQ).
"""

from __future__ import annotations

from typing import NamedTuple


class Stage(NamedTuple):
    params: tuple[str, ...]
    code: tuple[str, ...]


# stage 1 reads every search key but stage 2's own
SEARCH = tuple(f"search.{k}" for k in ("granularity", "population", "generations", "offspring", "candidates",
                                       "fidelities", "eta", "max_steps", "metric", "storage", "workers", "backend",
                                       "seeds_per_rung", "val_per_rung", "max_failures",
                                       "oom_attempts"))

STAGES: dict[str, Stage] = {
    "prepare": Stage(params=("model", "task"),
                     code=("stages/prepare.py", "src/autoqra/models.py", "src/autoqra/tasks.py")),
    "quantize": Stage(params=("quant.group_size", "quant.sym", "quant.desc_act", "quant.damp", "quant.calib_samples",
                              "quant.max_length", "quant.targets"),
                      code=("stages/quantize.py", "src/autoqra/gptq.py")),
    "profile": Stage(params=("profile",),
                     code=("stages/profile.py", "src/autoqra/priors.py")),
    "evolve": Stage(params=("seed", *SEARCH, "budget", "lora", "finetune", "task.max_length", "quant.bits",
                            "quant.group_size", "quant.targets"),
                    code=("stages/evolve.py", "stages/search_setup.py", "src/autoqra/evaluate.py",
                          "src/autoqra/finetune.py", "src/autoqra/memory.py", "src/autoqra/space.py",
                          "src/autoqra/search/evolution.py", "src/autoqra/search/operators.py",
                          "src/autoqra/search/repair.py", "src/autoqra/search/samplers.py",
                          "src/autoqra/search/surrogate.py")),
    "refine": Stage(params=("seed", *SEARCH, "search.refine", "budget", "lora", "finetune", "task.max_length",
                            "quant.bits", "quant.group_size", "quant.targets"),
                    code=("stages/refine.py", "stages/search_setup.py", "src/autoqra/search/refinement.py",
                          "src/autoqra/search/trust_region.py", "src/autoqra/search/gp.py",
                          "src/autoqra/search/samplers.py")),
    "finetune": Stage(params=("seed", *SEARCH, "search.refine", "budget", "lora", "finetune", "task.max_length",
                              "quant.bits", "quant.group_size", "quant.targets"),
                      code=("stages/finetune.py", "stages/search_setup.py", "src/autoqra/arms.py",
                            "src/autoqra/evaluate.py", "src/autoqra/finetune.py", "src/autoqra/memory.py")),
    "evaluate": Stage(params=("evaluate", "finetune.seeds", "task.max_length", "quant.group_size", "quant.targets",
                              "lora", "finetune.dtype"),
                      code=("stages/evaluate.py", "src/autoqra/final.py", "src/autoqra/scoring.py")),
    "report": Stage(params=("finetune.arms", "finetune.seeds", "budget", "search.metric", "search.granularity",
                            "quant.bits", "quant.targets", "lora.ranks", "model.source"),
                    code=("stages/report.py", "src/autoqra/final_report.py")),
    "export": Stage(params=("finetune.seeds", "lora", "task.max_length", "evaluate.batch_size", "quant.targets"),
                    code=("stages/export.py", "src/autoqra/quant.py")),
}

"""Each stage's declared interface: the params keys it reads, the code it depends on, its command.

The single home of what a stage depends on and how it is run. The Snakemake rules take their params,
code inputs and shell command from it (`snakemake_shell`); `dvc.yaml` is generated from it (`autoqra
dvc --write dvc.yaml`, kept equal by a test), and a test keeps the two orchestrators' jobs equal. Code
dependencies are the stage's own entry point, the library modules holding its algorithm and, for every
stage that trains or scores, the value code the record keys hash (`VALUE_CODE`, one list for both), so
a change to the scoring code re-runs the stages whose results it changes (not shared plumbing such as
the params module, so that adding a parameter does not invalidate hours of GPTQ).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from autoqra.store.fingerprint import TEST_CODE, VALUE_CODE


class Stage(NamedTuple):
    params: tuple[str, ...]
    code: tuple[str, ...]
    cmd: str = ""                  # the command, DVC's syntax (`${item}` inside a foreach, `${key}` a param)
    deps: tuple[str, ...] = ()     # data the stage reads (outputs of others)
    outs: tuple[str, ...] = ()
    foreach: str | None = None     # DVC's foreach expression (Snakemake: a wildcard)
    matrix: dict[str, str] | None = None  # DVC's matrix (Snakemake: one wildcard per key, same order)


def files(*modules: str) -> tuple[str, ...]:
    """Source files of library modules (`autoqra.train.scoring` -> `src/autoqra/train/scoring.py`)."""
    return tuple(f"src/{m.replace('.', '/')}.py" for m in modules)


VALUE = files(*VALUE_CODE)  # what a training or scoring stage's records depend on
SEARCH_CODE = files("autoqra.pipeline.setup", "autoqra.pipeline.search", "autoqra.pipeline.workers",
                    "autoqra.memory.estimate", "autoqra.memory.budget", "autoqra.search.evolution",
                    "autoqra.search.history", "autoqra.search.ablations", "autoqra.search.operators",
                    "autoqra.search.repair", "autoqra.search.knapsack", "autoqra.search.performance",
                    "autoqra.search.prices", "autoqra.priors",
                    "autoqra.search.diagnostics", "autoqra.search.baselines",
                    "autoqra.search.optuna.sampler", "autoqra.search.optuna.driver", "autoqra.search.optuna.liveness",
                    "autoqra.search.optuna.storage", "autoqra.search.promotion", "autoqra.search.gp")
REFINE_CODE = files("autoqra.search.refinement", "autoqra.search.trust_region", "autoqra.search.gp")
ARMS_CODE = (*SEARCH_CODE, *files("autoqra.arms", "autoqra.pipeline.arms"))


def _code(stage: str, *more: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys((f"stages/{stage}.py", *more)))


# stage 1 reads every search key but stage 2's own, and but where the study lives (`search.storage`: a URL
# may carry a password, and it changes no result, so it is in no stage's params and no dvc.lock)
LOCATIONS = ("search.storage",)
SEARCH = tuple(f"search.{k}" for k in ("granularity", "population", "generations", "offspring", "candidates",
                                       "fidelities", "eta", "max_steps", "metric", "workers", "backend",
                                       "seeds_per_rung", "val_per_rung", "max_failures",
                                       "oom_attempts", "ablation", "frontier", "promotion",
                                       "warm_start", "thompson", "frontier_seeds", "pick_confidence"))
# keys only a search stage's gather job reads: they choose the answer among scored results (the pick's
# threshold) or score beside the search (which uniforms the frontier trains, under how many seeds); a search
# worker's evaluations never depend on them, so a change re-runs the gathers, not the workers (`worker_params`)
ANSWER_ONLY = ("search.frontier", "search.frontier_seeds", "search.pick_confidence")
DIRS = ("--prepare data/prepare --quantize data/quantize --profile data/profile --search data/search "
        "--records data/records")
SEARCH_PARAMS = ("seed", *SEARCH, "budget", "lora", "finetune", "task.max_length", "quant.bits", "quant.group_size",
                 "quant.targets")

STAGES: dict[str, Stage] = {
    "prepare": Stage(params=("model", "task"),
                     code=_code("prepare", *files("autoqra.pipeline.prepare", "autoqra.models", "autoqra.devices",
                                                  "autoqra.data.generator", "autoqra.data.sources",
                                                  "autoqra.data.encoding")),
                     cmd="python -m stages.prepare --params params.yaml --out data/prepare",
                     outs=("data/prepare",)),
    "quantize": Stage(params=("quant.group_size", "quant.sym", "quant.desc_act", "quant.damp", "quant.calib_samples",
                              "quant.max_length", "quant.targets", "quant.eval_examples"),
                      code=_code("quantize", *files("autoqra.pipeline.quantize", "autoqra.quant.gptq",
                                                   "autoqra.data.encoding", "autoqra.devices")),
                      # the calibration ids; the dtype of its held-out pass
                      cmd="python -m stages.quantize --params params.yaml --bits ${item} --prepare data/prepare "
                          "--out data/quantize/b${item}",
                      deps=("data/prepare",), outs=("data/quantize/b${item}",), foreach="${quant.bits}"),
    "profile": Stage(params=("profile", "quant.bits", "search.granularity", "lora.init", "lora.ranks",
                             "quant.calib_samples", "quant.max_length"),
                     code=_code("profile", *files("autoqra.pipeline.profile", "autoqra.priors", "autoqra.train.scoring",
                                                  "autoqra.quant.cache", "autoqra.quant.eora", "autoqra.data.encoding",
                                                  "autoqra.search.prices", "autoqra.space")),
                     cmd="python -m stages.profile --params params.yaml --prepare data/prepare "
                         "--quantize data/quantize --records data/records --out data/profile",
                     deps=("data/prepare", "data/quantize"), outs=("data/profile",)),
    "evolve": Stage(params=SEARCH_PARAMS,
                    code=_code("evolve", *SEARCH_CODE, *VALUE),
                    cmd=f"python -m stages.evolve --params params.yaml {DIRS} --out data/search/evolve",
                    deps=("data/prepare", "data/quantize", "data/profile"), outs=("data/search/evolve",)),
    "refine": Stage(params=(*SEARCH_PARAMS[:len(SEARCH) + 1], "search.refine", *SEARCH_PARAMS[len(SEARCH) + 1:]),
                    code=_code("refine", *SEARCH_CODE, *REFINE_CODE, *VALUE),
                    cmd=f"python -m stages.refine --params params.yaml {DIRS} --evolve data/search/evolve "
                        "--out data/search/refine",
                    deps=("data/prepare", "data/quantize", "data/profile", "data/search/evolve"),
                    outs=("data/search/refine",)),
    "finetune": Stage(params=(*SEARCH_PARAMS[:len(SEARCH) + 1], "search.refine", *SEARCH_PARAMS[len(SEARCH) + 1:]),
                      code=_code("finetune", *ARMS_CODE, *VALUE),
                      cmd=f"python -m stages.finetune --params params.yaml --arm ${{item}} {DIRS} "
                          "--out data/final/${item}/train",
                      deps=("data/prepare", "data/quantize", "data/profile", "data/search/evolve",
                            "data/search/refine"),
                      outs=("data/final/${item}/train",), foreach="${finetune.arms}"),
    "evaluate": Stage(params=("evaluate", "finetune.seeds", "task.max_length", "quant.group_size", "quant.targets",
                              "lora", "finetune.dtype"),
                      code=_code("evaluate", *ARMS_CODE, *files(*TEST_CODE), *VALUE),
                      cmd=f"python -m stages.evaluate --params params.yaml --arm ${{item}} {DIRS} "
                          "--train data/final/${item}/train --out data/final/${item}/metrics.json",
                      deps=("data/prepare", "data/quantize", "data/profile", "data/final/${item}/train"),
                      outs=("data/final/${item}/records.json", "data/final/${item}/metrics.json"),
                      foreach="${finetune.arms}"),
    "report": Stage(params=("finetune.arms", "finetune.seeds", "budget", "search.metric", "search.granularity",
                            "quant.bits", "quant.targets", "lora.ranks", "model.source"),
                    code=_code("report", *files("autoqra.pipeline.report", "autoqra.report.arms",
                                                "autoqra.report.plots", "autoqra.report.search",
                                                "autoqra.pipeline.setup", "autoqra.priors", "autoqra.search.prices")),
                    cmd=f"python -m stages.report --params params.yaml {DIRS} --final data/final --out data/report",
                    deps=("data/prepare", "data/profile", "data/search/evolve", "data/search/refine", "data/final"),
                    outs=("data/report",)),
    "export": Stage(params=("finetune.seeds", "lora", "task.max_length", "evaluate.batch_size", "quant.targets",
                            "export"),
                    code=_code("export", *files("autoqra.pipeline.export", "autoqra.quant.packed",
                                                "autoqra.train.lora", "autoqra.serving", *TEST_CODE)),
                    cmd=f"python -m stages.export --params params.yaml {DIRS} --train data/final/autoqra/train "
                        "--arm-metrics data/final/autoqra/metrics.json --out data/final/autoqra/export",
                    deps=("data/prepare", "data/quantize", "data/profile", "data/final/autoqra/train",
                          "data/final/autoqra/metrics.json"),
                    outs=("data/final/autoqra/export",)),
}

# A sweep (params `sweep`): one job per cell (ablation x seed x budget) running the search and the sweep's
# arms through the shared caches and records, and one summary. Both expand to nothing without a sweep.
_ITEM = "${item.ablation}-s${item.seed}-b${item.budget}"
_CELL = f"data/sweep/cells/{_ITEM}"
_READ = {*STAGES["refine"].params, *STAGES["finetune"].params, *STAGES["evaluate"].params, "sweep.arms"}
STAGES["sweep_cell"] = Stage(
    params=tuple(sorted(k for k in _READ if not any(k.startswith(o + ".") for o in _READ))),
    code=_code("sweep", *files("autoqra.sweep", "autoqra.pipeline.sweep", "autoqra.report.sweep"),
               *STAGES["evolve"].code, *STAGES["refine"].code, *STAGES["finetune"].code, *STAGES["evaluate"].code),
    cmd=f"python -m stages.sweep cell --params params.yaml {DIRS} --ablation ${{item.ablation}} "
        "--seed ${item.seed} --budget ${item.budget} --out " + _CELL,
    deps=("data/prepare", "data/quantize", "data/profile"), outs=(_CELL,),
    matrix={"ablation": "${sweep.ablations}", "seed": "${sweep.seeds}", "budget": "${sweep.budgets}"})
STAGES["sweep_summary"] = Stage(
    params=("sweep",), code=_code("sweep", *files("autoqra.sweep", "autoqra.report.sweep", "autoqra.report.plots")),
    cmd="python -m stages.sweep summary --params params.yaml --cells data/sweep/cells --out data/sweep/${item}",
    deps=("data/sweep/cells",), outs=("data/sweep/${item}",), foreach="${sweep.name}")

# what `dvc metrics show` / `dvc plots show` list: one file per stage that is not a foreach, the same paths for
# every experiment (the report gathers the per-bit-width and per-arm numbers; a foreach's files depend on the
# params, and after a Snakemake run of another experiment params.yaml still names the default's arms)
METRICS = ("data/prepare/metrics.json", "data/profile/metrics.json", "data/search/evolve/metrics.json",
           "data/search/refine/metrics.json", "data/report/metrics.json")
PLOTS = ("data/profile/priors.png", "data/search/evolve/trace.png", "data/search/refine/refine.png",
         "data/report/pareto.png", "data/report/allocation.png", "data/report/search.png")

HEADER = """# Generated from stages/registry.py by `autoqra dvc --write dvc.yaml` (a test keeps it so): the same
# stages as the Snakefile, with the same commands, deps, params and outputs. Params come from
# params.yaml, the composition of params/; `dvc exp run -S key=value` recomposes it through Hydra.
"""


def dvc_yaml() -> dict[str, Any]:
    """dvc.yaml as data: every stage of the registry, then the metrics and plots."""
    stages: dict[str, Any] = {}
    for name, st in STAGES.items():
        body: dict[str, Any] = {"cmd": st.cmd, "deps": [*st.code, *st.deps], "params": list(st.params)}
        if st.outs:
            body["outs"] = list(st.outs)
        if st.foreach:
            stages[name] = {"foreach": st.foreach, "do": body}
        elif st.matrix:
            stages[name] = {"matrix": dict(st.matrix), **body}
        else:
            stages[name] = body
    return {"stages": stages, "metrics": list(METRICS), "plots": list(PLOTS)}


def dvc_text() -> str:
    import yaml

    return HEADER + yaml.safe_dump(dvc_yaml(), sort_keys=False, width=1000)


def _lookup(tree: dict[str, Any], expr: str) -> Any:
    """`quant.bits[0]` in a params tree."""
    node: Any = tree
    for part in re.findall(r"[^.\[\]]+", expr):
        node = node[int(part)] if part.isdigit() else node[part]
    return node


def worker_params(name: str) -> tuple[str, ...]:
    """The params one worker job of search stage `name` reads: the stage's, less `ANSWER_ONLY`."""
    return tuple(k for k in STAGES[name].params if k not in ANSWER_ONLY)


def snakemake_shell(name: str, params: dict[str, Any], wildcards: tuple[str, ...] = (), extra: str = "",
                    worker: bool = False) -> str:
    """The stage's command as a Snakemake rule's `shell:` (the same command DVC runs): the composed params
    file, `${item}` (or a matrix item's fields, in order) as the rule's `wildcards`, params values
    interpolated as DVC does, Snakemake's thread count; `worker`: one worker job of a search stage,
    writing its counts to `{output}` instead of the stage's outputs."""
    cmd = STAGES[name].cmd.replace("--params params.yaml", "--params {PARAMS_FILE}")
    items = list(STAGES[name].matrix or {})
    for i, wc in enumerate(wildcards):
        cmd = cmd.replace("${item." + items[i] + "}" if items else "${item}", "{wildcards." + wc + "}")
    cmd = re.sub(r"\$\{([\w.\[\]]+)\}", lambda m: str(_lookup(params, m[1])), cmd)
    if worker:
        cmd = re.sub(r" --out \S+", "", cmd) + " --worker-out {output}"
    return f"{cmd} {extra}--threads {{threads}}"

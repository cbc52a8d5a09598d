"""Each stage's declared interface: the params keys it reads, the code it depends on, its command.

The single home of what a stage depends on. The Snakemake rules read it; `dvc.yaml` is generated
from it (`autoqra dvc --write dvc.yaml`, kept equal by a test), and a test keeps the two orchestrators'
jobs equal. Code dependencies are the stage's own entry point and the library modules holding its
algorithm (not shared plumbing such as the config module, so that adding a parameter does not
invalidate hours of GPTQ).
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Stage(NamedTuple):
    params: tuple[str, ...]
    code: tuple[str, ...]
    cmd: str = ""                  # DVC's command (`${item}` inside a foreach)
    deps: tuple[str, ...] = ()     # data the stage reads (outputs of others)
    outs: tuple[str, ...] = ()
    foreach: str | None = None     # DVC's foreach expression (Snakemake: a wildcard)
    matrix: dict[str, str] | None = None  # DVC's matrix (Snakemake: one wildcard per key, same order)
    # DVC outputs a re-run extends rather than replaces (`persist: true`): the stage's record store and
    # study journal. Snakemake does not declare them (it would delete them before a re-run).
    persist: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()  # metrics files outside `outs` (cached outputs too)


# stage 1 reads every search key but stage 2's own
SEARCH = tuple(f"search.{k}" for k in ("granularity", "population", "generations", "offspring", "candidates",
                                       "fidelities", "eta", "max_steps", "metric", "storage", "workers", "backend",
                                       "seeds_per_rung", "val_per_rung", "max_failures",
                                       "oom_attempts", "ablation"))

STAGES: dict[str, Stage] = {
    "prepare": Stage(params=("model", "task"),
                     code=("stages/prepare.py", "src/autoqra/models.py", "src/autoqra/tasks.py"),
                     cmd="python -m stages.prepare --params params.yaml --out data/prepare",
                     outs=("data/prepare",)),
    "quantize": Stage(params=("quant.group_size", "quant.sym", "quant.desc_act", "quant.damp", "quant.calib_samples",
                              "quant.max_length", "quant.targets"),
                      code=("stages/quantize.py", "src/autoqra/gptq.py"),
                      cmd="python -m stages.quantize --params params.yaml --bits ${item} --prepare data/prepare "
                          "--out data/quantize/b${item}",
                      deps=("data/prepare",), outs=("data/quantize/b${item}",), foreach="${quant.bits}"),
    "profile": Stage(params=("profile",),
                     code=("stages/profile.py", "src/autoqra/priors.py"),
                     cmd="python -m stages.profile --params params.yaml --prepare data/prepare "
                         "--cache data/quantize/b${quant.bits[0]} --out data/profile",
                     deps=("data/prepare", "data/quantize/b${quant.bits[0]}"), outs=("data/profile",)),
    "evolve": Stage(params=("seed", *SEARCH, "budget", "lora", "finetune", "task.max_length", "quant.bits",
                            "quant.group_size", "quant.targets"),
                    code=("stages/evolve.py", "stages/search_setup.py", "src/autoqra/evaluate.py",
                          "src/autoqra/finetune.py", "src/autoqra/memory.py", "src/autoqra/space.py",
                          "src/autoqra/search/evolution.py", "src/autoqra/search/operators.py",
                          "src/autoqra/search/repair.py", "src/autoqra/search/samplers.py",
                          "src/autoqra/search/surrogate.py"),
                    cmd="python -m stages.evolve --params params.yaml --prepare data/prepare --quantize data/quantize "
                        "--profile data/profile --search data/search --out data/search/evolve",
                    deps=("data/prepare", "data/quantize", "data/profile"), outs=("data/search/evolve",),
                    persist=("data/search/records/evolve",)),
    "refine": Stage(params=("seed", *SEARCH, "search.refine", "budget", "lora", "finetune", "task.max_length",
                            "quant.bits", "quant.group_size", "quant.targets"),
                    code=("stages/refine.py", "stages/search_setup.py", "src/autoqra/search/refinement.py",
                          "src/autoqra/search/trust_region.py", "src/autoqra/search/gp.py",
                          "src/autoqra/search/samplers.py"),
                    cmd="python -m stages.refine --params params.yaml --prepare data/prepare --quantize data/quantize "
                        "--profile data/profile --search data/search --evolve data/search/evolve "
                        "--out data/search/refine",
                    deps=("data/prepare", "data/quantize", "data/profile", "data/search/evolve"),
                    outs=("data/search/refine",), persist=("data/search/records/refine",)),
    "finetune": Stage(params=("seed", *SEARCH, "search.refine", "budget", "lora", "finetune", "task.max_length",
                              "quant.bits", "quant.group_size", "quant.targets"),
                      code=("stages/finetune.py", "stages/search_setup.py", "src/autoqra/arms.py",
                            "src/autoqra/evaluate.py", "src/autoqra/finetune.py", "src/autoqra/memory.py"),
                      cmd="python -m stages.finetune --params params.yaml --arm ${item} --prepare data/prepare "
                          "--quantize data/quantize --profile data/profile --search data/search "
                          "--out data/final/${item}/train",
                      deps=("data/prepare", "data/quantize", "data/profile", "data/search/evolve",
                            "data/search/refine"),
                      outs=("data/final/${item}/train",), foreach="${finetune.arms}",
                      persist=("data/search/records/finetune/${item}",)),
    "evaluate": Stage(params=("evaluate", "finetune.seeds", "task.max_length", "quant.group_size", "quant.targets",
                              "lora", "finetune.dtype"),
                      code=("stages/evaluate.py", "src/autoqra/final.py", "src/autoqra/scoring.py"),
                      cmd="python -m stages.evaluate --params params.yaml --arm ${item} --prepare data/prepare "
                          "--quantize data/quantize --profile data/profile --search data/search "
                          "--train data/final/${item}/train --out data/final/${item}/metrics.json",
                      deps=("data/prepare", "data/quantize", "data/profile", "data/final/${item}/train"),
                      metrics=("data/final/${item}/metrics.json",), foreach="${finetune.arms}",
                      persist=("data/search/records/evaluate/${item}",)),
    "report": Stage(params=("finetune.arms", "finetune.seeds", "budget", "search.metric", "search.granularity",
                            "quant.bits", "quant.targets", "lora.ranks", "model.source"),
                    code=("stages/report.py", "src/autoqra/final_report.py"),
                    cmd="python -m stages.report --params params.yaml --prepare data/prepare --quantize data/quantize "
                        "--profile data/profile --search data/search --final data/final --out data/report",
                    deps=("data/prepare", "data/profile", "data/search/evolve", "data/search/refine", "data/final"),
                    outs=("data/report",)),
    "export": Stage(params=("finetune.seeds", "lora", "task.max_length", "evaluate.batch_size", "quant.targets"),
                    code=("stages/export.py", "src/autoqra/quant.py"),
                    cmd="python -m stages.export --params params.yaml --prepare data/prepare --quantize data/quantize "
                        "--profile data/profile --search data/search --train data/final/autoqra/train "
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
    code=tuple(dict.fromkeys(("stages/sweep.py", "src/autoqra/sweep.py", *STAGES["evolve"].code, *STAGES["refine"].code,
                              *STAGES["finetune"].code, *STAGES["evaluate"].code))),
    cmd="python -m stages.sweep cell --params params.yaml --prepare data/prepare --quantize data/quantize "
        "--profile data/profile --search data/search --ablation ${item.ablation} --seed ${item.seed} "
        "--budget ${item.budget} --out " + _CELL,
    deps=("data/prepare", "data/quantize", "data/profile"), outs=(_CELL,),
    persist=(f"data/search/records/cells/{_ITEM}",),
    matrix={"ablation": "${sweep.ablations}", "seed": "${sweep.seeds}", "budget": "${sweep.budgets}"})
STAGES["sweep_summary"] = Stage(
    params=("sweep",), code=("stages/sweep.py", "src/autoqra/sweep.py"),
    cmd="python -m stages.sweep summary --params params.yaml --cells data/sweep/cells --out data/sweep/${item}",
    deps=("data/sweep/cells",), outs=("data/sweep/${item}",), foreach="${sweep.name}")

# what `dvc metrics show` / `dvc plots show` list: one file per stage that is not a foreach (the report
# gathers the per-bit-width and per-arm numbers, which DVC cannot list from the params)
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
        if st.outs or st.persist:
            body["outs"] = [*st.outs, *({path: {"persist": True}} for path in st.persist)]
        if st.metrics:
            body["metrics"] = list(st.metrics)  # cached like any output: `dvc push` shares them
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

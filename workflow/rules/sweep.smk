# A sweep (params `sweep`, e.g. `--config sweep=ablations`): one job per cell (ablation x search seed x
# budget) and one summary. Without a sweep both expand to nothing, as in dvc.yaml.


rule sweep_cell:
    input:
        code=stage_code("sweep_cell"),
        prepare=rules.prepare.output,
        quantize=QUANTIZE,
        profile=rules.profile.output,
    output:
        directory("data/sweep/cells/{ablation}-s{seed}-b{budget}"),
    wildcard_constraints:
        ablation="[a-z_]+",
        seed="[0-9]+",
        budget="[0-9.eE+-]+",
    params:
        values=stage_params("sweep_cell"),
    threads: 8
    resources:
        mem_mb=16000,
        runtime=1440,
        gpu=1,
    shell:
        stage_shell("sweep_cell", "ablation", "seed", "budget")


rule sweep_summary:
    input:
        code=stage_code("sweep_summary"),
        cells=CELLS,
    output:
        directory("data/sweep/{name}"),
    wildcard_constraints:
        name="|".join(SWEEP["name"]) or "^$",
    params:
        values=stage_params("sweep_summary"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        stage_shell("sweep_summary", "name")

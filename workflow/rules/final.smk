# An arm waits only for the search outputs it reads (`arms.resolve`): the pick for stage 2's, the uniform
# frontier for stage 1's, the rest for the profile alone. On a few cores the other arms then train beside
# the stages that leave a core idle, the pick's arm first (`priority`); DVC, which runs one stage at a time,
# lists every search folder for every arm.
ARM_SEARCH = {arm: [getattr(rules, stage).output[0] for stage in stages] for arm, stages in SEARCH_OUTPUTS.items()}


def arm_priority(wildcards):
    return PRIORITY["search"] if wildcards.arm == "autoqra" else 0


rule finetune:
    input:
        code=stage_code("finetune"),
        prepare=rules.prepare.output,
        quantize=QUANTIZE,
        profile=rules.profile.output,
        search=lambda wildcards: ARM_SEARCH.get(wildcards.arm, []),
    output:
        directory("data/final/{arm}/train"),
    wildcard_constraints:
        arm="|".join(ARMS),
    params:
        values=stage_params("finetune"),
    priority: arm_priority
    threads: 8
    resources:
        mem_mb=16000,
        runtime=720,
        gpu=1,
    shell:
        stage_shell("finetune", "arm")


rule evaluate:
    input:
        code=stage_code("evaluate"),
        prepare=rules.prepare.output,
        quantize=QUANTIZE,
        profile=rules.profile.output,
        train="data/final/{arm}/train",
    output:
        "data/final/{arm}/metrics.json",
        "data/final/{arm}/records.json",
    wildcard_constraints:
        arm="|".join(ARMS),
    params:
        values=stage_params("evaluate"),
    priority: arm_priority
    threads: 8
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=1,
    shell:
        stage_shell("evaluate", "arm")


rule report:
    input:
        code=stage_code("report"),
        prepare=rules.prepare.output,
        profile=rules.profile.output,
        evolve=rules.evolve.output,
        refine=rules.refine.output,
        arms=expand("data/final/{arm}/metrics.json", arm=ARMS),
    output:
        directory("data/report"),
    params:
        values=stage_params("report"),
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        stage_shell("report")


rule export:
    input:
        code=stage_code("export"),
        prepare=rules.prepare.output,
        quantize=QUANTIZE,
        profile=rules.profile.output,
        train="data/final/autoqra/train",
        metrics="data/final/autoqra/metrics.json",
    output:
        directory("data/final/autoqra/export"),
    params:
        values=stage_params("export"),
    priority: PRIORITY["search"]
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        stage_shell("export")

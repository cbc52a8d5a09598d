rule quantize:
    input:
        code=stage_code("quantize"),
        prepare=rules.prepare.output,
    output:
        directory("data/quantize/b{bits}"),
    wildcard_constraints:
        bits="|".join(map(str, BIT_CHOICES)),
    params:
        values=stage_params("quantize"),
    priority: PRIORITY["search"]
    threads: 8
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=1,
    shell:
        stage_shell("quantize", "bits")


rule profile:
    input:
        code=stage_code("profile"),
        prepare=rules.prepare.output,
        quantize=QUANTIZE,
    output:
        directory("data/profile"),
    params:
        values=stage_params("profile"),
    priority: PRIORITY["search"]
    threads: 8
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    shell:
        stage_shell("profile")

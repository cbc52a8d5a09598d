rule evolve:
    input:
        code=stage_code("evolve"),
        prepare=rules.prepare.output,
        quantize=expand("data/quantize/b{bits}", bits=BITS),
        profile=rules.profile.output,
    output:
        directory("data/search/evolve"),
    params:
        values=stage_params("evolve"),
    threads: 8
    resources:
        mem_mb=16000,
        runtime=1440,
        gpu=1,
    shell:
        "python -m stages.evolve --params {PARAMS_FILE} --prepare {input.prepare} --quantize data/quantize "
        "--profile {input.profile} --search data/search --out {output} --threads {threads}"


rule refine:
    input:
        code=stage_code("refine"),
        prepare=rules.prepare.output,
        quantize=expand("data/quantize/b{bits}", bits=BITS),
        profile=rules.profile.output,
        evolve=rules.evolve.output,
    output:
        directory("data/search/refine"),
    params:
        values=stage_params("refine"),
    threads: 8
    resources:
        mem_mb=16000,
        runtime=1440,
        gpu=1,
    shell:
        "python -m stages.refine --params {PARAMS_FILE} --prepare {input.prepare} --quantize data/quantize "
        "--profile {input.profile} --search data/search --evolve {input.evolve} --out {output} "
        "--threads {threads}"

BITS = PARAMS["quant"]["bits"]


def quantize_dir(bits):
    return f"data/quantize/b{bits}"


rule quantize:
    input:
        code=stage_code("quantize"),
        prepare=rules.prepare.output,
    output:
        directory("data/quantize/b{bits}"),
    wildcard_constraints:
        bits="2|3|4|8|16",
    params:
        values=stage_params("quantize"),
    threads: 8
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=1,
    shell:
        "python -m stages.quantize --params {PARAMS_FILE} --bits {wildcards.bits} --prepare {input.prepare} "
        "--out {output} --threads {threads}"


rule profile:
    input:
        code=stage_code("profile"),
        prepare=rules.prepare.output,
        cache=quantize_dir(BITS[0]),
    output:
        directory("data/profile"),
    params:
        values=stage_params("profile"),
    threads: 8
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    shell:
        "python -m stages.profile --params {PARAMS_FILE} --prepare {input.prepare} --cache {input.cache} "
        "--out {output} --threads {threads}"

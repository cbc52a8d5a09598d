rule prepare:
    input:
        code=stage_code("prepare"),
    output:
        directory("data/prepare"),
    params:
        values=stage_params("prepare"),
        file=PARAMS_FILE,
    threads: 8
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m stages.prepare --params {params.file} --out {output} --threads {threads}"

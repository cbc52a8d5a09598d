rule prepare:
    input:
        code=stage_code("prepare"),
    output:
        directory("data/prepare"),
    params:
        values=stage_params("prepare"),
    threads: 8
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        stage_shell("prepare")

# The search stages. With `search.workers: N > 1` each stage is N worker jobs (stage 2: at most its
# proposals' seeds) on one study and one record store (on SLURM: N jobs with a GPU each), then a gather
# job that writes the stage's outputs (and finishes anything the workers left). DVC, which runs one stage at a
# time, runs the same stage as one command with N worker processes.


def worker_files(stage):
    n = WORKERS[stage]
    return expand(f"data/search/workers/{stage}/{{worker}}.json", worker=range(n)) if n > 1 else []


def gathered(stage):
    files = worker_files(stage)
    return f"--gathered {' '.join(files)} " if files else ""


def worker_threads(stage):
    return lambda wildcards: max(1, min(8, (workflow.cores or 8) // max(WORKERS[stage], 1)))


rule evolve_worker:
    input:
        code=stage_code("evolve"),
        prepare=rules.prepare.output,
        quantize=QUANTIZE,
        profile=rules.profile.output,
    output:
        "data/search/workers/evolve/{worker}.json",
    wildcard_constraints:
        worker="[0-9]+",
    params:
        values=worker_stage_params("evolve"),
    priority: PRIORITY["search"]
    threads: worker_threads("evolve")
    resources:
        mem_mb=16000,
        runtime=1440,
        gpu=1,
    shell:
        stage_shell("evolve", worker=True)


rule evolve:
    input:
        code=stage_code("evolve"),
        prepare=rules.prepare.output,
        quantize=QUANTIZE,
        profile=rules.profile.output,
        workers=worker_files("evolve"),
    output:
        directory("data/search/evolve"),
    params:
        values=stage_params("evolve"),
        gathered=gathered("evolve"),
    priority: PRIORITY["search"]
    threads: 8
    resources:
        mem_mb=16000,
        runtime=1440,
        gpu=1,
    shell:
        stage_shell("evolve", extra="{params.gathered}")


rule refine_worker:
    input:
        code=stage_code("refine"),
        prepare=rules.prepare.output,
        quantize=QUANTIZE,
        profile=rules.profile.output,
        # stage 1 must have finished; a worker reads its study from the record cache, not this folder, and
        # re-writing the folder (a key only the gather reads, `worker_params`) changes nothing it reads
        evolve=ancient("data/search/evolve"),  # a path: ancient() would flag the gather's input too
    output:
        "data/search/workers/refine/{worker}.json",
    wildcard_constraints:
        worker="[0-9]+",
    params:
        values=worker_stage_params("refine"),
    priority: PRIORITY["search"]
    threads: worker_threads("refine")
    resources:
        mem_mb=16000,
        runtime=1440,
        gpu=1,
    shell:
        stage_shell("refine", worker=True)


rule refine:
    input:
        code=stage_code("refine"),
        prepare=rules.prepare.output,
        quantize=QUANTIZE,
        profile=rules.profile.output,
        evolve=rules.evolve.output,
        workers=worker_files("refine"),
    output:
        directory("data/search/refine"),
    params:
        values=stage_params("refine"),
        gathered=gathered("refine"),
    priority: PRIORITY["search"]
    threads: 8
    resources:
        mem_mb=16000,
        runtime=1440,
        gpu=1,
    shell:
        stage_shell("refine", extra="{params.gathered}")

"""Search workers: one process, a pool of processes on one machine, or separate jobs (Snakemake, SLURM),
all sharing one study and one record store; a killed worker's job is redone by whoever comes next."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoqra.params import Params, load_file
from autoqra.pipeline.setup import Setup
from autoqra.store.process import worker_id

log = logging.getLogger("autoqra")

SearchFn = Callable[[Setup], dict[str, int]]  # search until the stage is done: this worker's counts


def _worker(search: SearchFn, params_path: str, dirs: dict[str, str], threads: int) -> dict[str, int]:
    """One worker process of a pool: load the params, build everything, search until the stage is done."""
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(threads)
    return search(Setup(load_file(params_path), dirs))


def run_worker_job(search: SearchFn, p: Params, dirs: dict[str, str], out: Path) -> None:
    """One worker of a search run as separate jobs (Snakemake/SLURM: `search.workers` jobs on one
    study and one record store): search until the stage's plan is done, write this worker's counts to
    `out`. A killed worker job resubmitted anywhere resumes: trials and records are shared."""
    start = time.perf_counter()
    counts = search(Setup(p, dirs, progress=True))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**counts, "worker": worker_id(), "search_s": round(time.perf_counter() - start, 1)}))


def run_workers(search: SearchFn, p: Params, params_path: str, dirs: dict[str, str], threads: int,
                gathered: list[str], workers: int) -> tuple[Setup, list[dict[str, Any]], float]:
    """Run a search stage with `workers` (`params.rules.stage_workers`) worker processes sharing its study and
    the record store (one worker: in this process, with progress bars). Returns a setup for the outputs, each worker's
    counts and the seconds spent; a search stopped by failures raises `SearchFailed`.

    With `gathered` (the files of worker jobs that already ran the search) the counts come from them,
    and this process finishes whatever they left (normally nothing: it reads the finished study)."""
    start = time.perf_counter()
    if gathered:
        jobs = [json.loads(Path(f).read_text()) for f in gathered]
        setup = Setup(p, dirs, progress=True)
        left = search(setup)
        return setup, [*jobs, left], max(j.get("search_s", 0.0) for j in jobs) + time.perf_counter() - start
    if workers == 1:
        setup = Setup(p, dirs, progress=True)
        return setup, [search(setup)], time.perf_counter() - start
    per_worker = max(1, (threads or mp.cpu_count()) // workers)
    with mp.get_context("spawn").Pool(workers) as pool:
        mine = pool.starmap(_worker, [(search, params_path, dirs, per_worker)] * workers)
    return Setup(p, dirs), mine, time.perf_counter() - start

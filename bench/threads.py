"""Is one job on every core faster than one job per core? Training throughput side by side.

    python bench/threads.py [--prepare data/prepare] [--quantize data/quantize] [--steps 24] [--cores 2]

A fidelity evaluation's training (the pipeline's `FidelityRun`, dequant backend, uniform `--bits` r`--rank`)
run three ways on this machine, one after the other: one process with `--cores` threads; one process
with one thread; `--cores` one-thread processes at once (what Snakemake does with `--cores N` when each
job asks for one thread). Prints steps per wall second of each and the ratio of the parallel jobs'
throughput to the one wide job's: above 1, the stages that run independent jobs (quantize, finetune,
evaluate) would finish sooner one thread per job. Training only (no scoring); records go to a
temporary folder, nothing is cached.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(args: argparse.Namespace) -> None:
    """Worker mode: train `--steps` steps once (after one warm-up step) and print seconds as JSON."""
    import torch
    from common import TARGETS

    from autoqra import quant
    from autoqra.memory import ModelSpec
    from autoqra.params import FinetuneParams, LoraParams
    from autoqra.pipeline.fidelity import FidelityRun
    from autoqra.space import Space

    torch.set_num_threads(args.threads)
    model_dir, task_dir = Path(args.prepare) / "model", Path(args.prepare) / "task"
    caches = {args.bits: quant.QuantCache(Path(args.quantize) / f"b{args.bits}")}
    spec = ModelSpec.from_pretrained(model_dir, TARGETS)
    space = Space.from_modules([m.name for m in spec.modules], "block", [args.bits], [args.rank])
    with tempfile.TemporaryDirectory() as tmp:
        ev = FidelityRun(model_dir=model_dir, task_dir=task_dir, caches=caches, space=space,
                         lora=LoraParams(ranks=[args.rank], init="zero"), finetune=FinetuneParams(dtype=args.dtype),
                         records=Path(tmp),
                         max_length=128, backend="dequant")
        ev(space.uniform(args.bits, args.rank), 1, 0, val_samples=8)  # assembly, caches, first allocations
        record = ev(space.uniform(args.bits, args.rank), args.steps, 1, val_samples=8)
    print(json.dumps({"train_s": record["train_s"], "threads": torch.get_num_threads()}))


def launch(args: argparse.Namespace, threads: int, copies: int, dtype: str = "auto") -> tuple[float, list[float]]:
    """`copies` worker processes of `threads` threads at once, training in `dtype` (`finetune.dtype`):
    (wall seconds, each one's training seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--worker", "--threads", str(threads), "--steps", str(args.steps),
           "--bits", str(args.bits), "--rank", str(args.rank), "--prepare", args.prepare, "--quantize", args.quantize,
           "--dtype", dtype]
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - start
    if any(p.returncode for p in procs):
        raise SystemExit(f"error: a worker failed ({[p.returncode for p in procs]})")
    return wall, [json.loads(o.strip().splitlines()[-1])["train_s"] for o in outs]


def main() -> None:
    from common import training_parser

    ap = training_parser(__doc__.splitlines()[0], steps=24)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return one_run(args)
    if args.cores < 2:
        raise SystemExit(f"error: --cores {args.cores}: needs at least 2 to compare")
    rows = []
    for label, threads, copies in (("one job, all threads", args.cores, 1), ("one job, one thread", 1, 1),
                                   (f"{args.cores} jobs, one thread each", 1, args.cores)):
        wall, train = launch(args, threads, copies)
        rows.append((label, copies * args.steps / (sum(train) / copies), train))  # the jobs overlap
        print(f"{label:28} training {', '.join(f'{t:.1f}' for t in train)} s for {args.steps} steps each: "
              f"{rows[-1][1]:.2f} steps/s ({wall:.0f} s wall with start-up)", flush=True)
    wide, parallel = rows[0][1], rows[2][1]
    print(f"parallel one-thread jobs / one {args.cores}-thread job: {parallel / wide:.2f}x throughput "
          f"(one thread alone: {rows[1][1] / wide:.2f}x)")


if __name__ == "__main__":
    main()

"""Several search workers on one study and one record store: is any evaluation ever trained twice?

    python bench/stress_workers.py [--workers 4] [--repeats 50] [--threads]

Each repeat starts `--workers` processes (or threads) on a fresh journal study and record store; they
run stage 1 on the synthetic objective, where every evaluation goes through the record store and
"trains" after a random delay (0-30 ms), appending its steps to a shared log. A duplicate training is
a (configuration, fidelity, seed) trained twice; the log's steps must equal the steps of the
distinct evaluations of the study. Prints one line per repeat and a summary.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def space_and_budget():
    from autoqra.memory import MemoryModel, ModelSpec, ModuleShape, Training, make_budget
    from autoqra.space import Space

    shapes = tuple(ModuleShape(f"model.layers.{i}.mlp.up_proj", 64 * (1 + i % 3), 128) for i in range(6))
    spec = ModelSpec(shapes, other_params=100, hidden=64, intermediate=128, layers=6, heads=4, kv_heads=2, vocab=100)
    space = Space.from_modules([m.name for m in shapes], "block", [2, 3, 4, 8], [4, 8, 16])
    return space, make_budget("relative", 1.0, "uniform3_r8", MemoryModel(spec, 64, Training(1, 4)), space)


def settings(seed: int):
    from autoqra.search import EvolveSettings

    return EvolveSettings(population=9, offspring=6, candidates=40, generations=4, fidelities=(1, 3, 9), eta=3,
                    max_steps=0, seed=seed, seeds_per_rung=(1, 2, 2))


def worker(root: str, seed: int, worker_index: int) -> None:
    import optuna

    from autoqra.search.evolution import Evolution
    from autoqra.search.optuna import PlanSampler, drive, open_study
    from autoqra.search.synthetic import SyntheticObjective
    from autoqra.store import fingerprint
    from autoqra.store.records import RecordStore

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, budget = space_and_budget()
    obj = SyntheticObjective(space, seed)
    store = RecordStore(Path(root) / "records")
    rng = random.Random(worker_index)
    log = Path(root) / "trained.log"

    def objective(config, fidelity, s):
        key = fingerprint.of_data([config.key, fidelity, s])

        def compute():
            time.sleep(rng.uniform(0, 0.03))
            with open(log, "a") as fh:
                fh.write(f"{key} {fidelity}\n")
            return {"status": "ok", "score": obj(config, fidelity, s), "reason": None}

        return store.get(key, compute)[0]

    sampler = PlanSampler(Evolution(space, budget, obj.priors(), settings(seed)))
    drive(open_study("stress", None, str(Path(root) / "study.journal"), sampler), sampler, objective, poll_s=0.02)


def one_repeat(seed: int, workers: int, threads: bool) -> dict:
    import optuna

    from autoqra.search.optuna import history, open_study

    with tempfile.TemporaryDirectory() as root:
        if threads:
            runners = [threading.Thread(target=worker, args=(root, seed, i)) for i in range(workers)]
        else:
            runners = [mp.get_context("spawn").Process(target=worker, args=(root, seed, i)) for i in range(workers)]
        for r in runners:
            r.start()
        for r in runners:
            r.join(timeout=600)
        trained = [line.split() for line in (Path(root) / "trained.log").read_text().splitlines()]
        space, _ = space_and_budget()
        study = open_study("stress", None, str(Path(root) / "study.journal"), optuna.samplers.RandomSampler())
        jobs = {(r.config.key, r.fidelity, r.seed) for r in history(study, space) if r.done}
        counts = Counter(key for key, _ in trained)
        return {"jobs": len(jobs), "trainings": len(trained), "duplicates": sum(n - 1 for n in counts.values()),
                "steps_trained": sum(int(f) for _, f in trained), "steps_needed": sum(f for _, f, _ in jobs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", action="store_true", help="threads instead of processes")
    args = ap.parse_args()
    bad = 0
    start = time.perf_counter()
    for i in range(args.repeats):
        r = one_repeat(i, args.workers, args.threads)
        ok = r["duplicates"] == 0 and r["steps_trained"] == r["steps_needed"]
        bad += not ok
        print(f"repeat {i:3d}: {r['jobs']} evaluations, {r['trainings']} trainings, {r['duplicates']} duplicates, "
              f"steps {r['steps_trained']}/{r['steps_needed']} {'ok' if ok else 'DUPLICATE TRAINING'}", flush=True)
    print(f"{args.repeats} repeats × {args.workers} {'threads' if args.threads else 'processes'}: {bad} with a "
          f"duplicate training or a missing one ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()

"""What every stage entry point shares: argument parsing, reading its params, errors, metrics."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from autoqra.params import ParamError, Params
from autoqra.store.files import write_json
from autoqra.store.process import environment
from stages import params as P

log = logging.getLogger("autoqra")
environment()  # offline, before anything imports the hubs

DIRS = {"prepare": ("data/prepare", "the prepare stage's folder"),
        "quantize": ("data/quantize", "folder holding the b{bits}/ GPTQ caches"),
        "profile": ("data/profile", "the profile stage's folder (priors)"),
        "search": ("data/search", "the search stages' folders"),
        "records": ("data/records", "the record cache: records, adapters, study journals (no stage's output)")}


def parser(description: str, dirs: bool = True) -> argparse.ArgumentParser:
    """--params, --threads and (with `dirs`) the input folders every stage after prepare reads."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--params", default="params.yaml", help="composed params file (default: params.yaml)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = all cores)")
    for name, (default, text) in DIRS.items() if dirs else ():
        ap.add_argument(f"--{name}", default=default, help=text)
    return ap


def add_journal_args(ap: argparse.ArgumentParser, default: str | None) -> None:
    """--journal (the name of this stage's study journal in the record cache) and --stage1-journal."""
    ap.add_argument("--journal", default=default, help=f"the name of this stage's study journal in the record "
                    f"cache, <records>/studies/<journal>.journal (default {default})")
    ap.add_argument("--stage1-journal", default="evolve", help="the journal holding stage 1's study (default evolve)")


def add_worker_args(ap: argparse.ArgumentParser) -> None:
    """A search stage as separate jobs: N `--worker-out` jobs on one study, then one `--gathered` job."""
    ap.add_argument("--worker-out", help="run as one worker job of the search: write its counts to this file, "
                    "no stage outputs")
    ap.add_argument("--gathered", nargs="*", default=[], help="the files of the worker jobs that ran the search: "
                    "write the stage's outputs (finishing anything they left)")


def dirs(args: argparse.Namespace, stage1_is_own: bool = False) -> dict[str, str]:
    """The folders of `args`, with the stage's study journal and the one holding stage 1's study."""
    out = {name: getattr(args, name) for name in DIRS}
    if getattr(args, "journal", None):
        out["journal"] = args.journal
        out["stage1_journal"] = args.journal if stage1_is_own else args.stage1_journal
    return out


def start(args: argparse.Namespace) -> Params:
    """Logging and threads as asked, and the whole params file validated (one line on an error)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("optuna").setLevel(logging.WARNING)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return P.validated(P.read(args.params))
    except ParamError as exc:
        raise SystemExit(f"error: {exc}") from None


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Bad input (`ParamError` and its kin: budget, task data, token limits, missing inputs) and a search
    stopped by failures end the stage with their one line, not a traceback."""
    try:
        yield
    except Exception as exc:
        driver = sys.modules.get("autoqra.search.optuna.driver")  # not imported: no search ran, none failed
        if isinstance(exc, ParamError) or (driver is not None and isinstance(exc, driver.SearchFailed)):
            raise SystemExit(f"error: {exc}") from None
        raise


def finish(out: str | Path, fn: Callable[[], dict[str, Any]], **extra: Any) -> None:
    """Run the stage's work `fn` (user errors as one line) and write its metrics with its wall time."""
    begin = time.perf_counter()
    with user_errors():
        metrics = fn()
    write_json(out, {**metrics, "wall_s": round(time.perf_counter() - begin, 2), **extra})


def preflight(p: Params, prepare: str | Path | None, records: str | Path = "data/records") -> float:
    """Every check that needs at most the model's shapes, before any expensive work (see
    `autoqra.preflight`); the model's config comes from the prepared folder, or from the source when
    there is none yet. Returns the seconds it took."""
    from autoqra import preflight as checks

    begin = time.perf_counter()
    with user_errors():
        checks.check(p, prepare, records)
    return round(time.perf_counter() - begin, 2)


def start_arm(args: argparse.Namespace) -> tuple[Params, float]:
    """`start` for a final arm's stage: the arm must be one of `finetune.arms`; then preflight."""
    p = start(args)
    if args.arm not in p.finetune.arms:
        raise SystemExit(f"error: --arm {args.arm}: not in finetune.arms={p.finetune.arms}")
    return p, preflight(p, args.prepare, args.records)


def run_search(args: argparse.Namespace, p: Params, dirs: dict[str, str], search: Callable, run: Callable) -> None:
    """A search stage after `start`: preflight and inputs checked, then one worker job of it
    (`--worker-out`: `search` until the study is done, this worker's counts only) or the whole stage
    (`run`: the workers, then the outputs and metrics)."""
    from autoqra.pipeline.setup import check_inputs
    from autoqra.pipeline.workers import run_worker_job

    checked_s = preflight(p, args.prepare, args.records)
    with user_errors():
        check_inputs(p, dirs)
        if args.worker_out:
            return run_worker_job(search, p, dirs, Path(args.worker_out))
    out = Path(args.out)
    finish(out / "metrics.json", lambda: run(p, args.params, dirs, out, args.threads, args.gathered),
           preflight_s=checked_s)

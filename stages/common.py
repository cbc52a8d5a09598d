"""What every stage entry point shares: argument parsing, reading its params, logging, metrics."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from autoqra.config import ParamError, Params
from stages import params as P

log = logging.getLogger("autoqra")

# Offline by construction: nothing but the package registries is reachable on our machines.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "DVC_NO_ANALYTICS", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 2)))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--params", default="params.yaml", help="composed params file (default: params.yaml)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = all cores)")
    return ap


DIRS = {"prepare": ("data/prepare", "the prepare stage's folder"),
        "quantize": ("data/quantize", "folder holding the b{bits}/ GPTQ caches"),
        "profile": ("data/profile", "the profile stage's folder (priors)"),
        "search": ("data/search", "record store, study journal and the search stages' folders")}


def add_dirs(ap: argparse.ArgumentParser) -> None:
    """--prepare, --quantize, --profile, --search: the inputs every stage after prepare reads."""
    for name, (default, text) in DIRS.items():
        ap.add_argument(f"--{name}", default=default, help=text)


def add_store_args(ap: argparse.ArgumentParser, default: str) -> None:
    """--store (this stage's record store under <search>/records/, its DVC output) and --stage1-store."""
    ap.add_argument("--store", default=default, help=f"this stage's record store and study journal, under "
                    f"<search>/records/ (default {default}); every store there is read")
    ap.add_argument("--stage1-store", default="evolve", help="the store holding stage 1's study (default evolve)")


def store_dirs(args: argparse.Namespace, stage1_is_own: bool = False) -> dict[str, str]:
    """`dirs` plus the stage's record store and the store holding stage 1's study."""
    return {**dirs(args), "store": args.store, "stage1_store": args.store if stage1_is_own else args.stage1_store}


def add_worker_args(ap: argparse.ArgumentParser) -> None:
    """A search stage as separate jobs: N `--worker-out` jobs on one study, then one `--gathered` job."""
    ap.add_argument("--worker-out", help="run as one worker job of the search: write its counts to this file, "
                    "no stage outputs")
    ap.add_argument("--gathered", nargs="*", default=[], help="the files of the worker jobs that ran the search: "
                    "write the stage's outputs (finishing anything they left)")


def dirs(args: argparse.Namespace) -> dict[str, str]:
    return {name: getattr(args, name) for name in DIRS}


def load(path: str | Path, keys: tuple[str, ...]) -> tuple[Params, dict[str, Any]]:
    """Validate the whole params file, return it typed plus the flat subset the stage declared it reads."""
    tree = P.read(path)
    try:
        typed = P.validated(tree)
    except ParamError as exc:
        raise SystemExit(f"error: {exc}") from None
    return typed, P.section(tree, keys)


def setup(threads: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (a kill never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def timed(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `fn` and add its wall time in seconds as `wall_s`."""
    start = time.perf_counter()
    out = fn()
    out["wall_s"] = round(time.perf_counter() - start, 2)
    return out


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Bad input (`ParamError` and its kin: budget, task data, token limits) ends the stage with its
    one line, not a traceback."""
    try:
        yield
    except ParamError as exc:
        raise SystemExit(f"error: {exc}") from None


def preflight(p: Params, prepare: str | Path | None, search: str | Path = "data/search") -> float:
    """Every check that needs at most the model's shapes, before any expensive work (see
    `autoqra.preflight`); the model's config comes from the prepared folder, or from the source when
    there is none yet. Returns the seconds it took."""
    start = time.perf_counter()
    from autoqra import models
    from autoqra import preflight as checks

    model_dir = Path(prepare) / "model" if prepare else None
    with user_errors():
        checks.check_storage(p.search.storage, search)  # first: it needs no model
        if model_dir is not None and (model_dir / "config.json").exists():
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(model_dir)
        else:
            config = models.source_config(p.model.source, p.model.tiny)
        checks.check(p, config, search, task_dir=Path(prepare) / "task" if prepare else None)
    return round(time.perf_counter() - start, 2)

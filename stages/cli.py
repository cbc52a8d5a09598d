"""The `autoqra` command: compose and check parameters without running the pipeline.

    autoqra params [OVERRIDE ...] [--write FILE]   print (or write) the composed params
    autoqra schema [--write FILE]                   print (or write) the params JSON Schema
    autoqra dvc [--write FILE]                      print (or write) dvc.yaml, generated from stages/registry.py
    autoqra check [OVERRIDE ...] [--prepare DIR]    validate a composition and run every check that needs
                                                    at most the model's shapes (budget, group size, storage...)
    autoqra records rehydrate [--data data] [--records data/records]
                                                    write into the record cache every record, adapter and
                                                    study of the outputs' manifests it lacks (after a pull)

Overrides use Hydra's syntax: `experiment=smoke search.population=16`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from autoqra.params import ParamError, params_schema
from stages import params as P


def _emit(text: str, path: str | None) -> None:
    if path:
        with open(path, "w") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="autoqra", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("params", "check"):
        sp = sub.add_parser(name)
        sp.add_argument("overrides", nargs="*")
        if name == "params":
            sp.add_argument("--write", metavar="FILE")
        else:
            sp.add_argument("--prepare", help="a prepared folder (model/, task/) to check against; default: the "
                            "model's config read from model.source itself")
            sp.add_argument("--records", default="data/records",
                            help="the record cache (where the study journal would live)")
    for name in ("schema", "dvc"):
        sub.add_parser(name).add_argument("--write", metavar="FILE")
    records = sub.add_parser("records")
    records.add_argument("action", choices=["rehydrate"])
    records.add_argument("--data", default="data", help="the folder of the pipeline's outputs")
    records.add_argument("--records", default="data/records", help="the record cache")
    args = ap.parse_args(argv)
    if args.cmd == "records":
        from autoqra.store import manifest
        from autoqra.store.records import RecordStore

        counts = manifest.rehydrate(RecordStore(args.records), Path(args.data))
        print(json.dumps(counts))
        return 0
    try:
        if args.cmd == "schema":
            _emit(json.dumps(params_schema(), indent=2) + "\n", args.write)
            return 0
        if args.cmd == "dvc":
            from stages.registry import dvc_text

            _emit(dvc_text(), args.write)
            return 0
        tree = P.compose(args.overrides)
        typed = P.validated(tree)
    except ParamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "params":
        _emit(P.to_yaml(tree), args.write)
        return 0
    import time

    from autoqra import preflight

    start = time.perf_counter()
    try:
        info = preflight.check(typed, args.prepare, args.records)
    except ParamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    low, high = info["value_range"]
    print(f"ok ({time.perf_counter() - start:.1f} s of checks): budget {info['budget']}; at budget.kind="
          f"{typed.budget.kind} the search space spans budget.value {low:.4g} (its smallest configuration fits) "
          f"to {high:.4g} (its largest fits: the budget binds nothing above); activations priced for "
          f"{info['labelled'] if info['labelled'] is not None else 'all'} answer tokens per sequence at most "
          f"(from {info['labelled_from']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

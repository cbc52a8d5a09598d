"""Does starting the adapters at EoRA's compensation pay? `lora.init=eora` against `zero` at uniform bits.

    python bench/eora.py [--bits 2 3 4] [--rank 16] [--configs F ...] [--steps 48] [--seeds 100 101 102]
                         [--test 1000] [--inits eora random] [--params params.yaml] [--prepare data/prepare]
                         [--quantize data/quantize] [--json F]

For each bit-width, the uniform configuration at `--rank` is built from the pipeline's GPTQ caches with PEFT's
zero-started adapters and with each of `--inits`: `eora` (EoRA's compensation) and `random`, its control (the
same factors' norms in random directions: is the gain the compensation or a nonzero start?), and so is each
configuration of `--configs` (JSON files holding `{"units": ...}` or a stage's `best.json` / an arm's
configuration under `"config"`: the searched pick, greedy), named after its folder; each scored on `--test`
test examples: at step 0 (before any training: zero-started adapters add nothing, so this is the quantized
model against its compensation; no seed enters, the interval is the test set's sampling error alone) and after
`--steps` training steps under each of the fresh `--seeds` (the pipeline's fidelity runs and record cache: an
evaluation made once is read, never repeated). Differences init − zero (and eora − random when both run; with
several `--configs`, the first under each init against each other one under the same init and under zero) are
paired by seed and test example, 95 % intervals from `autoqra.stats` (t quantiles at the seed and example counts used).

The test examples: the prepared test split, extended to `--test` by the task's generator under another seed
with every prompt of the prepared splits left out (synthetic tasks only), so they are as the split's and
disjoint from what is trained, validated and calibrated on. Nothing is chosen on them. The compensation's
one-off cost (a calibration pass and one eigendecomposition per module, an SVD per module and bit-width) is
printed from the first run that computes it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import test_examples, trained_test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepare", default="data/prepare")
    ap.add_argument("--quantize", default="data/quantize")
    ap.add_argument("--profile", default="data/profile")
    ap.add_argument("--records", default="data/records")
    ap.add_argument("--bits", type=int, nargs="*", default=[2, 3, 4])
    ap.add_argument("--configs", nargs="*", default=[], metavar="[NAME=]PATH",
                    help="configurations to run beside the uniform ones")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102])
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--inits", nargs="+", default=["eora"], choices=["eora", "random"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from autoqra import stats
    from autoqra.pipeline.setup import Setup, check_inputs
    from autoqra.space import UNQUANTIZED
    from autoqra.store import fingerprint
    from stages import params as P

    base = P.read(args.params)
    dirs = {"prepare": args.prepare, "quantize": args.quantize, "profile": args.profile,
            "search": str(Path(args.records).parent / "search"), "records": args.records}
    setups = {}
    for init in ["zero", *dict.fromkeys(args.inits)]:
        p = P.validated({**base, "lora": {**base["lora"], "init": init}})
        check_inputs(p, dirs)
        setups[init] = Setup(p, dirs, progress=False, arm_ladders=True)
    p = setups["zero"].p
    bad = [b for b in args.bits if b not in p.quant.bits or b == 16]
    if bad or args.rank not in setups["zero"].arm_space.ranks:
        raise SystemExit(f"error: --bits {args.bits} --rank {args.rank}: allowed bits {p.quant.bits} (quantized), "
                         f"ranks {list(setups['zero'].arm_space.ranks)}")
    configs = [(f"b{b} r{args.rank}", setups["zero"].arm_space.uniform(b, args.rank)) for b in args.bits]
    for f in args.configs:  # NAME=PATH, or PATH named after its folder
        name, _, path = f.rpartition("=")
        try:
            units = json.loads(Path(path).read_text())
            configs.append((name or Path(path).parent.name, setups["zero"].arm_space.parse(units.get("config", units))))
        except (OSError, ValueError, KeyError) as exc:
            raise SystemExit(f"error: --configs {f}: not a configuration of this space ({exc})") from exc
    if not configs:
        raise SystemExit("error: --bits and --configs are both empty: nothing to measure")
    test = test_examples(p, Path(args.prepare) / "task", args.test)
    test_fp = fingerprint.of_data([ex["prompt"] + "\0" + ex["answer"] for ex in test])
    print(f"{len(test)} test examples ({test_fp[:8]}), {[name for name, _ in configs]}, "
          f"{args.steps} steps, seeds {args.seeds}", flush=True)

    given = [name for name, _ in configs[len(args.bits):]]  # the first of --configs against each other one
    plain = {name for name, c in configs if all(b == UNQUANTIZED for b in c.bits)}  # nothing to compensate
    rows, scores = [], {}
    for name, config in configs:
        for init, setup in setups.items():
            if init != "zero" and name in plain:  # PEFT's start under every init: zero's runs stand for it
                print(f"{name} {init}: no quantized unit to compensate, zero's runs", flush=True)
                scores[(name, init, 0)], scores[(name, init, args.steps)] = (scores[(name, "zero", s)]
                                                                             for s in (0, args.steps))
                continue
            scores[(name, init, 0)], scores[(name, init, args.steps)] = measure(
                setup.fidelity_run, config, f"{name} {init:4s}", args, test, test_fp, p)
    pairs = []  # ((config, init), (config, init)): every init against zero, eora against random, per config
    for name in (name for name, _ in configs if name not in plain):
        pairs += [((name, init), (name, "zero")) for init in setups if init != "zero"]
        pairs += [((name, "eora"), (name, "random"))] if {"eora", "random"} <= set(setups) else []
    pairs += [((given[0], init), (other, start)) for other in given[1:] for init in setups
              for start in dict.fromkeys(["zero", "zero" if other in plain else init])]  # the same start, PEFT's
    for steps in (0, args.steps):
        for a, b in pairs:
            c = stats.compare(scores[(*a, steps)], scores[(*b, steps)])
            mean = {x: np.mean([np.mean(v) for v in scores[(*x, steps)].values()]) for x in (a, b)}
            verdict = c["verdict"]
            if steps == 0:  # deterministic: no seed noise to measure, the test set's error is all there is
                lo, hi = c["ci"]
                verdict = "better" if hi < 0 else "worse" if lo > 0 else "inconclusive"
            rows.append({"a": " ".join(a), "b": " ".join(b), "rank": args.rank, "steps": steps, "loss_a": mean[a],
                         "loss_b": mean[b], "difference": c["diff"], "ci": c["ci"], "verdict": verdict,
                         "seeds": len(c["seeds"]), "test_examples": len(test)})

    print("\n| steps | a | b | loss a | loss b | a − b [95 % CI] | verdict (a) | seeds |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["ci"]
        print(f"| {r['steps']} | {r['a']} | {r['b']} | {r['loss_a']:.4f} | {r['loss_b']:.4f} | "
              f"{r['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}] | {r['verdict']} | {r['seeds']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


def measure(ev, config, label: str, args, test: list[dict], test_fp: str, p) -> tuple[dict, dict]:
    """The per-example test contributions of `config` under `ev` at step 0 ({0: ...}) and after `args.steps`
    steps under each seed ({seed: ...}), every evaluation a record of `ev`'s store."""
    from autoqra import stats
    from autoqra.store import fingerprint

    with ev.workdir() as tmp:
        key = fingerprint.of_data(["step0", ev.key(config, 0, 0), test_fp])
        start = time.perf_counter()
        record, computed = ev.store.get(key, lambda: _step0(ev, config, Path(tmp), test, p))
        print(f"{label} step 0: test loss {record['scores']['answer_loss']:.4f}"
              f"{'' if not computed else f' ({time.perf_counter() - start:.0f} s)'}", flush=True)
    per_seed, _ = trained_test(ev, config, args.steps, args.seeds, test, test_fp, p.evaluate, label)
    return {0: stats.contributions(record["scores"]["answer_nll"])}, per_seed


def _step0(ev, config, tmp: Path, test: list[dict], p) -> dict:
    """The test scores of the configuration as assembled, before any training step."""
    from autoqra.train import evaluation

    model = ev.assemble(config, tmp, seed=0)
    scores = evaluation.test_scores(model, ev.tokenizer, test, p.task.max_length, p.evaluate.batch_size)
    return {"status": "ok", "score": scores["answer_loss"], "reason": None, "scores": scores}


if __name__ == "__main__":
    main()

"""Where the seed noise of a fidelity score comes from, one source at a time.

    python bench/noise.py [--params params.yaml] [--steps 72] [--seeds 4] [--configs uniform3_r16 uniform4_r8]

For two configurations on the prepared model (the GPTQ caches of the quantize stage), trains each
under `--seeds` values of ONE source of randomness while the others stay at 0, and prints the
standard deviation of each configuration's score and of their paired difference (A - B under the
same seeds) per source:

- `init`: the adapters' initialisation (A; B starts at zero),
- `data`: the order of the training examples,
- `dropout`: the LoRA dropout masks (trained with dropout 0.05 for this row only),
- `data, <schedule>` / `data, batch <n>`: data-order noise under another learning-rate schedule or a
  larger batch (what a default could change),
- `validation sample`: how much the score of one trained model moves with which `m` validation
  examples are scored (from per-example losses, sd of the mean of m examples drawn from the split).

Every run is cached in a record store under `--store` (a killed bench resumes). The configurations
are `uniform{bits}_r{rank}`, `pick` (the evolve stage's best.json) or `greedy` (generation 0's
importance-per-byte allocation). Runs go through the library's own assembly, attach and train.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import load  # noqa: E402

from autoqra import arms, data, devices, models, quant  # noqa: E402
from autoqra.memory import ModelSpec, from_params  # noqa: E402
from autoqra.quant import backends  # noqa: E402
from autoqra.store import fingerprint  # noqa: E402
from autoqra.store.records import RecordStore  # noqa: E402
from autoqra.train import scoring  # noqa: E402
from autoqra.train.loop import train  # noqa: E402
from autoqra.train.lora import attach_lora  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepare", default="data/prepare")
    ap.add_argument("--quantize", default="data/quantize")
    ap.add_argument("--profile", default="data/profile")
    ap.add_argument("--evolve", default="data/search/evolve", help="for the `pick` configuration")
    ap.add_argument("--store", default="data/bench/noise")
    ap.add_argument("--configs", nargs=2, default=None, help="two configurations (default: the budget's "
                    "reference arm and uniform 4-bit at the next lower rank)")
    ap.add_argument("--steps", type=int, default=0, help="training steps (default: the top fidelity)")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--sources", nargs="+", default=["init", "data", "dropout", "schedule", "batch"])
    ap.add_argument("--schedule", default="linear", help="the alternative schedule of the `schedule` row")
    ap.add_argument("--batch", type=int, default=16, help="the larger batch of the `batch` row")
    args = ap.parse_args()
    p = load(args.params)
    steps = args.steps or p.search.fidelities[-1]
    prepare = Path(args.prepare)
    spec = ModelSpec.from_pretrained(Path(args.prepare) / "model", p.quant.targets)
    space, memory, _ = from_params(p, spec)
    device = devices.default_device()
    dtype = devices.compute_dtype(p.finetune.dtype, device)
    caches = {b: quant.QuantCache(Path(args.quantize) / f"b{b}") for b in p.quant.bits if b != quant.UNQUANTIZED}
    backend = backends.weight_backend("dequant" if device == "cpu" else "packed", prepare / "model", caches, device,
                                      dtype)
    tok = models.load_tokenizer(prepare / "model")
    train_data = [data.encode(tok, ex, p.task.max_length) for ex in data.read_split(prepare / "task", "train")]
    val = data.read_split(prepare / "task", "val")
    names = pick_configs(args, p, space)
    store = RecordStore(args.store)
    inputs = {"model": fingerprint.of_dir(prepare / "model"), "caches": {b: c.fingerprint for b, c in caches.items()},
              "finetune": dataclasses.asdict(p.finetune), "lora": dataclasses.asdict(p.lora), "steps": steps,
              "max_length": p.task.max_length, "dtype": str(dtype), "code": fingerprint.of_code("autoqra.finetune",
                                                                                                "autoqra.scoring")}

    def run(config, init=0, data=0, dropout=0, schedule=None, batch=None, lora_dropout=0.0):
        key = fingerprint.of_data({**inputs, "config": config.key, "init": init, "data": data, "dropout": dropout,
                                   "schedule": schedule, "batch": batch, "lora_dropout": lora_dropout})

        def compute():
            bits, ranks = space.per_module(config)
            torch.manual_seed(dropout)
            model = attach_lora(backend.build(bits, Path(args.store) / "tmp"), ranks, p.lora.alpha_ratio,
                                lora_dropout, seed=init)
            ft = p.finetune
            res = train(model, train_data, tok.pad_token_id, steps, data, batch_size=batch or ft.batch_size, lr=ft.lr,
                        warmup_ratio=ft.warmup_ratio, schedule=schedule or ft.schedule,
                        weight_decay=ft.weight_decay, max_grad_norm=ft.max_grad_norm)
            per = scoring.per_example_nll(model, tok, val, p.task.max_length, ft.eval_batch_size)
            score = scoring.pooled(per)
            return {"status": "ok", "score": score, "reason": None, "per_example": per, "train_s": res.seconds}

        return store.get(key, compute)[0]

    rows = []
    variants = {"init": {"init"}, "data": {"data"}, "dropout": {"dropout"}}
    for source in args.sources:
        label, kw, vary = source, {}, source
        if source == "dropout":
            kw = {"lora_dropout": 0.05}
        elif source == "schedule":
            label, kw, vary = f"data, {args.schedule} schedule", {"schedule": args.schedule}, "data"
        elif source == "batch":
            label, kw, vary = f"data, batch {args.batch}", {"batch": args.batch}, "data"
        elif source not in variants:
            raise SystemExit(f"error: --sources {source}: unknown (allowed: init data dropout schedule batch)")
        scores = {name: [run(config, **kw, **{vary: s})["score"] for s in range(args.seeds)]
                  for name, config in names.items()}
        a, b = scores.values()
        diff = np.subtract(a, b)
        rows.append((label, np.mean(a), np.std(a, ddof=1), np.mean(b), np.std(b, ddof=1), diff.mean(),
                     diff.std(ddof=1)))
        print(f"{label}: done", file=sys.stderr, flush=True)
    base = {name: run(config)["per_example"] for name, config in names.items()}
    (na, pa), (nb, pb) = base.items()
    ex_a = np.array([x / n for x, n in pa])
    ex_b = np.array([x / n for x, n in pb])
    tokens = np.array([n for _, n in pa])
    report(args, p, steps, names, rows, ex_a, ex_b, tokens, val)


def pick_configs(args, p, space):
    if args.configs:
        wanted = args.configs
    else:
        bits, rank = arms.parse_uniform(p.budget.reference)
        lower = [r for r in p.lora.ranks if r < rank]
        wanted = [p.budget.reference, f"uniform4_r{lower[-1] if lower else rank}"]
    out = {}
    for name in wanted:
        if name == "pick":
            out[name] = space.parse(json.loads((Path(args.evolve) / "best.json").read_text())["config"])
        elif name.startswith("uniform"):
            out[name] = space.uniform(*arms.parse_uniform(name))
        else:
            raise SystemExit(f"error: --configs {name}: use uniform<bits>_r<rank> or pick")
        space.check(out[name])
    return out


def report(args, p, steps, names, rows, ex_a, ex_b, tokens, val):
    (na, nb) = names
    print(f"\nnoise at {steps} steps, {args.seeds} seeds per source, batch {p.finetune.batch_size}, "
          f"lr {p.finetune.lr} ({p.finetune.schedule}), {p.search.metric} on {len(val)} validation examples")
    print(f"A = {na}, B = {nb}")
    print(f"{'source varied':28} {'mean A':>8} {'sd A':>7} {'mean B':>8} {'sd B':>7} {'A-B':>8} {'sd(A-B)':>8}")
    for label, ma, sa, mb, sb, md, sd in rows:
        print(f"{label:28} {ma:8.4f} {sa:7.4f} {mb:8.4f} {sb:7.4f} {md:+8.4f} {sd:8.4f}")
    w = tokens / tokens.mean()
    print("\nvalidation sample (one trained model each, all seeds 0): sd of the score from m examples drawn "
          "from the task (the split's per-example spread / sqrt(m))")
    print(f"{'m':>5} {'sd A':>8} {'sd B':>8} {'sd(A-B)':>8}")
    for m in (25, 50, 100, len(val), 4 * len(val)):
        print(f"{m:5d} {np.std(ex_a * w, ddof=1) / math.sqrt(m):8.4f} {np.std(ex_b * w, ddof=1) / math.sqrt(m):8.4f} "
              f"{np.std((ex_a - ex_b) * w, ddof=1) / math.sqrt(m):8.4f}")
    families = sorted({ex["family"] for ex in val})
    print("\nper task family (all seeds 0): mean answer loss")
    for fam in families:
        idx = [i for i, ex in enumerate(val) if ex["family"] == fam]
        print(f"  {fam:12} A {np.average(ex_a[idx], weights=tokens[idx]):.4f}  "
              f"B {np.average(ex_b[idx], weights=tokens[idx]):.4f}")


if __name__ == "__main__":
    main()

"""Cost of one fidelity evaluation with each weight backend, next to a plain PEFT LoRA loop.

    python bench/fidelity_cost.py [--prepare data/prepare] [--quantize data/quantize] [--steps 8]

Measured side by side in one run on the same model, data, batch and rank: a plain loop (unquantized
fp32 base + PEFT LoRA on every target, our training function), the `dequant` backend and the
`packed` backend (each a full fidelity run: assembly, LoRA, training, validation scoring).
Prints seconds per step and per evaluation, and ratios to the plain loop.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import TARGETS  # sets the offline environment (read when transformers is first imported)

from autoqra import models, quant
from autoqra.config import FinetuneParams, LoraParams
from autoqra.evaluate import Evaluator
from autoqra.finetune import attach_lora, train
from autoqra.memory import ModelSpec
from autoqra.space import Space


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepare", default="data/prepare")
    ap.add_argument("--quantize", default="data/quantize")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--val-samples", type=int, default=64)
    args = ap.parse_args()
    model_dir, task_dir = Path(args.prepare) / "model", Path(args.prepare) / "task"
    ft = FinetuneParams(batch_size=args.batch_size, max_length=args.max_length, val_samples=args.val_samples)
    caches = {args.bits: quant.QuantCache(Path(args.quantize) / f"b{args.bits}")}
    spec = ModelSpec.from_pretrained(model_dir, TARGETS)
    space = Space.build([m.name for m in spec.modules], "block", [args.bits], [args.rank])
    config = space.uniform(args.bits, args.rank)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ev = Evaluator(model_dir=model_dir, task_dir=task_dir, caches=caches, space=space,
                       lora=LoraParams(ranks=[args.rank]), finetune=ft, records=Path(tmp) / "plain", backend="dequant")
        start = time.perf_counter()
        model = models.load_model(model_dir)
        for p in model.parameters():
            p.requires_grad_(False)
        _, ranks = space.per_module(config)
        model = attach_lora(model, ranks, 2.0, 0.05)
        res = train(model, ev.train_data, ev.tokenizer.pad_token_id, args.steps, 0, batch_size=ft.batch_size,
                    lr=ft.lr, warmup_ratio=ft.warmup_ratio, schedule=ft.schedule, weight_decay=0.0, max_grad_norm=1.0)
        rows.append(("plain PEFT LoRA (fp32 base)", res.seconds / args.steps, time.perf_counter() - start))
        for backend in ("dequant", "packed"):
            ev = Evaluator(model_dir=model_dir, task_dir=task_dir, caches=caches, space=space,
                           lora=LoraParams(ranks=[args.rank]), finetune=ft, records=Path(tmp) / backend,
                           backend=backend)
            record = ev(config, args.steps, 0)
            rows.append((f"{backend} fidelity run ({record['dtype'].removeprefix('torch.')})",
                         record["train_s"] / args.steps, record["wall_s"]))
    print(f"{args.steps} steps, batch {args.batch_size} x {args.max_length} tokens, {args.bits}-bit, rank {args.rank}, "
          f"{torch.get_num_threads()} threads; evaluation scores {args.val_samples} validation examples")
    print(f"{'':34} {'s/step':>8} {'steps/s':>8} {'ratio':>6} {'s total':>8}")
    base = rows[0][1]
    for name, per_step, total in rows:
        print(f"{name:34} {per_step:8.2f} {1 / per_step:8.3f} {per_step / base:6.2f} {total:8.1f}")


if __name__ == "__main__":
    main()

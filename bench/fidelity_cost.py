"""One fidelity evaluation against its floor: a plain PEFT LoRA loop on the same assembled model.

    python bench/fidelity_cost.py [--prepare data/prepare] [--quantize data/quantize] [--steps 16]

For each weight backend (`dequant`, `packed`), side by side in one run on the same configuration,
data, batch and rank: (a) the floor, a plain loop written the way PEFT's docs do it (the backend's
assembled model, `get_peft_model`, the model's own loss over every position, AdamW) on the batches
our loop draws; (b) our fidelity run (`FidelityRun`: assembly from the in-memory cache, seeded
adapters, length-grouped batches, the output head on answer tokens only, scoring). Prints training
throughput (steps/s) and the ratio ours/floor (target ≥ 0.95), and where the rest of an evaluation
goes. Writes the table as JSON to `--json`.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
from common import TARGETS, training_parser  # sets the offline environment (read when transformers is first imported)

from autoqra import devices, quant
from autoqra.data import collate
from autoqra.memory import ModelSpec
from autoqra.params import FinetuneParams, LoraParams
from autoqra.pipeline.fidelity import FidelityRun
from autoqra.space import Space
from autoqra.train.loop import batch_order


def plain_loop(model, encoded, pad_id, steps, batch_size, lr, seed) -> float:
    """PEFT's documented loop: the model's own loss (every position), AdamW; seconds per step."""
    from peft import LoraConfig, get_peft_model

    names = [n for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in TARGETS and ".layers." in n]
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=names))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    order = batch_order([len(ids) for ids, _ in encoded], batch_size, seed)
    peft_model.train()
    start = time.perf_counter()
    for _ in range(steps):
        batch = collate([encoded[i] for i in next(order)], pad_id)
        peft_model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = training_parser(__doc__.splitlines()[0], steps=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--backends", nargs="+", default=["dequant", "packed"])
    ap.add_argument("--json", default="data/bench/fidelity_cost.json")
    args = ap.parse_args()
    model_dir, task_dir = Path(args.prepare) / "model", Path(args.prepare) / "task"
    ft = FinetuneParams(batch_size=args.batch_size)
    caches = {args.bits: quant.QuantCache(Path(args.quantize) / f"b{args.bits}")}
    spec = ModelSpec.from_pretrained(model_dir, TARGETS)
    space = Space.from_modules([m.name for m in spec.modules], "block", [args.bits], [args.rank])
    config = space.uniform(args.bits, args.rank)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends:
            ev = FidelityRun(model_dir=model_dir, task_dir=task_dir, caches=caches, space=space,
                           lora=LoraParams(ranks=[args.rank], init="zero"), finetune=ft, records=Path(tmp) / backend,
                           max_length=args.max_length, backend=backend)
            bits, _ = space.per_module(config)
            floor = plain_loop(ev.backend.build(bits, Path(tmp) / f"plain-{backend}"), ev.train_data,
                               ev.tokenizer.pad_token_id, args.steps, args.batch_size, ft.lr, 0)
            ours = ev(config, args.steps, 0)
            per_step = ours["train_s"] / args.steps
            rows.append({"backend": backend, "dtype": ours["dtype"], "floor_s_per_step": floor,
                         "ours_s_per_step": per_step, "throughput_ratio": floor / per_step,
                         "eval_s": ours["eval_s"], "wall_s": ours["wall_s"],
                         "other_s": ours["wall_s"] - ours["train_s"] - ours["eval_s"]})
    print(f"{args.steps} steps, batch {args.batch_size}, {args.bits}-bit, rank {args.rank} on all targets, "
          f"{torch.get_num_threads()} threads, {devices.default_device()}")
    print(f"{'backend':10} {'dtype':16} {'floor s/step':>12} {'ours s/step':>12} {'ours/floor':>10} "
          f"{'scoring s':>9} {'assembly+setup s':>16}")
    for r in rows:
        flag = "" if r["throughput_ratio"] >= 0.95 else "  (below the 0.95 target)"
        print(f"{r['backend']:10} {r['dtype']:16} {r['floor_s_per_step']:12.3f} {r['ours_s_per_step']:12.3f} "
              f"{r['throughput_ratio']:10.2f} {r['eval_s']:9.1f} {r['other_s']:16.1f}{flag}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

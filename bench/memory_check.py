"""The memory model against one measured training step, term by term, for every arm and both backends.

    python bench/memory_check.py [--prepare data/prepare] [--quantize data/quantize] [--final data/final]

For each arm of a finished run (its configuration from `<final>/<arm>/train/arm.json`) and each weight
backend, builds the model as a fidelity run does, attaches the adapters and runs one forward, backward
and AdamW step on a batch of `finetune.batch_size` sequences padded to `task.max_length` whose answers
are the longest of the train split (the batch the memory model prices), counting every term with
`autoqra.train.measure.training_step`; prints predicted, measured and their ratio per term and writes
JSON. The `dequant` backend keeps dense weights by design: it is checked against the model priced as it
holds them (`Training.dense_weights`: dense in the compute dtype, no metadata), while every budget prices
the packed weights a GPU run holds. The step runs in `--dtype` (default bf16, the dtype the model prices:
a CPU without native bf16 then computes slowly, and an fp32 run saves other tensors: no bf16→fp32 casts).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from common import load, search_parser  # sets the offline environment

from autoqra.devices import attention
from autoqra.memory import MemoryModel
from autoqra.pipeline.setup import Setup
from autoqra.train.measure import priced_batch, training_step

TERMS = ("weights", "metadata", "rest", "lora", "lora_activations", "activations", "total")


def main() -> None:
    ap = search_parser(__doc__.splitlines()[0], "nothing")
    ap.add_argument("--final", default="data/final")
    ap.add_argument("--arms", nargs="*", help="default: every arm with a train/arm.json under --final")
    ap.add_argument("--backends", nargs="+", default=["dequant", "packed"])
    ap.add_argument("--json", default="data/bench/memory_check.json")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp32", "auto"), help="finetune.dtype of the step")
    args = ap.parse_args()
    p = load(args.params)
    dirs = {"prepare": args.prepare, "quantize": args.quantize, "profile": args.profile, "search": args.search,
            "journal": "bench-memory"}
    arms = args.arms or sorted(d.name for d in Path(args.final).iterdir() if (d / "train/arm.json").exists())
    rows = []
    for backend in args.backends:
        setup = Setup(dataclasses.replace(p, search=dataclasses.replace(p.search, backend=backend),
                                                finetune=dataclasses.replace(p.finetune, dtype=args.dtype)), dirs,
                            arm_ladders=True)
        ev = setup.fidelity_run
        batch = priced_batch(ev.train_data, ev.tokenizer.pad_token_id, p.finetune.batch_size, p.task.max_length)
        # the model of the run as it executes here (CPU: eager attention); the budget's is a GPU run's
        labelled = max(sum(y != -100 for y in labels) for _, labels in ev.train_data)
        model = MemoryModel(setup.spec, p.quant.group_size, dataclasses.replace(
            setup.memory.training, attention=attention(ev.device), labelled=labelled,
            dtype_bytes=ev.dtype.itemsize, dense_weights=backend == "dequant"))
        for arm in arms:
            spec = json.loads((Path(args.final) / arm / "train/arm.json").read_text())
            config = setup.arm_space.parse(spec["config"])
            bits, _ = setup.arm_space.per_module(config)
            with tempfile.TemporaryDirectory() as tmp:
                measured = training_step(ev.assemble(config, Path(tmp), seed=0), batch, bits)
            predicted = model.breakdown(setup.arm_space, config)
            rows.append({"arm": arm, "backend": backend, "summary": config.describe(), "predicted": predicted,
                         "measured": measured})
            print(f"\n{arm} ({config.describe()}), {backend}: {measured['total'] / 2**20:,.1f} MiB measured")
            print(f"{'term':18} {'predicted MiB':>14} {'measured MiB':>14} {'ratio':>8}")
            for term in TERMS:
                pred, meas = predicted[term], measured[term]
                ratio = f"{pred / meas:8.3f}" if meas else "       –"
                print(f"{term:18} {pred / 2**20:14,.2f} {meas / 2**20:14,.2f} {ratio}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()

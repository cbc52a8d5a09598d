"""The memory model's weight, metadata and LoRA terms against the real tensors of a packed model.

    python bench/memory_check.py [--prepare data/prepare] [--quantize data/quantize] [--seed 0]

Assembles a random module-level configuration over the available caches as a GPTQModel checkpoint,
attaches LoRA with per-module ranks and prints predicted bytes, measured bytes and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import TARGETS  # sets the offline environment (read when transformers is first imported)

from autoqra import quant
from autoqra.memory import MemoryModel, ModelSpec, Training, measured_bytes
from autoqra.space import Space
from autoqra.train.lora import attach_lora


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepare", default="data/prepare")
    ap.add_argument("--quantize", default="data/quantize")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ranks", type=int, nargs="+", default=[0, 4, 8, 16])
    args = ap.parse_args()
    model_dir = Path(args.prepare) / "model"
    caches = {int(p.name[1:]): quant.QuantCache(p) for p in sorted(Path(args.quantize).glob("b*"))
              if (p / "quantize_config.json").exists()}
    spec = ModelSpec.from_pretrained(model_dir, TARGETS)
    space = Space.build([m.name for m in spec.modules], "module", sorted(caches) + [16], args.ranks)
    config = space.random(np.random.default_rng(args.seed))
    group = next(iter(caches.values())).group_size
    predicted = MemoryModel(spec, group, Training(batch_size=8, seq_len=128)).breakdown(space, config)
    bits, ranks = space.per_module(config)
    with tempfile.TemporaryDirectory() as tmp:
        model = quant.load_packed(quant.write_packed(bits, model_dir, caches, Path(tmp)), dtype=torch.bfloat16)
        for p in model.parameters():
            p.requires_grad_(False)
        real = measured_bytes(attach_lora(model, ranks, 2.0, 0.05), bits)
    print(f"configuration: {config.describe()} over {len(space)} modules")
    print(f"{'term':22} {'predicted':>14} {'measured':>14} {'ratio':>8}")
    for name, pred, meas in (("packed/dense weights", predicted["weights"], real["weights"]),
                             ("GPTQ metadata", predicted["metadata"], real["metadata"]),
                             ("LoRA weights (fp32)", predicted["lora_params"] * 4, real["lora_weights"])):
        print(f"{name:22} {pred:14,.0f} {meas:14,.0f} {pred / meas:8.4f}")
    print(f"predicted total to fine-tune (batch 8 x 128): {predicted['total'] / 2**20:,.1f} MiB, "
          f"avg bits {predicted['avg_bits']:.3f} ({predicted['avg_bits_with_lora']:.3f} with LoRA at 16 bits)")


if __name__ == "__main__":
    main()

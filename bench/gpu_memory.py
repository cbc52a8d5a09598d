"""Packed training on a GPU: peak memory at 2/3/4/8 bits against the memory model, step time against plain
bf16 PEFT LoRA, on random-initialised Llama shapes (no download, no GPTQModel: the GPU machine has
torch, transformers and peft only).

    python bench/gpu_memory.py [--shapes 1b 8b] [--bits 2 3 4 8] [--batch 16] [--seq 512] [--steps 4]
    python bench/gpu_memory.py --shapes tiny --device cpu      # the same command's CPU rehearsal

Every target linear is replaced by a packed layer holding round-to-nearest codes (groups of 128, int32
words as GPTQ packs them for 2/4/8 bits, ten 3-bit codes per word) with fp16 scales and zeros, its matmul
routed through this project's `PackedMatmul` (no dense weight saved for backward), and a rank-16 LoRA
adapter on top (fp32, as PEFT keeps them). The baseline is the same shape in bf16 with PEFT's LoRA r16 on
all seven projections. Gradient checkpointing on, AdamW. Two loops on each model: `plain` (the model's own
loss on every position, as PEFT's docs train) and `ours` (`autoqra.train.loop.train`, the loop of every
fidelity run and arm: the output head on `--answer` labelled tokens a sequence, gradient clipping, the
schedule), each against its own memory prediction. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from autoqra.quant.matmul import PackedMatmul  # noqa: E402  (pure torch)

SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab
    "tiny": (256, 512, 2, 4, 2, 1000),
    "1b": (2048, 8192, 16, 32, 8, 128256),   # Llama-3.2-1B
    "8b": (4096, 14336, 32, 32, 8, 128256),  # Llama-3-8B
}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GROUP = 128


class PackedLoraLinear(nn.Module):
    """A frozen packed weight (codes in int32 words, fp16 scale and zero per group) plus LoRA B·A."""

    def __init__(self, linear: nn.Linear, bits: int, rank: int):
        super().__init__()
        self.in_features, self.out_features, self.bits = linear.in_features, linear.out_features, bits
        w = linear.weight.detach().float()  # (out, in)
        g = w.reshape(self.out_features, -1, GROUP)
        lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
        scale = ((hi - lo) / (2**bits - 1)).clamp(min=1e-8)
        codes = torch.round((g - lo) / scale).clamp(0, 2**bits - 1).to(torch.int32).reshape(self.out_features, -1)
        self.per_word = 10 if bits == 3 else 32 // bits
        pad = -codes.shape[1] % self.per_word
        codes = nn.functional.pad(codes, (0, pad)).reshape(self.out_features, -1, self.per_word)
        shifts = torch.arange(self.per_word, device=w.device, dtype=torch.int32) * bits
        self.register_buffer("qweight", (codes << shifts).sum(-1, dtype=torch.int32))
        self.register_buffer("scales", scale.squeeze(-1).half())
        self.register_buffer("zeros", lo.squeeze(-1).half())
        self.register_buffer("g_idx", torch.arange(self.in_features, device=w.device, dtype=torch.int32) // GROUP)
        self.lora_A = nn.Parameter(torch.randn(rank, self.in_features, device=w.device) / math.sqrt(self.in_features))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=w.device))
        self.scaling = 2.0

    def dequantize_weight(self, num_itr: int = 1) -> torch.Tensor:
        """(in, out), as GPTQModel's layers return it."""
        shifts = torch.arange(self.per_word, device=self.qweight.device, dtype=torch.int32) * self.bits
        codes = (self.qweight.unsqueeze(-1) >> shifts) & (2**self.bits - 1)
        codes = codes.reshape(self.out_features, -1)[:, : self.in_features].reshape(self.out_features, -1, GROUP)
        w = codes.to(torch.bfloat16) * self.scales.unsqueeze(-1).to(torch.bfloat16) \
            + self.zeros.unsqueeze(-1).to(torch.bfloat16)
        return w.reshape(self.out_features, self.in_features).T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1] + (self.out_features,)
        flat = x.reshape(-1, self.in_features)
        base = PackedMatmul.apply(flat, self)
        lora = (flat.float() @ self.lora_A.T) @ self.lora_B.T * self.scaling
        return (base + lora.to(base.dtype)).reshape(shape)


def build(shape: str, device: str, bits: int | None, rank: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    h, inter, layers, heads, kv, vocab = SHAPES[shape]
    cfg = LlamaConfig(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    for p in model.parameters():
        p.requires_grad_(False)
    if bits is None:  # plain bf16 PEFT LoRA
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(TARGETS)))
    else:
        for layer in model.model.layers:
            for parent in (layer.self_attn, layer.mlp):
                for name in TARGETS:
                    if hasattr(parent, name):
                        setattr(parent, name, PackedLoraLinear(getattr(parent, name), bits, rank))
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    return model


def predicted_bytes(shape: str, bits: int | None, rank: int, batch: int, seq: int, labelled: int | None) -> float:
    """The memory model of this run (gradient checkpointing on; the head on `labelled` tokens a sequence,
    None: every position)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from autoqra.memory import MemoryModel, ModelSpec, ModuleShape, Training
    from autoqra.space import Space

    h, inter, layers, heads, kv, vocab = SHAPES[shape]
    hd = h // heads
    dims = {"q_proj": (h, h), "k_proj": (h, kv * hd), "v_proj": (h, kv * hd), "o_proj": (h, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    mods = tuple(ModuleShape(f"model.layers.{i}.{'self_attn' if n[0] in 'qkvo' else 'mlp'}.{n}", *dims[n])
                 for i in range(layers) for n in TARGETS)
    spec = ModelSpec(mods, other_params=2 * vocab * h + h * (2 * layers + 1), hidden=h, intermediate=inter,
                     layers=layers, heads=heads, kv_heads=kv, vocab=vocab)
    space = Space.from_modules([m.name for m in mods], "block", [16 if bits is None else bits], [rank])
    training = Training(batch_size=batch, seq_len=seq, gradient_checkpointing=True, lora_dropout=False,
                        labelled=labelled)
    return MemoryModel(spec, GROUP, training).total(space, space.uniform(space.bits[0], rank))


class Clock:
    """Per-step wall times (GPU synchronised) and the peak memory since construction."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.stamps = [time.perf_counter()]

    def tick(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())

    def stats(self) -> dict[str, float]:
        """The median seconds per step after the first (the first warms up), and on a GPU the peak and
        resident memory."""
        times = sorted(b - a for a, b in zip(self.stamps[1:-1], self.stamps[2:])) \
            or [self.stamps[-1] - self.stamps[0]]
        out = {"s_per_step": times[len(times) // 2]}
        if self.cuda:
            out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            out["resident_gib"] = torch.cuda.memory_allocated() / 2**30
        return out


def step_stats(model: nn.Module, device: str, vocab: int, batch: int, seq: int, steps: int) -> dict[str, float]:
    """PEFT's documented loop: the model's own loss on every position, AdamW."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, vocab, (batch, seq), device=device)
    clock = Clock(device)
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        clock.tick()
    return clock.stats()


def ours_stats(model: nn.Module, device: str, vocab: int, batch: int, seq: int, steps: int,
               answer: int) -> dict[str, float]:
    """This project's training loop, on `answer` labelled tokens a sequence."""
    from autoqra.train.loop import train

    g = torch.Generator().manual_seed(0)
    encoded = []
    for _ in range(4 * batch):
        ids = torch.randint(0, vocab, (seq,), generator=g).tolist()
        encoded.append((ids, [-100] * (seq - answer) + ids[seq - answer:]))
    clock = Clock(device)
    result = train(model, encoded, 0, steps, 0, batch_size=batch, lr=1e-4, warmup_ratio=0.1, schedule="cosine",
                   weight_decay=0.0, max_grad_norm=1.0, on_step=clock.tick)
    if result.failure:
        raise SystemExit(f"error: our loop failed: {result.failure}")
    return clock.stats()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["1b", "8b"], choices=sorted(SHAPES))
    ap.add_argument("--bits", nargs="+", type=int, default=[2, 3, 4, 8])
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--answer", type=int, default=32, help="labelled tokens a sequence in our loop")
    ap.add_argument("--loops", nargs="+", default=["plain", "ours"], choices=["plain", "ours"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default="data/bench/gpu_memory.json")
    args = ap.parse_args()
    rows = []
    for shape in args.shapes:
        for bits in [None, *args.bits]:
            model = build(shape, args.device, bits, args.rank)
            for loop in args.loops:
                if loop == "plain":
                    stats = step_stats(model, args.device, SHAPES[shape][5], args.batch, args.seq, args.steps)
                else:
                    stats = ours_stats(model, args.device, SHAPES[shape][5], args.batch, args.seq, args.steps,
                                       args.answer)
                labelled = args.answer if loop == "ours" else None
                row = {"shape": shape, "bits": bits or "bf16 PEFT", "loop": loop, **stats,
                       "predicted_gib": predicted_bytes(shape, bits, args.rank, args.batch, args.seq,
                                                        labelled) / 2**30}
                rows.append(row)
                print(json.dumps(row), flush=True)
            del model
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    base = {(r["shape"], r["loop"]): r for r in rows if r["bits"] == "bf16 PEFT"}
    plain = {(r["shape"], r["bits"]): r for r in rows if r["loop"] == "plain"}
    print("\n| shape | bits | loop | s/step | time vs bf16 PEFT, same loop | plain/ours throughput | peak GiB "
          "| predicted GiB | peak / predicted |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak = r.get("peak_gib")
        ratio = f"{peak / r['predicted_gib']:.3f}" if peak else "–"
        speed = r["s_per_step"] / base[(r["shape"], r["loop"])]["s_per_step"]
        twin = plain.get((r["shape"], r["bits"])) if r["loop"] == "ours" else None
        vs = f"{twin['s_per_step'] / r['s_per_step']:.2f}×" if twin else "–"
        print(f"| {r['shape']} | {r['bits']} | {r['loop']} | {r['s_per_step']:.3f} | {speed:.2f}× | {vs} "
              f"| {peak if peak else float('nan'):.2f} | {r['predicted_gib']:.2f} | {ratio} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""Where an export is served, and what each engine loads: checked on the parameters before any work.

The constraints are read from the engines' source (vLLM 0.34.0, SGLang 0.5.23; files cited in
docs/serving.md). Both moved GPTQ onto Marlin kernels: 4- and 8-bit symmetric only, group sizes -1, 32, 64
and 128; both read GPTQModel's per-module `dynamic` (a `-:` rule leaves a module unquantized) but match it
against the *fused* layer's name (`qkv_proj`, `gate_up_proj`), so q/k/v and gate/up must share one
quantization (neither checks it: a checkpoint that differs within a fused layer loads wrong, silently).
vLLM refuses act-order (`desc_act`) and caps LoRA ranks at `--max-lora-rank` (one of `MAX_LORA_RANKS`);
SGLang reads one `r` and `lora_alpha` per adapter and ignores `rank_pattern` (vLLM 0.34 reads it), so the
export pads every module to one rank (`pipeline.export.pad_adapter`: exact). Marlin's shape and compute
capability minimums are not checked (docs/serving.md). GPTQModel + PEFT, the default, loads anything the
pipeline makes.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoqra.errors import ParamError
from autoqra.space import FUSED

MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py: MaxLoRARanks


@dataclass(frozen=True)
class Target:
    name: str
    bits: tuple[int, ...] | None  # the bit-widths its kernels load (16: left unquantized); None: any
    group_sizes: tuple[int, ...] | None
    sym_only: bool
    desc_act: bool  # whether act-order loads
    granularities: tuple[str, ...] | None  # the unit choices that give every fused layer one quantization
    max_rank: int | None
    one_rank: bool  # reads one r per adapter: the export pads every module to it
    fuses: bool  # matches `dynamic` against fused layers: the checkpoint names them
    kernel: str  # what the constraint comes from, for the error message


TARGETS = {
    "gptqmodel": Target("gptqmodel", None, None, False, True, None, None, False, False, "GPTQModel + PEFT"),
    "vllm": Target("vllm", (4, 8, 16), (32, 64, 128), True, False, ("block", "fused"), MAX_LORA_RANKS[-1], True,
                   True, "vLLM's GPTQ (Marlin) kernels"),
    "sglang": Target("sglang", (4, 8, 16), (32, 64, 128), True, True, ("block", "fused"), None, True, True,
                     "SGLang's GPTQ (Marlin) kernels"),
}


def check(target: str, bits: list[int], sym: bool, desc_act: bool, group_size: int, granularity: str,
          ranks: list[int], targets: list[str]) -> None:
    """One `ParamError` line naming the first parameter the target cannot serve, the value and what it loads."""
    t = TARGETS[target]
    where = f"export.target={target}"
    fused = {leaf: [k for k, v in FUSED.items() if v == group] for leaf, group in FUSED.items()}
    partial = next((fused[x] for x in targets if x in fused and not set(fused[x]) <= set(targets)), None)
    if t.fuses and partial:
        raise ParamError(f"quant.targets={targets}: {where} fuses {', '.join(partial)} into one quantized layer: "
                         f"target all of them or none")
    bad = [b for b in bits if t.bits is not None and b not in t.bits]
    if bad:
        raise ParamError(f"quant.bits={bits}: {where} loads {', '.join(map(str, t.bits))} bits only ({t.kernel}: "
                         f"4- and 8-bit symmetric, 16 = unquantized), not {', '.join(map(str, bad))}")
    if t.sym_only and not sym:
        raise ParamError(f"quant.sym=false: {where} loads symmetric GPTQ only ({t.kernel})")
    if not t.desc_act and desc_act:
        raise ParamError(f"quant.desc_act=true: {where} refuses act-order GPTQ (allowed: false)")
    if t.group_sizes is not None and group_size not in t.group_sizes:
        raise ParamError(f"quant.group_size={group_size}: {where} loads group sizes "
                         f"{', '.join(map(str, t.group_sizes))} ({t.kernel})")
    if t.granularities is not None and granularity not in t.granularities:
        raise ParamError(f"search.granularity={granularity}: {where} fuses q/k/v and gate/up into one layer with one "
                         f"quantization, which per-linear bits would break (allowed: {', '.join(t.granularities)})")
    if t.max_rank is not None and max(ranks) > t.max_rank:
        raise ParamError(f"lora.ranks={ranks}: {where} serves ranks up to {t.max_rank} (--max-lora-rank)")


def max_lora_rank(target: str, rank: int) -> int:
    """The engine's `--max-lora-rank` for an adapter of rank `rank` (vLLM: the smallest value it allows)."""
    return next(r for r in MAX_LORA_RANKS if r >= rank) if target == "vllm" else rank


def command(target: str, model: str, adapter: str, rank: int, name: str = "autoqra") -> str:
    """The shell line that serves the export on the target (the engine's OpenAI-compatible server); the
    checkpoint's `config.json` carries its `quantization_config`, so the engine detects GPTQ itself."""
    flag = f"--max-lora-rank {max_lora_rank(target, rank)}"
    if target == "vllm":
        return f"vllm serve {model} --enable-lora --lora-modules {name}={adapter} {flag}"
    if target == "sglang":
        return f"python -m sglang.launch_server --model-path {model} --enable-lora --lora-paths {name}={adapter} {flag}"
    raise ValueError(f"export.target={target}: no server command (load it with GPTQModel + PEFT)")

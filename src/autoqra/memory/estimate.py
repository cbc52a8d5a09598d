"""The memory model: bytes to fine-tune a configuration, and the budget every candidate must meet.

bytes(config) = Σ over target linears of
                  packed weights   in·out·b/8                         (int32 `qweight`, GPTQ packing)
                + GPTQ metadata    ⌈in/g⌉·out·2 (fp16 `scales`) + ⌈in/g⌉·out·b/8 (int32 `qzeros`)
                                   + 4·in (int32 `g_idx`), exactly as GPTQModel stores them
                  (bits 16: the dense weight in the training dtype instead, no metadata)
                + LoRA             r·(in+out) parameters × 16 bytes: fp32 weights (PEFT keeps adapters
                                   in fp32 beside a bf16 base), fp32 gradients, AdamW's two fp32 moments
                + LoRA activations per token: the fp32 copy of the module input PEFT makes for the
                                   adapter (4·in), the dropout mask (1·in) and A's output (4·r)
              + the unquantized rest (embeddings, norms, an untied lm_head) in the training dtype
              + base activations of the training batch, what autograd saves for backward (measured with
                `autoqra.train.measure`, tensor by tensor): per token and layer the two RMSNorms' fp32
                inputs and 1/rms (2·(4·d + 4)); attention's q and the repeated k and v (3·d in the
                training dtype), plus, for eager attention (the CPU's), its fp32 softmax and the probabilities
                in the training dtype (heads·T·(4 + 2)), or, for fused attention (SDPA, a GPU's), its output
                and fp32 log-sum-exp (d·2 + 4·heads); the MLP's gate, up and SiLU outputs (3·inter·2);
                once per token the final norm's input (4·d + 4) and the padding mask; and only on the
                labelled positions (the answers: `scoring.labelled_nll` runs the head there alone) the fp32
                log-softmax of the logits and the target (4·V + 8). The base's weights are frozen, so no
                linear's input is saved for it. With gradient checkpointing: each layer's input plus one
                layer's activations. (The first norm's input, the frozen embeddings', is not saved: nothing upstream
needs a gradient. A unit at rank 0 saves less than this where no adapter precedes it.)

The model is of a run in bf16 (the training dtype is a parameter) on the packed backend, which every budget
prices (a GPU run's); `Training.dense_weights` prices the dequant backend instead (each quantized weight
dense in the training dtype, no GPTQ metadata: what it holds on a CPU), for checking that backend's steps.
It does not count the CUDA context, transient buffers or allocator fragmentation. Every term equals the
real tensors of one bf16 training step on the CPU (tests; `bench/memory_check.py` per arm and backend);
on a GPU the measured peak adds the transients (`bench/gpu_memory.py`). All terms are additive over
units, so a budget check or a repair step costs a table lookup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoqra.memory.spec import ModelSpec, ModuleShape
from autoqra.space import UNQUANTIZED, Config, Space

LORA_BYTES_PER_PARAM = 4 + 4 + 8  # fp32 weight, fp32 gradient, AdamW exp_avg and exp_avg_sq


@dataclass(frozen=True)
class Training:
    """The training-time settings memory depends on."""

    batch_size: int
    seq_len: int
    gradient_checkpointing: bool = False
    lora_dropout: bool = True
    dtype_bytes: int = 2  # bf16
    attention: str = "sdpa"  # or "eager" (`models.attention`: eager on the CPU)
    labelled: int | None = None  # labelled (answer) tokens per sequence at most; None: every position
    dense_weights: bool = False  # the dequant backend: every quantized weight dense in the dtype, no metadata


class MemoryModel:
    """Bytes of every term, per module and in total, for a given model, GPTQ group size and batch."""

    def __init__(self, spec: ModelSpec, group_size: int, training: Training):
        self.spec, self.group_size, self.training = spec, group_size, training
        self._shapes = spec.by_name

    # ------------------------------------------------------------------ per module
    def weight_bytes(self, m: ModuleShape, bits: int) -> int:
        """Packed `qweight` (int32), or the dense weight at 16 bits (or under `dense_weights`); plus the bias."""
        bias = m.out_features * self.training.dtype_bytes if m.bias else 0
        if bits >= UNQUANTIZED or self.training.dense_weights:
            return m.in_features * m.out_features * self.training.dtype_bytes + bias
        return m.in_features * bits // 32 * m.out_features * 4 + bias

    def metadata_bytes(self, m: ModuleShape, bits: int) -> int:
        """fp16 `scales`, int32 `qzeros` and int32 `g_idx`, as GPTQModel stores them."""
        if bits >= UNQUANTIZED or self.training.dense_weights:
            return 0
        groups = math.ceil(m.in_features / self.group_size)
        return groups * m.out_features * 2 + groups * (m.out_features * bits // 32) * 4 + m.in_features * 4

    @staticmethod
    def lora_params(m: ModuleShape, rank: int) -> int:
        return rank * (m.in_features + m.out_features)

    def lora_state_bytes(self, m: ModuleShape, rank: int) -> int:
        return self.lora_params(m, rank) * LORA_BYTES_PER_PARAM

    def lora_activation_bytes(self, m: ModuleShape, rank: int) -> float:
        """Saved for the adapter's backward over the whole batch (see the module docstring)."""
        if rank == 0:
            return 0.0
        per_token = m.in_features * (4 + (1 if self.training.lora_dropout else 0)) + 4 * rank
        share = 1.0 / self.spec.layers if self.training.gradient_checkpointing else 1.0  # one layer live
        return self.tokens * per_token * share

    def module_terms(self, name: str, bits: int, rank: int) -> dict[str, float]:
        m = self._shapes[name]
        return {"weights": self.weight_bytes(m, bits), "metadata": self.metadata_bytes(m, bits),
                "lora": self.lora_state_bytes(m, rank), "lora_activations": self.lora_activation_bytes(m, rank)}

    # ------------------------------------------------------------------ fixed part
    @property
    def tokens(self) -> int:
        return self.training.batch_size * self.training.seq_len

    def layer_activation_bytes_per_token(self) -> float:
        s, d, t = self.spec, self.training.dtype_bytes, self.training
        norms = 2 * (4 * s.hidden + 4)             # fp32 inputs and 1/rms of the two RMSNorms
        qkv = 3 * d * s.hidden                     # q, and k and v repeated to every head
        if t.attention == "eager":
            attention = qkv + s.heads * t.seq_len * (4 + d)  # fp32 softmax, probabilities in the dtype
        else:
            attention = qkv + d * s.hidden + 4 * s.heads     # the fused kernel's output and log-sum-exp
        mlp = d * 3 * s.intermediate               # gate, up, SiLU(gate)
        return norms + attention + mlp

    @property
    def labelled_tokens(self) -> int:
        t = self.training
        return t.batch_size * (t.labelled if t.labelled is not None else t.seq_len - 1)

    def base_activation_bytes(self) -> float:
        s, d = self.spec, self.training.dtype_bytes
        per_layer = self.layer_activation_bytes_per_token()
        if self.training.gradient_checkpointing:
            layers = s.layers * d * s.hidden + per_layer   # layer inputs, one layer recomputed
        else:
            layers = s.layers * per_layer
        head = self.labelled_tokens * (4 * s.vocab + 8)     # fp32 log-softmax and the target, labelled only
        first = 4 * s.hidden + 4  # the first norm's input is the frozen embedding's: it needs no gradient
        return self.tokens * (layers - first + 4 * s.hidden + 4 + 1) + head  # + the final norm, the mask

    def fixed_bytes(self) -> dict[str, float]:
        return {"rest": self.spec.other_params * self.training.dtype_bytes,
                "activations": self.base_activation_bytes()}

    # ------------------------------------------------------------------ configurations
    def breakdown(self, space: Space, config: Config) -> dict[str, Any]:
        """Every term in bytes, the total, and average bits per target parameter."""
        bits, ranks = space.per_module(config)
        terms = {"weights": 0.0, "metadata": 0.0, "lora": 0.0, "lora_activations": 0.0}
        lora_params = 0
        for name in bits:
            for k, v in self.module_terms(name, bits[name], ranks[name]).items():
                terms[k] += v
            lora_params += self.lora_params(self._shapes[name], ranks[name])
        terms.update(self.fixed_bytes())
        n = self.spec.target_params
        return {**terms, "total": sum(terms.values()), "lora_params": lora_params,
                "avg_bits": 8 * (terms["weights"] + terms["metadata"]) / n,
                "avg_bits_with_lora": (8 * (terms["weights"] + terms["metadata"]) + 16 * lora_params) / n}

    def total(self, space: Space, config: Config) -> float:
        return self.breakdown(space, config)["total"]

    def unit_table(self, space: Space, metric: str = "bytes") -> np.ndarray:
        """(U, len(bits), len(ranks)) cost of each unit at each ladder choice.

        `bytes`: the unit's share of total bytes; `storage_bits`: bits of its packed weights and
        metadata plus its LoRA weights at 16 bits (the numerator of average bits per parameter)."""
        table = np.zeros((len(space), len(space.bits), len(space.ranks)))
        for u, unit in enumerate(space.units):
            for i, b in enumerate(space.bits):
                for j, r in enumerate(space.ranks):
                    for name in space.members[unit]:
                        m = self._shapes[name]
                        if metric == "bytes":
                            table[u, i, j] += sum(self.module_terms(name, b, r).values())
                        else:
                            table[u, i, j] += 8 * (self.weight_bytes(m, b) + self.metadata_bytes(m, b)) \
                                + 16 * self.lora_params(m, r)
        return table



def measured_bytes(model: Any, bits_by_module: dict[str, int]) -> dict[str, int]:
    """Bytes of the real tensors behind the model's weight, metadata and LoRA terms (for checks)."""
    modules = {n.removeprefix("base_model.model."): m for n, m in model.named_modules()}
    out = {"weights": 0, "metadata": 0, "lora_params": 0, "lora_weights": 0}
    for name, bits in bits_by_module.items():
        layer = modules[name]
        base = getattr(layer, "base_layer", layer)
        tensors = [base.weight] if bits >= UNQUANTIZED else [base.qweight]
        if getattr(base, "bias", None) is not None:
            tensors.append(base.bias)
        out["weights"] += sum(t.numel() * t.element_size() for t in tensors)
        if bits < UNQUANTIZED:
            out["metadata"] += sum(t.numel() * t.element_size() for t in (base.scales, base.qzeros, base.g_idx))
    for n, p in model.named_parameters():
        if "lora_" in n:
            out["lora_params"] += p.numel()
            out["lora_weights"] += p.numel() * p.element_size()
    return out


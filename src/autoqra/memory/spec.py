"""What the memory model needs to know about a base model: the target linears' shapes and the rest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModuleShape:
    name: str
    in_features: int
    out_features: int
    bias: bool = False


LLAMA_FAMILY = ("llama", "mistral", "qwen2")  # the architectures whose shapes are computed from the config


@dataclass(frozen=True)
class ModelSpec:
    """What the memory model needs to know about the base model (read from its config alone)."""

    modules: tuple[ModuleShape, ...]  # the target linears
    other_params: int                 # every parameter outside the targets (tied weights once)
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, targets: list[str]) -> ModelSpec:
        from transformers import AutoConfig

        return cls.from_config(AutoConfig.from_pretrained(model_dir), targets)

    @classmethod
    def from_config(cls, config: Any, targets: list[str]) -> ModelSpec:
        """From a transformers config alone: computed from the config for the Llama family (Llama,
        Mistral, Qwen2: no modeling code imported, which is most of a preflight check's time), else
        from the model built on the meta device (no weight is read). Both agree (tested)."""
        spec = cls._llama_family(config, targets)
        return spec if spec is not None else cls.from_meta(config, targets)

    @classmethod
    def _llama_family(cls, c: Any, targets: list[str]) -> ModelSpec | None:
        kind = getattr(c, "model_type", None)
        if kind not in LLAMA_FAMILY or getattr(c, "quantization_config", None) is not None:
            return None
        hidden, inter, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
        heads = c.num_attention_heads
        kv = getattr(c, "num_key_value_heads", None) or heads
        head_dim = getattr(c, "head_dim", None) or hidden // heads
        attn_bias = {"q_proj", "k_proj", "v_proj"} if kind == "qwen2" else (
            {"q_proj", "k_proj", "v_proj", "o_proj"} if getattr(c, "attention_bias", False) else set())
        mlp_bias = bool(getattr(c, "mlp_bias", False))
        block = [("self_attn.q_proj", hidden, heads * head_dim), ("self_attn.k_proj", hidden, kv * head_dim),
                 ("self_attn.v_proj", hidden, kv * head_dim), ("self_attn.o_proj", heads * head_dim, hidden),
                 ("mlp.gate_proj", hidden, inter), ("mlp.up_proj", hidden, inter), ("mlp.down_proj", inter, hidden)]
        shapes, all_params = [], 0
        for i in range(layers):
            for name, fin, fout in block:
                leaf = name.rsplit(".", 1)[-1]
                bias = leaf in attn_bias or (name.startswith("mlp.") and mlp_bias)
                all_params += fin * fout + (fout if bias else 0)
                if leaf in targets:
                    shapes.append(ModuleShape(f"model.layers.{i}.{name}", fin, fout, bias))
        if not shapes:
            from autoqra.params import ParamError

            raise ParamError(f"quant.targets={list(targets)}: no such linear inside the model's decoder layers")
        vocab = c.vocab_size
        tied = getattr(c, "tie_word_embeddings", False)
        all_params += vocab * hidden * (1 if tied else 2) + hidden * (2 * layers + 1)  # embeddings, head, norms
        target = sum(m.in_features * m.out_features + (m.out_features if m.bias else 0) for m in shapes)
        return cls(tuple(shapes), all_params - target, hidden, inter, layers, heads, kv, vocab)

    @classmethod
    def from_meta(cls, config: Any, targets: list[str]) -> ModelSpec:
        """From the model built on the meta device (any architecture transformers knows)."""
        from autoqra.models import meta_model, target_modules

        model = meta_model(config)
        found = target_modules(model, targets)
        shapes = tuple(ModuleShape(n, m.in_features, m.out_features, m.bias is not None) for n, m in found.items())
        target_ids = {id(p) for m in found.values() for p in m.parameters()}
        other = sum(p.numel() for p in model.parameters() if id(p) not in target_ids)  # parameters() dedupes ties
        c = model.config
        return cls(shapes, other, c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
                   getattr(c, "num_key_value_heads", None) or c.num_attention_heads, c.vocab_size)

    @property
    def by_name(self) -> dict[str, ModuleShape]:
        return {m.name: m for m in self.modules}

    @property
    def target_params(self) -> int:
        return sum(m.in_features * m.out_features for m in self.modules)


"""The memory model: each term against a hand computation, and against the real tensors of a packed model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TARGETS

from autoqra import arms, quant
from autoqra.memory import (
    BudgetError,
    MemoryModel,
    ModelSpec,
    ModuleShape,
    Training,
    make_budget,
    measured_bytes,
)
from autoqra.space import Space
from autoqra.train.lora import attach_lora

SHAPE = ModuleShape("model.layers.0.mlp.down_proj", in_features=1536, out_features=576)
SPEC = ModelSpec(modules=(SHAPE,), other_params=1000, hidden=576, intermediate=1536, layers=30, heads=9,
                 kv_heads=3, vocab=49152)


@pytest.mark.parametrize("bits, weights, metadata", [
    # qweight in·out·b/8; scales ⌈in/g⌉·out·2; qzeros ⌈in/g⌉·(out·b/32)·4; g_idx in·4   (g = 64)
    (2, 1536 * 576 * 2 // 8, 24 * 576 * 2 + 24 * 36 * 4 + 1536 * 4),
    (3, 1536 * 576 * 3 // 8, 24 * 576 * 2 + 24 * 54 * 4 + 1536 * 4),
    (4, 1536 * 576 * 4 // 8, 24 * 576 * 2 + 24 * 72 * 4 + 1536 * 4),
    (8, 1536 * 576, 24 * 576 * 2 + 24 * 144 * 4 + 1536 * 4),
    (16, 1536 * 576 * 2, 0),  # dense bf16, no metadata
])
def test_weight_and_metadata_terms_by_hand(bits, weights, metadata):
    mm = MemoryModel(SPEC, 64, Training(batch_size=8, seq_len=128))
    assert mm.weight_bytes(SHAPE, bits) == weights
    assert mm.metadata_bytes(SHAPE, bits) == metadata


def test_lora_terms_by_hand():
    mm = MemoryModel(SPEC, 64, Training(batch_size=8, seq_len=128, lora_dropout=True))
    params = 16 * (1536 + 576)
    assert mm.lora_params(SHAPE, 16) == params
    assert mm.lora_state_bytes(SHAPE, 16) == params * (4 + 4 + 4 + 4)  # fp32 weight, grad, two AdamW moments
    assert mm.lora_activation_bytes(SHAPE, 16) == 8 * 128 * (1536 * (4 + 1) + 4 * 16)
    assert mm.lora_state_bytes(SHAPE, 0) == 0 and mm.lora_activation_bytes(SHAPE, 0) == 0
    ckpt = MemoryModel(SPEC, 64, Training(batch_size=8, seq_len=128, gradient_checkpointing=True))
    assert ckpt.lora_activation_bytes(SHAPE, 16) == pytest.approx(mm.lora_activation_bytes(SHAPE, 16) / 30)


def test_activation_and_rest_terms_by_hand():
    mm = MemoryModel(SPEC, 64, Training(batch_size=2, seq_len=10))
    per_layer = 2 * (4 * 576 + 4) + 2 * (576 + 2 * 192) + 2 * 576 + 4 * 9 + 2 * 3 * 1536
    assert mm.layer_activation_bytes_per_token() == per_layer
    assert mm.base_activation_bytes() == 20 * (30 * per_layer + 49152 * 10 + 4 * 576)
    assert mm.fixed_bytes()["rest"] == 1000 * 2
    ckpt = MemoryModel(SPEC, 64, Training(batch_size=2, seq_len=10, gradient_checkpointing=True))
    assert ckpt.base_activation_bytes() == 20 * (30 * 2 * 576 + per_layer + 49152 * 10 + 4 * 576)


def test_memory_model_equals_real_tensors_of_packed_model_with_adapters(tmp_path, tiny_dir, tiny_caches):
    spec = ModelSpec.from_pretrained(tiny_dir, TARGETS)
    space = Space.build([m.name for m in spec.modules], "module", [2, 3, 4, 8, 16], [0, 4, 8])
    rng = np.random.default_rng(0)
    config = space.random(rng)
    mm = MemoryModel(spec, 64, Training(batch_size=8, seq_len=64, dtype_bytes=2))
    predicted = mm.breakdown(space, config)
    bits, ranks = space.per_module(config)
    model = quant.load_packed(quant.write_packed(bits, tiny_dir, tiny_caches, tmp_path / "m"), dtype=torch.bfloat16)
    for p in model.parameters():
        p.requires_grad_(False)
    model = attach_lora(model, ranks, alpha_ratio=2.0, dropout=0.05)
    real = measured_bytes(model, bits)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)  # as modelled
    assert predicted["weights"] == pytest.approx(real["weights"], rel=0.01)
    assert predicted["metadata"] == pytest.approx(real["metadata"], rel=0.01)
    assert predicted["lora_params"] == real["lora_params"]
    assert predicted["lora"] == pytest.approx(4 * real["lora_weights"], rel=0.01)  # + grads + 2 AdamW moments


def test_budget_kinds_and_infeasible_budget_is_one_line():
    spec = ModelSpec(modules=tuple(ModuleShape(f"model.layers.{i}.mlp.up_proj", 64, 128) for i in range(4)),
                     other_params=100, hidden=64, intermediate=128, layers=4, heads=4, kv_heads=2, vocab=100)
    space = Space.build([m.name for m in spec.modules], "block", [2, 4, 8], [4, 8])
    mm = MemoryModel(spec, 64, Training(batch_size=1, seq_len=8))
    assert arms.parse_uniform("uniform4_r16") == (4, 16) and arms.parse_uniform("uniform4") is None
    rel = make_budget("relative", 1.0, "uniform4_r8", mm, space)
    assert rel.cost(space.uniform(4, 8)) == pytest.approx(rel.limit)
    assert rel.cost(space.uniform(4, 8)) == pytest.approx(mm.total(space, space.uniform(4, 8)))
    assert not rel.feasible(space.uniform(8, 8)) and rel.feasible(space.uniform(2, 8))
    bits = make_budget("bits_per_param", 6.0, "uniform4_r16", mm, space)
    avg = mm.breakdown(space, space.uniform(2, 4))["avg_bits_with_lora"]
    assert bits.cost(space.uniform(2, 4)) / spec.target_params == pytest.approx(avg)
    absolute = make_budget("bytes", 1e9, "uniform4_r16", mm, space)
    assert absolute.feasible(space.uniform(8, 8))
    with pytest.raises(BudgetError) as err:
        make_budget("relative", 0.2, "uniform4_r16", mm, space)
    assert "\n" not in str(err.value) and str(err.value).startswith("budget.value=0.2: infeasible")


@pytest.mark.parametrize("arch", ["llama", "llama_bias", "llama_mlp_bias", "qwen2", "mistral"])
@pytest.mark.parametrize("targets", [["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                     ["v_proj", "down_proj"]])
def test_shapes_from_the_config_equal_the_meta_models(arch, targets):
    """The preflight computes the Llama family's shapes from the config (no modeling import): they
    must equal the model's own, biases and tied embeddings included."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=200)
    config = {"llama": lambda: LlamaConfig(**common, tie_word_embeddings=True),
              "llama_bias": lambda: LlamaConfig(**common, attention_bias=True),
              "llama_mlp_bias": lambda: LlamaConfig(**common, mlp_bias=True, head_dim=32),
              "qwen2": lambda: Qwen2Config(**common, tie_word_embeddings=False),
              "mistral": lambda: MistralConfig(**common)}[arch]()
    fast = ModelSpec._llama_family(config, targets)
    assert fast is not None and fast == ModelSpec.from_meta(config, targets)

"""The memory model: each term against a hand computation, and against the real tensors of a packed model."""

from __future__ import annotations

import json

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
    value_range,
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
    mm = MemoryModel(SPEC, 64, Training(batch_size=2, seq_len=10, labelled=3))
    # norms, q + repeated k and v, the fused kernel's output and log-sum-exp, the MLP
    per_layer = 2 * (4 * 576 + 4) + 2 * 3 * 576 + 2 * 576 + 4 * 9 + 2 * 3 * 1536
    assert mm.layer_activation_bytes_per_token() == per_layer
    head = 2 * 3 * (4 * 49152 + 8)  # the labelled positions only: 2 sequences x 3 answer tokens
    first_norm = 4 * 576 + 4  # saved by no layer: the embeddings need no gradient
    assert mm.base_activation_bytes() == 20 * (30 * per_layer - first_norm + 4 * 576 + 4 + 1) + head
    assert mm.fixed_bytes()["rest"] == 1000 * 2
    eager = MemoryModel(SPEC, 64, Training(batch_size=2, seq_len=10, labelled=3, attention="eager"))
    assert eager.layer_activation_bytes_per_token() == per_layer - 2 * 576 - 4 * 9 + 9 * 10 * (4 + 2)
    ckpt = MemoryModel(SPEC, 64, Training(batch_size=2, seq_len=10, labelled=3, gradient_checkpointing=True))
    assert ckpt.base_activation_bytes() == 20 * (30 * 2 * 576 + per_layer - first_norm + 4 * 576 + 4 + 1) + head
    bound = MemoryModel(SPEC, 64, Training(batch_size=2, seq_len=10))  # unknown answers: every position
    assert bound.base_activation_bytes() - mm.base_activation_bytes() == 2 * (9 - 3) * (4 * 49152 + 8)


def test_memory_model_equals_real_tensors_of_packed_model_with_adapters(tmp_path, tiny_dir, tiny_caches):
    spec = ModelSpec.from_pretrained(tiny_dir, TARGETS)
    space = Space.from_modules([m.name for m in spec.modules], "module", [2, 3, 4, 8, 16], [0, 4, 8])
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
    space = Space.from_modules([m.name for m in spec.modules], "block", [2, 4, 8], [4, 8])
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
    floor = mm.total(space, space.minimum())
    with pytest.raises(BudgetError) as err:
        make_budget("bytes", 0.99 * floor, "uniform4_r16", mm, space)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"budget.value={0.99 * floor:g}: infeasible")
    assert f"allowed: budget.value >= {floor:.4g}" in str(err.value)


def test_a_relative_budget_scales_what_the_allocation_can_move_and_binds_on_either_side():
    """`relative` runs from the smallest configuration (0) to the reference (1): 0.9 and 1.1 each exclude
    some uniform configuration, and none is infeasible (the whole space spans `value_range`)."""
    spec = ModelSpec(modules=tuple(ModuleShape(f"model.layers.{i}.mlp.up_proj", 64, 128) for i in range(4)),
                     other_params=10_000, hidden=64, intermediate=128, layers=4, heads=4, kv_heads=2, vocab=100)
    space = Space.from_modules([m.name for m in spec.modules], "block", [2, 4, 8], [4, 8])
    mm = MemoryModel(spec, 64, Training(batch_size=1, seq_len=8))
    floor, ref = mm.total(space, space.minimum()), mm.total(space, space.uniform(4, 8))
    assert make_budget("relative", 0.5, "uniform4_r8", mm, space).limit == pytest.approx(floor + 0.5 * (ref - floor))
    low, high = value_range("relative", "uniform4_r8", mm, space)
    assert low == 0 and high == pytest.approx((mm.total(space, space.uniform(8, 8)) - floor) / (ref - floor))
    uniforms = [space.uniform(b, r) for b in space.bits for r in space.ranks]
    for value in (0.9, 1.0, 1.1):
        budget = make_budget("relative", value, "uniform4_r8", mm, space)
        fits = [budget.feasible(c) for c in uniforms]
        assert any(fits) and not all(fits), value
    tight, loose = (make_budget("relative", v, "uniform4_r8", mm, space) for v in (0.9, 1.1))
    assert not tight.feasible(space.uniform(4, 8)) and loose.feasible(space.uniform(4, 8))


@pytest.mark.parametrize("arch", ["llama", "llama_bias", "llama_mlp_bias", "qwen2", "mistral"])
@pytest.mark.parametrize("targets", [["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                     ["v_proj", "down_proj"]])
def test_shapes_from_the_config_equal_the_meta_models(tmp_path, arch, targets):
    """The preflight computes the Llama family's shapes from the config (no modeling import), and from
    the saved config.json read without transformers: both must equal the model's own, biases and tied
    embeddings included."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    from autoqra.preflight import json_config

    common = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=200)
    config = {"llama": lambda: LlamaConfig(**common, tie_word_embeddings=True),
              "llama_bias": lambda: LlamaConfig(**common, attention_bias=True),
              "llama_mlp_bias": lambda: LlamaConfig(**common, mlp_bias=True, head_dim=32),
              "qwen2": lambda: Qwen2Config(**common, tie_word_embeddings=False),
              "mistral": lambda: MistralConfig(**common)}[arch]()
    fast = ModelSpec._llama_family(config, targets)
    assert fast is not None and fast == ModelSpec.from_meta(config, targets)
    config.save_pretrained(tmp_path)
    light = json_config(tmp_path / "config.json")
    assert light is not None and ModelSpec.from_config(light, targets) == fast


def test_the_tiny_models_shapes_are_known_without_building_its_tokenizer(smoke, tiny_dir):
    """The shape checks of the smoke experiment read the tiny model's config from its params (no
    transformers import); it must describe the model the prepare stage builds."""
    from autoqra import models
    from autoqra.preflight import TINY_VOCAB, json_config, shapes_config

    targets = smoke.quant.targets
    assert len(models.char_tokenizer()) == TINY_VOCAB
    built = ModelSpec.from_pretrained(tiny_dir, targets)
    assert ModelSpec.from_config(shapes_config(smoke, None), targets) == built
    assert ModelSpec.from_config(json_config(tiny_dir / "config.json"), targets) == built
    (tiny_dir.parent / "cut").mkdir(exist_ok=True)
    cut = json.loads((tiny_dir / "config.json").read_text())
    del cut["vocab_size"]  # a key the shapes need, left to transformers' default: not guessed
    (tiny_dir.parent / "cut" / "config.json").write_text(json.dumps(cut))
    assert json_config(tiny_dir.parent / "cut" / "config.json") is None


def _packed_step(tmp_path, tiny_dir, task_dir, tiny_caches, bits, keep):
    """One measured training step of the tiny model, every target at `bits` through the packed layers,
    LoRA rank 4 on each, with or without `keep_packed`; returns (bytes per term, logits, LoRA grads)."""
    from autoqra import data, models
    from autoqra.quant.matmul import keep_packed
    from autoqra.train import scoring
    from autoqra.train.measure import training_step

    names = models.target_modules(models.load_model(tiny_dir), TARGETS)
    model = quant.load_packed(quant.write_packed(dict.fromkeys(names, bits), tiny_dir, tiny_caches,
                                                 tmp_path / f"b{bits}{keep}"), dtype=torch.bfloat16)
    for p in model.parameters():
        p.requires_grad_(False)
    if keep:
        assert keep_packed(model) == len(names)
    model = attach_lora(model, dict.fromkeys(names, 4), alpha_ratio=2.0, dropout=0.0, seed=0)
    for n, p in model.named_parameters():  # B = 0 would make the base's gradient path invisible
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(len(n)))
    batch = scoring.batches(models.load_tokenizer(tiny_dir), data.read_split(task_dir, "train")[:8], 64, 8)[0]
    measured = training_step(model, batch, dict.fromkeys(names, bits))
    grads = {}
    model.zero_grad()
    nll, count = scoring.labelled_nll(model, batch)
    (nll / count).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        logits = model(**batch).logits.float()
    return measured, logits, grads


def test_packed_training_keeps_no_dense_weight_and_its_memory_falls_with_the_bits(tmp_path, tiny_dir, task_dir,
                                                                                   tiny_caches):
    """GPTQModel's own forward saves each layer's dense dequantized weight for backward (the same bytes at
    any bit-width); `keep_packed` saves none, computes the same logits and gradients, and so the step's
    measured bytes fall with the bits by about the packed weights' difference."""
    spec = ModelSpec.from_pretrained(tiny_dir, TARGETS)
    dense_bytes = sum(m.in_features * m.out_features * 2 for m in spec.modules)  # bf16
    plain, logits_plain, grads_plain = _packed_step(tmp_path, tiny_dir, task_dir, tiny_caches, 4, keep=False)
    kept, logits_kept, grads_kept = _packed_step(tmp_path, tiny_dir, task_dir, tiny_caches, 4, keep=True)
    assert plain["activations"] - kept["activations"] >= 0.9 * dense_bytes  # the dense weights, gone (0.94 measured)
    assert torch.allclose(logits_kept, logits_plain, rtol=0, atol=1e-3 * logits_plain.abs().max())
    for n, g in grads_plain.items():
        assert torch.allclose(grads_kept[n], g, rtol=1e-2, atol=1e-3 * g.abs().max()), n
    totals = {b: _packed_step(tmp_path, tiny_dir, task_dir, tiny_caches, b, keep=True)[0] for b in (2, 3, 8)}
    totals[4] = kept
    assert totals[2]["total"] < totals[3]["total"] < totals[4]["total"] < totals[8]["total"]
    for low, high in ((2, 3), (3, 4), (4, 8)):
        weights = totals[high]["weights"] - totals[low]["weights"]
        assert weights > 0
        assert totals[high]["total"] - totals[low]["total"] == pytest.approx(
            weights + totals[high]["metadata"] - totals[low]["metadata"], rel=0.05), (low, high, totals)


@pytest.mark.parametrize("backend", ["dequant", "packed"])
def test_the_memory_model_equals_a_measured_training_step_term_by_term(tmp_path, tiny_dir, task_dir, tiny_caches,
                                                                        backend):
    """One real step of the tiny model (eager attention, as on the CPU) on the batch the model prices:
    every term and the total within 5 %, each backend priced as it holds its weights (packed: as GPTQ packs
    them; dequant: dense in the dtype, which the model prices under `Training.dense_weights`)."""
    from autoqra import data, models
    from autoqra.quant import backends
    from autoqra.train.measure import priced_batch, training_step

    spec = ModelSpec.from_pretrained(tiny_dir, TARGETS)
    # every module adapted
    space = Space.from_modules([m.name for m in spec.modules], "block", [2, 3, 4, 8, 16], [4, 8])
    tok = models.load_tokenizer(tiny_dir)
    encoded = [data.encode(tok, ex, 64) for ex in data.read_split(task_dir, "train")]
    batch = priced_batch(encoded, tok.pad_token_id, 8, 64)
    labelled = max(sum(y != -100 for y in e[1]) for e in encoded)
    mm = MemoryModel(spec, 64, Training(batch_size=8, seq_len=64, lora_dropout=False, attention="eager",
                                        labelled=labelled, dense_weights=backend == "dequant"))
    backend = backends.weight_backend(backend, tiny_dir, tiny_caches, "cpu", torch.bfloat16)
    for seed in (0, 1):  # two random block-level configurations
        config = space.random(np.random.default_rng(seed))
        bits, ranks = space.per_module(config)
        model = attach_lora(backend.assemble(bits, tmp_path / f"{backend}{seed}"), ranks, 2.0, 0.0, seed=0)
        measured, predicted = training_step(model, batch, bits), mm.breakdown(space, config)
        for term in ["metadata", "weights", "rest", "lora", "lora_activations", "activations", "total"]:
            assert predicted[term] == pytest.approx(measured[term], rel=0.05), (term, predicted[term], measured)
        if backend == "dequant":  # dense weights in the compute dtype instead of the packed ones
            dense = sum(spec.by_name[m].in_features * spec.by_name[m].out_features * 2 for m in bits)
            assert measured["weights"] == pytest.approx(dense, rel=0.01) and measured["metadata"] == 0

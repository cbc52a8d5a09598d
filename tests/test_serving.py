"""Serving targets: what vLLM and SGLang load, checked before any work, and an adapter they can read."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TARGETS


def test_padding_an_adapter_to_one_rank_leaves_every_logit_as_it_was(tmp_path, tiny_dir, task_dir):
    from peft import PeftModel

    from autoqra import models
    from autoqra.pipeline.export import pad_adapter
    from autoqra.train.lora import attach_lora, lora_layers

    base = models.load_model(tiny_dir)
    linears = list(models.target_modules(base, TARGETS))
    ranks = {m: (4, 8, 0, 2)[i % 4] for i, m in enumerate(linears)}  # mixed ranks, some modules without
    model = attach_lora(base, ranks, alpha_ratio=2.0, dropout=0.0, seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in lora_layers(model).values():  # trained-looking adapters: B nonzero
            b = layer.lora_B["default"].weight
            b.copy_(torch.randn(b.shape, generator=gen) * 0.05)
    model.peft_config["default"].alpha_pattern[linears[1]] = 3.0  # one module off the common ratio
    lora_layers(model)[linears[1]].scaling["default"] = 3.0 / ranks[linears[1]]
    model.save_pretrained(str(tmp_path / "mixed"))
    assert pad_adapter(tmp_path / "mixed", tmp_path / "padded") == 8
    cfg = json.loads((tmp_path / "padded" / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["rank_pattern"], cfg["alpha_pattern"]) == (8, 16.0, {}, {})

    ids = torch.tensor([list(range(3, 40))])
    logits = {}
    for name in ("mixed", "padded"):
        loaded = PeftModel.from_pretrained(models.load_model(tiny_dir), str(tmp_path / name)).eval()
        assert {layer.r["default"] for layer in lora_layers(loaded).values()} == (
            {8} if name == "padded" else {2, 4, 8})
        with torch.no_grad():
            logits[name] = loaded(input_ids=ids).logits
    with torch.no_grad():
        plain = models.load_model(tiny_dir)(input_ids=ids).logits
    assert (logits["mixed"] - plain).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(logits["padded"], logits["mixed"], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="rank=4: below the adapter's largest rank 8"):
        pad_adapter(tmp_path / "mixed", tmp_path / "x", rank=4)


def test_the_fused_granularity_gives_q_k_v_and_gate_up_one_choice_each():
    from autoqra.space import Space

    modules = [f"model.layers.{i}.{p}" for i in range(2) for p in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    space = Space.from_modules(modules, "fused", [4, 8], [8, 16])
    assert dict(space.members)["model.layers.1.self_attn.qkv_proj"] == tuple(
        f"model.layers.1.self_attn.{p}_proj" for p in "qkv")
    assert dict(space.members)["model.layers.0.mlp.gate_up_proj"] == ("model.layers.0.mlp.gate_proj",
                                                                    "model.layers.0.mlp.up_proj")
    assert len(space) == 8 and sorted(m for ms in space.members.values() for m in ms) == sorted(modules)
    bits, _ = space.per_module(space.config([4, 8] * 4, [8] * 8))
    for i in range(2):
        assert len({bits[f"model.layers.{i}.self_attn.{p}_proj"] for p in "qkv"}) == 1
        assert bits[f"model.layers.{i}.mlp.gate_proj"] == bits[f"model.layers.{i}.mlp.up_proj"]


def vllm_bits(dynamic: dict, default: int, layer: str) -> int:
    """The bit-width vLLM gives `layer` (a vLLM layer name: `...qkv_proj`, `...gate_up_proj`, `...o_proj`):
    `get_dynamic_override` in vllm/model_executor/layers/quantization/utils/gptq_utils.py (0.34.0), first match
    wins, a `-:` match leaves the layer unquantized (16), a rule with `+:` or no prefix overrides the bits."""
    import re

    for pattern, override in dynamic.items():
        if pattern.startswith("-:"):
            if re.match(pattern.removeprefix("-:"), layer):
                return 16
        elif re.match(pattern.removeprefix("+:"), layer):
            return override.get("bits", default)
    return default


def test_a_checkpoint_for_an_engine_names_every_fused_layer_with_its_linears_bits(tmp_path, tiny_dir, tiny_caches):
    from autoqra import models, quant
    from autoqra.space import Space, fused_layers

    modules = list(models.target_modules(models.load_model(tiny_dir), TARGETS))
    space = Space.from_modules(modules, "fused", [4, 8, 16], [8])
    config = space.config([(4, 8, 16)[i % 3] for i in range(len(space))], [8] * len(space))
    bits, _ = space.per_module(config)
    quant.write_packed(bits, tiny_dir, tiny_caches, tmp_path / "m", fused=True)
    cfg = json.loads((tmp_path / "m" / "quantize_config.json").read_text())
    fused = fused_layers(modules)
    assert fused and {m for ms in fused.values() for m in ms} < set(modules)
    layers = {**{u: bits[ms[0]] for u, ms in fused.items()},
              **{m: b for m, b in bits.items() if not any(m in ms for ms in fused.values())}}
    assert {u: vllm_bits(cfg["dynamic"], cfg["bits"], u) for u in layers} == layers
    # without the fused rules an engine gives q/k/v and gate/up the checkpoint's default bits
    plain = quant.write_packed(bits, tiny_dir, tiny_caches, tmp_path / "p")
    cfg = json.loads((plain / "quantize_config.json").read_text())
    assert any(vllm_bits(cfg["dynamic"], cfg["bits"], u) != layers[u] for u in fused)
    block = Space.from_modules(modules, "module", [4, 8], [8])
    mixed, _ = block.per_module(block.config([(4, 8)[i % 2] for i in range(len(block))], [8] * len(block)))
    with pytest.raises(ValueError, match="fused by the serving engine but its linears differ in bits"):
        quant.write_packed(mixed, tiny_dir, tiny_caches, tmp_path / "x", fused=True)
    # and GPTQModel, which matches the linears' own names, loads the checkpoint with the fused rules in it
    model = quant.load_packed(tmp_path / "m")
    got = {n: m.bits for n, m in model.named_modules() if hasattr(m, "qweight")}
    assert got == {m: b for m, b in bits.items() if b != 16}


@pytest.mark.slow
def test_the_gpu_script_rehearses_the_whole_pipeline_on_the_cpu_with_the_packed_backend(smoke_project, tmp_path):
    """bench/gpu_pipeline.py, as a GPU session would run it, with `--device cpu`: every stage command after
    the GPTQ caches (reused from the smoke project) runs through GPTQModel's packed layers, and the export
    reloads with the arm's loss."""
    import re
    import subprocess
    import sys

    from conftest import ROOT

    res = subprocess.run([sys.executable, str(ROOT / "bench/gpu_pipeline.py"), "--device", "cpu", "--out",
                          str(tmp_path / "run"), "--reuse", str(smoke_project)], capture_output=True, text=True,
                         timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    print(res.stdout)
    timed = dict(re.findall(r"^(\w+)\s+([\d.]+) s  rc 0$", res.stdout, re.M))
    assert set(timed) == {"profile", "evolve", "refine", "finetune", "evaluate", "export"}, res.stdout
    assert "no peak on this device" in res.stdout and "difference" in res.stdout
    arm = json.loads((tmp_path / "run/data/final/autoqra/train/runs.json").read_text())["runs"]
    record = json.loads(next((tmp_path / "run/data/records").rglob(f"{arm[0]['key']}.json")).read_text())
    assert record["backend"] == "packed" and record["device"] == "cpu"

"""Model resolution: the embedded SmolLM2 knows Paris, the tiny model is deterministic and fast to load."""

from __future__ import annotations

import platform

import pytest
import torch
from safetensors.torch import load_file

from autoqra import data, models


@pytest.mark.slow
def test_embedded_model_completes_paris(tmp_path):
    info = models.prepare_model("embedded", tmp_path / "m", None, [], 0)
    assert "GGUF" in info["origin"] and info["parameters"] == 134_515_008
    tok = models.load_tokenizer(tmp_path / "m")
    model = models.load_model(tmp_path / "m")
    assert not hasattr(model.config, "quantization_config")
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def test_tiny_model_is_deterministic_and_pretrained(tmp_path, tiny_dir, smoke, task_dir):
    train = data.read_split(task_dir, "train")
    models.prepare_model("tiny", tmp_path / "again", smoke.model.tiny, train, smoke.model.tiny.seed)
    a = load_file(tiny_dir / "model.safetensors")
    b = load_file(tmp_path / "again" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    tok = models.load_tokenizer(tiny_dir)
    model = models.load_model(tiny_dir)
    val = data.read_split(task_dir, "val")
    batch = data.collate([data.encode(tok, ex, 96) for ex in val], tok.pad_token_id)
    fresh = type(model)(model.config).eval()
    with torch.no_grad():
        trained_loss, fresh_loss = model(**batch).loss.item(), fresh(**batch).loss.item()
    assert trained_loss < 0.6 * fresh_loss  # pre-training learned the task format


def test_missing_local_model_is_rejected_before_work(tmp_path):
    from autoqra.params import ParamError, check_model_source

    with pytest.raises(ParamError, match="model.source"):
        check_model_source(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ParamError, match="no config.json"):
        check_model_source(str(tmp_path / "empty"))
    with pytest.raises(ParamError, match="Hugging Face cache"):
        check_model_source("someone/not-downloaded-model")


def test_local_folder_source_is_copied(tmp_path, tiny_dir):
    info = models.prepare_model(str(tiny_dir), tmp_path / "copy", None, [], 0)
    assert "copied" in info["origin"]
    assert (tmp_path / "copy" / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()


def test_a_gguf_config_read_from_the_cache_equals_the_files_own(tmp_path, monkeypatch):
    from transformers import AutoConfig

    monkeypatch.setenv("AUTOQRA_CACHE", str(tmp_path))
    gguf = models.embedded_gguf()
    direct = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name).to_diff_dict()
    first, second = models.gguf_config(gguf), models.gguf_config(gguf)
    assert list((tmp_path / "gguf-config").iterdir())  # written once, read the second time
    for c in (first, second):
        got = c.to_diff_dict()
        assert {k: v for k, v in got.items() if k != "transformers_version"} == \
               {k: v for k, v in direct.items() if k != "transformers_version"}


@pytest.mark.parametrize("avx512_bf16, amx, expected", [
    (False, False, torch.float32), (True, False, torch.bfloat16), (False, True, torch.bfloat16)])
def test_auto_trains_in_bf16_only_on_an_x86_cpu_that_multiplies_it_natively(monkeypatch, avx512_bf16, amx, expected):
    """oneDNN "supports" bf16 on every AVX-512 CPU; only AVX-512 BF16 or AMX multiply it natively, and without
    them an Intel Xeon trained 2.6x slower in bf16 than in fp32 (bench/dtype_speed.py)."""
    from autoqra import devices

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")  # ATEN_CPU_CAPABILITY=default
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert devices.compute_dtype("auto", "cpu") == expected
    assert devices.compute_dtype("fp32", "cpu") == torch.float32
    assert devices.compute_dtype("bf16", "cpu") == torch.bfloat16
    assert devices.compute_dtype("auto", "cuda") == torch.bfloat16

"""Fidelity runs: real LoRA training of the assembled model, cached records, failures as records."""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest
import torch
from conftest import TARGETS

from autoqra import models
from autoqra.data import collate
from autoqra.memory import ModelSpec
from autoqra.params import FinetuneParams, LoraParams
from autoqra.pipeline.fidelity import FidelityRun
from autoqra.space import Space
from autoqra.train.loop import train
from autoqra.train.lora import AdapterError, attach_lora
from autoqra.train.scoring import mean_nll

FT = FinetuneParams(batch_size=8, lr=3e-3, eval_batch_size=64, dtype="fp32")


@pytest.fixture(scope="module")
def space(tiny_dir):
    spec = ModelSpec.from_pretrained(tiny_dir, TARGETS)
    return Space.from_modules([m.name for m in spec.modules], "block", [2, 3, 4, 8], [4, 8])


def _fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space, name="records", **kw):
    args = dict(model_dir=tiny_dir, task_dir=task_dir, caches=tiny_caches, space=space,
                lora=LoraParams(ranks=[4, 8], init="zero"),
                finetune=FT, records=tmp_path / name, backend="dequant", max_length=64)
    return FidelityRun(**{**args, **kw})


def test_training_changes_only_lora_and_loss_falls(tmp_path, tiny_dir, task_dir, tiny_caches, space):
    ev = _fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space)
    config = space.config([4, 2, 8, 4], [8, 4, 8, 4])
    pad = ev.tokenizer.pad_token_id
    kw = dict(batch_size=8, lr=3e-3, warmup_ratio=0.1, schedule="cosine", weight_decay=0.0, max_grad_norm=1.0)
    # 60 steps on 16 examples: the adapters must fit them. (On the whole train split the pre-trained tiny
    # model can sit at the loss its answers allow; whether 60 steps move it by 1 % depended on the processor.)
    few = ev.train_data[:16]
    model = ev.assemble(config, tmp_path, seed=0)
    seen = [collate(few, pad)]
    loss_before = mean_nll(model, seen)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train(model, few, pad, 60, 0, **kw)
    assert result.steps == 60 and result.failure is None
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert {n for n in before if "lora_B" in n} <= changed  # every adapter learned
    loss_after = mean_nll(model, seen)
    print(f"answer loss on the 16 trained examples: {loss_before:.4f} -> {loss_after:.4f}")
    assert loss_after < 0.9 * loss_before  # the answer loss on the training data falls

    full = train(ev.assemble(config, tmp_path, seed=0), ev.train_data, pad, 60, 0, **kw)
    record = ev(config, 60, 0)
    assert record["train_loss"] == pytest.approx(full.losses)  # same seed, same numbers
    q_proj = ev.assemble(config).base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.base_layer.weight.requires_grad is False


def test_records_are_cached_and_any_input_change_makes_a_new_one(tmp_path, tiny_dir, task_dir, tiny_caches, space):
    ev = _fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space)
    config = space.uniform(4, 8)
    first = ev(config, 5, 0)
    assert ev.steps_trained == 5 and first["status"] == "ok" and first["train_steps"] == 5
    again = ev(config, 5, 0)
    assert again == first and ev.steps_trained == 5  # read back, no training step
    ev(config, 5, 1)
    assert ev.steps_trained == 10  # another seed
    ev(config, 6, 0)
    assert ev.steps_trained == 16  # another fidelity
    keys = {ev.key(config, 5, 0)}
    for change in ({"lr": 1e-3}, {"batch_size": 4}, {"warmup_ratio": 0.0}, {"schedule": "linear"},
                   {"dtype": "bf16"}):
        other = _fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space,
                           finetune=dataclasses.replace(FT, **change))
        keys.add(other.key(config, 5, 0))
        assert other.lookup(config, 5, 0) is None
    keys.add(_fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space,
                        lora=LoraParams(ranks=[4, 8], init="zero", dropout=0.1)).key(config, 5, 0))
    keys.add(_fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space, max_length=48).key(config, 5, 0))
    keys.add(ev.key(space.uniform(4, 4), 5, 0))
    assert len(keys) == 9
    # the final arms' list, seeds and rank do not change what a run computes: adding an arm keeps every record
    for change in ({"arms": ["autoqra", "uniform4_r8"]}, {"seeds": [5, 6]}, {"arm_rank": 4}):
        same = _fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space,
                             finetune=dataclasses.replace(FT, **change))
        assert same.key(config, 5, 0) == ev.key(config, 5, 0) and same.lookup(config, 5, 0) == first


def test_only_the_caches_a_configuration_uses_enter_its_key(tmp_path, tiny_dir, task_dir, tiny_caches, space):
    class Other:  # the 2-bit cache, re-quantized differently
        fingerprint = "another 2-bit cache"

    ev = _fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space)
    changed = _fidelity_run(tmp_path, tiny_dir, task_dir, {**tiny_caches, 2: Other()}, space)
    four, two = space.uniform(4, 8), space.config([2, 4, 4, 4], [8, 8, 8, 8])
    assert changed.key(four, 5, 0) == ev.key(four, 5, 0)  # no 2-bit unit: the 2-bit cache does not matter
    assert changed.key(two, 5, 0) != ev.key(two, 5, 0)


def test_a_worker_waiting_on_a_record_reads_it_instead_of_training_again(tmp_path, tiny_dir, task_dir, tiny_caches,
                                                                          space):
    runs = [_fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space) for _ in range(3)]
    records = [None] * 3

    def work(i):
        records[i] = runs[i](space.uniform(8, 4), 6, 0)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sum(ev.steps_trained for ev in runs) == 6  # one training, two reads
    assert records[0] == records[1] == records[2]
    assert not list((tmp_path / "records" / "locks").glob("*.lock"))  # nothing left behind


def test_out_of_memory_is_retried_then_final_and_every_reason_kept(tmp_path, tiny_dir, task_dir, tiny_caches, space,
                                                                    monkeypatch):
    ev = _fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space, oom_attempts=3)
    config = space.uniform(4, 8)

    def oom(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(ev.backend, "assemble", oom)
    first = ev(config, 5, 0)
    assert first["status"] == "failed" and first["transient"] and "out of memory" in first["reason"]
    assert ev(config, 5, 0)["attempts"] == 2  # retried: a co-worker may have held the memory
    third = ev(config, 5, 0)
    assert third["attempts"] == 3 and len(third["previous_reasons"]) == 2
    assert ev(config, 5, 0) == third and ev.computed == 3  # attempts used up: final
    monkeypatch.undo()
    other = _fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space, oom_attempts=3)
    seed1 = space.uniform(8, 8)
    monkeypatch.setattr(other.backend, "assemble", oom)
    other(seed1, 5, 0)
    monkeypatch.undo()
    recovered = other(seed1, 5, 0)  # memory is back: the retry succeeds
    assert recovered["status"] == "ok" and recovered["attempts"] == 2
    assert "out of memory" in recovered["previous_reasons"][0]


@pytest.mark.parametrize("damage", ["truncated", "other key", "unknown format", "ok without score"])
def test_a_damaged_record_is_set_aside_and_recomputed(tmp_path, tiny_dir, task_dir, tiny_caches, space, damage):
    ev = _fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space)
    config = space.uniform(4, 4)
    good = ev(config, 4, 0)
    path = ev.store.path(good["key"])
    text = path.read_text()
    record = json.loads(text)
    bad = {"truncated": text[: len(text) // 2], "other key": json.dumps({**record, "key": "0" * 64}),
           "unknown format": json.dumps({**record, "format": 99}),
           "ok without score": json.dumps({**record, "score": None})}[damage]
    path.write_text(bad)
    again = ev(config, 4, 0)
    assert ev.steps_trained == 8 and ev.store.damaged == 1  # recomputed, not trusted, not crashing
    assert again["answer_loss"] == good["answer_loss"]
    assert [p.name for p in path.parent.glob("*.damaged-*")] == [f"{path.name}.damaged-0"]
    assert path.with_name(f"{path.name}.damaged-0").read_text() == bad  # kept for a post-mortem


def test_same_seed_same_adapter_start_and_data_order_for_any_configuration(tmp_path, tiny_dir, task_dir, tiny_caches,
                                                                            space, monkeypatch):
    from autoqra.train import loop

    ev = _fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space)
    a, b = space.config([4, 2, 8, 4], [8, 4, 8, 4]), space.config([8, 8, 2, 3], [8, 8, 4, 4])
    starts = {}
    for name, config in (("a", a), ("b", b), ("a, seed 1", a)):
        model = ev.assemble(config, seed=1 if "seed 1" in name else 0)
        starts[name] = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}
    first = next(n for n in starts["a"] if "layers.0." in n)  # rank 8 in both
    assert torch.equal(starts["a"][first], starts["b"][first])
    assert not torch.equal(starts["a"][first], starts["a, seed 1"][first])
    differs = next(n for n in starts["a"] if "layers.1." in n)  # rank 4 in a, 8 in b: another start
    assert starts["a"][differs].shape != starts["b"][differs].shape

    seen = {}
    real = loop.collate
    for name, config in (("a", a), ("b", b)):
        batches = seen.setdefault(name, [])
        monkeypatch.setattr(loop, "collate", lambda rows, pad, out=batches: out.append(rows) or real(rows, pad))
        ev(config, 3, 0)
    assert seen["a"] == seen["b"] and len(seen["a"]) == 3


def test_a_cut_schedule_run_is_the_start_of_the_longer_run(tmp_path, tiny_dir, task_dir, tiny_caches, space):
    ev = _fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space)
    config = space.uniform(3, 8)
    full = ev(config, 12, 0)
    short = ev(config, 4, 0)
    cut = ev(config, 4, 0, horizon=12)
    assert cut["train_loss"] == pytest.approx(full["train_loss"][:4])  # the same first steps
    assert cut["train_loss"][-1] != pytest.approx(short["train_loss"][-1])  # not the 4-step schedule
    assert ev.steps_trained == 20 and cut["horizon"] == 12 and short["horizon"] == 4
    # a horizon equal to the fidelity is the default schedule: the same record, not a new one
    assert ev.key(config, 12, 0, horizon=12) == ev.key(config, 12, 0) != ev.key(config, 4, 0, horizon=12)
    with pytest.raises(ValueError, match="horizon=3"):
        ev(config, 4, 0, horizon=3)


def test_same_seed_same_record_in_a_fresh_cache(tmp_path, tiny_dir, task_dir, tiny_caches, space):
    a = _fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space, name="a")(space.uniform(3, 4), 8, 7)
    b = _fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space, name="b")(space.uniform(3, 4), 8, 7)
    assert a["answer_loss"] == b["answer_loss"] and a["train_loss"] == b["train_loss"]


def test_packed_and_dequant_give_the_same_validation_loss(tmp_path, tiny_dir, task_dir, tiny_caches, space):
    config = space.config([2, 3, 4, 8], [4, 8, 8, 4])
    records = {backend: _fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space, name=backend,
                                   backend=backend)(config, 10, 0) for backend in ("dequant", "packed")}
    assert records["packed"]["backend"] == "packed" and records["packed"]["dtype"] == "torch.bfloat16"
    assert records["packed"]["answer_loss"] == pytest.approx(records["dequant"]["answer_loss"], rel=0.02)


def test_nan_loss_is_a_failure_record_not_an_exception(tmp_path, tiny_dir, task_dir, tiny_caches, space):
    absurd = dataclasses.replace(FT, lr=1e38, max_grad_norm=0.0)
    ev = _fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space, finetune=absurd)
    record = ev(space.uniform(4, 8), 30, 0)
    assert record["status"] == "failed" and record["score"] is None
    assert "non-finite" in record["reason"]
    assert ev(space.uniform(4, 8), 30, 0) == record  # failures are cached like results


def test_lora_ranks_and_alphas_per_module_and_rank_zero(tiny_dir, tmp_path):
    model = models.load_model(tiny_dir)
    names = list(models.target_modules(model, TARGETS))
    ranks = {n: [0, 4, 8][i % 3] for i, n in enumerate(names)}
    peft_model = attach_lora(model, ranks, alpha_ratio=2.0, dropout=0.0)
    mods = dict(peft_model.named_modules())
    for n, r in ranks.items():
        layer = mods[f"base_model.model.{n}"]
        if r == 0:
            assert not hasattr(layer, "lora_A")
        else:
            assert layer.r["default"] == r and layer.lora_alpha["default"] == 2 * r
            assert layer.scaling["default"] == pytest.approx(2.0)
    # PEFT was given one key per rank; the saved config (what serving loaders read) names every module
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    targeted = {n: r for n, r in ranks.items() if r}
    assert saved["rank_pattern"] == targeted and saved["alpha_pattern"] == {n: 2.0 * r for n, r in targeted.items()}
    with pytest.raises(AdapterError, match="no adapter attached"):
        attach_lora(models.load_model(tiny_dir), {**ranks, "model.layers.9.mlp.up_proj": 4}, 2.0, 0.0)


def test_a_promoted_rung_continues_the_lower_run_and_equals_the_uncut_run(tmp_path, tiny_dir, task_dir, tiny_caches,
                                                                           space):
    """A rung under the top rung's schedule keeps its state; the promotion trains only the extra steps and
    gets the scores of the same run trained in one go (same batches, learning rates, moments, dropout)."""
    config = space.config([4, 2, 8, 4], [8, 4, 8, 4])
    ft = dataclasses.replace(FT, dtype="fp32")
    kw = dict(finetune=dataclasses.replace(ft, warmup_ratio=0.2))
    cut = _fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space, name="cut", **kw)
    low = cut(config, 4, 0, horizon=12)
    assert cut.state_path(config, 4, 0, 12).exists() and cut.steps_trained == 4
    continued = cut(config, 12, 0, horizon=12, lower=(4,))
    assert cut.steps_trained == 12 and continued["continued_from"] == 4 and continued["train_steps"] == 8
    whole = _fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space, name="whole", **kw)(config, 12, 0)
    assert continued["key"] == whole["key"]  # one record: how it was computed does not change its value
    assert continued["score"] == pytest.approx(whole["score"], abs=1e-6)
    assert continued["train_loss"] == pytest.approx(whole["train_loss"], abs=1e-6)
    assert low["train_loss"] == pytest.approx(whole["train_loss"][:4], abs=1e-6)
    # without the lower state (another seed) the same call trains from the start
    again = cut(config, 12, 1, horizon=12, lower=(4,))
    assert "continued_from" not in again and again["train_steps"] == 12


def test_eora_init_starts_quantized_adapters_at_the_compensation_computed_once(tmp_path, tiny_dir, task_dir,
                                                                               tiny_caches, space):
    from autoqra.train.lora import lora_layers

    space = Space.from_modules([m for ms in space.members.values() for m in ms], "block", [2, 8, 16], [4, 8])
    zero = _fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space)
    lora = LoraParams(ranks=[4, 8], init="eora")
    ev = _fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space, lora=lora, calibration=(16, 64))
    config = space.config([2, 2, 16, 8], [8, 4, 8, 4])
    assert ev.key(config, 4, 0) != zero.key(config, 4, 0)  # a run's key says how its adapters started
    batch = [collate(ev.train_data[:32], ev.tokenizer.pad_token_id)]
    plain, started = zero.assemble(config, tmp_path, seed=0), ev.assemble(config, tmp_path, seed=0)
    assert mean_nll(started, batch) < mean_nll(plain, batch)  # 2-bit blocks: the compensation pays at step 0
    bits, ranks = space.per_module(config)
    layers = lora_layers(started)
    for name, layer in layers.items():
        b = layer.lora_B["default"].weight
        assert (b.abs().sum() > 0) == (bits[name] != 16), name  # quantized modules only
    files = sorted((tmp_path / "records" / "eora").glob("*.safetensors"))
    assert len(files) == len(tiny_caches)  # one file per cached bit-width, made in one pass
    stamps = [f.stat().st_mtime_ns for f in files]
    again = _fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space, lora=lora, calibration=(16, 64))
    again.assemble(config, tmp_path, seed=0)
    assert [f.stat().st_mtime_ns for f in files] == stamps  # read, never computed twice
    # a model whose trained adapters are loaded over its start (the test evaluation) needs no factors
    elsewhere = _fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space, name="other", lora=lora,
                              calibration=(16, 64))
    bare = lora_layers(elsewhere.assemble(config, tmp_path, seed=0, start=False))
    assert not list((tmp_path / "other").rglob("*.safetensors"))
    assert all(not layer.lora_B["default"].weight.any() for layer in bare.values())
    record = ev(config, 4, 0)
    assert record["status"] == "ok" and record["train_steps"] == 4
    # the control: the same factors' norms in random directions, from the same files, keyed apart
    control = _fidelity_run(tmp_path, tiny_dir, task_dir, tiny_caches, space,
                            lora=LoraParams(ranks=[4, 8], init="random"), calibration=(16, 64))
    assert control.key(config, 4, 0) not in (ev.key(config, 4, 0), zero.key(config, 4, 0))
    randomised = lora_layers(control.assemble(config, tmp_path, seed=0))
    assert [f.stat().st_mtime_ns for f in files] == stamps
    for name, layer in randomised.items():
        b, b_eora = layer.lora_B["default"].weight, layers[name].lora_B["default"].weight
        torch.testing.assert_close(b.norm(), b_eora.norm())
        assert (bits[name] == 16) == torch.equal(b, b_eora), name

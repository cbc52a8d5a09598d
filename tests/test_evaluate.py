"""Fidelity runs: real LoRA training of the assembled model, cached records, failures as records."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import TARGETS

from autoqra import models, quant
from autoqra.config import FinetuneParams, LoraParams
from autoqra.evaluate import Evaluator
from autoqra.finetune import AdapterError, attach_lora, train
from autoqra.memory import ModelSpec
from autoqra.scoring import mean_nll
from autoqra.space import Space
from autoqra.tasks import collate

FT = FinetuneParams(batch_size=8, max_length=64, lr=3e-3, eval_batch_size=64)


@pytest.fixture(scope="module")
def space(tiny_dir):
    spec = ModelSpec.from_pretrained(tiny_dir, TARGETS)
    return Space.build([m.name for m in spec.modules], "block", [2, 3, 4, 8], [4, 8])


def _evaluator(tmp_path, tiny_dir, task_dir, tiny_caches, space, name="records", **kw):
    args = dict(model_dir=tiny_dir, task_dir=task_dir, caches=tiny_caches, space=space, lora=LoraParams(ranks=[4, 8]),
                finetune=FT, records=tmp_path / name, backend="dequant")
    return Evaluator(**{**args, **kw})


def test_training_changes_only_lora_and_loss_falls(tmp_path, tiny_dir, task_dir, tiny_caches, space):
    ev = _evaluator(tmp_path, tiny_dir, task_dir, tiny_caches, space)
    config = space.make([4, 2, 8, 4], [8, 4, 8, 4])
    torch.manual_seed(0)
    model = ev.build(config, tmp_path)
    seen = [collate(ev.train_data[i:i + 32], ev.tokenizer.pad_token_id) for i in range(0, 128, 32)]
    loss_before = mean_nll(model, seen)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train(model, ev.train_data, ev.tokenizer.pad_token_id, 60, 0, batch_size=8, lr=3e-3, warmup_ratio=0.1,
                   schedule="cosine", weight_decay=0.0, max_grad_norm=1.0)
    assert result.steps == 60 and result.failure is None
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert {n for n in before if "lora_B" in n} <= changed  # every adapter learned
    assert mean_nll(model, seen) < 0.99 * loss_before  # the answer loss on the training data falls

    record = ev(config, 60, 0)
    assert record["train_loss"] == pytest.approx(result.losses)  # same seed, same numbers


def test_records_are_cached_and_any_input_change_makes_a_new_one(tmp_path, tiny_dir, task_dir, tiny_caches, space):
    ev = _evaluator(tmp_path, tiny_dir, task_dir, tiny_caches, space)
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
    for change in ({"lr": 1e-3}, {"batch_size": 4}, {"warmup_ratio": 0.0}, {"schedule": "linear"}, {"max_length": 48}):
        other = _evaluator(tmp_path, tiny_dir, task_dir, tiny_caches, space,
                           finetune=dataclasses.replace(FT, **change))
        keys.add(other.key(config, 5, 0))
        assert other.lookup(config, 5, 0) is None
    keys.add(_evaluator(tmp_path, tiny_dir, task_dir, tiny_caches, space,
                        lora=LoraParams(ranks=[4, 8], dropout=0.1)).key(config, 5, 0))
    keys.add(ev.key(space.uniform(4, 4), 5, 0))
    assert len(keys) == 8
    # a cache that is not used by the configuration does not enter its key
    fewer = _evaluator(tmp_path, tiny_dir, task_dir, {b: tiny_caches[b] for b in (2, 3, 4, 8)}, space)
    assert fewer.key(space.uniform(4, 8), 5, 0) == ev.key(space.uniform(4, 8), 5, 0)


def test_a_cut_schedule_run_is_the_start_of_the_longer_run(tmp_path, tiny_dir, task_dir, tiny_caches, space):
    ev = _evaluator(tmp_path, tiny_dir, task_dir, tiny_caches, space)
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
    a = _evaluator(tmp_path, tiny_dir, task_dir, tiny_caches, space, name="a")(space.uniform(3, 4), 8, 7)
    b = _evaluator(tmp_path, tiny_dir, task_dir, tiny_caches, space, name="b")(space.uniform(3, 4), 8, 7)
    assert a["answer_loss"] == b["answer_loss"] and a["train_loss"] == b["train_loss"]


def test_packed_and_dequant_give_the_same_validation_loss(tmp_path, tiny_dir, task_dir, tiny_caches, space):
    config = space.make([2, 3, 4, 8], [4, 8, 8, 4])
    records = {backend: _evaluator(tmp_path, tiny_dir, task_dir, tiny_caches, space, name=backend,
                                   backend=backend)(config, 10, 0) for backend in ("dequant", "packed")}
    assert records["packed"]["backend"] == "packed" and records["packed"]["dtype"] == "torch.bfloat16"
    assert records["packed"]["answer_loss"] == pytest.approx(records["dequant"]["answer_loss"], rel=0.02)


def test_nan_loss_is_a_failure_record_not_an_exception(tmp_path, tiny_dir, task_dir, tiny_caches, space):
    absurd = dataclasses.replace(FT, lr=1e38, max_grad_norm=0.0)
    ev = _evaluator(tmp_path, tiny_dir, task_dir, tiny_caches, space, finetune=absurd)
    record = ev(space.uniform(4, 8), 30, 0)
    assert record["status"] == "failed" and record["score"] is None
    assert "non-finite" in record["reason"]
    assert ev(space.uniform(4, 8), 30, 0) == record  # failures are cached like results


def test_lora_ranks_and_alphas_per_module_and_rank_zero(tiny_dir):
    model = models.load_model(tiny_dir)
    names = list(quant.target_modules(model, TARGETS))
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
    with pytest.raises(AdapterError, match="no adapter attached"):
        attach_lora(models.load_model(tiny_dir), {**ranks, "model.layers.9.mlp.up_proj": 4}, 2.0, 0.0)

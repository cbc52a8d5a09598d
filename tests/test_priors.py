"""Importance priors: a deliberately fragile linear ranks first on I_q; priors are deterministic."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch
from conftest import TARGETS, quantize_all

from autoqra import data, models, priors
from autoqra.train import scoring

FRAGILE = "model.layers.2.mlp.up_proj"


@pytest.fixture(scope="module")
def fragile(tmp_path_factory, tiny_dir, task_dir):
    """The tiny model with outlier input channels in one linear (as LLM outlier features look),
    which a 2-bit grid per group cannot represent without crushing the rest of the group."""
    root = tmp_path_factory.mktemp("fragile")
    model = models.load_model(tiny_dir)
    with torch.no_grad():
        w = dict(model.named_modules())[FRAGILE].weight
        w[:, ::16] *= 60.0
    model.save_pretrained(root / "model")
    for f in tiny_dir.iterdir():
        if f.name.startswith(("tokenizer", "chat_template")):
            shutil.copy2(f, root / "model" / f.name)
    caches = quantize_all(root / "model", task_dir, root / "q", bits=(2,))
    return root / "model", caches[2]


def _profile(model_dir, cache, task_dir):
    tok = models.load_tokenizer(model_dir)
    model = models.load_model(model_dir)
    modules = models.target_modules(model, TARGETS)
    calib = data.read_split(task_dir, "calib")[:16]
    i_q = priors.quant_sensitivity(model, modules, cache, scoring.batches(tok, calib, 128, 8, whole_sequence=True))
    i_r = priors.grad_sensitivity(model, modules, scoring.batches(tok, calib, 128, 8))
    return priors.table(modules, i_q, i_r)


def test_fragile_linear_ranks_highest_on_i_q_and_its_block_too(fragile, task_dir):
    model_dir, cache = fragile
    table = _profile(model_dir, cache, task_dir)
    ranked = table.sort_values("I_q_raw", ascending=False)["module"].tolist()
    assert ranked[0] == FRAGILE
    assert table.set_index("module").loc[FRAGILE, "I_q"] == 1.0
    blocks = {f"model.layers.{i}": [m for m in table["module"] if m.startswith(f"model.layers.{i}.")] for i in range(4)}
    by_block = priors.for_units(table, blocks)
    assert by_block["I_q"].idxmax() == "model.layers.2"


def test_fisher_estimate_finds_the_fragile_linear_and_ranks_like_the_measured_loss(fragile, tiny_dir, task_dir,
                                                                                     tiny_caches):
    from scipy.stats import spearmanr

    model_dir, cache = fragile
    tok = models.load_tokenizer(model_dir)
    model = models.load_model(model_dir)
    modules = models.target_modules(model, TARGETS)
    calib = scoring.batches(tok, data.read_split(task_dir, "calib")[:16], 128, 8, whole_sequence=True)
    flags = [p.requires_grad for p in model.parameters()]
    fast = priors.fisher_sensitivity(model, modules, cache, calib)
    assert max(fast, key=lambda n: fast[n]["fisher"]) == FRAGILE
    assert all(v["fisher"] >= 0 for v in fast.values())
    assert [p.requires_grad for p in model.parameters()] == flags  # the model is left as it was
    assert all(p.grad is None for p in model.parameters())
    # on the plain tiny model (no planted outlier): the estimate orders the measured loss increases
    model = models.load_model(tiny_dir)
    modules = models.target_modules(model, TARGETS)
    measured = priors.quant_sensitivity(model, modules, tiny_caches[2], calib)
    fast = priors.fisher_sensitivity(model, modules, tiny_caches[2], calib)
    rho = spearmanr([measured[n] for n in modules], [fast[n]["taylor"] for n in modules]).statistic
    assert rho > 0.6


def test_priors_are_deterministic_normalised_and_keep_raw_values(tiny_dir, task_dir, tiny_caches):
    a = _profile(tiny_dir, tiny_caches[2], task_dir)
    b = _profile(tiny_dir, tiny_caches[2], task_dir)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 4 * 7 and a["module"].is_unique
    for col in ("I_q", "I_r"):
        assert a[col].min() == 0.0 and a[col].max() == 1.0
    assert (a["I_r_raw"] > 0).all()
    assert a["I_q_raw"].max() > 0  # 2 bits hurt somewhere


def test_grad_sensitivity_matches_autograd_on_one_module(tiny_dir, task_dir):
    tok = models.load_tokenizer(tiny_dir)
    model = models.load_model(tiny_dir)
    name = "model.layers.1.self_attn.o_proj"
    lin = dict(model.named_modules())[name]
    batches = scoring.batches(tok, data.read_split(task_dir, "calib")[:8], 128, 4)
    flags = [p.requires_grad for p in model.parameters()]
    got = priors.grad_sensitivity(model, {name: lin}, batches)[name]
    assert [p.requires_grad for p in model.parameters()] == flags  # restored
    assert all(p.grad is None for p in model.parameters())
    calib = data.read_split(task_dir, "calib")[:8]
    big = data.collate([data.encode(tok, ex, 128) for ex in calib], tok.pad_token_id)
    w = lin.weight.detach().clone().requires_grad_(True)
    lin.weight = torch.nn.Parameter(w)
    model(**big).loss.backward()  # HF's loss: the token-mean over the same answer tokens
    assert got == pytest.approx(float(lin.weight.grad.pow(2).sum()), rel=1e-4)


def test_block_priors_are_sums_of_module_priors(tiny_dir, task_dir, tiny_caches):
    table = _profile(tiny_dir, tiny_caches[2], task_dir)
    units = {"a": table["module"][:7].tolist(), "b": table["module"][7:9].tolist()}
    out = priors.for_units(table, units)
    assert out.loc["a", "I_q_raw"] == pytest.approx(table["I_q_raw"][:7].sum())
    with pytest.raises(KeyError, match="no row"):
        priors.for_units(table, {"x": ["model.layers.9.mlp.up_proj"]})

"""EoRA initialisation: on the tiny model's calibration activations, the adapter cancels quantization error."""

from __future__ import annotations

import pytest
import torch
from conftest import TARGETS, calibration

GROUP = 32


@pytest.fixture(scope="module")
def tiny_fp(tiny_dir, task_dir):
    from autoqra import models
    from autoqra.quant import eora

    model = models.load_model(tiny_dir)
    linears = models.target_modules(model, TARGETS)
    sequences = calibration(tiny_dir, task_dir)
    return model, linears, eora.input_covariances(model, linears, sequences), sequences


def test_the_compensation_cuts_the_output_error_more_at_higher_rank_and_lower_bits(tiny_fp):
    from autoqra.quant import eora
    from autoqra.quant.cache import rtn

    _, linears, covariances, _ = tiny_fp
    assert set(covariances) == set(linears)
    for name, lin in linears.items():
        w, cov = lin.weight.detach().float(), covariances[name]
        space = eora.Eigenspace.of(cov)
        cut = {}
        for bits in (2, 3, 4):
            delta = w - rtn(w, bits, GROUP)
            base = eora.output_error(delta, cov)
            errors = [eora.output_error(delta, cov, *eora.factors(delta, space, r)) for r in (4, 8, 16)]
            assert base > errors[0] > errors[1] > errors[2], (name, bits, base, errors)
            # against the best rank-r approximation in the plain weight norm, the eigenspace's is better on X
            u, s, vh = torch.linalg.svd(delta)
            plain = eora.output_error(delta, cov, u[:, :8] * s[:8], vh[:8])
            assert errors[1] <= plain * (1 + 1e-6), (name, bits)
            cut[bits] = base - errors[1]
        assert cut[2] > cut[3] > cut[4], (name, cut)


def test_the_factors_agree_with_gptqmodels_eora(tiny_fp):
    from gptqmodel.eora.eora import eora_compute_lora

    from autoqra.quant import eora
    from autoqra.quant.cache import rtn

    _, linears, covariances, _ = tiny_fp
    for name in list(linears)[:3]:
        w = linears[name].weight.detach().float()
        delta = w - rtn(w, 3, GROUP)
        b, a = eora.factors(delta, eora.Eigenspace.of(covariances[name]), 8)
        a_ref, b_ref = eora_compute_lora(delta.clone(), name, covariances[name].clone(), 8, torch.float32,
                                         torch.device("cpu"))
        torch.testing.assert_close(b @ a, b_ref @ a_ref, rtol=1e-4, atol=1e-5)


def test_a_peft_adapter_started_at_the_compensation_brings_the_model_back_towards_full_precision(tiny_fp):
    import copy

    from autoqra.quant import eora
    from autoqra.quant.cache import rtn
    from autoqra.train.lora import attach_lora, lora_layers

    model, linears, covariances, sequences = tiny_fp
    ids = torch.tensor([sequences[0]])
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    quantized = copy.deepcopy(model)
    compensation = {}
    with torch.no_grad():
        for name, lin in dict(quantized.named_modules()).items():
            if name in linears:
                w = lin.weight.float()
                delta = w - rtn(w, 2, GROUP)
                lin.weight.copy_(w - delta)
                compensation[name] = eora.factors(delta, eora.Eigenspace.of(covariances[name]), 16)
        plain = quantized(input_ids=ids).logits
    ranks = dict.fromkeys(linears, 8)
    peft = attach_lora(quantized, ranks, alpha_ratio=2.0, dropout=0.0, seed=0)
    eora.lora_init(lora_layers(peft), compensation)
    with torch.no_grad():
        started = peft(input_ids=ids).logits
    assert (started - reference).norm() < 0.8 * (plain - reference).norm()
    layer = lora_layers(peft)[next(iter(linears))]
    b, a = compensation[next(iter(linears))]
    product = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    torch.testing.assert_close(product, b[:, :8] @ a[:8], rtol=1e-5, atol=1e-6)  # the rank-8 truncation, unscaled


def test_the_random_control_keeps_the_compensations_norms_and_not_its_direction(tiny_fp):
    from autoqra.quant import eora
    from autoqra.quant.cache import rtn

    _, linears, covariances, _ = tiny_fp
    names = list(linears)[:4]
    comp, deltas = {}, {}
    for name in names:
        w = linears[name].weight.detach().float()
        deltas[name] = w - rtn(w, 2, GROUP)
        comp[name] = eora.factors(deltas[name], eora.Eigenspace.of(covariances[name]), 16)
    ranks = dict(zip(names, (4, 8, 16, 8)))
    control = eora.norm_matched(comp, ranks, seed=3)
    again, other = eora.norm_matched(comp, ranks, seed=3), eora.norm_matched(comp, ranks, seed=4)
    for name in names:
        r, (b, a), (rb, ra) = ranks[name], comp[name], control[name]
        assert rb.shape == b[:, :r].shape and ra.shape == a[:r].shape
        torch.testing.assert_close(rb.norm(), b[:, :r].norm())
        torch.testing.assert_close(ra.norm(), a[:r].norm())
        assert torch.equal(rb, again[name][0]) and not torch.equal(rb, other[name][0])  # seeded, per seed
        cov, delta = covariances[name], deltas[name]
        # the compensation cuts the error; the same norms in random directions do not
        assert eora.output_error(delta, cov, b[:, :r], a[:r]) < eora.output_error(delta, cov)
        assert eora.output_error(delta, cov, rb, ra) > eora.output_error(delta, cov, b[:, :r], a[:r])

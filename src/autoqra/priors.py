"""Layer-importance priors that warm-start the search, price its budget and seed its performance model.

Measured on calibration sequences, on the answer tokens the metric scores:

- Quantization (`q`): per search unit (a block: all its target linears; or one linear) and per bit-width
  of the ladder, with only that unit at its GPTQ weight of that bit-width (everything else unquantized),
  the mean KL divergence from the unquantized model's next-token distribution on the answer tokens: the
  answer-loss increase expected under the model's own predictions (the measured increase is kept beside
  it; on 32 answers it is too noisy to price with). Raw values on the score's own scale: no unit gets
  zero importance by construction, and the budget's margin (3 <-> 4 bits, say) is measured where it
  binds instead of being extrapolated from the lowest bit-width.
- Adaptation (`r`): the singular values σ_1 >= σ_2 >= ... of the answer-loss gradient G = dL/dW of each
  linear. A rank-k update ΔW of spectral norm ρ lowers the loss to first order by at most ρ·(σ_1 + ... +
  σ_k) (the steepest-descent step under the spectral norm, which is what normalised optimisers such as
  AdamW take more nearly than a plain gradient step), so rank k's shortfall from the top rank k_max is
  ρ·(σ_{k+1} + ... + σ_{k_max}): units whose gradient spreads over many directions gain from more rank,
  those with one dominant direction do not. One backward pass gives every linear's G. ρ is set to `lr`: the
  first-order gain of one step of that spectral size, where a first-order argument holds (`lr · steps`
  priced a uniform r4 -> r16 step on the embedded default at 4.7, a hundred times the loss differences rank
  makes there); the performance model learns the true scale from the first evaluations.

Block values of `r` are sums over the block's linears; `q` is measured per unit (a block's linears
quantized together), so interactions inside a block are in it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from autoqra.quant import QuantCache
from autoqra.search.prices import Prices, monotone
from autoqra.space import UNQUANTIZED, Space, block_of
from autoqra.train.prefix import first_layer, recording, starting_at
from autoqra.train.scoring import labelled_nll, mean_nll

log = logging.getLogger("autoqra")

SPECTRUM = 256  # singular values kept per linear: rank ladders above this are priced as if flat beyond it


def quant_sensitivity(model: nn.Module, modules: Mapping[str, nn.Linear], cache: QuantCache,
                      data: list[dict[str, torch.Tensor]], progress: bool = False,
                      units: Mapping[str, Sequence[str]] | None = None) -> dict[str, float]:
    """Loss increase on `data`'s labelled tokens when each unit's linears (`units`: unit -> module names;
    default each module alone) take their cached weights, everything else as it was."""
    units = {n: [n] for n in modules} if units is None else units
    base = mean_nll(model, data)
    out = {}
    for unit, names in tqdm(units.items(), desc=f"loss at {cache.bits} bits", disable=not progress):
        with quantized(modules, names, cache):
            out[unit] = mean_nll(model, data) - base
    return out


@contextmanager
def quantized(modules: Mapping[str, nn.Linear], names: Sequence[str], cache: QuantCache) -> Iterator[None]:
    """Inside the block, the linears `names` hold the cache's (dequantized) weights; afterwards their own."""
    saved = {n: modules[n].weight.data for n in names}
    try:
        for n in names:
            lin = modules[n]
            lin.weight.data = cache.dequantized(n, lin.in_features, lin.out_features).to(saved[n])
        yield
    finally:
        for n in names:
            modules[n].weight.data = saved[n]


def _answer_log_probs(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities over the vocabulary at `batch`'s labelled positions (N, V) and their labels (N,):
    the output head on those positions only, as `scoring.labelled_nll` scores them."""
    device = next(model.parameters()).device
    hidden = model.get_decoder()(input_ids=batch["input_ids"].to(device),
                                 attention_mask=batch["attention_mask"].to(device)).last_hidden_state
    labels = batch["labels"][:, 1:].to(device)
    keep = labels != -100
    return torch.log_softmax(model.get_output_embeddings()(hidden[:, :-1][keep]).float(), dim=-1), labels[keep]


@torch.no_grad()
def base_pass(model: nn.Module, data: list[dict[str, torch.Tensor]]) -> tuple[list[Any], list[list[Any]]]:
    """Per batch of `data`, the answer log-probabilities and labels and the decoder layers' outputs of `model`
    in eval mode: what `quant_divergence` compares against and starts from, the same at every bit-width."""
    was_training, base, layers = model.training, [], []
    model.eval()
    for b in data:
        with recording(model) as outputs:
            base.append(_answer_log_probs(model, b))
        layers.append(list(outputs))
    model.train(was_training)
    return base, layers


@torch.no_grad()
def quant_divergence(model: nn.Module, modules: Mapping[str, nn.Linear], cache: QuantCache,
                     data: list[dict[str, torch.Tensor]], units: Mapping[str, Sequence[str]],
                     progress: bool = False, base: tuple[list[Any], list[list[Any]]] | None = None
                     ) -> dict[str, dict[str, float]]:
    """Per unit (`units`: unit -> module names), its linears at the cache's weights and everything else as
    it was: `kl`, the mean over `data`'s labelled tokens of KL(p || p_q) between the model's next-token
    distribution and the quantized one's, and `loss_increase`, the mean answer-loss increase. KL is the
    loss increase expected under the model's own predictions: never below zero and far less noisy than
    the measured increase, which depends on which few answer tokens the sample holds (on the embedded
    model, 32 calibration answers: a block's 2-bit increase ranged from -0.16 to +1.6)."""
    was_training = model.training
    model.eval()
    base, layers = base or base_pass(model, data)  # each batch's log-probabilities and layers' outputs, unquantized
    tokens = max(sum(len(y) for _, y in base), 1)
    out = {}
    for unit, names in tqdm(units.items(), desc=f"KL at {cache.bits} bits", disable=not progress):
        kl = loss = 0.0
        first = first_layer(names)  # the layers before the unit's first compute what they computed
        with quantized(modules, names, cache):
            for batch, (lp, y), outputs in zip(data, base, layers):
                with starting_at(model, first, outputs):
                    lq, _ = _answer_log_probs(model, batch)
                kl += float((lp.exp() * (lp - lq)).sum())
                loss += float((lp - lq).gather(1, y[:, None]).sum())
        out[unit] = {"kl": kl / tokens, "loss_increase": loss / tokens}
    model.train(was_training)
    return out


def fisher_sensitivity(model: nn.Module, modules: Mapping[str, nn.Linear], cache: QuantCache,
                       data: list[dict[str, torch.Tensor]]) -> dict[str, dict[str, float]]:
    """The loss increase of quantizing each module alone, estimated from one backward pass: a
    second-order Taylor expansion in ΔW = W_b - W (the cache's weight minus the base) with
    the empirical Fisher of the per-sequence losses standing in for the Hessian,

        ΔL ≈ Σ_n c_n + ½ N Σ_n c_n²,   c_n = <∂L_n/∂W, ΔW> = Σ_t <∂L/∂y_t, ΔW x_t>  (sequence n's tokens t)

    where L = Σ_n L_n is the token-mean loss over all `data` and y = W x the module's output. The
    inner products are taken in the backward pass from the module's saved input and its output
    gradient (one extra matmul per module: the cost of a forward pass). Returns per module
    `fisher` (the second-order term, ≥ 0) and `taylor` (first plus second order)."""
    deltas = {n: cache.dequantized(n, lin.in_features, lin.out_features).to(lin.weight) - lin.weight.detach()
              for n, lin in modules.items()}
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    model.get_input_embeddings().weight.requires_grad_(True)  # so activations carry gradients
    contrib: dict[str, list[torch.Tensor]] = {n: [] for n in modules}

    def capture(name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            z = (inputs[0].detach() @ deltas[name].T).float()  # (B, T, out): ΔW x
            output.register_hook(lambda g: contrib[name].append((g.float() * z).sum(dim=(1, 2))))
        return hook

    hooks = [lin.register_forward_hook(capture(n)) for n, lin in modules.items()]
    tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in data)
    model.eval()
    try:
        for batch in data:
            nll, _ = labelled_nll(model, batch)
            (nll / tokens).backward()
    finally:
        for h in hooks:
            h.remove()
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None
    out = {}
    for name, parts in contrib.items():
        c = torch.cat(parts).double()  # (N,) one per sequence
        fisher = 0.5 * len(c) * float((c**2).sum())
        out[name] = {"fisher": fisher, "taylor": float(c.sum()) + fisher}
    return out


def gradients(model: nn.Module, modules: Mapping[str, nn.Linear], data: list[dict[str, torch.Tensor]],
              reduce: Any = None) -> dict[str, Any]:
    """dL/dW of the token-mean loss over `data`'s labelled tokens, per module (float32), each passed through
    `reduce` (default: kept) as soon as it is read, so an 8B model never holds a float32 copy of every
    gradient at once; afterwards the model's `requires_grad` flags are as they were and every `.grad` None."""
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for lin in modules.values():
        lin.weight.requires_grad_(True)
        lin.weight.grad = None
    tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in data)
    model.eval()
    try:
        for batch in data:
            nll, _ = labelled_nll(model, batch)
            (nll / tokens).backward()
        out = {}
        for name, lin in modules.items():
            g = lin.weight.grad.float()
            lin.weight.grad = None
            out[name] = g if reduce is None else reduce(g)
        return out
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None


def grad_sensitivity(model: nn.Module, modules: Mapping[str, nn.Linear],
                     data: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """||dL/dW||²_F of the token-mean answer loss over all of `data`, per module."""
    return gradients(model, modules, data, reduce=lambda g: float(g.pow(2).sum()))


def grad_spectra(model: nn.Module, modules: Mapping[str, nn.Linear], data: list[dict[str, torch.Tensor]],
                 keep: int = SPECTRUM) -> dict[str, np.ndarray]:
    """The `keep` largest singular values of each module's dL/dW (descending; fewer where the matrix is
    smaller)."""
    return gradients(model, modules, data, reduce=lambda g: torch.linalg.svdvals(g)[:keep].double().cpu().numpy())


def table(modules: Mapping[str, nn.Linear], spectra: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """One row per module: names, size, ||G||²_F (`I_r_raw`) and the gradient's leading singular values."""
    rows = [{"module": n, "block": block_of(n), "kind": n.rsplit(".", 1)[-1],
             "params": lin.in_features * lin.out_features, "I_r_raw": float((spectra[n] ** 2).sum()),
             "spectrum": np.asarray(spectra[n], dtype=float)} for n, lin in modules.items()]
    return pd.DataFrame(rows)


def loss_table(measured: Mapping[int, Mapping[str, Any]], method: str) -> pd.DataFrame:
    """Long form of the per-unit measurements: one row per (unit, bits), with `price` (what the prices read:
    the KL where it was measured, else the value given) and the raw `loss_increase` (and `kl`) beside it."""
    rows = []
    for b, per in sorted(measured.items()):
        for u, v in per.items():
            v = v if isinstance(v, Mapping) else {"loss_increase": float(v)}
            rows.append({"unit": u, "bits": int(b), "price": float(v.get("kl", v["loss_increase"])),
                         **{k: float(x) for k, x in v.items()}, "method": method})
    return pd.DataFrame(rows)


def unit_prices(modules: pd.DataFrame, losses: pd.DataFrame, space: Space, scale: float) -> Prices:
    """The search space's `Prices` from a profile: `q` from its units' measured `price` at its bit-widths
    (the KL, an expected loss increase; made monotone: `prices.monotone`), `r` = `scale` (ρ, see the module
    docstring) times each unit's sum over its linears of the gradient singular values between a rank and
    the top rank."""
    by_unit = losses.set_index(["unit", "bits"])["price"]
    by_module = modules.set_index("module")
    missing = [m for ms in space.members.values() for m in ms if m not in by_module.index]
    if missing:
        raise KeyError(f"priors have no row for {missing[:3]} (profile computed for other targets?)")
    q = np.zeros((len(space), len(space.bits)))
    for i, unit in enumerate(space.units):
        for j, b in enumerate(space.bits):
            if b >= UNQUANTIZED:
                continue
            if (unit, b) not in by_unit.index:
                raise KeyError(f"the profile has no {b}-bit loss for unit {unit} (profile computed for other "
                               f"quant.bits or search.granularity: re-run the profile stage)")
            q[i, j] = by_unit[(unit, b)]
    top = max(space.ranks)
    r = np.zeros((len(space), len(space.ranks)))
    for i, unit in enumerate(space.units):
        for m in space.members[unit]:
            sv = np.asarray(by_module.loc[m, "spectrum"], dtype=float)
            kept = np.concatenate([[0.0], np.cumsum(sv)])
            r[i] += [kept[min(top, len(sv))] - kept[min(k, len(sv))] for k in space.ranks]
    return Prices(monotone(q), scale * r)


def plot(losses: pd.DataFrame, modules: pd.DataFrame, units: Mapping[str, Sequence[str]]) -> Any:
    """Each unit's measured loss increase over bits (log scale) and its gradient spectrum's cumulative
    share (what each rank could capture), one line per unit, coloured by depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.cm.viridis(np.linspace(0, 1, max(len(units), 1)))
    by_module = modules.set_index("module")
    for colour, (unit, names) in zip(colours, units.items()):
        mine = losses[losses["unit"] == unit].sort_values("bits")
        axes[0].plot(mine["bits"], np.maximum(mine["price"], 1e-6), "o-", color=colour, lw=1, ms=3)
        sv = sum(_padded(by_module.loc[n, "spectrum"], SPECTRUM) for n in names)
        axes[1].plot(np.arange(1, SPECTRUM + 1), np.cumsum(sv) / max(sv.sum(), 1e-30), color=colour, lw=1)
    axes[0].set(yscale="log", xlabel="bits (the unit quantized alone)", ylabel="price (KL on answer tokens)",
                title="quantization: loss over bits, per unit")
    axes[0].set_xticks(sorted(losses["bits"].unique()))
    axes[1].set(xscale="log", xlabel="rank k", ylabel="share of Σσ in the top k",
                title="adaptation: gradient spectrum, per unit")
    fig.tight_layout()
    return fig


def _padded(values: Any, size: int) -> np.ndarray:
    out = np.zeros(size)
    v = np.asarray(values, dtype=float)[:size]
    out[: len(v)] = v
    return out

"""Layer-importance priors that warm-start the search and steer repair and mutation.

Two signals per target linear (full HF module name), computed on calibration sequences:

- `I_q` (quantization sensitivity): the increase of the whole-sequence calibration loss when only
  that linear is replaced by its lowest-bit GPTQ weight from the cache, every other one unquantized.
- `I_r` (adaptation gain): the squared Frobenius norm of the task-loss (answer tokens) gradient with
  respect to that linear's weight, G = dL/dW. A LoRA adapter B·A with B = 0 at initialisation
  changes the loss to first order by -lr·||G·Aᵀ||², whose expectation over the random A is
  proportional to rank · ||G||²_F: units with a large ||G||² gain the most from every extra rank.
  One backward pass gives it for every linear at once, and it does not depend on the LoRA settings,
  so changing `lora.*` never re-runs the profile.

Block-level priors are sums over the block's linears. Raw values are kept; normalised ones are
min-max scaled to [0, 1] over the units they are computed for.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from autoqra.quant import QuantCache
from autoqra.space import block_of
from autoqra.train.scoring import labelled_nll, mean_nll

log = logging.getLogger("autoqra")


def quant_sensitivity(model: nn.Module, modules: Mapping[str, nn.Linear], cache: QuantCache,
                      data: list[dict[str, torch.Tensor]], progress: bool = False) -> dict[str, float]:
    """Loss increase when each module alone takes its cached low-bit weight."""
    base = mean_nll(model, data)
    out = {}
    for name, lin in tqdm(modules.items(), desc=f"I_q at {cache.bits} bits", disable=not progress):
        saved = lin.weight.data
        lin.weight.data = cache.dequantized(name, lin.in_features, lin.out_features).to(saved)
        out[name] = mean_nll(model, data) - base
        lin.weight.data = saved
    return out


def fisher_sensitivity(model: nn.Module, modules: Mapping[str, nn.Linear], cache: QuantCache,
                       data: list[dict[str, torch.Tensor]]) -> dict[str, dict[str, float]]:
    """The loss increase of quantizing each module alone, estimated from one backward pass: a
    second-order Taylor expansion in ΔW = W_b - W (the cached lowest-bit weight minus the base) with
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


def grad_sensitivity(model: nn.Module, modules: Mapping[str, nn.Linear],
                     data: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """||dL/dW||²_F of the token-mean answer loss over all of `data`, per module."""
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for lin in modules.values():
        lin.weight.requires_grad_(True)
        lin.weight.grad = None
    tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in data)
    model.eval()
    for batch in data:
        nll, _ = labelled_nll(model, batch)
        (nll / tokens).backward()
    out = {name: float(lin.weight.grad.float().pow(2).sum()) for name, lin in modules.items()}
    for p, flag in flags.items():
        p.requires_grad_(flag)
        p.grad = None
    return out


def normalise(values: pd.Series) -> pd.Series:
    """Min-max scale to [0, 1] (all zeros when every value is equal)."""
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else values * 0.0


def table(modules: Mapping[str, nn.Linear], i_q: Mapping[str, float], i_r: Mapping[str, float]) -> pd.DataFrame:
    """One row per module: names, size, raw and normalised priors."""
    rows = [{"module": n, "block": block_of(n), "kind": n.rsplit(".", 1)[-1],
             "params": lin.in_features * lin.out_features, "I_q_raw": i_q[n], "I_r_raw": i_r[n]}
            for n, lin in modules.items()]
    df = pd.DataFrame(rows)
    df["I_q"], df["I_r"] = normalise(df["I_q_raw"]), normalise(df["I_r_raw"])
    return df


def for_units(priors: pd.DataFrame, units: Mapping[str, list[str]]) -> pd.DataFrame:
    """Priors of search units (blocks or modules): raw sums over each unit's modules, renormalised."""
    by_module = priors.set_index("module")
    missing = [m for mods in units.values() for m in mods if m not in by_module.index]
    if missing:
        raise KeyError(f"priors have no row for {missing[:3]} (profile computed for other targets?)")
    rows = [{"unit": u, **by_module.loc[mods, ["I_q_raw", "I_r_raw"]].sum().to_dict()} for u, mods in units.items()]
    df = pd.DataFrame(rows)
    df["I_q"], df["I_r"] = normalise(df["I_q_raw"]), normalise(df["I_r_raw"])
    return df.set_index("unit")


def plot(priors: pd.DataFrame) -> Any:
    """Heat maps of I_q and I_r: blocks down, linear kinds across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(priors["kind"]))
    blocks = list(dict.fromkeys(priors["block"]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.25 * len(blocks) + 2), sharey=True)
    for ax, col, title in zip(axes, ("I_q", "I_r"), ("I_q: loss increase at lowest bits", "I_r: ||dL/dW||²")):
        grid = priors.pivot(index="block", columns="kind", values=col).loc[blocks, kinds]
        im = ax.imshow(grid.values, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(kinds)), kinds, rotation=45, ha="right")
        ax.set_yticks(range(len(blocks)), [b.rsplit(".", 1)[-1] for b in blocks])
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046)
    axes[0].set_ylabel("block")
    fig.tight_layout()
    return fig


def unit_priors(priors: pd.DataFrame, space: Any) -> tuple[Any, Any]:
    """The normalised (I_q, I_r) of a search space's units, in unit order (numpy arrays)."""
    units = for_units(priors, {u: list(m) for u, m in space.members.items()})
    return units.loc[list(space.units), "I_q"].to_numpy(), units.loc[list(space.units), "I_r"].to_numpy()



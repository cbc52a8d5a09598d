"""Gaussian-process models of the top-fidelity score over the ordinal encoding of configurations.

Notation: x ∈ {0..|bits|-1}^U × {0..|ranks|-1}^U is a configuration's ladder indices (`Space.encode`),
joined by the fidelity φ = log f / log f_top ∈ [0, 1]; y the score of one evaluation under one training
seed (lower is better). Every seed is its own observation, so the model sees the evaluation noise, and
stage 1's lower rungs inform the top through φ (predictions are made at φ = 1). The BoTorch models:

- `ordinal`: `SingleTaskGP` (Matérn-5/2, ARD, BoTorch's dimension-scaled priors) on x scaled to
  [0, 1] by `Normalize`: neighbouring rungs of a ladder are similar;
- `categorical`: `MixedSingleTaskGP` with every gene categorical (a Hamming kernel): no order assumed;
- `additive`: `SingleTaskGP` whose kernel is a sum of one-dimensional Matérn kernels, one per gene
  (shared hyper-parameters): f(x) = Σ_d g_d(x_d). Memory is additive over units and quality nearly
  so, and an additive model generalises from the few points a search has where a full kernel over
  2U dimensions cannot.

Targets are standardised (`Standardize`), and BoTorch maximises, so the model is fitted to -y.
`held_out_rank` measures how well each ranks configurations it has not seen (leave-one-configuration-
out), which is how the refine stage picks between them.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from autoqra.stats import rank_correlation

KINDS = ("additive", "ordinal", "categorical")
MAXITER = 150  # L-BFGS iterations of a hyper-parameter fit


def fit(x: np.ndarray, y: np.ndarray, sizes: Sequence[int], kind: str, seed: int = 0) -> Any:
    """A fitted BoTorch model of -y at x (n, d); `sizes` are the ladder lengths of the d genes, 0 for a
    continuous input already in [0, 1] (the fidelity)."""
    from botorch.fit import fit_gpytorch_mll
    from gpytorch.mlls import ExactMarginalLogLikelihood

    torch.manual_seed(seed)
    model = unfitted(x, y, sizes, kind)
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    # a failed optimisation leaves the priors' hyper-parameters: the model is still usable; L-BFGS stops after
    # MAXITER iterations (on some stage-1 histories it wandered for over a thousand, seconds per fit, where
    # the evidence had long stopped improving)
    with contextlib.suppress(Exception), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": MAXITER}})
    return model.eval()


def unfitted(x: np.ndarray, y: np.ndarray, sizes: Sequence[int], kind: str) -> Any:
    """The unfitted BoTorch model of -y at x (hyper-parameters at their priors' defaults)."""
    from botorch.models import MixedSingleTaskGP, SingleTaskGP
    from botorch.models.transforms import Normalize, Standardize

    if kind not in KINDS:
        raise ValueError(f"refine.kernel={kind!r}: must be one of {', '.join(KINDS)}")
    tx = torch.as_tensor(x, dtype=torch.float64)
    ty = -torch.as_tensor(y, dtype=torch.float64).reshape(-1, 1)
    if kind in ("ordinal", "additive"):
        bounds = torch.stack([torch.zeros(len(sizes)), torch.tensor(sizes, dtype=torch.float64) - 1]).double()
        bounds[1] = bounds[1].clamp(min=1)  # a one-rung ladder: any scale; a continuous input: [0, 1]
        covar = None
        if kind == "additive":
            from gpytorch.kernels import AdditiveStructureKernel, MaternKernel, ScaleKernel

            covar = ScaleKernel(AdditiveStructureKernel(MaternKernel(nu=2.5), num_dims=len(sizes)))
        model = SingleTaskGP(tx, ty, covar_module=covar, input_transform=Normalize(len(sizes), bounds=bounds),
                             outcome_transform=Standardize(1))
    else:
        cats = [i for i, n in enumerate(sizes) if n > 0]
        model = MixedSingleTaskGP(tx, ty, cat_dims=cats, outcome_transform=Standardize(1))
    return model


def condition(model: Any, x: np.ndarray, y: np.ndarray, sizes: Sequence[int], kind: str) -> Any:
    """A model on other data (x, y) with `model`'s fitted hyper-parameters (no re-fit)."""
    other = unfitted(x, y, sizes, kind)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("outcome_transform")}
    other.load_state_dict(state, strict=False)
    return other.eval()


def posterior_mean(model: Any, x: np.ndarray) -> np.ndarray:
    """Predicted score (lower is better) at x."""
    with torch.no_grad():
        return -model.posterior(torch.as_tensor(x, dtype=torch.float64)).mean.squeeze(-1).numpy()


def held_out_rank(x: np.ndarray, y: np.ndarray, groups: Sequence[str], sizes: Sequence[int], kind: str,
                  seed: int = 0) -> dict[str, float]:
    """Leave one configuration out: condition on every other configuration's observations (all
    fidelities; hyper-parameters fitted once on all data, the usual cheap leave-one-out) and predict
    the held-out one at its highest fidelity (the last input column); rank correlation of those
    predictions with the observed means. Only configurations whose highest fidelity is the same rung
    are compared (the highest rung that at least four reached): across rungs, the fidelity alone
    would order the scores and inflate the correlation."""
    groups = np.asarray(groups)
    keys = list(dict.fromkeys(groups))
    top = {k: x[groups == k, -1].max() for k in keys}
    levels = sorted(set(top.values()), reverse=True)
    level = next((v for v in levels if sum(t == v for t in top.values()) >= 4), None)
    if level is None:
        return {"spearman": float("nan"), "kendall": float("nan"), "n": len(keys)}
    full = fit(x, y, sizes, kind, seed)
    predicted, observed = [], []
    for key in (k for k in keys if top[k] == level):
        held = groups == key
        at = held & (x[:, -1] == level)
        model = condition(full, x[~held], y[~held], sizes, kind)
        predicted.append(float(posterior_mean(model, x[at][:1])[0]))
        observed.append(float(y[at].mean()))
    return rank_correlation(predicted, observed)


def acquire(model: Any, candidates: np.ndarray, baseline: np.ndarray, how: str, seed: int) -> int:
    """Index of the candidate to evaluate: the best by qLogNoisyExpectedImprovement over the
    observed configurations (`baseline`), or by one Thompson sample of the posterior."""
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.sampling import SobolQMCNormalSampler

    cands = torch.as_tensor(candidates, dtype=torch.float64)
    torch.manual_seed(seed)
    with torch.no_grad():
        if how == "thompson":
            draw = model.posterior(cands).rsample(torch.Size([1])).squeeze()
            return int(torch.argmax(draw.reshape(-1)))
        acqf = qLogNoisyExpectedImprovement(model, X_baseline=torch.as_tensor(baseline, dtype=torch.float64),
                                            sampler=SobolQMCNormalSampler(torch.Size([128]), seed=seed),
                                            prune_baseline=True)
        values = torch.cat([acqf(chunk.unsqueeze(1)) for chunk in cands.split(256)])
    return int(torch.argmax(values))

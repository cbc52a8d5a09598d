"""EoRA: adapters that start by undoing the quantization error (Liu et al. 2024, arXiv 2410.21271).

A linear with weight W, quantized to Q(W), is off by ΔW = W − Q(W): on inputs X its output moves by X ΔWᵀ.
EoRA projects ΔW into the eigenspace of the input covariance C = XᵀX / n (C = V Λ Vᵀ, S = V Λ^½), takes the
truncated SVD of ΔW S there and maps it back with S⁻¹: the rank-r factors B A minimise the error the layer's
output sees, ‖X (ΔW − B A)ᵀ‖_F, rather than ‖ΔW − B A‖_F. One SVD at the largest rank gives every smaller
rank by truncation (the factors are nested), and C is shared by every bit-width, so its eigendecomposition is
computed once per module; GPTQModel's `gptqmodel.eora.eora.eora_compute_lora` does the same per (module, bits,
rank) with the eigensolve repeated each time (a test checks the two agree).

LoRA computes Q(W) x + s · B A x with s = lora_alpha / r; `lora_init` scales both factors by 1/√s so that the
adapter starts at exactly the compensation.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


@torch.no_grad()
def input_covariances(model: nn.Module, modules: Iterable[str],
                      sequences: Iterable[list[int]]) -> dict[str, torch.Tensor]:
    """C = XᵀX / n (fp32, on the CPU) of the inputs each named linear sees on `sequences` (token ids, one
    sequence per forward, so no padding enters), from forward pre-hooks on `model` as it is."""
    named = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def pre(_module: nn.Module, args: tuple) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float().cpu()
            sums[name] = sums[name] + x.T @ x if name in sums else x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]
        return pre

    handles = [named[m].register_forward_pre_hook(hook(m)) for m in modules]
    try:
        device = next(model.parameters()).device
        for ids in sequences:
            model(input_ids=torch.tensor([ids], device=device))
    finally:
        for h in handles:
            h.remove()
    return {m: s / counts[m] for m, s in sums.items()}


@dataclass(frozen=True)
class Eigenspace:
    """S = V Λ^½ and its (pseudo-)inverse for one module's input covariance; eigenvalues at or below the
    numerical-rank cutoff (GPTQModel's: n · eps(fp32) of the largest) are dropped from both."""

    scale: torch.Tensor    # (in, in): ΔW S is what the SVD truncates
    inverse: torch.Tensor  # (in, in): S⁻¹ maps the right factor back

    @classmethod
    def of(cls, covariance: torch.Tensor) -> Eigenspace:
        values, vectors = torch.linalg.eigh(covariance.double())
        cutoff = values[-1].clamp_min(0) * min(1.0, values.numel() * torch.finfo(torch.float32).eps)
        keep = values > cutoff
        root, inv = torch.zeros_like(values), torch.zeros_like(values)
        root[keep], inv[keep] = values[keep].sqrt(), values[keep].rsqrt()
        return cls(scale=(vectors * root).float(), inverse=(inv[:, None] * vectors.T).float())


def factors(delta: torch.Tensor, space: Eigenspace, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A), (out × rank) and (rank × in), with B A the rank-`rank` compensation of `delta` = W − Q(W) that
    minimises the error on inputs of the eigenspace's covariance; the singular values split as √σ on each."""
    u, s, vh = torch.linalg.svd(delta.float() @ space.scale, full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, (root[:, None] * vh[:rank]) @ space.inverse


def output_error(delta: torch.Tensor, covariance: torch.Tensor, b: torch.Tensor | None = None,
                 a: torch.Tensor | None = None) -> float:
    """‖X (ΔW − B A)ᵀ‖_F / √n = √tr(E C Eᵀ), E = ΔW − B A: the output error per input the layer sees
    (without B, A: the quantization's own)."""
    e = delta.double() - (b.double() @ a.double() if b is not None else 0)
    return math.sqrt(max(float(torch.einsum("oi,ij,oj->", e, covariance.double(), e)), 0.0))


@torch.no_grad()
def lora_init(layers: dict[str, Any], compensation: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Start each named PEFT LoRA layer at its compensation: lora_B = B/√s, lora_A = A/√s (s = lora_alpha/r),
    so that s · lora_B lora_A = B A; the factors of a larger rank are truncated to the layer's rank."""
    for name, (b, a) in compensation.items():
        layer = layers[name]
        r, s = layer.r["default"], layer.scaling["default"]
        if b.shape[1] < r:
            raise ValueError(f"{name}: compensation of rank {b.shape[1]} for an adapter of rank {r}")
        lora_a, lora_b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        lora_b.copy_((b[:, :r] / math.sqrt(s)).to(lora_b))
        lora_a.copy_((a[:r] / math.sqrt(s)).to(lora_a))


def norm_matched(compensation: dict[str, tuple[torch.Tensor, torch.Tensor]], ranks: dict[str, int],
                 seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The control for the compensation (`lora.init=random`): each module's factors, truncated to its rank,
    replaced by Gaussian matrices of the same Frobenius norms (seeded by `seed` and the module's name). It starts
    the adapter as far from zero as EoRA does, in no useful direction: what EoRA gains over it is the direction."""
    out = {}
    for name, (b, a) in compensation.items():
        b, a = b[:, : ranks[name]], a[: ranks[name]]
        gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
        rb, ra = torch.randn(b.shape, generator=gen), torch.randn(a.shape, generator=gen)
        out[name] = (rb * (b.norm() / rb.norm()), ra * (a.norm() / ra.norm()))
    return out


COVARIANCE_BYTES = 2 * 2**30  # covariances held at once: more target linears than fit take several passes


def compensations(model: nn.Module, caches: dict[int, Any], modules: list[str], sequences: list[list[int]],
                  rank: int, progress: bool = False) -> dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """For every bit-width of `caches` (`quant.QuantCache`), each module's rank-`rank` factors (B, A) of
    W − Q(W), W from the unquantized `model`, Q(W) from the cache, on the covariance of the inputs the module
    sees in `model` on `sequences` (the GPTQ calibration set). Modules are taken in passes whose covariances
    fit `COVARIANCE_BYTES` (an 8B model's do not fit at once); each covariance is decomposed once for every
    bit-width."""
    from tqdm.auto import tqdm

    linears = dict(model.named_modules())
    passes: list[list[str]] = [[]]
    held = 0
    for m in modules:
        size = 4 * linears[m].in_features ** 2
        if passes[-1] and held + size > COVARIANCE_BYTES:
            passes.append([])
            held = 0
        passes[-1].append(m)
        held += size
    out: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {b: {} for b in caches}
    bar = tqdm(total=len(modules), desc="EoRA", disable=not progress)
    for group in passes:
        covariances = input_covariances(model, group, sequences)
        for m in group:
            lin = linears[m]
            w = lin.weight.detach().float().cpu()
            space = Eigenspace.of(covariances.pop(m))
            for b, cache in caches.items():
                delta = w - cache.dequantized(m, lin.in_features, lin.out_features)
                b_, a_ = factors(delta, space, rank)
                out[b][m] = (b_.contiguous(), a_.contiguous())
            bar.update()
    bar.close()
    return out


class Compensations:
    """The factors (at the ladder's largest rank) of every target linear at each bit-width of `caches`, kept as
    `<store>/eora/<key>.safetensors`, keyed by `identity` (model and task fingerprints), the cache's fingerprint,
    the calibration, rank, targets and this code. When one asked for is missing, every cached bit-width that
    lacks them is computed in one pass (the calibration pass and the eigensolves are the cost), under the
    store's lock, so workers sharing it never compute them twice; each is loaded once per process."""

    def __init__(self, store: Any, model_dir: Path, task_dir: Path, caches: dict[int, Any],
                 calibration: tuple[int, int], rank: int, targets: list[str], identity: dict[str, str],
                 progress: bool = False):
        self.store, self.model_dir, self.task_dir, self.caches = store, model_dir, task_dir, caches
        self.calibration, self.rank, self.targets, self.progress = calibration, rank, targets, progress
        self.identity = identity
        self.loaded: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}

    def path(self, bits: int) -> Path:
        from autoqra.store import fingerprint

        key = fingerprint.of_data({**self.identity, "cache": self.caches[bits].fingerprint,
                                   "calibration": list(self.calibration), "rank": self.rank, "targets": self.targets,
                                   "code": fingerprint.of_code("autoqra.quant.eora", "autoqra.quant.cache")})
        return self.store.root / "eora" / f"{key}.safetensors"

    def __call__(self, bits: set[int]) -> dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """The factors at each of `bits`, by module."""
        from safetensors.torch import load_file

        if not bits <= set(self.loaded):
            paths = {b: self.path(b) for b in self.caches}
            missing = [b for b, path in paths.items() if not path.exists()]
            if set(missing) & bits:
                with self.store.lock(paths[missing[0]].stem, ready=lambda: all(paths[b].exists() for b in missing)) \
                        as held:
                    if held:
                        self._compute({b: paths[b] for b in missing if not paths[b].exists()})
            for b in bits - set(self.loaded):
                tensors = load_file(paths[b])
                names = {k.rsplit(".", 1)[0] for k in tensors}
                self.loaded[b] = {m: (tensors[f"{m}.B"], tensors[f"{m}.A"]) for m in names}
        return {b: self.loaded[b] for b in bits}

    def _compute(self, paths: dict[int, Path]) -> None:
        """The factors at each bit-width of `paths`, each file written whole (`store.files.place`)."""
        from safetensors.torch import save

        from autoqra import models
        from autoqra.data import calibration_ids
        from autoqra.store.files import place

        if not paths:
            return
        begin = time.perf_counter()
        calib = calibration_ids(models.load_tokenizer(self.model_dir), self.task_dir, *self.calibration)
        made = compensations(models.load_model(self.model_dir), {b: self.caches[b] for b in paths}, self.targets,
                             calib, self.rank, progress=self.progress)
        logging.getLogger("autoqra").info("EoRA factors at %s bits, rank %d: %.1f s", sorted(paths), self.rank,
                                          time.perf_counter() - begin)
        for b, path in paths.items():
            tensors = {f"{m}.{part}": t for m, ba in made[b].items() for part, t in zip("BA", ba)}
            place(path, lambda fh, t=tensors: fh.write(save(t)), binary=True)

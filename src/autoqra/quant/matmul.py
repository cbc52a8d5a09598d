"""The packed layers' matmul for training: keep only the packed weights between forward and backward.

GPTQModel's `TorchLinear.forward` computes `x @ dequantize_weight()`, and autograd saves that dense weight
for the backward pass: with every quantized layer's dense weight alive at once, packed training holds the
same bytes at 2 bits as at 8. `PackedMatmul` is the 4-bit-QLoRA way instead: the forward dequantizes,
multiplies and drops the dense weight; the backward dequantizes again from the layer's packed tensors
(`qweight`, `scales`, `qzeros`, `g_idx`, which stay resident anyway) for `grad_x = grad_y @ Wᵀ`. The base
weight is frozen, so nothing else is needed: no tensor is saved at all. Numerically the same as the
layer's own forward and backward (tested): the same dequantization, the same matmuls.
"""

from __future__ import annotations

import types
from typing import Any

import torch


def _dense(layer: Any, like: torch.Tensor) -> torch.Tensor:
    """The layer's weight as (in, out), dequantized on the spot in `like`'s dtype and device."""
    w = layer.dequantize_weight(num_itr=layer.g_idx.shape[0] // layer.in_features)
    return w.to(device=like.device, dtype=like.dtype)


class PackedMatmul(torch.autograd.Function):
    """`x @ W` for a packed layer's W, saving no tensor for the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: Any) -> torch.Tensor:
        ctx.layer = layer  # the module, not a tensor: its packed buffers are resident anyway
        return x @ _dense(layer, x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad @ _dense(ctx.layer, grad).T, None


def _forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    out_shape = x.shape[:-1] + (self.out_features,)
    out = PackedMatmul.apply(x.reshape(-1, x.shape[-1]), self).reshape(out_shape)
    return out + self.bias.to(out.dtype) if self.bias is not None else out


def keep_packed(model: torch.nn.Module) -> int:
    """Route every GPTQModel quantized layer of `model` through `PackedMatmul`; returns how many."""
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    layers = [m for m in model.modules() if isinstance(m, BaseQuantLinear)]
    for layer in layers:
        layer.forward = types.MethodType(_forward, layer)
    return len(layers)

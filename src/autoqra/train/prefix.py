"""Forward passes that start at a decoder layer: when only layer i's weights differ from a base pass, the
layers before it compute what they computed then, so they are not run again. `recording(model)` keeps
every decoder layer's output of a base forward; inside `starting_at(model, i, outputs)`, layer i - 1
returns its recorded output and the layers before it return their input untouched (their output is never
read), so a forward costs layers i.. only, with the same result (the same inputs to the same kernels).

The profile's per-unit KL on the embedded default: unit i's pass costs (L - i) / L of a full one, about
half on average. Models whose decoder holds no `layers` list run in full (nothing is skipped).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def decoder_layers(model: Any) -> nn.ModuleList | None:
    """The decoder's list of layers, in the order the forward runs them, or None."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(lm.get_decoder(), "layers", None)
    return layers if isinstance(layers, nn.ModuleList) else None


def first_layer(names: Iterable[str]) -> int:
    """The lowest decoder-layer index among module `names` (0 if any lies outside a numbered layer)."""
    found = [_LAYER.search(n) for n in names]
    return min(int(m[1]) for m in found) if found and all(found) else 0


@contextmanager
def recording(model: Any) -> Iterator[list[Any]]:
    """Inside the block, `outputs[j]` is decoder layer j's output of the last forward run."""
    layers = decoder_layers(model) or []
    outputs: list[Any] = [None] * len(layers)

    def keep(j: int) -> Any:
        return lambda module, args, output: outputs.__setitem__(j, output)

    handles = [layer.register_forward_hook(keep(j)) for j, layer in enumerate(layers)]
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


def _passthrough(hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
    return hidden_states


@contextmanager
def starting_at(model: Any, layer: int, outputs: list[Any]) -> Iterator[None]:
    """Inside the block, a forward of `model` runs decoder layers `layer`.. only: layer - 1 returns
    `outputs[layer - 1]` (a `recording` of a forward on the same batch), the layers before it their input."""
    layers = decoder_layers(model)
    if not layer or layers is None:
        yield
        return
    if outputs[layer - 1] is None:
        raise ValueError(f"layer={layer}: no recorded output of layer {layer - 1} to start from")
    saved = [layers[j].__dict__.get("forward") for j in range(layer)]
    try:
        for j in range(layer - 1):
            layers[j].forward = _passthrough
        recorded = outputs[layer - 1]
        layers[layer - 1].forward = lambda *args, **kwargs: recorded
        yield
    finally:
        for j, own in enumerate(saved):
            if own is None:
                layers[j].__dict__.pop("forward", None)
            else:
                layers[j].forward = own

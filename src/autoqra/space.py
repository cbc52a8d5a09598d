"""The search space: units, configurations, their hash and ordinal encoding.

A *unit* is a transformer block (`model.layers.3`: all its target linears share one choice), a
single linear (`model.layers.3.self_attn.q_proj`), or (granularity `fused`) the linears a serving engine
fuses into one layer with one quantization: `model.layers.3.self_attn.qkv_proj` (q, k and v) and
`model.layers.3.mlp.gate_up_proj` (gate and up), every other linear alone (vLLM's and SGLang's names).
A *configuration* assigns (bits, rank) to every unit; bits 16 means "left unquantized", rank 0 "no
adapter". It is serialised as readable JSON with full module names and identified by a stable content hash.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any

import numpy as np

from autoqra.store import fingerprint

UNQUANTIZED = 16  # a bit-width that means "left in the base model's dtype"
BIT_CHOICES = (2, 3, 4, 8, UNQUANTIZED)  # what GPTQModel packs (the quantize stage can make), and unquantized
_BLOCK = re.compile(r"^(.*\.layers\.\d+)\.")
GRANULARITIES = ("block", "fused", "module")
FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",  # what vLLM and SGLang stack
         "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}


def unit_of(module: str, granularity: str) -> str:
    """The unit `module` belongs to at `granularity`."""
    if granularity == "block":
        return block_of(module)
    if granularity == "fused":
        head, _, leaf = module.rpartition(".")
        return f"{head}.{FUSED[leaf]}" if leaf in FUSED else module
    return module


def block_of(module: str) -> str:
    """`model.layers.3.mlp.up_proj` -> `model.layers.3`."""
    m = _BLOCK.match(module)
    if not m:
        raise ValueError(f"{module}: not inside a numbered decoder layer")
    return m[1]


def fused_layers(modules: Iterable[str]) -> dict[str, list[str]]:
    """The layers a serving engine fuses (`...qkv_proj`, `...gate_up_proj`) and the linears of each."""
    groups: dict[str, list[str]] = {}
    for m in modules:
        groups.setdefault(unit_of(m, "fused"), []).append(m)
    return {u: ms for u, ms in groups.items() if u not in ms}


@dataclass(frozen=True)
class Config:
    """(bits, rank) per unit, aligned with `units`."""

    units: tuple[str, ...]
    bits: tuple[int, ...]
    ranks: tuple[int, ...]

    def __post_init__(self) -> None:
        assert len(self.units) == len(self.bits) == len(self.ranks), "units, bits and ranks must align"

    @cached_property
    def key(self) -> str:
        """Stable content hash (sha256 of the canonical JSON)."""
        return fingerprint.of_data(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"units": {u: [b, r] for u, b, r in zip(self.units, self.bits, self.ranks)}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        pairs = data["units"]
        return cls(tuple(pairs), tuple(int(pairs[u][0]) for u in pairs), tuple(int(pairs[u][1]) for u in pairs))

    def replace(self, index: int, bits: int | None = None, rank: int | None = None) -> Config:
        b, r = list(self.bits), list(self.ranks)
        if bits is not None:
            b[index] = bits
        if rank is not None:
            r[index] = rank
        return Config(self.units, tuple(b), tuple(r))

    def describe(self) -> str:
        """Compact summary: counts of each bit-width and rank."""
        bits = ", ".join(f"{b}b×{self.bits.count(b)}" for b in sorted(set(self.bits)))
        ranks = ", ".join(f"r{r}×{self.ranks.count(r)}" for r in sorted(set(self.ranks)))
        return f"{bits} | {ranks}"


@dataclass(frozen=True)
class Space:
    """Units (full HF names), the modules of each, and the bit and rank ladders (ascending)."""

    members: MappingProxyType  # unit -> tuple of module names
    bits: tuple[int, ...]
    ranks: tuple[int, ...]
    granularity: str

    @classmethod
    def from_modules(cls, modules: Iterable[str], granularity: str, bits: Sequence[int], ranks: Sequence[int]) -> Space:
        if granularity not in GRANULARITIES:
            raise ValueError(f"search.granularity={granularity!r}: must be one of {', '.join(GRANULARITIES)}")
        members: dict[str, list[str]] = {}
        for m in modules:
            members.setdefault(unit_of(m, granularity), []).append(m)
        if not members:
            raise ValueError("the search space has no units (no target module found)")
        return cls(MappingProxyType({u: tuple(ms) for u, ms in members.items()}), tuple(sorted(bits)),
                   tuple(sorted(ranks)), granularity)

    @property
    def units(self) -> tuple[str, ...]:
        return tuple(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def uniform(self, bits: int, rank: int) -> Config:
        n = len(self)
        return Config(self.units, (bits,) * n, (rank,) * n)

    def minimum(self) -> Config:
        return self.uniform(self.bits[0], self.ranks[0])

    def config(self, bits: Sequence[int], ranks: Sequence[int]) -> Config:
        return Config(self.units, tuple(int(b) for b in bits), tuple(int(r) for r in ranks))

    def encode(self, config: Config) -> np.ndarray:
        """Ordinal encoding: ladder indices, bits of every unit then ranks of every unit, shape (2U,)."""
        self.check(config)
        return np.array([self.bits.index(b) for b in config.bits] + [self.ranks.index(r) for r in config.ranks])

    def decode(self, x: Sequence[int]) -> Config:
        n = len(self)
        return self.config([self.bits[i] for i in x[:n]], [self.ranks[i] for i in x[n:]])

    def contains(self, config: Config) -> bool:
        """Whether `config` has this space's units and every gene on the ladders (`check` passes)."""
        try:
            self.check(config)
        except ValueError:
            return False
        return True

    def check(self, config: Config) -> None:
        """Raise if `config` does not belong to this space."""
        if config.units != self.units:
            raise ValueError("configuration units differ from the search space's units")
        bad = [(u, b, r) for u, b, r in zip(config.units, config.bits, config.ranks)
               if b not in self.bits or r not in self.ranks]
        if bad:
            raise ValueError(f"{bad[0][0]}: (bits={bad[0][1]}, rank={bad[0][2]}) outside the ladders "
                             f"bits={list(self.bits)}, ranks={list(self.ranks)}")

    def parse(self, data: dict[str, Any]) -> Config:
        """A configuration read from JSON (`{"units": {unit: [bits, rank]}}`) in this space's unit
        order, whatever the order of the keys (JSON writers may sort them: layers.10 < layers.2)."""
        pairs = data["units"]
        missing = [u for u in self.units if u not in pairs]
        unknown = [u for u in pairs if u not in self.members]
        if missing or unknown:
            what = f"missing unit {missing[0]}" if missing else f"unknown unit {unknown[0]}"
            raise ValueError(f"configuration does not fit the search space: {what} "
                             f"(the space has {len(self)} units, {self.units[0]} .. {self.units[-1]})")
        config = self.config([pairs[u][0] for u in self.units], [pairs[u][1] for u in self.units])
        self.check(config)
        return config

    def random(self, rng: np.random.Generator) -> Config:
        n = len(self)
        return self.decode(np.concatenate([rng.integers(0, len(self.bits), n), rng.integers(0, len(self.ranks), n)]))

    def per_module(self, config: Config) -> tuple[dict[str, int], dict[str, int]]:
        """Bits and rank of every module, expanded from its unit."""
        bits, ranks = {}, {}
        for u, b, r in zip(config.units, config.bits, config.ranks):
            for m in self.members[u]:
                bits[m], ranks[m] = b, r
        return bits, ranks

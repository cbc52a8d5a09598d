"""The priors as prices: what each unit's bit level and rank level is predicted to add to the score.

Notation: unit u, bit level i (index into the space's bit ladder), rank level j (index into the rank
ladder). `q[u, i]` is the loss the priors predict unit u adds at bit level i, `r[u, j]` the loss it adds
by rank level j's shortfall from the top rank; both are zero at the top of their ladder and never rise
towards it, so a configuration's predicted score is a constant plus Σ_u q[u, i_u] + r[u, j_u]
(`values()`: the (U, |bits|, |ranks|) table `knapsack.solve` minimises).

The profile stage measures `q` on the score's own scale (the answer-token loss with the unit quantized
at each bit-width, the rest not) and `r` from the gradients' singular values (`autoqra.priors`);
`from_importance` builds both from one importance number per unit and a fixed law (noise power 4^-b,
diminishing returns log(1 + r)), for objectives that have no profile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoqra.space import UNQUANTIZED, Space


def monotone(raw: np.ndarray) -> np.ndarray:
    """Rows made non-negative and non-increasing along the ladder (towards its top, the last column),
    zero at the top: each level takes the largest measured value at or above it, less the top's. A
    measured loss increase below zero, or one that grows with more bits, is measurement noise."""
    raw = np.maximum(np.asarray(raw, dtype=float), 0.0)
    envelope = np.maximum.accumulate(raw[:, ::-1], axis=1)[:, ::-1]
    return envelope - envelope[:, -1:]


@dataclass(frozen=True, eq=False)
class Prices:
    """Per-unit price tables of the bit and rank ladders (see the module docstring)."""

    q: np.ndarray  # (U, |bits|)
    r: np.ndarray  # (U, |ranks|)

    def __post_init__(self) -> None:
        q, r = np.array(self.q, dtype=float), np.array(self.r, dtype=float)
        if q.ndim != 2 or r.ndim != 2 or len(q) != len(r):
            raise ValueError(f"prices: q {q.shape} and r {r.shape} must be (units, bits) and (units, ranks)")
        for name, t in (("q", q), ("r", r)):
            if not np.isfinite(t).all() or (t < 0).any() or (np.diff(t, axis=1) > 1e-12).any() or t[:, -1].any():
                raise ValueError(f"prices: {name} must be finite, >= 0, non-increasing along the ladder and 0 at "
                                 "its top (use `monotone` on measurements)")
            t.flags.writeable = False
        object.__setattr__(self, "q", q)
        object.__setattr__(self, "r", r)

    @classmethod
    def from_importance(cls, space: Space, i_q: np.ndarray | float, i_r: np.ndarray | float) -> Prices:
        """`q[u, i]` = i_q[u] times bit level i's quantization noise (power 4^-b, unquantized 0) relative to
        the lowest bit-width's, less the top's; `r[u, j]` = i_r[u] times rank level j's shortfall in
        log(1 + r) from the top rank's, relative to it."""
        n = len(space)
        noise = np.array([0.0 if b >= UNQUANTIZED else 4.0 ** -b for b in space.bits]) / 4.0 ** -min(space.bits)
        gain = np.log1p(np.array(space.ranks, dtype=float)) / np.log1p(max(max(space.ranks), 1))
        i_q = np.broadcast_to(np.asarray(i_q, dtype=float), (n,))
        i_r = np.broadcast_to(np.asarray(i_r, dtype=float), (n,))
        return cls(i_q[:, None] * (noise - noise[-1])[None, :], i_r[:, None] * (gain[-1] - gain)[None, :])

    @classmethod
    def flat(cls, space: Space) -> Prices:
        """Every unit alike (no priors): the law of `from_importance` with importance 1 everywhere."""
        return cls.from_importance(space, 1.0, 1.0)

    def __len__(self) -> int:
        return len(self.q)

    def values(self) -> np.ndarray:
        """(U, |bits|, |ranks|): q[u, i] + r[u, j]."""
        return self.q[:, :, None] + self.r[:, None, :]

    def importance(self) -> tuple[np.ndarray, np.ndarray]:
        """Each unit's price at the bottom of each ladder over the largest such price, in [0, 1]: the order the
        warm start and the mutation read (a unit with the largest price gets 1, no unit 0 unless its
        measured price is 0)."""
        out = []
        for t in (self.q[:, 0], self.r[:, 0]):
            top = float(t.max())
            out.append(t / top if top > 0 else np.full(len(t), 0.5))
        return out[0], out[1]

    def summary(self, digits: int = 6) -> list[list[list[float]]]:
        """The tables, rounded: what identifies them in a study's name."""
        return [np.round(self.q, digits).tolist(), np.round(self.r, digits).tolist()]

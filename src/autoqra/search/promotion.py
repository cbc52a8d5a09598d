"""Promotion by the predicted top-rung score: which members of a rung go up to the next one.

Raw successive halving promotes the best ⌈n/eta⌉ by the rung's own mean; when learning curves cross
(a configuration that is behind after a few steps is ahead after many), that promotes the wrong ones.
`search.promotion=model` instead ranks the rung's members by a Gaussian process over (configuration,
fidelity), the one stage 2 fits (`autoqra.search.gp`: ladder indices and φ = log f / log f_top, one
observation per seed), fitted on all the evidence there was when the rung finished: every earlier
generation at every rung, and this generation up to this rung. A member's own low-rung scores and
the learning curves of configurations like it seen at higher rungs both inform its prediction at φ = 1.

The model is used once at least `MIN_ABOVE` configurations have evidence above the rung (until then
there is nothing to learn a learning curve from, and the raw order stands). Promotion is a pure
function of the history, so a killed search resumes to the same decisions; members already running
at the next rung are kept whatever a refit says, so a resume on another machine (other float
rounding) cannot promote more than the quota.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from autoqra.search import gp
from autoqra.search.history import Result
from autoqra.space import Config, Space

MIN_ABOVE = 2  # configurations with evidence above the rung before the model decides
KIND = "ordinal"  # the GP's kernel: one over all genes and φ jointly, so curves may cross (additive: they cannot)
PROMOTIONS = ("raw", "model")


def gp_input(space: Space, config: Config, fidelity: int, top: int) -> np.ndarray:
    """Ladder indices, then φ = log f / log f_top (1 at the top fidelity)."""
    phi = math.log(fidelity) / math.log(top) if top > 1 else 1.0
    return np.append(space.encode(config).astype(float), phi)


def sizes(space: Space) -> list[int]:
    return [len(space.bits)] * len(space) + [len(space.ranks)] * len(space) + [0]


def evidence_at(history: list[Result], generation: int, rung: int) -> list[Result]:
    """What was known when `rung` of `generation` finished (every later result left out)."""
    return [r for r in history if r.done and r.score is not None
            and (r.generation < generation or (r.generation == generation and r.rung <= rung))]


def predicted_top(space: Space, evidence: list[Result], members: Sequence[Config], fidelity: int, top: int,
                  kind: str | None = None, seed: int = 0) -> dict[str, float] | None:
    """Each member's predicted score at the top fidelity (lower is better), or None while fewer than
    `MIN_ABOVE` configurations have evidence above `fidelity`."""
    if len({r.config.key for r in evidence if r.fidelity > fidelity}) < MIN_ABOVE:
        return None
    ordered = sorted(evidence, key=lambda r: (r.config.key, r.fidelity, r.seed))  # the fit ignores arrival order
    x = np.array([gp_input(space, r.config, r.fidelity, top) for r in ordered])
    y = np.array([r.score for r in ordered], dtype=float)
    model = gp.fit(x, y, sizes(space), kind or KIND, seed)
    at_top = np.array([gp_input(space, c, top, top) for c in members])
    return dict(zip((c.key for c in members), gp.posterior_mean(model, at_top).tolist()))


def choose(members: Sequence[Config], rung_means: dict[str, float], predicted: dict[str, float] | None,
           quota: int, running: Sequence[str] = ()) -> list[Config]:
    """The promoted members: by predicted top score (ties and no model: the rung's mean), those already
    `running` at the next rung first."""
    by_key = {c.key: c for c in members}
    order = sorted(rung_means, key=lambda k: ((predicted or {}).get(k, rung_means[k]), rung_means[k], k))
    kept = [k for k in running if k in rung_means]
    kept += [k for k in order if k not in kept][: max(quota - len(kept), 0)]
    return [by_key[k] for k in kept]

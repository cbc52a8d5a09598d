"""`search.ablation`: switch one part of the search off, or replace the whole search, at the same step
budget (the vocabulary, `ABLATIONS`, is the parameter's; this is what each one does to the settings)."""

from __future__ import annotations

from dataclasses import replace

from autoqra.search.evolution import EvolveSettings

REFINE_OFF = ("no_refine", "random", "tpe")  # ablations without stage 2 (random and tpe replace both stages)


def ablated(settings: EvolveSettings, ablation: str, refine_steps: int) -> EvolveSettings:
    """Stage 1's settings with `search.ablation` applied, at the same step budget: `random` and `tpe`
    replace both stages, so they get `refine_steps` (stage 2's) on top of stage 1's step cap."""
    fidelities, seeds = settings.fidelities, settings.seeds_per_rung
    if ablation == "single_fidelity":
        fidelities, seeds = fidelities[-1:], seeds[-1:]
    max_steps = settings.max_steps + (refine_steps if ablation in ("random", "tpe") and settings.max_steps else 0)
    return replace(settings, fidelities=fidelities, seeds_per_rung=seeds, max_steps=max_steps,
                   priors=ablation != "no_priors", surrogate=ablation != "no_surrogate",
                   method=ablation if ablation in ("random", "tpe") else "evolution")

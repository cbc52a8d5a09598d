"""Rules across sections of the parameters (each section checks its own fields at construction)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from autoqra import arms, serving
from autoqra.params.fields import ParamError

if TYPE_CHECKING:
    from autoqra.params.sections import Params


def search_seeds(seed: int, seeds_per_rung: list[int] | tuple[int, ...]) -> list[int]:
    """The training seeds a search under `seed` trains with: rung k uses its first `seeds_per_rung[k]`
    (the same for every configuration, so scores are paired), refinement the top rung's."""
    return [seed + i for i in range(max(seeds_per_rung, default=1))]


def stage_workers(p: Params, stage: Literal["evolve", "refine"]) -> int:
    """How many workers search stage `stage` runs: stage 1 `search.workers`; stage 2 (`refine`) no more than
    the top rung's seeds, since it proposes one configuration at a time and only that proposal's seeds can
    train side by side (on the default, one seed: a second worker waited, and the stage took 5 min 5 s with
    two one-thread workers against 3 min 53 s with one two-thread worker, AMD EPYC kind, 2 cores)."""
    if stage not in ("evolve", "refine"):
        raise ValueError(f"stage={stage!r}: a search stage is 'evolve' or 'refine'")
    if stage == "evolve":
        return p.search.workers
    return min(p.search.workers, (p.search.seeds_per_rung or [1])[-1])  # the top rung's, ablated or not


def check(p: Params) -> None:
    for key, n in (("quant.calib_samples", p.quant.calib_samples), ("profile.samples", p.profile.samples)):
        if n > p.task.calib:
            raise ParamError(f"{key}={n}: must be <= task.calib={p.task.calib} (the calibration split)")
    if p.search.val_per_rung and len(p.search.val_per_rung) != len(p.search.fidelities):
        raise ParamError(f"search.val_per_rung={p.search.val_per_rung}: needs one entry per rung of "
                         f"search.fidelities={p.search.fidelities} (or none)")
    if len(p.search.seeds_per_rung) != len(p.search.fidelities):
        raise ParamError(f"search.seeds_per_rung={p.search.seeds_per_rung}: needs one entry per rung of "
                         f"search.fidelities={p.search.fidelities}")
    arms.check_arms(p.finetune.arms, p.quant.bits)
    serving.check(p.export.target, p.quant.bits, p.quant.sym, p.quant.desc_act, p.quant.group_size,
                  p.search.granularity, p.lora.ranks, p.quant.targets)
    extra = [a for a in p.sweep.arms if a not in p.finetune.arms]
    if extra:
        raise ParamError(f"sweep.arms={p.sweep.arms}: {extra[0]!r} is not one of finetune.arms="
                         f"{p.finetune.arms} (a cell is the pipeline of these params)")
    bits, rank = arms.parse_uniform(p.budget.reference)
    if bits not in p.quant.bits or rank not in p.lora.ranks:
        raise ParamError(f"budget.reference={p.budget.reference!r}: bits and rank must be on the ladders "
                         f"(quant.bits={p.quant.bits}, lora.ranks={p.lora.ranks})")
    selecting = [*p.search.seeds_per_rung, p.search.frontier_seeds]  # the frontier's seeds choose best_uniform
    used = {s for top in [p.seed, *p.sweep.seeds] for s in search_seeds(top, selecting)}
    overlap = sorted(set(p.finetune.seeds) & used)
    if overlap:
        raise ParamError(f"finetune.seeds={p.finetune.seeds}: overlaps the search's training seeds {sorted(used)} "
                         f"(seed={p.seed}, search.seeds_per_rung={p.search.seeds_per_rung}, "
                         f"search.frontier_seeds={p.search.frontier_seeds}"
                         f"{f', sweep.seeds={p.sweep.seeds}' if p.sweep.seeds else ''}): the final arms are "
                         f"trained afresh, on seeds no search stage selected on (e.g. finetune.seeds="
                         f"[{max(used) + 100}, {max(used) + 101}, {max(used) + 102}])")

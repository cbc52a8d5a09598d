"""finetune: one final arm, trained `finetune.steps` steps under every seed of `finetune.seeds`.

The arm's configuration comes from the search (`autoqra`: refine's best.json; `best_uniform`: the best of
the uniform frontier, evolve's frontier.json), from the priors (`greedy`, `prior`, `sequential`) or from
its name (`fp_lora`, `uniform{b}_r{r}`). Each seed is a record of the shared store, trained like a
fidelity run (same code, same key), under fresh seeds no search stage used. Writes
`<out>/arm.json` (configuration, memory, average bits), `<out>/runs.json` (per seed: record, validation
score, time) and `<out>/seed{n}.safetensors` (the trained adapters, for the evaluate and export
stages); see `autoqra.pipeline.arms.finetune`.
"""

from __future__ import annotations

from pathlib import Path

from autoqra.pipeline import arms
from autoqra.pipeline.setup import Setup, check_inputs
from stages import common


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--arm", required=True, help="one of finetune.arms (autoqra, fp_lora, best_uniform, greedy, prior, "
                    "sequential, uniform<b>_r<r>)")
    common.add_journal_args(ap, None)
    ap.add_argument("--stages", help="folder of the search stages' outputs, evolve/ (the uniform frontier) and "
                    "refine/ (the pick) (default: --search)")
    ap.add_argument("--out", help="output folder (default data/final/<arm>/train)")
    args = ap.parse_args(argv)
    p, checked_s = common.start_arm(args)
    args.journal = args.journal or f"finetune/{args.arm}"
    dirs = common.dirs(args)
    with common.user_errors():
        check_inputs(p, dirs)
    out = Path(args.out or f"data/final/{args.arm}/train")
    search = Path(args.stages or args.search)
    common.finish(out / "metrics.json",
                  lambda: arms.finetune(Setup(p, dirs, progress=True, arm_ladders=True), args.arm, out, search),
                  preflight_s=checked_s)


if __name__ == "__main__":
    main()

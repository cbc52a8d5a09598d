"""evaluate: one final arm on the held-out test split, every seed.

Rebuilds each seed's model (the arm's configuration from the GPTQ caches, its adapters from the
finetune stage), scores the test answer loss and, through lm-evaluation-harness, exact match (plus any
`evaluate.lm_eval_tasks`). Writes `<out>` (default `data/final/<arm>/metrics.json`): one record per
seed, and the arm's memory (predicted by the memory model; the measured peak on a GPU), average bits
with and without LoRA, steps and wall time; see `autoqra.pipeline.arms.evaluate`.
"""

from __future__ import annotations

from pathlib import Path

from autoqra.pipeline import arms
from autoqra.pipeline.setup import Setup
from stages import common


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--arm", required=True)
    ap.add_argument("--train", help="the finetune stage's folder (default data/final/<arm>/train)")
    common.add_journal_args(ap, None)
    ap.add_argument("--out", help="default data/final/<arm>/metrics.json")
    args = ap.parse_args(argv)
    p, checked_s = common.start_arm(args)
    train = Path(args.train or f"data/final/{args.arm}/train")
    if not (train / "runs.json").exists():
        raise SystemExit(f"error: --train {train}: no runs.json (run the finetune stage for {args.arm})")
    args.journal = args.journal or f"evaluate/{args.arm}"
    dirs = common.dirs(args)
    out = Path(args.out or f"data/final/{args.arm}/metrics.json")  # its records' manifest beside it
    common.finish(out, lambda: arms.evaluate(Setup(p, dirs, arm_ladders=True), args.arm, train, out.parent),
                  preflight_s=checked_s)


if __name__ == "__main__":
    main()

"""export: the searched model as a user takes it away: a mixed-precision GPTQ checkpoint and its adapter.

Writes `<out>/model/` (a GPTQModel checkpoint, per-module bits in its `dynamic` config), `<out>/adapter/`
(a PEFT adapter with per-module `rank_pattern`/`alpha_pattern`, of the first of `finetune.seeds`),
`<out>/README.md` (the lines that load it) and `<out>/metrics.json` (the test answer loss of the model
as reloaded from these files, next to the arm's own); see `autoqra.pipeline.export`.
"""

from __future__ import annotations

from pathlib import Path

from autoqra.pipeline.export import export
from autoqra.pipeline.setup import Setup
from stages import common


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--train", default="data/final/autoqra/train")
    ap.add_argument("--arm-metrics", default="data/final/autoqra/metrics.json")
    ap.add_argument("--out", default="data/final/autoqra/export")
    args = ap.parse_args(argv)
    p = common.start(args)
    out = Path(args.out)
    common.finish(out / "metrics.json", lambda: export(Setup(p, common.dirs(args), arm_ladders=True),
                                                       Path(args.train), Path(args.arm_metrics), out))


if __name__ == "__main__":
    main()

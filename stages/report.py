"""report: every arm side by side, and the pictures that explain the run.

Reads `data/final/<arm>/metrics.json` for every arm of `finetune.arms`, the search stages' trials and
the priors; writes `<out>/summary.csv`, `summary.md` (mean ± standard error over seeds, paired
differences to `autoqra`), `pareto.png`, `allocation.png`, `search.png` and `metrics.json` (the table,
each GPTQ pass's and each arm's headline numbers: what `dvc metrics show` lists); see
`autoqra.pipeline.report`.
"""

from __future__ import annotations

from pathlib import Path

from autoqra.pipeline import report
from stages import common


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--final", default="data/final")
    ap.add_argument("--out", default="data/report")
    args = ap.parse_args(argv)
    p = common.start(args)
    out = Path(args.out)
    common.finish(out / "metrics.json", lambda: report.write(p, common.dirs(args), Path(args.final), out))


if __name__ == "__main__":
    main()

"""prepare: resolve the base model to an HF folder and build the task splits.

Writes `<out>/model/` (HF folder with tokenizer), `<out>/task/{train,val,test,calib}.jsonl` and
`<out>/metrics.json`.
"""

from __future__ import annotations

from pathlib import Path

from autoqra.pipeline.prepare import prepare
from stages import common


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0], dirs=False)
    ap.add_argument("--out", default="data/prepare", help="output folder")
    args = ap.parse_args(argv)
    p = common.start(args)
    checked_s = common.preflight(p, None)
    out = Path(args.out)
    common.finish(out / "metrics.json", lambda: prepare(p, out), preflight_s=checked_s)


if __name__ == "__main__":
    main()

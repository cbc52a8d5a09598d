"""profile: per-linear importance priors I_q (quantization sensitivity) and I_r (adaptation gain).

Reads the prepared model and task and the lowest-bit GPTQ cache; writes `<out>/priors.parquet`
(one row per target linear, full HF name, raw and [0, 1]-normalised values), `<out>/priors.png`
and `metrics.json`.
"""

from __future__ import annotations

from pathlib import Path

from autoqra.pipeline.profile import profile
from stages import common


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0], dirs=False)
    ap.add_argument("--prepare", default="data/prepare", help="prepare stage folder")
    ap.add_argument("--cache", required=True, help="lowest-bit quantize folder (data/quantize/b{min bits})")
    ap.add_argument("--out", default="data/profile", help="output folder")
    args = ap.parse_args(argv)
    p = common.start(args)
    checked_s = common.preflight(p, args.prepare)
    out = Path(args.out)
    common.finish(out / "metrics.json", lambda: profile(p, Path(args.prepare), Path(args.cache), out),
                  preflight_s=checked_s)


if __name__ == "__main__":
    main()

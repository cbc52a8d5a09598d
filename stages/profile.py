"""profile: the priors: each search unit's loss at every bit-width, each linear's gradient spectrum.

Reads the prepared model and task and the GPTQ caches of `quant.bits`; writes `<out>/losses.parquet`
(one row per search unit and bit-width: the answer-loss increase with that unit alone quantized),
`<out>/priors.parquet` (one row per target linear, full HF name: the gradient's leading singular values
and the fast gradient estimates of the loss increase at each bit-width), `<out>/priors.png` and
`metrics.json`. With `lora.init=eora` each unit is measured with its compensation at the ladder's lowest rank
(the factors go to the record cache, where the search reads them).
"""

from __future__ import annotations

from pathlib import Path

from autoqra.pipeline.profile import profile
from stages import common


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0], dirs=False)
    ap.add_argument("--prepare", default="data/prepare", help="prepare stage folder")
    ap.add_argument("--quantize", default="data/quantize", help="quantize stage folder (one b{bits} per bit-width)")
    ap.add_argument("--records", default="data/records", help="the record cache (with lora.init=eora: the "
                    "compensation's factors, shared with the search)")
    ap.add_argument("--out", default="data/profile", help="output folder")
    args = ap.parse_args(argv)
    p = common.start(args)
    checked_s = common.preflight(p, args.prepare, args.records)
    out = Path(args.out)
    common.finish(out / "metrics.json", lambda: profile(p, Path(args.prepare), Path(args.quantize), out,
                                                                      Path(args.records)),
                  preflight_s=checked_s)


if __name__ == "__main__":
    main()

"""quantize: GPTQ (GPTQModel) of every target linear at one bit-width, cached for assembly.

Writes `<out>/` = a GPTQModel checkpoint (`model.safetensors`, `quantize_config.json`, GPTQ's
per-module `quant_log.csv`) and `metrics.json` with wall times and, with `quant.eval_examples`, the
held-out (validation) loss and perplexity of the fully quantized model. For bits 16 nothing is quantized:
the folder holds only the metrics (with `quant.eval_examples`, the unquantized model's held-out loss, the
reference the other bit-widths are read against).
"""

from __future__ import annotations

from pathlib import Path

from autoqra.pipeline.quantize import quantize
from autoqra.space import BIT_CHOICES
from stages import common


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0], dirs=False)
    ap.add_argument("--bits", type=int, required=True, help="bit-width (16 = unquantized reference)")
    ap.add_argument("--prepare", default="data/prepare", help="prepare stage folder")
    ap.add_argument("--out", required=True, help="output folder (data/quantize/b{bits})")
    args = ap.parse_args(argv)
    p = common.start(args)
    if args.bits not in BIT_CHOICES:
        raise SystemExit(f"error: --bits={args.bits}: must be one of {', '.join(map(str, BIT_CHOICES))}")
    checked_s = common.preflight(p, args.prepare)
    out = Path(args.out)
    common.finish(out / "metrics.json", lambda: quantize(p, args.bits, Path(args.prepare), out), preflight_s=checked_s)


if __name__ == "__main__":
    main()

"""quantize: GPTQ (GPTQModel) of every target linear at one bit-width, cached for assembly.

Writes `<out>/` = a GPTQModel checkpoint (`model.safetensors`, `quantize_config.json`, GPTQ's
per-module `quant_log.csv`) and `metrics.json` with wall times and the held-out (validation) loss and
perplexity of the fully quantized model. For bits 16 nothing is quantized: the folder holds only
the unquantized model's metrics, the reference the other bit-widths are read against.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from autoqra import fingerprint, gptq, models, quant, scoring, tasks
from autoqra.config import Params
from autoqra.space import BIT_CHOICES
from stages import common
from stages.registry import STAGES

PARAMS = STAGES["quantize"].params
EVAL_BATCH = 16  # only speed depends on it: losses are token-weighted means
EVAL_EXAMPLES = 64


def run(p: Params, bits: int, prepare: Path, out: Path) -> dict[str, Any]:
    model_dir, task_dir = prepare / "model", prepare / "task"
    device, dtype = models.device_and_dtype()
    tok = models.load_tokenizer(model_dir)
    calib = [tasks.encode(tok, ex, p.quant.max_length)[0]
             for ex in tasks.read_split(task_dir, "calib")[: p.quant.calib_samples]]
    metrics: dict[str, Any] = {"bits": bits, "group_size": p.quant.group_size, "calib_samples": len(calib),
                               "base_fingerprint": fingerprint.of_dir(model_dir), "device": device}
    out.mkdir(parents=True, exist_ok=True)
    if bits != quant.UNQUANTIZED:
        start = time.perf_counter()
        metrics.update(gptq.gptq_quantize(model_dir, calib, bits, p.quant.group_size, p.quant.sym,
                                           p.quant.desc_act, p.quant.damp, p.quant.targets, out, device))
        metrics["gptq_s"] = round(time.perf_counter() - start, 2)
        metrics["cache_fingerprint"] = quant.cache_fingerprint(out)
        common.log.info("GPTQ %d-bit: %d modules in %.1f s", bits, metrics["modules"], metrics["gptq_s"])
    # the quantized model's held-out loss, for orientation: a few validation examples in the compute dtype
    # of fine-tuning, so the stage costs little beyond GPTQ itself (bench/quantize_overhead.py)
    dtype = models.compute_dtype("auto", device)
    model = models.load_model(model_dir, dtype, device)
    if bits != quant.UNQUANTIZED:
        names = quant.target_modules(model, p.quant.targets)
        quant.apply_dequant(model, dict.fromkeys(names, bits), {bits: quant.QuantCache(out)})
    val = tasks.read_split(task_dir, "val")[:EVAL_EXAMPLES]
    metrics["val"] = {**scoring.loss_report(model, tok, val, p.quant.max_length, EVAL_BATCH), "examples": len(val),
                      "dtype": str(dtype)}
    common.log.info("%d-bit validation: %s", bits, metrics["val"])
    return metrics


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, required=True, help="bit-width (16 = unquantized reference)")
    ap.add_argument("--prepare", default="data/prepare", help="prepare stage folder")
    ap.add_argument("--out", required=True, help="output folder (data/quantize/b{bits})")
    args = ap.parse_args(argv)
    common.setup(args.threads)
    p, _ = common.load(args.params, PARAMS)
    if args.bits not in BIT_CHOICES:
        raise SystemExit(f"error: --bits={args.bits}: must be one of {', '.join(map(str, BIT_CHOICES))}")
    checked_s = common.preflight(p, args.prepare)
    out = Path(args.out)
    with common.user_errors():
        metrics = common.timed(lambda: run(p, args.bits, Path(args.prepare), out))
    common.write_json(out / "metrics.json", {**metrics, "preflight_s": checked_s})


if __name__ == "__main__":
    main()

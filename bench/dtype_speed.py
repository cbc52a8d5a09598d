"""Does this CPU train faster in bf16 or in fp32? What `finetune.dtype: auto` picks, side by side with both.

    python bench/dtype_speed.py [--prepare data/prepare] [--quantize data/quantize] [--steps 16] [--bits 4]

A fidelity evaluation's training (the pipeline's `FidelityRun`, dequant backend, uniform `--bits` r`--rank`,
one thread: what each Snakemake training job gets under `make run`), once in bf16 and once in fp32, one after
the other. Prints the processor, which bf16 instructions torch sees, what `auto` resolves to, each dtype's
steps per second and their ratio: `auto` should pick the faster one. oneDNN "supports" bf16 on every AVX-512
CPU, but only AVX-512 BF16 and AMX multiply it natively; elsewhere it converts, and bf16 is the slow one.
"""

from __future__ import annotations

import torch
from common import training_parser
from threads import launch

from autoqra import devices


def main() -> None:
    args = training_parser(__doc__.splitlines()[0], steps=16).parse_args()
    flags = {"avx512_bf16": torch.cpu._is_avx512_bf16_supported(), "amx": torch.cpu._is_amx_tile_supported(),
             "onednn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}
    auto = devices.compute_dtype("auto", "cpu")
    print(f"{devices.platform('cpu')['processor']}; torch {torch.__version__}; {flags}; auto -> {auto}", flush=True)
    speed = {}
    for dtype in ("bf16", "fp32"):
        _, train = launch(args, 1, 1, dtype)
        speed[dtype] = args.steps / train[0]
        print(f"{dtype}: {train[0]:.1f} s for {args.steps} steps, {speed[dtype]:.3f} steps/s", flush=True)
    faster = "bf16" if speed["bf16"] > speed["fp32"] else "fp32"
    picked = "bf16" if auto == torch.bfloat16 else "fp32"
    print(f"bf16 / fp32 throughput: {speed['bf16'] / speed['fp32']:.2f}x; auto picks {picked}, the faster is {faster}")


if __name__ == "__main__":
    main()

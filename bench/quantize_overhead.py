"""The quantize stage against a direct GPTQModel call with the same settings (target: ≤ 1.05×).

    python bench/quantize_overhead.py [--params params.yaml] [--bits 4] [--prepare data/prepare]

Runs, one after the other in fresh processes (interpreter start and imports included in both): the
stage command (`python -m stages.quantize`: checks, calibration encoding, GPTQ, saving, the cache
fingerprint, the held-out loss of the quantized model) and a minimal script that loads the model with
GPTQModel, quantizes it on the same calibration sequences with the same config and saves it. Prints
both wall times and their ratio; writes JSON to `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DIRECT = """
import sys, json, torch
from gptqmodel import GPTQModel, QuantizeConfig
from autoqra import models, data
from autoqra.models import target_modules
from autoqra.quant.packed import _regex
from torch import nn
p = json.loads(sys.argv[1])
tok = models.load_tokenizer(p["model"])
calib = [data.encode(tok, ex, p["max_length"])[0] for ex in data.read_split(p["task"], "calib")[: p["n"]]]
meta = models.meta_model(p["model"])
chosen = target_modules(meta, p["targets"])
skip = [n for n, m in meta.named_modules() if isinstance(m, nn.Linear) and ".layers." in n and n not in chosen]
cfg = QuantizeConfig(bits=p["bits"], group_size=p["group"], sym=p["sym"], desc_act=p["desc_act"],
                     damp_percent=p["damp"], dynamic={"-:" + _regex(n): {} for n in skip} or None, fallback=None,
                     offload_to_disk=False)
model = GPTQModel.load(p["model"], cfg, dtype=torch.float32, device="cpu")
model.quantize([{"input_ids": x, "attention_mask": [1] * len(x)} for x in calib], batch_size=1,
               calibration_data_min_length=1)
model.save(p["out"])
"""


def timed(cmd: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"error: {' '.join(cmd[:4])} failed:\n{res.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from common import load

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepare", default="data/prepare")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--json", default="data/bench/quantize_overhead.json")
    args = ap.parse_args()
    p = load(args.params)
    q = p.quant
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"model": str(Path(args.prepare, "model").resolve()), "task": str(Path(args.prepare, "task").resolve()),
                "n": q.calib_samples, "max_length": q.max_length, "targets": q.targets, "bits": args.bits,
                "group": q.group_size, "sym": q.sym, "desc_act": q.desc_act, "damp": q.damp, "out": f"{tmp}/direct"}
        direct = timed([sys.executable, "-c", DIRECT, json.dumps(spec)])
        stage = timed([sys.executable, "-m", "stages.quantize", "--params", args.params, "--bits", str(args.bits),
                       "--prepare", args.prepare, "--out", f"{tmp}/stage"])
        inner = json.loads(Path(tmp, "stage", "metrics.json").read_text())
    row = {"bits": args.bits, "calib_samples": q.calib_samples, "direct_s": direct, "stage_s": stage,
           "ratio": stage / direct, "stage_gptq_s": inner.get("gptq_s"), "stage_preflight_s": inner.get("preflight_s"),
           "stage_fingerprint_s": inner.get("fingerprint_s"), "stage_val_s": inner.get("val_s")}
    rest = stage - sum(row[k] or 0 for k in ("stage_gptq_s", "stage_preflight_s", "stage_fingerprint_s", "stage_val_s"))
    print(f"GPTQ {args.bits}-bit, {q.calib_samples} calibration sequences, group {q.group_size}:")
    print(f"  direct GPTQModel call   {direct:8.1f} s")
    held_out = "skipped (quant.eval_examples=0)" if row["stage_val_s"] is None else f"{row['stage_val_s']} s"
    print(f"  quantize stage          {stage:8.1f} s   (GPTQ inside it {row['stage_gptq_s']} s, "
          f"checks {row['stage_preflight_s']} s, cache fingerprint {row['stage_fingerprint_s']} s, held-out loss pass "
          f"{held_out}, start-up, imports and calibration encoding {rest:.1f} s)")
    verdict = "" if row["ratio"] <= 1.05 else f"  (target 1.05 missed by {row['ratio'] - 1.05:.2f})"
    print(f"  ratio stage / direct    {row['ratio']:8.3f}{verdict}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()

"""The whole pipeline on one device, stage by stage, through the stage commands (no Snakemake, no DVC).

    python bench/gpu_pipeline.py [--device cuda|cpu] [--out DIR] [--reuse DIR] [--timeout S]

Runs the smoke experiment, shortened (a 4-configuration, 1-generation evolve, one refine evaluation, the
`autoqra` arm under one fresh seed, no lm-evaluation-harness) with the packed backend (GPTQModel's own
quantized layers: what a GPU trains on): prepare, quantize (one job per bit-width), profile, evolve, refine,
finetune, evaluate, export, each the command of `stages/registry.py` run in `<out>` as Snakemake and DVC run
it. Prints each stage's wall time, the arm's training peak memory against the memory model's estimate (CUDA
only: the CPU keeps no peak), and the exported model's test loss as GPTQModel + PEFT reload it against the
arm's own. `--device cpu` rehearses it here (CUDA hidden from every stage); `--reuse DIR` copies the
prepared folder and GPTQ caches of a finished smoke project (`DIR/data/`) instead of recomputing them, as the
CPU rehearsal in the tests does. The GPU machine lacks what `make gpu-wheels` puts in `dist/gpu-wheels/`.
Exit status 0 only if every stage ran and the reload reproduces the arm's loss.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["experiment=smoke", "search.population=4", "search.generations=1", "search.offspring=2",
             "search.refine.evaluations=1", "search.backend=packed", "finetune.arms=[autoqra]",
             "finetune.seeds=[100]", "evaluate.exact_match=false"]
ARM = "autoqra"


def commands(p) -> list[tuple[str, str]]:
    """(label, shell command) of every stage the arm needs, in order, as the registry writes them."""
    sys.path.insert(0, str(ROOT))
    from stages.registry import STAGES

    out = [("prepare", STAGES["prepare"].cmd)]
    out += [(f"quantize b{b}", STAGES["quantize"].cmd.replace("${item}", str(b))) for b in p.quant.bits if b != 16]
    out += [(name, STAGES[name].cmd.replace("${item}", ARM))
            for name in ("profile", "evolve", "refine", "finetune", "evaluate", "export")]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--out", default=None, help="the run's folder (default: a new temporary one)")
    ap.add_argument("--reuse", default=None, help="a finished smoke project whose data/prepare and data/quantize "
                                                  "to copy instead of recomputing them")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per stage")
    args = ap.parse_args()

    import torch

    sys.path.insert(0, str(ROOT))
    from stages import params as P

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: no CUDA device visible (use --device cpu to rehearse)")
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu_pipeline_"))
    out.mkdir(parents=True, exist_ok=True)
    p = P.validated(P.compose(OVERRIDES))
    (out / "params.yaml").write_text(P.to_yaml(P.compose(OVERRIDES)))
    path = os.pathsep.join([str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 2)))
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    reused = set()
    if args.reuse:
        for name in ("prepare", "quantize"):
            shutil.copytree(Path(args.reuse) / "data" / name, out / "data" / name, dirs_exist_ok=True)
        reused = {"prepare", *(f"quantize b{b}" for b in p.quant.bits)}
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"device {device}, torch {torch.__version__}, run in {out}", flush=True)
    times = {}
    for label, cmd in commands(p):
        if label in reused:
            print(f"{label:12s} reused from {args.reuse}", flush=True)
            continue
        start = time.perf_counter()
        try:
            res = subprocess.run(cmd, shell=True, cwd=out, env=env, capture_output=True, text=True,
                                 timeout=args.timeout)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"error: stage {label!r} ran past --timeout {args.timeout:.0f} s: {cmd}") from None
        times[label] = time.perf_counter() - start
        print(f"{label:12s} {times[label]:7.1f} s  rc {res.returncode}", flush=True)
        if res.returncode != 0:
            print(res.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"error: stage {label!r} failed (rc {res.returncode}): {cmd}")
    print(f"{'total':12s} {sum(times.values()):7.1f} s", flush=True)
    sys.exit(report(out / "data" / "final" / ARM))


def report(final: Path) -> int:
    """Print memory and reload figures; 0 if the reload reproduces the arm's loss."""
    arm = json.loads((final / "train" / "arm.json").read_text())
    runs = json.loads((final / "train" / "runs.json").read_text())["runs"]
    exported = json.loads((final / "export" / "metrics.json").read_text())
    estimate = arm["memory"]["total"]
    for r in runs:
        peak = r.get("peak_memory_bytes")
        shown = (f"peak {peak / 2**20:.1f} MiB, model {estimate / 2**20:.1f} MiB, ratio {peak / estimate:.3f}"
                 if peak else f"no peak on this device (model {estimate / 2**20:.1f} MiB)")
        if r["status"] != "ok":
            print(f"seed {r['seed']}: {r['status']} ({r.get('reason')})")
            return 1
        print(f"seed {r['seed']}: {r['status']}, val {r['score']:.4f}, train {r['train_s']:.1f} s, {shown}")
    own, reloaded = exported["arm_test_answer_loss"], exported["reloaded_test_answer_loss"]
    if own is None:
        print(f"test answer loss: exported and reloaded {reloaded:.6f}, the arm's own missing (evaluate's metrics)")
        return 1
    print(f"test answer loss: arm {own:.6f}, exported and reloaded {reloaded:.6f}, "
          f"difference {exported['difference']:+.2e} ({arm['summary']})")
    return 0 if abs(exported["difference"]) <= 1e-3 * abs(own) else 1


if __name__ == "__main__":
    main()

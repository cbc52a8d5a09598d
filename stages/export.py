"""export: the searched model as a user takes it away: a mixed-precision GPTQ checkpoint and its adapter.

Writes `<out>/model/` (a GPTQModel checkpoint: every module at its own bit-width through the
`dynamic` config, unquantized modules left dense), `<out>/adapter/` (a PEFT adapter with per-module
`rank_pattern`/`alpha_pattern`, trained under the first of `finetune.seeds`), `<out>/README.md` (the
lines that load it) and `<out>/metrics.json` (the test answer loss of the model as reloaded from these
files, next to the arm's own). Load it with GPTQModel, not with transformers/optimum: their loader
builds every layer at one bit-width and ignores `dynamic`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from autoqra import final, models, quant, tasks
from autoqra.config import Params
from autoqra.evaluate import load_adapter
from autoqra.finetune import attach_lora
from stages import common
from stages.registry import STAGES
from stages.search_setup import SearchSetup

PARAMS = STAGES["export"].params

LOAD = '''```python
import torch
from gptqmodel import BACKEND, GPTQModel
from peft import PeftModel
from transformers import AutoTokenizer

base = GPTQModel.load("{model}", backend=BACKEND.TORCH, dtype=torch.bfloat16, device="cpu")  # or "cuda"
model = PeftModel.from_pretrained(base.model, "{adapter}")
tokenizer = AutoTokenizer.from_pretrained("{model}")
```
'''


def load(model_dir: Path, adapter_dir: Path, device: str = "cpu") -> Any:
    """The exported model as a user loads it (GPTQModel, then PEFT)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(quant.load_packed(model_dir, device), str(adapter_dir)).eval()


def run(p: Params, dirs: dict[str, str], train: Path, arm_metrics: Path, out: Path) -> dict[str, Any]:
    setup = SearchSetup(p, dirs, arms=True)
    spec = json.loads((train / "arm.json").read_text())
    config = setup.arm_space.parse(spec["config"])
    bits, ranks = setup.arm_space.per_module(config)
    seed = p.finetune.seeds[0]
    if out.exists():
        shutil.rmtree(out)
    model_dir, adapter_dir = out / "model", out / "adapter"
    quant.write_packed(bits, Path(dirs["prepare"]) / "model", setup.evaluator.caches, model_dir)
    peft_model = attach_lora(quant.load_packed(model_dir, "cpu"), ranks, p.lora.alpha_ratio, p.lora.dropout)
    load_adapter(peft_model, train / f"seed{seed}.safetensors").save_pretrained(str(adapter_dir))
    (out / "README.md").write_text(f"# {spec['summary']}\n\nSearched by AutoQRA for {p.model.source}: per-module bits "
                                   f"in `model/quantize_config.json` (`dynamic`), per-module LoRA ranks in "
                                   f"`adapter/adapter_config.json` (`rank_pattern`). Load it with:\n\n"
                                   + LOAD.format(model=model_dir.resolve(), adapter=adapter_dir.resolve()))
    test = tasks.read_split(Path(dirs["prepare"]) / "task", "test")
    reloaded = final.test_scores(load(model_dir, adapter_dir), models.load_tokenizer(model_dir), test,
                                 p.task.max_length, p.evaluate.batch_size)
    arm = json.loads(arm_metrics.read_text()) if arm_metrics.exists() else None
    own = next((r.get("answer_loss") for r in arm["seeds"] if r["seed"] == seed), None) if arm else None
    return {"summary": spec["summary"], "seed": seed, "reloaded_test_answer_loss": reloaded["answer_loss"],
            "arm_test_answer_loss": own, "difference": None if own is None else reloaded["answer_loss"] - own,
            "bits": {str(b): sum(v == b for v in bits.values()) for b in sorted(set(bits.values()))},
            "files": sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file())}


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    common.add_dirs(ap)
    ap.add_argument("--train", default="data/final/autoqra/train")
    ap.add_argument("--arm-metrics", default="data/final/autoqra/metrics.json")
    ap.add_argument("--out", default="data/final/autoqra/export")
    args = ap.parse_args(argv)
    common.setup(args.threads)
    p, _ = common.load(args.params, PARAMS)
    dirs = common.dirs(args)
    out = Path(args.out)
    with common.user_errors():
        metrics = common.timed(lambda: run(p, dirs, Path(args.train), Path(args.arm_metrics), out))
    common.write_json(out / "metrics.json", metrics)


if __name__ == "__main__":
    main()

"""prepare: resolve the base model to an HF folder and build the task splits.

Writes `<out>/model/` (HF folder with tokenizer), `<out>/task/{train,val,test,calib}.jsonl` and
`<out>/metrics.json`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from autoqra import fingerprint, models, preflight, tasks
from autoqra.config import Params
from stages import common
from stages.registry import STAGES

PARAMS = STAGES["prepare"].params


def run(p: Params, out: Path) -> dict[str, Any]:
    sizes = {s: getattr(p.task, s) for s in tasks.SPLITS}
    splits = tasks.build(p.task.source, p.task.families, sizes, p.task.seed, p.task.prompt_column,
                         p.task.answer_column, p.task.system_prompt)
    tasks.write_splits(splits, out / "task")
    preflight.check_splits(p, out / "task")
    common.log.info("task: %s", {s: len(r) for s, r in splits.items()})
    # the token limit is checked with the source's tokenizer, before the model is converted
    tok = models.source_tokenizer(p.model.source)
    cut = {s: tasks.truncated(tok, rows, p.task.max_length) for s, rows in splits.items() if s != "calib"}
    info = models.prepare_model(p.model.source, out / "model", p.model.tiny, splits["train"], p.model.tiny.seed)
    common.log.info("model: %s", info["origin"])
    if any(cut.values()):
        common.log.warning("examples over task.max_length=%d lose the start of their prompt: %s",
                           p.task.max_length, cut)
    return {**info, "examples": {s: len(r) for s, r in splits.items()}, "truncated_prompts": cut,
            "families": sorted({r["family"] for r in splits["train"]}),
            "model_fingerprint": fingerprint.of_dir(out / "model"),
            "task_fingerprint": fingerprint.of_dir(out / "task"),
            "tiny": dataclasses.asdict(p.model.tiny) if p.model.source == "tiny" else None}


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/prepare", help="output folder")
    args = ap.parse_args(argv)
    common.setup(args.threads)
    p, _ = common.load(args.params, PARAMS)
    checked_s = common.preflight(p, None)
    out = Path(args.out)
    with common.user_errors():
        metrics = common.timed(lambda: run(p, out))
    common.write_json(out / "metrics.json", {**metrics, "preflight_s": checked_s})


if __name__ == "__main__":
    main()

"""The final evaluation of a trained arm on the test split: answer loss and lm-evaluation-harness.

Exact match runs through lm-evaluation-harness (0.4) on the model already in memory (`HFLM` over the
PEFT model): the test split is written as a local task (`dataset_path: json` with an absolute data
file, `generate_until`, greedy decoding for as many tokens as the longest reference answer needs,
stopping at the end-of-turn token), so nothing is downloaded. Standard harness tasks named in
`evaluate.lm_eval_tasks` run next to it for users whose datasets are in the local cache.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from autoqra.data import prompt_ids
from autoqra.store import fingerprint
from autoqra.store.fingerprint import TEST_CODE, VALUE_CODE
from autoqra.train import scoring

TASK = "autoqra_test"


def evaluation_key(train_key: str, max_length: int, params: Any, adapter: Path | None = None) -> str:
    """The key of a test-split evaluation: the training record (model, task with its test split, caches,
    configuration, steps, seed, training code) plus what the evaluation adds (`params`: the `evaluate`
    section) and the adapter's bytes (a file replaced under the same training record is scored again)."""
    from importlib.metadata import version

    return fingerprint.of_data({"train": train_key, "max_length": max_length, "split": "test",
                                "evaluate": {"exact_match": params.exact_match, "batch_size": params.batch_size,
                                             "lm_eval_tasks": list(params.lm_eval_tasks)},
                                "code": fingerprint.of_code(*TEST_CODE, *VALUE_CODE),
                                "lm_eval": version("lm_eval"),
                                "adapter": fingerprint.of_file(adapter) if adapter is not None else None})


def write_task(tokenizer: Any, examples: list[dict[str, Any]], folder: Path, max_length: int) -> Path:
    """A local lm-eval task over `examples`: the chat-formatted prompt as text, the answer as target."""
    folder.mkdir(parents=True, exist_ok=True)
    new_tokens = scoring.answer_tokens(tokenizer, examples)
    data = folder / "test.jsonl"
    with open(data, "w") as fh:
        for ex in examples:
            text = tokenizer.decode(prompt_ids(tokenizer, ex)[-max(max_length - new_tokens, 1):])
            fh.write(json.dumps({"text": text, "target": ex["answer"].strip(), "id": ex.get("id")}) + "\n")
    eos = tokenizer.decode([tokenizer.eos_token_id])
    spec = {
        "task": TASK, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data.resolve())},
                                             "cache_dir": str((folder / "datasets").resolve())},  # removed with it
        "test_split": "test", "output_type": "generate_until", "doc_to_text": "{{text}}",
        "doc_to_target": "{{target}}", "target_delimiter": "",
        "generation_kwargs": {"until": [eos], "do_sample": False, "max_gen_toks": new_tokens},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": False, "ignore_punctuation": False,
                         "regexes_to_ignore": ["^\\s+", "\\s+$"]}],
    }
    (folder / f"{TASK}.yaml").write_text(json.dumps(spec, indent=1))  # JSON is YAML
    return folder


def _contiguous_input(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0].contiguous(), *args[1:])


def lm_eval(model: Any, tokenizer: Any, examples: list[dict[str, Any]], folder: Path, max_length: int,
            batch_size: int, extra_tasks: list[str] = ()) -> dict[str, Any]:
    """Exact match on `examples` (and any extra harness tasks) for the model in memory."""
    import logging

    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    write_task(tokenizer, examples, folder, max_length)
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    manager = TaskManager(include_path=str(folder), include_defaults=bool(extra_tasks))
    # generate() hands the head the last position as a strided view (B, 1, H); on the CPU torch's matmul
    # then broadcasts the (V, H) head weight to (B, H, V) and copies it: 3.6 GB and ~7 s per batch of 64 at
    # V=49k, most of the harness's time. A contiguous input takes the plain mm path; results are identical.
    hook = model.get_output_embeddings().register_forward_pre_hook(_contiguous_input)
    try:
        out = evaluator.simple_evaluate(model=lm, tasks=[TASK, *extra_tasks], task_manager=manager,
                                        log_samples=True, bootstrap_iters=0, random_seed=0, numpy_random_seed=0,
                                        torch_random_seed=0)
    finally:
        hook.remove()
    results = out["results"]
    p = float(results[TASK]["exact_match,none"])
    n = len(examples)
    # each example's outcome, in the test split's order: what a comparison pairs example by example
    outcomes = [float(s["exact_match"]) for s in sorted(out["samples"][TASK], key=lambda s: s["doc_id"])]
    assert len(outcomes) == n and math.isclose(sum(outcomes) / n, p), "per-example outcomes disagree with the mean"
    scores = {"exact_match": p, "exact_match_se": math.sqrt(p * (1 - p) / n), "exact_match_n": n,  # binomial
              "exact_match_per_example": outcomes}
    for task in extra_tasks:
        scores[f"lm_eval/{task}"] = {k: v for k, v in results.get(task, {}).items() if isinstance(v, (int, float))}
    return scores


def test_scores(model: Any, tokenizer: Any, examples: list[dict[str, Any]], max_length: int,
                batch_size: int) -> dict[str, Any]:
    """Answer loss (token-weighted) on `examples`, with its standard error over examples."""
    import numpy as np

    per = scoring.per_example_nll(model, tokenizer, examples, max_length, batch_size)
    sums = np.array([a for a, _ in per])
    counts = np.array([n for _, n in per])
    loss = float(sums.sum() / counts.sum())
    # ratio estimator: the sd of per-example contributions (sum - loss * count), scaled
    resid = sums - loss * counts
    se = float(np.sqrt((resid**2).sum() / (len(per) * max(len(per) - 1, 1))) / counts.mean())
    return {"answer_loss": loss, "answer_loss_se": se, "examples": len(per),
            "answer_nll": [[round(a, 6), int(c)] for a, c in per]}  # (summed NLL, answer tokens) per example


def score_seed(ev: Any, config: Any, adapters: Path, test: list[dict[str, Any]], max_length: int, params: Any,
               workdir: Path, built: list[Any]) -> dict[str, Any]:
    """The test scores of one seed's trained adapters, as a record body of the record store.

    `ev` is the arm's `FidelityRun`, `params` the `evaluate` section. The arm's model is built once, kept
    in `built`: loading a seed's adapters overwrites every adapter weight of the previous seed."""
    from autoqra.train.lora import load_adapter

    if not built:
        built.append(ev.assemble(config, workdir, start=False))  # the adapters are loaded over
    model = load_adapter(built[0], adapters)
    scores = test_scores(model, ev.tokenizer, test, max_length, params.batch_size)
    if params.exact_match or params.lm_eval_tasks:
        scores.update(lm_eval(model, ev.tokenizer, test, workdir / f"lm_eval_{adapters.stem}", max_length,
                              params.batch_size, params.lm_eval_tasks))
    ok = math.isfinite(scores["answer_loss"])
    return {"status": "ok" if ok else "failed", "score": scores["answer_loss"] if ok else None,
            "reason": None if ok else "non-finite test answer loss", "scores": scores}

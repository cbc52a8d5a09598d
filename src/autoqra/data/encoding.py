"""Encoding of examples for a model: its chat template, truncation that never cuts an answer, collation."""

from __future__ import annotations

from typing import Any

from autoqra.params import ParamError


def _ids(encoded: Any) -> list[int]:
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


class TooLong(ParamError):
    """An answer that does not fit the token limit on its own."""


def encode(tokenizer: Any, example: dict[str, Any], max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels of one example in the model's chat format; only answer tokens are scored.
    A sequence over `max_length` loses the start of its prompt, never any answer token; an answer
    (with its end token) longer than `max_length` is a `TooLong` error."""
    prompt = prompt_ids(tokenizer, example)
    answer = tokenizer(example["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(answer) >= max_length:
        raise TooLong(f"task.max_length={max_length}: example {example.get('id', '?')} has an answer of "
                      f"{len(answer)} tokens on its own; allowed: task.max_length > the longest answer")
    prompt = prompt[len(prompt) + len(answer) - max_length:] if len(prompt) + len(answer) > max_length else prompt
    return prompt + answer, [-100] * len(prompt) + answer


def truncated(tokenizer: Any, examples: list[dict[str, Any]], max_length: int) -> int:
    """How many examples lose prompt tokens at `max_length` (raises `TooLong` as `encode` does)."""
    return sum(len(prompt_ids(tokenizer, ex)) > encode(tokenizer, ex, max_length)[1].count(-100) for ex in examples)


def labelled_max(tokenizer: Any, examples: list[dict[str, Any]], max_length: int) -> int:
    """The most labelled (answer) tokens of one encoded example: what the memory model's head term prices
    (`scoring.labelled_nll` runs the head on labelled positions only). The prepare stage stores it; the
    check computes it the same way before anything is prepared, so both price the same budget."""
    return max(sum(y != -100 for y in encode(tokenizer, ex, max_length)[1]) for ex in examples)


def calibration_ids(tokenizer: Any, task_dir: Any, samples: int, max_length: int) -> list[list[int]]:
    """The token ids of the first `samples` calibration examples at `max_length`: what the GPTQ pass (and
    EoRA's covariance, which must see the same inputs) calibrates on."""
    from autoqra.data.sources import read_split

    return [encode(tokenizer, ex, max_length)[0] for ex in read_split(task_dir, "calib")[:samples]]


def prompt_ids(tokenizer: Any, example: dict[str, Any]) -> list[int]:
    """The generation prompt of an example (for greedy decoding)."""
    system = [{"role": "system", "content": example["system"]}] if example.get("system") is not None else []
    messages = [*system, {"role": "user", "content": example["prompt"]}]
    return _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors `input_ids`, `attention_mask`, `labels` (B, T) from encoded examples."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, :len(x)] = torch.tensor(x)
        labels[i, :len(y)] = torch.tensor(y)
        mask[i, :len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}

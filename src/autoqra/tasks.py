"""Task data: the built-in generator of verifiable instruction tasks, loaders for user data, encoding.

An example is a dict with `prompt` and `answer` (plus `id`, `family`, `kind`, chat `messages` and, when
the task sets one, the `system` message).
Splits are `train`, `val`, `test` and `calib`; the synthetic generator makes them disjoint, and the
same seed always gives the same splits.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from autoqra.config import ParamError

SPLITS = ("train", "val", "test", "calib")

WORDS = (
    "apple banana cherry garden planet river silver window yellow orange purple market rocket "
    "pencil butter castle dragon forest guitar island jacket kitten lemon mirror needle ocean "
    "pepper rabbit summer ticket violin winter zebra bridge candle doctor engine flower hammer "
    "letter monkey number pillow button carpet dinner finger spider thunder tomato wallet"
).split()


# ----------------------------------------------------------------------------- generator

def _numbers(rng: random.Random, n: int, lo: int = 1, hi: int = 99) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(n)]


def _join(xs: Iterable[int]) -> str:
    return ", ".join(str(x) for x in xs)


def _num(x: float) -> str:
    """A number without a trailing `.0`."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def gen_arithmetic(rng: random.Random) -> tuple[str, str, str]:
    kind = rng.choice(["add", "sub", "mul"])
    if kind == "mul":
        a, b = rng.randint(2, 99), rng.randint(2, 9)
        return kind, f"What is {a} * {b}?", str(a * b)
    a, b = rng.randint(10, 999), rng.randint(10, 999)
    if kind == "add":
        return kind, f"What is {a} + {b}?", str(a + b)
    a, b = max(a, b), min(a, b)
    return kind, f"What is {a} - {b}?", str(a - b)


def _word(rng: random.Random) -> str:
    """A real word, or a pronounceable made-up one (so the family never runs out of examples)."""
    if rng.random() < 0.3:
        return rng.choice(WORDS)
    return "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(2, 4)))


def gen_strings(rng: random.Random) -> tuple[str, str, str]:
    kind = rng.choice(["reverse", "upper", "count", "novowel"])
    w = _word(rng)
    if kind == "reverse":
        return kind, f"Reverse the word '{w}'.", w[::-1]
    if kind == "upper":
        return kind, f"Write '{w}' in capital letters.", w.upper()
    if kind == "count":
        c = rng.choice(sorted(set(w)))
        return kind, f"How many times does the letter '{c}' occur in '{w}'?", str(w.count(c))
    return kind, f"Remove the vowels from '{w}'.", "".join(ch for ch in w if ch not in "aeiou")


def gen_lists(rng: random.Random) -> tuple[str, str, str]:
    kind = rng.choice(["sort", "max", "sum", "reverse"])
    xs = _numbers(rng, rng.randint(3, 5))
    if kind == "sort":
        return kind, f"Sort in ascending order: {_join(xs)}.", _join(sorted(xs))
    if kind == "max":
        return kind, f"What is the largest of {_join(xs)}?", str(max(xs))
    if kind == "sum":
        return kind, f"What is the sum of {_join(xs)}?", str(sum(xs))
    return kind, f"Reverse the list: {_join(xs)}.", _join(reversed(xs))


UNITS = {  # kind: (from unit, to unit, factor)
    "km_m": ("kilometers", "meters", 1000), "m_cm": ("meters", "centimeters", 100),
    "h_min": ("hours", "minutes", 60), "min_s": ("minutes", "seconds", 60),
    "kg_g": ("kilograms", "grams", 1000), "ft_in": ("feet", "inches", 12),
}


def gen_units(rng: random.Random) -> tuple[str, str, str]:
    kind = rng.choice(sorted(UNITS))
    src, dst, factor = UNITS[kind]
    x = rng.randint(1, 400) / rng.choice([1, 1, 2, 4])
    return kind, f"Convert {_num(x)} {src} to {dst}.", _num(x * factor)


FAMILIES: dict[str, Callable[[random.Random], tuple[str, str, str]]] = {
    "arithmetic": gen_arithmetic, "strings": gen_strings, "lists": gen_lists, "units": gen_units,
}


def make_example(split: str, index: int, family: str, kind: str, prompt: str, answer: str) -> dict[str, Any]:
    return {"id": f"{split}-{index:05d}", "family": family, "kind": kind, "prompt": prompt, "answer": answer,
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def generate(families: list[str], sizes: dict[str, int], seed: int) -> dict[str, list[dict[str, Any]]]:
    """Disjoint synthetic splits; families cycle so every split holds all of them evenly."""
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ParamError(f"task.families: unknown {unknown} (allowed: {', '.join(FAMILIES)})")
    rng = random.Random(seed)
    seen: set[str] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        rows = []
        attempts = 0
        while len(rows) < sizes[split]:
            attempts += 1
            if attempts > 50 * sizes[split] + 1000:
                raise ParamError(f"task.{split}={sizes[split]}: more than the {len(seen)} distinct examples "
                                 f"families {families} can make; lower it or add families")
            family = families[len(rows) % len(families)]
            kind, prompt, answer = FAMILIES[family](rng)
            if prompt in seen:
                continue
            seen.add(prompt)
            rows.append(make_example(split, len(rows), family, kind, prompt, answer))
        out[split] = rows
    return out


# ----------------------------------------------------------------------------- user data

def _read_table(source: str) -> list[dict[str, Any]]:
    if source.startswith("hf:"):
        import datasets

        try:
            dsets = datasets.load_dataset(source[3:])
        except Exception as exc:  # offline: only the local datasets cache is reachable
            raise ParamError(f"task.source={source!r}: cannot load from the local datasets cache ({exc})") from None
        names = {"validation": "val", "valid": "val", "dev": "val"}
        return [{**row, "split": names.get(s, s)} for s, d in dsets.items() for row in d]
    path = Path(source)
    if path.suffix in (".jsonl", ".json"):
        text = path.read_text()
        if path.suffix == ".json" or text.lstrip().startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    import pandas as pd

    frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    return frame.to_dict("records")


def load_user(source: str, prompt_column: str, answer_column: str, sizes: dict[str, int],
              seed: int) -> dict[str, list[dict[str, Any]]]:
    """Splits from a user table. A `split` column (train/val/test) is respected; otherwise rows are
    shuffled with `seed` and cut into val, test and train. Calibration examples come from train."""
    rows = _read_table(source)
    if not rows:
        raise ParamError(f"task.source={source!r}: no rows")
    for column, key in ((prompt_column, "task.prompt_column"), (answer_column, "task.answer_column")):
        if column not in rows[0]:
            raise ParamError(f"{key}={column!r}: no such column in {source} (columns: {', '.join(rows[0])})")
    pairs = [(str(r[prompt_column]), str(r[answer_column]), r.get("split")) for r in rows]
    if any(s is not None for _, _, s in pairs):
        parts = {s: [(p, a) for p, a, t in pairs if t == s] for s in ("train", "val", "test")}
    else:
        shuffled = [(p, a) for p, a, _ in pairs]
        random.Random(seed).shuffle(shuffled)
        nv, nt = sizes["val"], sizes["test"]
        parts = {"val": shuffled[:nv], "test": shuffled[nv:nv + nt], "train": shuffled[nv + nt:]}
    parts = {s: xs[:sizes[s]] for s, xs in parts.items()}
    parts["calib"] = parts["train"][:sizes["calib"]]
    out = {}
    for split in SPLITS:
        if not parts.get(split):
            raise ParamError(f"task.source={source!r}: the {split} split is empty "
                             f"({len(rows)} rows; sizes requested: {sizes})")
        out[split] = [make_example(split, i, "user", "user", p, a) for i, (p, a) in enumerate(parts[split])]
    return out


# ----------------------------------------------------------------------------- files

def build(source: str, families: list[str], sizes: dict[str, int], seed: int, prompt_column: str = "prompt",
          answer_column: str = "answer", system_prompt: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """All four splits for a task source; with a `system_prompt` every example carries that system
    message (None: the model's chat template decides, which may add a default one)."""
    if source == "synthetic":
        splits = generate(families, sizes, seed)
    else:
        splits = load_user(source, prompt_column, answer_column, sizes, seed)
    if system_prompt is not None:
        for rows in splits.values():
            for ex in rows:
                ex["system"] = system_prompt
                ex["messages"] = [{"role": "system", "content": system_prompt}, *ex["messages"]]
    return splits


def write_splits(splits: dict[str, list[dict[str, Any]]], out_dir: str | Path) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        with open(out / f"{split}.jsonl", "w") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def read_split(task_dir: str | Path, split: str) -> list[dict[str, Any]]:
    with open(Path(task_dir) / f"{split}.jsonl") as fh:
        return [json.loads(line) for line in fh]


# ----------------------------------------------------------------------------- encoding

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

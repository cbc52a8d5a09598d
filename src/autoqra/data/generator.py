"""The built-in synthetic task: instruction examples with short verifiable answers (arithmetic, string
edits, list operations, unit conversions), in disjoint splits, the same for the same seed.

An example is a dict with `prompt` and `answer` (plus `id`, `family`, `kind`, chat `messages` and, when
the task sets one, the `system` message).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

from autoqra.params import ParamError

SPLITS = ("train", "val", "test", "calib")

WORDS = (
    "apple banana cherry garden planet river silver window yellow orange purple market rocket "
    "pencil butter castle dragon forest guitar island jacket kitten lemon mirror needle ocean "
    "pepper rabbit summer ticket violin winter zebra bridge candle doctor engine flower hammer "
    "letter monkey number pillow button carpet dinner finger spider thunder tomato wallet"
).split()



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

"""The task generator is deterministic, its splits disjoint, and every answer re-derivable."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from autoqra import data

SIZES = {"train": 400, "val": 60, "test": 60, "calib": 40}
FAMILIES = ["arithmetic", "strings", "lists", "units"]
UNIT_FACTORS = {("kilometers", "meters"): 1000, ("meters", "centimeters"): 100, ("hours", "minutes"): 60,
                ("minutes", "seconds"): 60, ("kilograms", "grams"): 1000, ("feet", "inches"): 12}


def rederive(prompt: str) -> str:
    """Solve a prompt from its text alone (independent of the generator's code)."""
    if m := re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", prompt):
        a, op, b = int(m[1]), m[2], int(m[3])
        return str({"+": a + b, "-": a - b, "*": a * b}[op])
    if m := re.fullmatch(r"Reverse the word '(\w+)'\.", prompt):
        return m[1][::-1]
    if m := re.fullmatch(r"Write '(\w+)' in capital letters\.", prompt):
        return m[1].upper()
    if m := re.fullmatch(r"How many times does the letter '(\w)' occur in '(\w+)'\?", prompt):
        return str(sum(ch == m[1] for ch in m[2]))
    if m := re.fullmatch(r"Remove the vowels from '(\w+)'\.", prompt):
        return re.sub("[aeiou]", "", m[1])
    if m := re.fullmatch(r"(Sort in ascending order: |What is the largest of |What is the sum of |"
                         r"Reverse the list: )([\d, ]+)[.?]", prompt):
        xs = [int(x) for x in m[2].split(", ")]
        op = m[1].split()[0]
        out = {"Sort": sorted(xs), "Reverse": xs[::-1]}.get(op)
        if out is not None:
            return ", ".join(map(str, out))
        return str(max(xs) if "largest" in m[1] else sum(xs))
    if m := re.fullmatch(r"Convert ([\d.]+) (\w+) to (\w+)\.", prompt):
        value = float(m[1]) * UNIT_FACTORS[(m[2], m[3])]
        return str(int(value)) if value.is_integer() else f"{value:g}"
    raise AssertionError(f"unparsed prompt: {prompt}")


def test_same_seed_same_splits_other_seed_other_splits():
    a = data.generate(FAMILIES, SIZES, seed=3)
    assert a == data.generate(FAMILIES, SIZES, seed=3)
    b = data.generate(FAMILIES, SIZES, seed=4)
    for split in data.SPLITS:
        assert [r["prompt"] for r in a[split]] != [r["prompt"] for r in b[split]]


def test_every_answer_is_rederivable_for_every_family():
    splits = data.generate(FAMILIES, SIZES, seed=0)
    kinds = set()
    for rows in splits.values():
        for r in rows:
            assert rederive(r["prompt"]) == r["answer"], r
            assert r["messages"][-1] == {"role": "assistant", "content": r["answer"]}
            kinds.add((r["family"], r["kind"]))
    assert {f for f, _ in kinds} == set(FAMILIES)
    assert len(kinds) == 3 + 4 + 4 + 6  # every kind of every family occurs


def test_splits_are_disjoint_sized_and_balanced():
    splits = data.generate(FAMILIES, SIZES, seed=0)
    prompts = [r["prompt"] for rows in splits.values() for r in rows]
    assert len(prompts) == len(set(prompts)) == sum(SIZES.values())
    counts = pd.Series([r["family"] for r in splits["train"]]).value_counts()
    assert counts.max() - counts.min() <= 1


def test_written_splits_round_trip(tmp_path):
    splits = data.generate(["lists"], {"train": 5, "val": 2, "test": 2, "calib": 2}, seed=1)
    data.write_splits(splits, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {f"{s}.jsonl" for s in data.SPLITS}
    assert data.read_split(tmp_path, "val") == splits["val"]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_user_tables_with_custom_columns(tmp_path, suffix):
    rows = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(30)]
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    sizes = {"train": 100, "val": 5, "test": 5, "calib": 4}
    splits = data.task_splits(str(path), [], sizes, seed=0, prompt_column="q", answer_column="a")
    assert [len(splits[s]) for s in data.SPLITS] == [20, 5, 5, 4]
    assert {r["prompt"] for r in splits["val"]}.isdisjoint(r["prompt"] for r in splits["train"])
    assert all(r["answer"] == r["prompt"].replace("question", "answer") for s in splits.values() for r in s)
    assert splits == data.task_splits(str(path), [], sizes, seed=0, prompt_column="q", answer_column="a")


def test_a_csv_answer_is_kept_as_written_and_validation_means_val(tmp_path):
    """pandas would read `007` as 7 and, with `NA` in the column, `4` as 4.0 and `NA` as nan: answers are
    text, kept exactly (an empty answer is an error: tests/test_preflight.py)."""
    answers = ["007", "4", "NA", "3.50"] * 6
    splits_col = ["train"] * 16 + ["validation"] * 4 + ["test"] * 4
    path = tmp_path / "d.csv"
    pd.DataFrame({"prompt": [f"p{i}" for i in range(24)], "answer": answers, "split": splits_col}).to_csv(
        path, index=False)
    splits = data.task_splits(str(path), [], {"train": 100, "val": 100, "test": 100, "calib": 3}, seed=0)
    assert [r["answer"] for r in splits["train"]] == answers[:16]
    assert len(splits["val"]) == 4  # `validation` is the val split, not dropped


def test_user_split_column_is_respected(tmp_path):
    rows = [{"prompt": f"p{i}", "answer": "x", "split": "train" if i < 8 else "val" if i < 10 else "test"}
            for i in range(12)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = data.task_splits(str(path), [], {"train": 100, "val": 100, "test": 100, "calib": 3}, seed=0)
    assert [r["prompt"] for r in splits["val"]] == ["p8", "p9"]
    assert len(splits["calib"]) == 3


def test_missing_column_and_empty_split_are_clear_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "a", "answer": "b"}\n')
    with pytest.raises(ValueError, match=r"task.prompt_column='prompt': no such column .*question"):
        data.task_splits(str(path), [], {"train": 1, "val": 1, "test": 1, "calib": 1}, seed=0)
    with pytest.raises(ValueError, match="split is empty"):
        data.task_splits(str(path), [], {"train": 1, "val": 1, "test": 1, "calib": 1}, seed=0, prompt_column="question")


def test_encoding_scores_only_answer_tokens(tiny_dir):
    from autoqra.models import load_tokenizer

    tok = load_tokenizer(tiny_dir)
    ex = {"prompt": "What is 2 + 2?", "answer": "4"}
    ids, labels = data.encode(tok, ex, max_length=64)
    scored = [t for t in labels if t != -100]
    assert tok.decode(scored) == "4</s>" and len(ids) == len(labels)
    assert data.prompt_ids(tok, ex) == ids[: len(ids) - len(scored)]


def test_a_long_prompt_loses_its_start_never_the_answer(tiny_dir):
    from autoqra.models import load_tokenizer
    from autoqra.train.scoring import batches

    tok = load_tokenizer(tiny_dir)
    long = {"prompt": "Reverse this: " + "x" * 200, "answer": "done"}
    ids, labels = data.encode(tok, long, max_length=64)
    scored = [t for t in labels if t != -100]
    assert tok.decode(scored) == "done</s>" and len(ids) == len(labels) == 64  # every answer token kept
    assert ids[-len(scored):] == scored and tok.decode(ids[: 64 - len(scored)]).endswith("x<|assistant|>")
    short = {"prompt": "What is 2 + 2?", "answer": "4"}
    assert data.truncated(tok, [long, short, long], 64) == 2
    batch = batches(tok, [long, short], 64, 2)[0]
    assert int((batch["labels"] != -100).sum()) == len(scored) + 2  # scoring keeps every example's answer
    with pytest.raises(data.TooLong, match=r"task.max_length=8: example .* answer of 11 tokens"):
        data.encode(tok, {"prompt": "p", "answer": "ten chars!", "id": "val-00003"}, max_length=8)


def test_exact_match_decodes_as_long_as_the_longest_reference_answer(tiny_dir):
    """A model that answers perfectly scores 1.0 even when an answer is far longer than the 16 new
    tokens the evaluation used to allow (the generation budget follows the split's longest answer)."""
    import torch

    from autoqra import models
    from autoqra.train import scoring

    tok = models.load_tokenizer(tiny_dir)
    examples = [{"prompt": "spell it", "answer": "a long answer " * 8}, {"prompt": "short", "answer": "ok"}]
    assert len(tok(examples[0]["answer"], add_special_tokens=False)["input_ids"]) > 16

    class Oracle(torch.nn.Module):
        """Generates the reference answer of the prompt it is given, then the end token."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
            rows = []
            for ids, mask in zip(input_ids, attention_mask):
                prompt = tok.decode(ids[mask.bool()], skip_special_tokens=True)
                ex = next(e for e in examples if e["prompt"] in prompt)
                new = tok(ex["answer"].strip(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                rows.append(ids.tolist() + (new + [tok.pad_token_id] * max_new_tokens)[:max_new_tokens])
            return torch.tensor(rows)

    out = scoring.exact_match(Oracle(), tok, examples, max_length=512, batch_size=2)
    assert out["max_new_tokens"] > 16 and out["exact_match"] == 1.0

"""Scores of a model on a task split: answer loss, whole-sequence loss (perplexity), exact match."""

from __future__ import annotations

import math
from typing import Any

import torch

from autoqra.data import collate, encode, prompt_ids


def batches(tokenizer: Any, examples: list[dict[str, Any]], max_length: int, batch_size: int,
            whole_sequence: bool = False) -> list[dict[str, torch.Tensor]]:
    """Padded batches of examples of similar length (sorted, so little padding is computed); labels
    cover the answer only, or every token with `whole_sequence`. For token-weighted means only."""
    encoded = sorted((encode(tokenizer, ex, max_length) for ex in examples), key=lambda e: len(e[0]))
    if whole_sequence:
        encoded = [(ids, ids) for ids, _ in encoded]
    return [collate(encoded[i:i + batch_size], tokenizer.pad_token_id) for i in range(0, len(encoded), batch_size)]


def labelled_nll(model: Any, batch: dict[str, torch.Tensor], per_row: bool = False) -> tuple[torch.Tensor, Any]:
    """Summed next-token negative log-likelihood over the labelled tokens (a tensor, differentiable),
    and their count; with `per_row`, one sum and one count per sequence (B,). The output head runs on
    labelled positions only: answers are a few tokens of each sequence, and a 49k-word head over
    every position is a fifth of a small model's work."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(lm.parameters()).device
    hidden = lm.get_decoder()(input_ids=batch["input_ids"].to(device),
                              attention_mask=batch["attention_mask"].to(device)).last_hidden_state  # (B, T, H)
    labels = batch["labels"][:, 1:].to(device)
    keep = labels != -100
    logits = lm.get_output_embeddings()(hidden[:, :-1][keep]).float()  # (N, V): labelled positions only
    nll = torch.nn.functional.cross_entropy(logits, labels[keep], reduction="none")  # (N,)
    if per_row:
        rows = torch.arange(labels.shape[0], device=device)[:, None].expand_as(labels)[keep]
        sums = torch.zeros(labels.shape[0], device=device, dtype=nll.dtype).index_add(0, rows, nll)
        return sums, keep.sum(dim=1)
    return nll.sum(), int(keep.sum())


def token_nll(model: Any, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
    """Summed next-token negative log-likelihood over labelled tokens, and their count."""
    nll, n = labelled_nll(model, batch)
    return nll.item(), n


@torch.no_grad()
def per_example_nll(model: Any, tokenizer: Any, examples: list[dict[str, Any]], max_length: int,
                    batch_size: int) -> list[tuple[float, int]]:
    """(summed answer NLL, answer tokens) of every example, in the order given; computed in batches of
    similar length. Their token-weighted mean is `mean_nll`'s score; any subset's can be derived."""
    was_training = model.training
    model.eval()
    encoded = [encode(tokenizer, ex, max_length) for ex in examples]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        sums, counts = labelled_nll(model, collate([encoded[i] for i in idx], tokenizer.pad_token_id), per_row=True)
        for i, a, n in zip(idx, sums.tolist(), counts.tolist()):
            out[i] = (a, int(n))
    model.train(was_training)
    return out


def pooled(per_example: list[tuple[float, int]]) -> float:
    """Token-weighted mean NLL of per-example (sum, count) pairs."""
    return sum(a for a, _ in per_example) / max(sum(n for _, n in per_example), 1)


@torch.no_grad()
def mean_nll(model: Any, data: list[dict[str, torch.Tensor]]) -> float:
    """Token-weighted mean negative log-likelihood over all batches."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in data:
        nll, n = token_nll(model, batch)
        total, count = total + nll, count + n
    model.train(was_training)
    return total / max(count, 1)


def loss_report(model: Any, tokenizer: Any, examples: list[dict[str, Any]], max_length: int,
                batch_size: int) -> dict[str, float]:
    """Answer loss and whole-sequence loss/perplexity of `model` on `examples`."""
    answer = mean_nll(model, batches(tokenizer, examples, max_length, batch_size))
    whole = mean_nll(model, batches(tokenizer, examples, max_length, batch_size, whole_sequence=True))
    return {"answer_loss": answer, "sequence_loss": whole, "perplexity": math.exp(min(whole, 50.0))}


def answer_tokens(tokenizer: Any, examples: list[dict[str, Any]]) -> int:
    """Tokens of the longest reference answer, plus its end token: what greedy decoding must allow."""
    return max(len(tokenizer(ex["answer"], add_special_tokens=False)["input_ids"]) for ex in examples) + 1


@torch.no_grad()
def exact_match(model: Any, tokenizer: Any, examples: list[dict[str, Any]], max_length: int,
                batch_size: int) -> dict[str, float]:
    """Fraction of examples whose greedy answer equals the reference after stripping whitespace, with
    its binomial standard error. Decoding runs for as many tokens as the longest reference answer
    needs, so no answer is cut short; prompts are cut from the left to fit `max_length` as in training."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    new_tokens = answer_tokens(tokenizer, examples)
    order = sorted(range(len(examples)), key=lambda i: len(prompt_ids(tokenizer, examples[i])))
    hits = 0
    pad = tokenizer.pad_token_id
    for i in range(0, len(order), batch_size):
        chunk = [examples[j] for j in order[i:i + batch_size]]
        prompts = [prompt_ids(tokenizer, ex)[-max(max_length - new_tokens, 1):] for ex in chunk]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        for ex, row in zip(chunk, out[:, width:]):
            hits += tokenizer.decode(row, skip_special_tokens=True).strip() == ex["answer"].strip()
    model.train(was_training)
    n = max(len(examples), 1)
    p = hits / n
    return {"exact_match": p, "exact_match_se": math.sqrt(p * (1 - p) / n), "n": len(examples),
            "max_new_tokens": new_tokens}

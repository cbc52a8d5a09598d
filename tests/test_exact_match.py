"""Exact match through lm-evaluation-harness: the head's contiguous-input hook changes no result."""

from __future__ import annotations

import torch

from autoqra import data, models
from autoqra.train import evaluation


def test_contiguous_head_input_gives_the_same_greedy_tokens_and_the_hook_is_removed(tiny_dir, task_dir, tmp_path):
    model = models.load_model(tiny_dir).eval()
    tok = models.load_tokenizer(tiny_dir)
    test = data.read_split(task_dir, "test")[:12]
    ids = [data.prompt_ids(tok, ex) for ex in test]
    width = max(map(len, ids))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    x = torch.full((len(ids), width), pad)
    mask = torch.zeros_like(x)
    for i, s in enumerate(ids):  # left padding, as the harness pads for generation
        x[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    head = model.get_output_embeddings()

    def greedy():
        with torch.inference_mode():
            return model.generate(input_ids=x, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                  pad_token_id=pad)

    seen = []
    probe = head.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous()))
    plain = greedy()
    assert False in seen  # the strided last-position view the hook exists for really reaches the head
    hook = head.register_forward_pre_hook(evaluation._contiguous_input, prepend=True)
    seen.clear()
    hooked = greedy()
    hook.remove()
    probe.remove()
    assert all(seen) and torch.equal(plain, hooked)
    scores = evaluation.lm_eval(model, tok, test, tmp_path / "lm_eval", 96, 4)
    assert 0 <= scores["exact_match"] <= 1 and scores["exact_match_n"] == len(test)
    assert not head._forward_pre_hooks  # nothing left on the model after the harness ran

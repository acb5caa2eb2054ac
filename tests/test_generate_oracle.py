"""An oracle independent of our engine: greedy `single` decoding equals transformers'
`model.generate()` token for token, alone and in a padded batch."""

from __future__ import annotations

import pytest
import torch

from latentmas import Sampling, SingleAgent
from latentmas.tiny import tiny_loaded

from .conftest import QUESTIONS

NEW_TOKENS = 24


def _ours_and_generates(lm, questions: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    method = SingleAgent(lm, Sampling(max_new_tokens=NEW_TOKENS))
    prompts, tokens = [], [[] for _ in questions]
    real_prefill = method.engine.prefill

    def recording_prefill(memory, batch_prompts, *args, **kwargs):
        prompts.extend(batch_prompts)
        return real_prefill(memory, batch_prompts, *args, **kwargs)

    method.engine.prefill = recording_prefill
    method.solve(
        questions, "Put the final answer in \\boxed{}.", on_token=lambda row, t: tokens[row].append(t)
    )
    stops = sorted(method.engine.stop_ids)
    theirs = []
    for prompt in prompts:
        out = lm.model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            repetition_penalty=1.0,
            eos_token_id=stops,
            pad_token_id=lm.tokenizer.pad_token_id,
        )[0, len(prompt) :].tolist()
        theirs.append([t for t in out if t not in stops])
    ours = [[t for t in row if t not in stops] for row in tokens]
    return ours, theirs


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_greedy_single_equals_generate_on_tiny_models(arch):
    ours, theirs = _ours_and_generates(tiny_loaded(arch), QUESTIONS[:3])
    assert ours == theirs
    assert all(len(row) > 0 for row in ours)


def test_greedy_single_equals_generate_on_the_embedded_model(embedded):
    ours, theirs = _ours_and_generates(embedded, QUESTIONS[:3])
    assert ours == theirs
    assert all(len(row) > 0 for row in ours)

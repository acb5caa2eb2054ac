"""Experiment 13 of docs/quality.md (kept to be rerun, not in the package).

The final agent may not end its turn before it has written a closed \\boxed{...}: while a
row's text holds none, its stop tokens' logits are -inf (up to --max-new-tokens). Hypothesis:
after latent thoughts the final agent often ends its turn unanswered (32% of latent_mas's
answers on the reported split), while its boxed answers are right as often as single's;
forcing an answer would recover part of the gap. Applied to every method the script runs,
so run it only on methods whose one decode is the final answer (single, latent_mas; not
text_mas, whose planner must be free to stop). Tuning split first:

    python benchmarks/experiments/answer_before_end_of_turn.py --offset 1000 --limit 24 \
        --configs "single,latent_mas" --out benchmarks/results/experiment-answer-before-end
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import quality  # noqa: E402

from latentmas import load_model  # noqa: E402
from latentmas.engines import transformers as hf  # noqa: E402
from latentmas.evaluation.graders import last_boxed  # noqa: E402

lm = load_model("qwen2.5-coder-0.5b")
texts: list[str] = []  # per current row of the decode in progress, in the batch's order
stop_ids: list[int] = []  # that decode's stop tokens

original_decode, original_next_tokens = hf.decode, hf.next_tokens


def decode(model, memory, sampling, stops, on_token=None, row_seeds=None, on_state=None):
    texts[:], stop_ids[:] = [""] * memory.batch_size, sorted(stops)
    return original_decode(model, memory, sampling, stops, on_token, row_seeds, on_state)


def next_tokens(logits, sampling, generators):
    """Mask the stop tokens of unanswered rows, then mirror decode's bookkeeping: a row that
    emits a stop token leaves the batch (no streaming client ends rows in an eval)."""
    unanswered = torch.tensor([last_boxed(text) is None for text in texts], device=logits.device)
    logits[:, stop_ids] = logits[:, stop_ids].masked_fill(unanswered[:, None], float("-inf"))
    tokens = original_next_tokens(logits, sampling, generators)
    kept = []
    for text, token in zip(texts, tokens.tolist()):
        if token not in stop_ids:
            kept.append(text + lm.tokenizer.decode([token]))
    texts[:] = kept
    return tokens


hf.decode, hf.next_tokens = decode, next_tokens
quality.load_model = lambda name: lm
sys.exit(quality.main(sys.argv[1:]))

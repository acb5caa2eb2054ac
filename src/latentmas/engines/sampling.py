"""How a token is chosen: greedy, or temperature and nucleus sampling; one sampler for every engine.

Each row draws from its own generator, seeded from the run's seed and what identifies the
row (its question, the agent's role), never from its place in a batch, so a sampled answer
does not depend on the batch it ran in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

MAX_NEW_TOKENS = 32768  # the longest decoding budget a run may ask for


@dataclass(frozen=True)
class Sampling:
    """How text is drawn. temperature 0 means greedy (the default)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


def is_greedy(sampling: Sampling) -> bool:
    return sampling.temperature < 1e-4  # 0 means greedy; tinier ones would overflow the softmax


def row_seed(seed: int, *parts: str) -> int:
    """A stable 63-bit seed for one row's sampling stream, from the run's seed and what
    identifies the row (its question, the agent's role) — never from its place in a batch."""
    digest = hashlib.sha256("\x00".join([str(seed), *parts]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generators(sampling: Sampling, seeds: list[int]) -> list[torch.Generator] | None:
    """One generator per row (None when greedy: nothing is drawn)."""
    if is_greedy(sampling):
        return None
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def next_tokens(
    logits: torch.Tensor, sampling: Sampling, row_generators: list[torch.Generator] | None
) -> torch.Tensor:
    """[batch, vocab] -> [batch] token ids: argmax, or temperature + nucleus sampling.

    Each row draws from its own generator, exactly once per step, so a row's tokens do not
    depend on which other rows share its batch or when they finish.
    """
    if is_greedy(sampling) or row_generators is None:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > sampling.top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    probs = probs.cpu()
    drawn = [torch.multinomial(probs[row], 1, generator=g) for row, g in enumerate(row_generators)]
    return torch.cat(drawn).to(logits.device)

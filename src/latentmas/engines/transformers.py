"""`TransformersEngine`: the `Engine` protocol over any transformers causal LM, batched, with
one shared KV cache per batch (`cache.SharedMemory`) that every agent appends to.

The loop is gpt-fast's, over a cache all agents share:

    prefill(prompt) -> append(thought) x m -> prefill(next prompt) -> ... -> decode()
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import PreTrainedModel

from ..models import LoadedModel, stop_token_ids
from .cache import SharedMemory
from .forward import PrefixStore, append, lm_logits, prefill
from .protocol import ALL, Decoding, ModelEngine, Reading, StateCallback, TokenCallback, require
from .realign import Realigner, realigner_for
from .relay import hand_over
from .sampling import Sampling, generators, next_tokens
from .views import MemoryView


def decode(
    model: PreTrainedModel,
    memory: SharedMemory,
    sampling: Sampling,
    stop_ids: set[int],
    on_token: TokenCallback | None = None,
    row_seeds: list[int] | None = None,
    on_state: StateCallback | None = None,
) -> list[list[int]]:
    """Generate text for every row from its newest hidden state (`memory.hidden`).

    A row leaves the batch (and its cache rows are dropped) as soon as it emits a stop
    token, so short answers stop costing compute. -> new token ids per row, stop token
    excluded. `on_token(row, token)` streams tokens as they are chosen; returning False
    ends that row (a streaming client went away). When sampling, row i draws from a
    generator seeded with `row_seeds[i]` (default: `sampling.seed` for every row).
    `on_state(rows, hidden)` sees, at each step, the state [len(rows), hidden] each row still
    decoding chooses its next token from (the text-anchored handoff keeps them).
    """
    seeds = row_seeds if row_seeds is not None else [sampling.seed] * memory.batch_size
    if len(seeds) != memory.batch_size:
        raise ValueError(f"{len(seeds)} row seeds for a batch of {memory.batch_size}")
    drawing = generators(sampling, seeds)
    hidden = memory.hidden
    outputs: list[list[int]] = [[] for _ in range(memory.batch_size)]
    active = list(range(memory.batch_size))  # original row of each current row
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=memory.device)
    ones = torch.ones(memory.batch_size, 1, dtype=torch.long, device=memory.device)
    for step in range(sampling.max_new_tokens):
        if on_state is not None:
            on_state(active, hidden)
        tokens = next_tokens(lm_logits(model, hidden), sampling, drawing)
        finished = torch.isin(tokens, stop)
        for index, (row, token) in enumerate(zip(active, tokens.tolist())):
            if token in stop_ids:
                continue
            outputs[row].append(token)
            if on_token is not None and on_token(row, token) is False:
                finished[index] = True
        if finished.any():
            keep = (~finished).nonzero().squeeze(-1)
            if keep.numel() == 0:
                break
            kept = keep.tolist()
            active = [active[i] for i in kept]
            if drawing is not None:
                drawing = [drawing[i] for i in kept]
            memory.keep_rows(keep)
            tokens = tokens.index_select(0, keep)
            ones = ones[: len(active)]
        if step == sampling.max_new_tokens - 1:
            break  # the last token needs no forward pass
        hidden = append(model, memory, ones, input_ids=tokens[:, None])
    return outputs


class TransformersEngine(ModelEngine):
    """The `Engine` protocol over a transformers model and its shared, batched KV cache."""

    name = "transformers"
    max_batch = None

    def __init__(self, lm: LoadedModel, share_prefixes: bool = True) -> None:
        self.lm, self.model = lm, lm.model
        self.pad_id = lm.tokenizer.pad_token_id
        self.stop_ids = stop_token_ids(lm.tokenizer, lm.model.generation_config.eos_token_id)
        self.prefixes = PrefixStore(self.model, self.pad_id) if share_prefixes else None
        self.realigners: dict[str, Realigner] = {}

    def new_memory(self, batch_size: int, view: MemoryView | None = None) -> SharedMemory:
        return SharedMemory.empty(self.model, batch_size, view=view)

    def prefill(self, memory: SharedMemory, prompts: list[list[int]], reading: Reading = ALL) -> None:
        memory.begin_agent(reading.reads)
        if self.prefixes is not None and memory.length == 0:
            prompts = self.prefixes.start(memory, prompts, reading.shared_prefix)
        hand_over(self.model, memory, prompts, self.pad_id, self.lm.attention)
        prefill(self.model, memory, prompts, self.pad_id)

    def last_hidden(self, memory: SharedMemory) -> torch.Tensor:
        return memory.hidden

    def append_thoughts(
        self, memory: SharedMemory, vectors: torch.Tensor, active: torch.Tensor
    ) -> torch.Tensor:
        mask = active.long()[:, None]
        return append(self.model, memory, mask, inputs_embeds=vectors[:, None, :], latent=True)

    def append_vectors(self, memory: SharedMemory, vectors: list[torch.Tensor]) -> None:
        """See `Engine.append_vectors`; rows are left-padded to the longest."""
        width = max(v.shape[0] for v in vectors)
        if width == 0:
            return
        hidden = self.model.config.get_text_config().hidden_size
        embeds = torch.zeros(len(vectors), width, hidden, dtype=self.model.dtype, device=memory.device)
        mask = torch.zeros(len(vectors), width, dtype=torch.long, device=memory.device)
        for row, block in enumerate(vectors):
            if block.shape[0]:
                embeds[row, width - block.shape[0] :] = block.to(embeds)
                mask[row, width - block.shape[0] :] = 1
        append(self.model, memory, mask, inputs_embeds=embeds, latent=True)

    def decode(self, memory: SharedMemory, decoding: Decoding) -> list[list[int]]:
        d = decoding
        return decode(self.model, memory, d.sampling, self.stop_ids, d.on_token, d.row_seeds, d.on_state)

    def keep_latent_only(self, memory: SharedMemory) -> None:
        require(self.name, "latent_only")
        memory.join_branch()
        memory.keep_columns(memory.is_latent.nonzero().squeeze(-1))

    def realigner(self, mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
        if mode not in self.realigners:
            self.realigners[mode] = realigner_for(self.model, mode)
        return self.realigners[mode]

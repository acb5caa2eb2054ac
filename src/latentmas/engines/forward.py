"""One forward pass into the shared cache, and what it is built from: left padding, position
ids over real positions only, 4-D masks for sliding windows and memory views, the decoder
body under the LM head, and the prompt prefix every row shares (`PrefixStore`).

    prefill(prompts) -> append(thought) x m -> prefill(next prompts) -> ... -> decode
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from functools import cache
from typing import Any

import torch
from transformers import PreTrainedModel

from ..errors import LatentMASError
from .cache import SharedMemory
from .views import ENTRY_KEYWORD, VIEW_KEYWORD, Entry, install_view_hooks


def left_pad(
    sequences: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids [batch, width], mask [batch, width]; padding on the left."""
    width = max(len(s) for s in sequences)
    if width == 0:
        raise LatentMASError("empty prompt")
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def append(
    model: PreTrainedModel,
    memory: SharedMemory,
    segment_mask: torch.Tensor,
    *,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    latent: bool = False,
) -> torch.Tensor:
    """Run one segment [batch, width] through the model into the cache.

    Asks the decoder body for its last layer only (no LM head, no per-layer states) and
    returns the last column's hidden state [batch, hidden] on the memory's device (the last
    layer may sit on another GPU). `memory.hidden` keeps each row's newest real state (a row
    whose newest column is padding keeps the one it had).
    """
    # Position ids count a row's real positions only, so padding never shifts RoPE.
    if segment_mask.shape[1] == 1:  # a latent or decode step: no cumsum needed
        positions = memory.next_position[:, None]
    else:
        positions = (memory.next_position[:, None] + segment_mask.cumsum(dim=1) - 1).clamp_min(0)
    memory.extend(segment_mask, positions.expand_as(segment_mask), latent)
    body = decoder(model)
    extra: dict[str, Any] = {cache_keyword(type(body)): memory.cache}
    if memory.window is None and memory.view is None and memory.reads is None:
        mask = memory.attention_mask
    else:
        mask = additive_masks(memory, segment_mask.shape[1], model.dtype)
    if memory.view is not None:
        install_view_hooks(model, body)
        layers = model.config.get_text_config().num_hidden_layers
        extra[VIEW_KEYWORD] = memory.view.layer_biases(
            memory.is_latent, memory.owner, memory.agent, layers, model.dtype, memory.relayed
        )
        if memory.view.thoughts_enter:  # the thought goes in at the entry layer, nothing below it
            thought = inputs_embeds[:, -1] if latent else None
            if latent:
                inputs_embeds = torch.zeros_like(inputs_embeds)
            real = segment_mask[:, -1].bool()
            extra[ENTRY_KEYWORD] = Entry(memory.view.first_layer(layers), thought, memory.entry_norm, real)
    out = body(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        **extra,
    )
    hidden = out.last_hidden_state[:, -1].to(memory.device)
    real = segment_mask[:, -1, None].bool()
    memory.hidden = hidden if memory.hidden is None else torch.where(real, hidden, memory.hidden)
    return hidden


def additive_masks(
    memory: SharedMemory, width: int, dtype: torch.dtype
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Additive 4-D masks [batch, 1, width, length] for the newest `width` columns.

    A key is visible when it is real, written no later than the query (by column, as the 2-D
    mask has it: an agent reading a writer whose positions run past its own still sees all
    of it), and (sliding layers) fewer than `window` real positions back, so padding never
    takes room in a row's window and a row sees what it would see alone. Padding queries
    see themselves (never an empty row, which would turn into NaN). Models with both kinds
    of layer take a dict by layer kind. Used for sliding windows, memory views and agents
    that read only some writers (their other columns are hidden as padding is); otherwise
    the model gets the 2-D mask.
    """
    window, sliding = memory.window, list(memory.sliding)
    real = memory.attention_mask.bool()  # [batch, length]
    if (visible := memory.visible()) is not None:
        real = real & visible[None]
    keys = memory.positions  # [batch, length]
    queries = keys[:, -width:]  # [batch, width]
    length = keys.shape[1]
    columns = torch.arange(length, device=keys.device)
    visible = real[:, None, :] & (columns[None, :] <= columns[-width:, None])[None]  # [batch, width, length]
    itself = torch.zeros(width, length, dtype=torch.bool, device=keys.device)
    itself[torch.arange(width), columns[-width:]] = True
    low = torch.finfo(dtype).min

    def additive(allowed: torch.Tensor) -> torch.Tensor:
        return torch.zeros(allowed.shape, dtype=dtype, device=keys.device).masked_fill(~allowed, low)[:, None]

    if window is None:
        return additive(visible | itself)
    in_window = visible & (queries[:, :, None] - keys[:, None, :] < window) | itself
    visible = visible | itself
    if all(sliding):
        return additive(in_window)
    return {"full_attention": additive(visible), "sliding_attention": additive(in_window)}


def decoder(model: PreTrainedModel) -> torch.nn.Module:
    """The decoder body under the LM head: it returns the last hidden state, not logits.

    `base_model` finds it through `base_model_prefix`, which some releases set to a name
    the class does not use (Gemma 3's causal LM in transformers 4.56 says
    "language_model" but holds `model`); then look for the usual attribute names.
    """
    body = model.base_model
    if body is not model:
        return body
    for name in ("model", "language_model", "transformer"):
        inner = getattr(model, name, None)
        if isinstance(inner, torch.nn.Module):
            return inner
    raise LatentMASError(f"cannot find the decoder inside {type(model).__name__}")


@cache
def cache_keyword(decoder: type) -> str:
    """The name under which this transformers release's decoder takes the KV cache.

    Recent releases renamed `past_key_values` to `cache`, and both accept unknown keywords
    into `**kwargs`, so passing the wrong one is silently ignored (the model then attends
    only to the new tokens). Read the decoder's own signature instead of guessing.
    """
    parameters = inspect.signature(decoder.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    raise LatentMASError(f"{decoder.__name__}.forward takes no KV cache; this model cannot share memory")


def prefill(
    model: PreTrainedModel, memory: SharedMemory, prompts: list[list[int]], pad_id: int
) -> torch.Tensor:
    """Append one prompt per row; -> last hidden state [batch, hidden]."""
    ids, mask = left_pad(prompts, pad_id, memory.attention_mask.device)
    return append(model, memory, mask, input_ids=ids)


class PrefixStore:
    """Prefill the tokens every prompt of a method begins with once, and copy their KV.

    Every row of every batch starts with the same system prompt and first instruction (about
    an eighth of LatentMAS's prefill with our prompts). Their keys and values do not depend
    on what follows, so they are computed once per prefix, at batch 1, and copied into each
    new memory. A row uses the copy only if its own prompt begins with the prefix (else the
    prefix columns are padding for it and it reads its whole prompt), so a row's layout
    never depends on the other rows of its batch.
    """

    MIN_TOKENS = 4  # shorter prefixes are not worth a copy
    MAX_KEPT = 32  # distinct prefixes kept (roles x answer formats); the oldest goes first

    def __init__(self, model: PreTrainedModel, pad_id: int) -> None:
        self.model, self.pad_id = model, pad_id
        self.kept: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    @classmethod
    def rows_using(cls, prompts: list[list[int]], prefix: tuple[int, ...]) -> list[bool] | None:
        """Which rows' prompts begin with `prefix` and continue; None when none does or the
        prefix is too short to be worth a copy (any engine that shares prefixes asks this)."""
        width = len(prefix)
        uses = [len(p) > width and tuple(p[:width]) == prefix for p in prompts]
        return uses if width >= cls.MIN_TOKENS and any(uses) else None

    def kv(self, prefix: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's (keys, values) for `prefix` alone, [1, heads, len, dim]."""
        if prefix not in self.kept:
            if len(self.kept) >= self.MAX_KEPT:
                self.kept.pop(next(iter(self.kept)))
            memory = SharedMemory.empty(self.model, 1)
            prefill(self.model, memory, [list(prefix)], self.pad_id)
            self.kept[prefix] = [(layer.keys.clone(), layer.values.clone()) for layer in memory.cache.layers]
        return self.kept[prefix]

    def start(self, memory: SharedMemory, prompts: list[list[int]], prefix: Sequence[int]) -> list[list[int]]:
        """Put `prefix`'s KV into the empty `memory`; -> what each row still has to read."""
        prefix = tuple(prefix)
        width = len(prefix)
        uses = self.rows_using(prompts, prefix)
        if uses is None:
            return prompts
        batch = memory.batch_size
        for layer, (keys, values) in zip(memory.cache.layers, self.kv(prefix)):
            layer.update(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1))
        device = memory.next_position.device
        rows = torch.tensor(uses, dtype=torch.long, device=device)[:, None].expand(batch, width)
        memory.extend(rows, torch.arange(width, device=device).expand(batch, width), latent=False)
        return [p[width:] if used else p for p, used in zip(prompts, uses)]


def lm_logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """[batch, hidden] -> [batch, vocab] float32 through the LM head, with Gemma-style
    soft-capping, on `hidden`'s device.

    `hidden` may come in another dtype or device than the head's (a tracer's float32
    copy; a head on another GPU): it is cast to the head's, the logits come back.
    """
    head = model.get_output_embeddings()
    logits = head(hidden.to(device=head.weight.device, dtype=head.weight.dtype)).float()
    cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.to(hidden.device)

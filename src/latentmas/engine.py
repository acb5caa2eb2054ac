"""One model, one shared KV cache, three moves: prefill, latent steps, decode.

Every agent of a batch appends to the same cache (`SharedMemory`). Rows are padded per
segment on the left, so the newest column is always a real token or thought for every
row; the attention mask has zeros wherever a row has padding (at any depth) and position
ids count only a row's real positions. That is what keeps a question's result independent
of the batch it runs in, the property the reference implementation lacks.

    prefill(prompt) -> latent_step x m -> prefill(next prompt) -> ... -> decode()
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from .errors import LatentMASError
from .models import LoadedModel
from .realign import Realigner, realigner_for
from .relay import attention_mass_probe, chosen_layers, kept_columns, key_similarity
from .roles import stop_token_ids
from .views import ENTRY_KEYWORD, VIEW_KEYWORD, Entry, MemoryView, install_view_hooks


@dataclass
class Sampling:
    """How the final text is drawn. temperature 0 means greedy (the default)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


class GrowingLayer(DynamicLayer):
    """A DynamicLayer that appends into spare capacity instead of re-copying the cache.

    `DynamicLayer.update` concatenates, copying the whole cache at every latent or decode
    step; here the keys and values live in a buffer with room to grow (doubling), and
    `keys`/`values` are views of its filled part. Code that replaces `keys` (row or column
    selection) is noticed by pointer and the new tensors are adopted.
    """

    def holds_buffer(self) -> bool:
        """Are `keys` still a view of our buffer? (Code that replaced them, such as a column
        selection, leaves new tensors, which the next `update` adopts.)"""
        buffers = getattr(self, "_buffers", None)
        return (
            buffers is not None
            and self.keys is not None
            and self.keys.dim() == 4
            and self.keys.data_ptr() == buffers[0].data_ptr()
            and self.keys.shape[0] == buffers[0].shape[0]
        )

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        keys = self.keys
        length = keys.shape[-2] if keys is not None and keys.dim() == 4 else 0
        if keys is None:
            # What DynamicLayer's lazy initialization sets; its signature differs across releases.
            self.dtype, self.device, self.is_initialized = key_states.dtype, key_states.device, True
        needed = length + key_states.shape[-2]
        buffers = getattr(self, "_buffers", None)
        if length == 0 or not self.holds_buffer() or needed > buffers[0].shape[-2]:
            capacity = max(64, 2 * needed)
            grown = []
            for old, new in ((self.keys, key_states), (self.values, value_states)):
                shape = (*new.shape[:-2], capacity, new.shape[-1])
                buffer = torch.empty(shape, dtype=new.dtype, device=new.device)
                if length:
                    buffer[..., :length, :] = old
                grown.append(buffer)
            buffers = self._buffers = tuple(grown)
        buffers[0][..., length:needed, :] = key_states
        buffers[1][..., length:needed, :] = value_states
        self.keys, self.values = buffers[0][..., :needed, :], buffers[1][..., :needed, :]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows `indices` by moving them down inside the buffer.

        The stock version copies the kept rows into new tensors, which the next `update`
        copies again into a new buffer: at every row that finishes decoding, two copies of
        the cache (benchmarks/experiments/row_compaction.py: a drop took 3.6-21 ms on Qwen
        at batch 8, 0.3-0.6 ms in place). Kept rows in ascending order only ever move to a
        lower row, so they can be moved in place, and only their filled columns are copied.
        """
        kept = indices.tolist()
        if not self.holds_buffer() or any(a >= b for a, b in zip(kept, kept[1:])):
            super().batch_select_indices(indices.to(self.keys.device))  # this layer's GPU
            return
        buffers = self._buffers
        length = self.keys.shape[-2]
        for buffer in buffers:
            for row, source in enumerate(kept):
                if row != source:
                    buffer[row, ..., :length, :] = buffer[source, ..., :length, :]
        buffers = self._buffers = tuple(buffer[: len(kept)] for buffer in buffers)
        self.keys, self.values = buffers[0][..., :length, :], buffers[1][..., :length, :]


def sliding_window(model: PreTrainedModel) -> tuple[int | None, list[bool]]:
    """-> (window, which layers slide). (None, all False) for models without sliding layers.

    Mixed models (Gemma 2/3) name each layer's kind in `layer_types`; models without that
    field (Mistral) slide in every layer when `sliding_window` is set.
    """
    config = model.config.get_text_config()
    layers = config.num_hidden_layers
    window = getattr(config, "sliding_window", None)
    kinds = getattr(config, "layer_types", None)
    if kinds:
        sliding = [kind == "sliding_attention" for kind in kinds[:layers]]
    else:
        sliding = [bool(window) and getattr(config, "use_sliding_window", True)] * layers
    if not window or not any(sliding):
        return None, [False] * layers
    return int(window), sliding


def new_cache(model: PreTrainedModel) -> DynamicCache:
    """A DynamicCache whose layers grow in place and keep every column.

    Sliding-window layers keep every column too: their window is applied by our own mask
    over real positions (see `additive_masks`), since the stock sliding layer counts padding
    columns as part of the window and evicts columns our bookkeeping still indexes.
    """
    cache = DynamicCache(config=model.config)
    cache.layers = [GrowingLayer() for _ in cache.layers]
    return cache


@dataclass
class SharedMemory:
    """The batch's working memory: one KV cache that every agent appends to.

    attention_mask: [batch, length], 1 for a real position, 0 for padding.
    positions:      [batch, length], each column's position id (meaningless on padding).
    next_position:  [batch], the position id of each row's next real position.
    is_latent:      [length], True where the column holds a latent thought.
    owner:          [length], the index of the agent that wrote the column.
    The mask, positions and column flags live in buffers with spare room, so a step writes
    one column instead of reallocating them. `view` (None: see everything) decides what
    each layer sees of the thoughts (see `views`).

    All of this bookkeeping, and every hidden state the engine hands out, lives on one
    device, the input embeddings' (`device`), however the model's layers are spread over
    GPUs; only each cache layer stays on its own layer's device.
    """

    cache: DynamicCache
    next_position: torch.Tensor
    _mask: torch.Tensor  # [batch, capacity]
    _positions: torch.Tensor  # [batch, capacity]
    _latent: torch.Tensor  # [capacity]
    _owner: torch.Tensor  # [capacity]
    _length: int = 0
    agent: int = -1  # the agent now writing (`begin_agent` counts them)
    view: MemoryView | None = None
    entry_norm: torch.Tensor | None = None  # [batch] stream norm where thoughts re-enter (views)
    relayed: torch.Tensor | None = None  # [layers, batch] where the reader sees earlier agents (None: all)
    window: int | None = None  # the model's sliding window, read once (None: no sliding layers)
    sliding: tuple[bool, ...] = ()  # which layers slide

    @classmethod
    def empty(
        cls, model: PreTrainedModel, batch_size: int, capacity: int = 256, view: MemoryView | None = None
    ) -> SharedMemory:
        device = model.get_input_embeddings().weight.device  # as `LoadedModel.device`
        window, sliding = sliding_window(model)
        return cls(
            view=None if view is None or view.identity else view,
            window=window,
            sliding=tuple(sliding),
            cache=new_cache(model),
            next_position=torch.zeros(batch_size, dtype=torch.long, device=device),
            _mask=torch.zeros(batch_size, capacity, dtype=torch.long, device=device),
            _positions=torch.zeros(batch_size, capacity, dtype=torch.long, device=device),
            _latent=torch.zeros(capacity, dtype=torch.bool, device=device),
            _owner=torch.zeros(capacity, dtype=torch.long, device=device),
            entry_norm=torch.zeros(batch_size, dtype=torch.float32, device=device)
            if view is not None and view.thoughts_enter
            else None,
        )

    @property
    def device(self) -> torch.device:
        return self.next_position.device

    @property
    def positions(self) -> torch.Tensor:
        return self._positions[:, : self._length]

    @property
    def attention_mask(self) -> torch.Tensor:
        return self._mask[:, : self._length]

    @property
    def is_latent(self) -> torch.Tensor:
        return self._latent[: self._length]

    @property
    def owner(self) -> torch.Tensor:
        return self._owner[: self._length]

    def begin_agent(self) -> None:
        """The next columns are a new agent's (who, until a relay chooses, sees all layers)."""
        self.agent += 1
        self.relayed = None

    @property
    def batch_size(self) -> int:
        return self._mask.shape[0]

    @property
    def length(self) -> int:
        """Columns in the cache, padding included."""
        return self._length

    def real_lengths(self) -> torch.Tensor:
        """[batch] positions each row really holds (no padding)."""
        return self.attention_mask.sum(dim=1)

    def extend(self, segment_mask: torch.Tensor, positions: torch.Tensor, latent: bool) -> None:
        """Record a new segment's columns [batch, width] (the cache itself grows in the model)."""
        needed = self._length + segment_mask.shape[1]
        if needed > self._mask.shape[1]:
            capacity = max(64, 2 * needed)
            mask = self._mask.new_zeros(self.batch_size, capacity)
            mask[:, : self._length] = self.attention_mask
            where = self._positions.new_zeros(self.batch_size, capacity)
            where[:, : self._length] = self.positions
            flags = self._latent.new_zeros(capacity)
            flags[: self._length] = self.is_latent
            owners = self._owner.new_zeros(capacity)
            owners[: self._length] = self.owner
            self._mask, self._positions, self._latent, self._owner = mask, where, flags, owners
        self._mask[:, self._length : needed] = segment_mask
        self._positions[:, self._length : needed] = positions
        self._latent[self._length : needed] = latent
        self._owner[self._length : needed] = max(self.agent, 0)
        self._length = needed
        self.next_position = self.next_position + segment_mask.sum(dim=1)

    def keep_columns(self, columns: torch.Tensor) -> None:
        """Forget every column but `columns` (used by the `latent_only` memory mode)."""
        for layer in self.cache.layers:
            if layer.keys is None or layer.keys.numel() == 0:
                continue
            where = columns.to(layer.keys.device)  # each layer on its own GPU
            layer.keys = layer.keys.index_select(-2, where)
            layer.values = layer.values.index_select(-2, where)
        self._mask = self.attention_mask.index_select(1, columns)
        self._positions = self.positions.index_select(1, columns)
        self._latent = self.is_latent.index_select(0, columns)
        self._owner = self.owner.index_select(0, columns)
        self._length = len(columns)

    def forget_after(self, length: int, next_position: torch.Tensor) -> None:
        """Take back every column from `length` on (a probe's), as if never appended."""
        for layer in self.cache.layers:
            if layer.keys is not None and layer.keys.dim() == 4:
                layer.keys, layer.values = layer.keys[..., :length, :], layer.values[..., :length, :]
        self._length, self.next_position = length, next_position

    def forget_columns(self, keep: torch.Tensor) -> None:
        """Each row forgets the columns `keep` [batch, length] marks False: they become padding,
        which no later query sees in any layer (the relay filter)."""
        self._mask[:, : self._length] *= keep.to(self._mask)

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drop finished rows so they stop costing compute."""
        self.cache.batch_select_indices(rows)
        self._mask = self._mask.index_select(0, rows)
        self._positions = self._positions.index_select(0, rows)
        self.next_position = self.next_position.index_select(0, rows)
        if self.entry_norm is not None:
            self.entry_norm = self.entry_norm.index_select(0, rows)
        if self.relayed is not None:
            self.relayed = self.relayed.index_select(1, rows)


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
    layer may sit on another GPU).
    """
    # Position ids count a row's real positions only, so padding never shifts RoPE.
    if segment_mask.shape[1] == 1:  # a latent or decode step: no cumsum needed
        positions = memory.next_position[:, None]
    else:
        positions = (memory.next_position[:, None] + segment_mask.cumsum(dim=1) - 1).clamp_min(0)
    memory.extend(segment_mask, positions.expand_as(segment_mask), latent)
    body = decoder(model)
    extra: dict[str, Any] = {cache_keyword(type(body)): memory.cache}
    if memory.window is None and memory.view is None:
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
    return out.last_hidden_state[:, -1].to(memory.device)


def additive_masks(
    memory: SharedMemory, width: int, dtype: torch.dtype
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Additive 4-D masks [batch, 1, width, length] for the newest `width` columns, by real position.

    A key is visible when it is real, not later than the query, and (sliding layers) fewer
    than `window` real positions back, so padding never takes room in a row's window and a
    row sees what it would see alone. Padding queries see themselves (never an empty row,
    which would turn into NaN). Models with both kinds of layer take a dict by layer kind.
    Used for sliding windows and memory views; other models get the 2-D mask.
    """
    window, sliding = memory.window, list(memory.sliding)
    real = memory.attention_mask.bool()  # [batch, length]
    keys = memory.positions  # [batch, length]
    queries = keys[:, -width:]  # [batch, width]
    length = keys.shape[1]
    visible = real[:, None, :] & (keys[:, None, :] <= queries[:, :, None])  # [batch, width, length]
    itself = torch.zeros(width, length, dtype=torch.bool, device=keys.device)
    itself[torch.arange(width), torch.arange(length - width, length)] = True
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


def hand_over(model: PreTrainedModel, memory: SharedMemory, prompts: list[list[int]], pad_id: int) -> None:
    """Before an agent reads `prompts`, choose what it is handed of the earlier agents' columns
    (the view's relay filter and layer-selective relay; see `relay`). Per row, so a row's
    choice does not depend on its batch."""
    view = memory.view
    if view is None or view.relay_keep == view.relay_layers == 1.0 or memory.agent == 0 or not memory.length:
        return  # no relay, or nothing earlier to hand over
    ids, mask = left_pad(prompts, pad_id, memory.device)
    real = memory.attention_mask.bool()
    earlier = real & (memory.owner < memory.agent)[None]
    if view.relay_keep < 1.0:
        embeds = model.get_input_embeddings()(ids).float()
        query = (embeds * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        middle = memory.cache.layers[len(memory.cache.layers) // 2].keys.to(memory.device)
        keep = kept_columns(key_similarity(query, middle), earlier, real, view.relay_keep)
        memory.forget_columns(keep)
        earlier &= keep
    if view.relay_layers < 1.0:
        counted = earlier.clone()
        rows = torch.arange(memory.batch_size, device=memory.device)
        counted[rows, memory.attention_mask.argmax(dim=1)] = False  # the attention sink
        length, next_position = memory.length, memory.next_position.clone()
        with attention_mass_probe(model, decoder(model), counted, mask) as masses:
            append(model, memory, mask, input_ids=ids)
        memory.forget_after(length, next_position)
        memory.relayed = chosen_layers(torch.stack(masses), view.relay_layers)


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


LatentCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


@dataclass
class DriftGuard:
    """Stops a row's latent rollout early (`--latent-steps auto[:MAX]`).

    After each step t, with h_t the new last-layer hidden state and h_0 the state at the
    end of the agent's prompt (where thinking started), a row stops when
      - its thoughts converged: cos(h_t, h_{t-1}) >= converge_cos (more steps add nothing), or
      - its thoughts drifted:   cos(h_t, h_0) < drift_cos (it wandered off its context).
    A stopped row's later columns are padding, exactly as if it had run alone.
    """

    converge_cos: float = 0.995
    drift_cos: float = 0.3

    def stops(self, hidden: torch.Tensor, previous: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """[batch] True where a row should stop. In float32: in bf16, 0.995 is within rounding
        of 1, and rows that have not converged would stop."""
        cos = torch.nn.functional.cosine_similarity
        current = hidden.float()
        converged = cos(current, previous.float(), dim=-1) >= self.converge_cos
        return converged | (cos(current, start.float(), dim=-1) < self.drift_cos)


@dataclass
class EntropyGuard:
    """Ends a row's chain *before* a thought the model cannot read (`--max-thought-entropy`).

    A thought is the realigned last hidden state; the logit lens (the LM head on that state)
    says what the model would make of it as a token. A near-uniform reading (entropy above
    `max_entropy` nats), or a sudden rise over the previous thought's (`max_jump`), marks a
    state off the model's distribution: on the 1.5B model one such thought was followed by a
    fixed point that every later agent inherited. SwiReasoning switches on rising entropy too.
    The stopped row appends no more thoughts (its columns are padding, as if it ran alone).
    """

    lens: Callable[[torch.Tensor], torch.Tensor]  # hidden [batch, hidden] -> logits [batch, vocab]
    max_entropy: float = math.inf
    max_jump: float = math.inf

    def entropy(self, hidden: torch.Tensor) -> torch.Tensor:
        """[batch] the lens distribution's entropy in nats, in float32."""
        logp = torch.log_softmax(self.lens(hidden).float(), dim=-1)
        return -(logp.exp() * logp).sum(dim=-1)


def append_thought(
    model: PreTrainedModel, memory: SharedMemory, embedding: torch.Tensor, active: torch.Tensor
) -> torch.Tensor:
    """Append one latent thought per active row (embedding [batch, hidden]); -> new hidden state."""
    mask = active.long()[:, None]
    return append(model, memory, mask, inputs_embeds=embedding[:, None, :], latent=True)


LatentStep = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def rollout(
    step: LatentStep,
    hidden: torch.Tensor,
    steps: int,
    on_step: LatentCallback | None = None,
    guard: DriftGuard | None = None,
    entropy_guard: EntropyGuard | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Think up to `steps` times without sampling a token: `step(hidden, active)` (an
    engine's `latent_step`) realigns each active row's last hidden state into an input
    embedding and feeds it back, -> (the embeddings, the new hidden states). This is the one
    latent loop, with its guards and observers, for any engine.

    -> (last hidden state [batch, hidden], latent steps taken per row [batch]).
    `on_step(step, hidden, embedding, active)` sees each thought (used by tracing).
    """
    batch = hidden.shape[0]
    active = torch.ones(batch, dtype=torch.bool, device=hidden.device)
    taken = torch.zeros(batch, dtype=torch.long, device=hidden.device)
    start, previous = hidden, hidden
    last_entropy = None
    for index in range(steps):
        if entropy_guard is not None:
            entropy = entropy_guard.entropy(hidden).to(active.device)
            last_entropy = entropy if last_entropy is None else last_entropy
            active &= (entropy <= entropy_guard.max_entropy) & (
                entropy - last_entropy <= entropy_guard.max_jump
            )
            last_entropy = torch.where(active, entropy, last_entropy)
            if not bool(active.any()):
                break
        embedding, new = step(hidden, active)
        if on_step is not None:
            on_step(index, hidden, embedding, active)
        taken += active.long()
        previous, hidden = hidden, torch.where(active[:, None], new, hidden)
        if guard is not None:
            done = guard.stops(hidden, previous, start)
            active &= ~done
            if not bool(active.any()):
                break
    return hidden, taken


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


def is_greedy(sampling: Sampling) -> bool:
    return sampling.temperature < 1e-4  # 0 means greedy; tinier ones would overflow the softmax


def row_seed(seed: int, *parts: str) -> int:
    """A stable 63-bit seed for one row's sampling stream, from the run's seed and what
    identifies the row (its question, the agent's role) — never from its place in a batch."""
    digest = hashlib.sha256("\x00".join([str(seed), *parts]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def next_tokens(
    logits: torch.Tensor, sampling: Sampling, generators: list[torch.Generator] | None
) -> torch.Tensor:
    """[batch, vocab] -> [batch] token ids: argmax, or temperature + nucleus sampling.

    Each row draws from its own generator, exactly once per step, so a row's tokens do not
    depend on which other rows share its batch or when they finish.
    """
    if is_greedy(sampling) or generators is None:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > sampling.top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    probs = probs.cpu()
    drawn = [torch.multinomial(probs[row], 1, generator=g) for row, g in enumerate(generators)]
    return torch.cat(drawn).to(logits.device)


TokenCallback = Callable[[int, int], "bool | None"]
StateCallback = Callable[[list[int], torch.Tensor], None]


def decode(
    model: PreTrainedModel,
    memory: SharedMemory,
    hidden: torch.Tensor,
    sampling: Sampling,
    stop_ids: set[int],
    on_token: TokenCallback | None = None,
    row_seeds: list[int] | None = None,
    on_state: StateCallback | None = None,
) -> list[list[int]]:
    """Generate text for every row from its last hidden state [batch, hidden].

    A row leaves the batch (and its cache rows are dropped) as soon as it emits a stop
    token, so short answers stop costing compute. -> new token ids per row, stop token
    excluded. `on_token(row, token)` streams tokens as they are chosen; returning False
    ends that row (a streaming client went away). When sampling, row i draws from a
    generator seeded with `row_seeds[i]` (default: `sampling.seed` for every row).
    `on_state(rows, hidden)` sees, at each step, the state [len(rows), hidden] each row still
    decoding chooses its next token from (the text-anchored handoff keeps them).
    """
    generators = None
    if not is_greedy(sampling):
        seeds = row_seeds if row_seeds is not None else [sampling.seed] * memory.batch_size
        if len(seeds) != memory.batch_size:
            raise ValueError(f"{len(seeds)} row seeds for a batch of {memory.batch_size}")
        generators = [torch.Generator().manual_seed(s) for s in seeds]
    outputs: list[list[int]] = [[] for _ in range(memory.batch_size)]
    active = list(range(memory.batch_size))  # original row of each current row
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=memory.device)
    ones = torch.ones(memory.batch_size, 1, dtype=torch.long, device=memory.device)
    for step in range(sampling.max_new_tokens):
        if on_state is not None:
            on_state(active, hidden)
        tokens = next_tokens(lm_logits(model, hidden), sampling, generators)
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
            if generators is not None:
                generators = [generators[i] for i in kept]
            memory.keep_rows(keep)
            tokens = tokens.index_select(0, keep)
            ones = ones[: len(active)]
        if step == sampling.max_new_tokens - 1:
            break  # the last token needs no forward pass
        hidden = append(model, memory, ones, input_ids=tokens[:, None])
    return outputs


class Engine(Protocol):
    """What the agent loop needs from a backend: a memory per batch, and the three moves.

    `TransformersEngine` (below) runs any transformers causal LM on batches;
    `llamacpp_engine.LlamaCppEngine` runs a GGUF file in llama.cpp, one sequence per row;
    `vllm_engine.VLLMEngine` thinks in transformers and decodes in vLLM.
    """

    name: str  # as `--engine` spells it
    lm: LoadedModel  # the model's tokenizer and name (and, for tracing, its weights)
    realign: str  # how it maps hidden states back to input embeddings (`realign.REALIGN_MODES`)
    stop_ids: set[int]
    max_batch: int | None  # rows one memory can hold (None: any)

    def new_memory(self, batch_size: int) -> Any: ...

    def prefill(
        self, memory: Any, prompts: list[list[int]], shared_prefix: Sequence[int] = (), think: bool = True
    ) -> torch.Tensor | None:
        """Read one prompt per row; -> each row's last hidden state. `shared_prefix`: tokens
        the method's prompts begin with whatever the question (a hint; an engine may reuse
        their KV across rows and batches). `think=False`: the agent will not think from the
        state, so an engine that decodes elsewhere (vLLM) may skip computing it (None)."""

    def latent_step(
        self, memory: Any, hidden: torch.Tensor, active: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One thought per active row: realign its last hidden state [batch, hidden] into an
        input embedding and append that; -> (the embeddings, the new last hidden states).
        The engine owns its realigner, so what it feeds back is what it reports."""

    def prefill_embeddings(self, memory: Any, vectors: list[torch.Tensor]) -> torch.Tensor:
        """Append each row's input-space vectors [n_row, hidden] (a row may have none) as
        thoughts: another model's mapped thoughts, or a message's anchored states.
        -> each row's last hidden state."""

    def decode(
        self,
        memory: Any,
        hidden: torch.Tensor,
        sampling: Sampling,
        on_token: TokenCallback | None,
        row_seeds: list[int] | None,
    ) -> list[list[int]]: ...

    def keep_latent_only(self, memory: Any) -> None: ...


class TransformersEngine:
    """The `Engine` interface over a transformers model and its shared, batched KV cache."""

    name = "transformers"
    max_batch = None

    def __init__(
        self,
        lm: LoadedModel,
        realign: str = "none",
        share_prefixes: bool = True,
        view: MemoryView | None = None,
    ) -> None:
        self.lm, self.realign, self.view = lm, realign, view
        self.realigner: Realigner = realigner_for(lm.model, realign)
        self.model = lm.model
        self.pad_id = lm.tokenizer.pad_token_id
        self.stop_ids = stop_token_ids(lm.tokenizer, lm.model.generation_config.eos_token_id)
        self.prefixes = PrefixStore(self.model, self.pad_id) if share_prefixes else None

    def new_memory(self, batch_size: int) -> SharedMemory:
        return SharedMemory.empty(self.model, batch_size, view=self.view)

    def prefill(
        self,
        memory: SharedMemory,
        prompts: list[list[int]],
        shared_prefix: Sequence[int] = (),
        think: bool = True,
    ) -> torch.Tensor:
        memory.begin_agent()
        if self.prefixes is not None and memory.length == 0:
            prompts = self.prefixes.start(memory, prompts, shared_prefix)
        hand_over(self.model, memory, prompts, self.pad_id)
        return prefill(self.model, memory, prompts, self.pad_id)

    def latent_step(
        self, memory: SharedMemory, hidden: torch.Tensor, active: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.realigner(hidden)
        return embedding, append_thought(self.model, memory, embedding, active)

    def decode(
        self,
        memory: SharedMemory,
        hidden: torch.Tensor,
        sampling: Sampling,
        on_token: TokenCallback | None,
        row_seeds: list[int] | None,
        on_state: StateCallback | None = None,
    ) -> list[list[int]]:
        return decode(self.model, memory, hidden, sampling, self.stop_ids, on_token, row_seeds, on_state)

    def prefill_embeddings(self, memory: SharedMemory, vectors: list[torch.Tensor]) -> torch.Tensor:
        """See `Engine.prefill_embeddings`; rows are left-padded to the longest."""
        width = max(v.shape[0] for v in vectors)
        hidden = self.model.config.get_text_config().hidden_size
        embeds = torch.zeros(len(vectors), width, hidden, dtype=self.model.dtype, device=memory.device)
        mask = torch.zeros(len(vectors), width, dtype=torch.long, device=memory.device)
        for row, block in enumerate(vectors):
            if block.shape[0]:
                embeds[row, width - block.shape[0] :] = block.to(embeds)
                mask[row, width - block.shape[0] :] = 1
        return append(self.model, memory, mask, inputs_embeds=embeds, latent=True)

    def keep_latent_only(self, memory: SharedMemory) -> None:
        memory.keep_columns(memory.is_latent.nonzero().squeeze(-1))

"""The shared KV cache: one per batch, every agent appends to it (`SharedMemory`).

Rows are padded per segment on the left, so the newest column is always a real token or
thought for every row; the attention mask has zeros wherever a row has padding (at any
depth) and position ids count only a row's real positions. That is what keeps a question's
result independent of the batch it runs in, the property the reference implementation lacks.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from .views import MemoryView


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


BRANCHED = ("cache", "_mask", "_positions", "_latent", "_owner", "_length")  # a branch's own


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
    hidden: torch.Tensor | None = None  # [batch, hidden] each row's newest last-layer state (None: empty)
    reads: frozenset[int] | None = None  # the earlier writers the current one sees (None: all)
    window: int | None = None  # the model's sliding window, read once (None: no sliding layers)
    sliding: tuple[bool, ...] = ()  # which layers slide
    _parked: SharedMemory | None = None  # the whole memory while an agent works in a branch

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

    def begin_agent(self, reads: frozenset[int] | None = None) -> None:
        """The next columns are a new agent's, who sees the writers `reads` (None: all) and,
        until a relay chooses, in all layers. Its positions continue from what it sees: an
        agent that reads only the head sits where it would in a fresh memory, and agents
        that read none of one another start at the same place, as parallel branches.

        Without a view, an agent that reads only some writers works in a branch: a memory of
        just the columns it sees, so its attention never spans the others' (n experts of a
        hierarchy would otherwise each attend over every earlier expert's masked columns,
        quadratic in n); its columns join the whole memory when the next agent begins."""
        self.join_branch()
        self.agent += 1
        self.relayed = None
        self.reads = reads
        if reads is None:
            return
        seen = self.visible()
        self.next_position = (self.attention_mask.bool() & seen[None]).sum(dim=1)
        if seen.all():
            self.reads = None  # it reads every writer so far: no mask needed
        elif self.view is None:
            self._branch(seen.nonzero().squeeze(-1))

    def _branch(self, columns: torch.Tensor) -> None:
        """Park the whole memory and go on in a copy of its `columns` only."""
        self._parked = replace(self, _parked=None)
        self.cache = copy.copy(self.cache)
        self.cache.layers = [copy.copy(layer) for layer in self.cache.layers]  # keys selected anew
        self.keep_columns(columns)
        self.reads = None

    def join_branch(self) -> None:
        """Append the columns the agent wrote in its branch to the parked whole memory and
        carry on in it, from the branch's newest state and position."""
        whole = self._parked
        if whole is None:
            return
        mine = (self.owner == self.agent).nonzero().squeeze(-1)
        for into, layer in zip(whole.cache.layers, self.cache.layers):
            if layer.keys is not None and layer.keys.dim() == 4:
                where = mine.to(layer.keys.device)
                into.update(layer.keys.index_select(-2, where), layer.values.index_select(-2, where))
        next_position, hidden = self.next_position, self.hidden
        whole.extend(self.attention_mask[:, mine], self.positions[:, mine], self.is_latent[mine])
        for name in BRANCHED:
            setattr(self, name, getattr(whole, name))
        self._parked, self.next_position, self.hidden = None, next_position, hidden

    def visible(self) -> torch.Tensor | None:
        """[length] True for the columns the current agent sees (its own and its reads'); None:
        all of them."""
        if self.reads is None:
            return None
        seen = torch.tensor(sorted(self.reads | {self.agent}), dtype=self.owner.dtype, device=self.device)
        return torch.isin(self.owner, seen)

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

    def extend(
        self, segment_mask: torch.Tensor, positions: torch.Tensor, latent: bool | torch.Tensor
    ) -> None:
        """Record a new segment's columns [batch, width] (the cache itself grows in the model);
        `latent`: whether they are thoughts, for all or per column [width]."""
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
        if self._parked is not None:
            self._parked.keep_rows(rows)
        self.cache.batch_select_indices(rows)
        self._mask = self._mask.index_select(0, rows)
        self._positions = self._positions.index_select(0, rows)
        self.next_position = self.next_position.index_select(0, rows)
        if self.entry_norm is not None:
            self.entry_norm = self.entry_norm.index_select(0, rows)
        if self.relayed is not None:
            self.relayed = self.relayed.index_select(1, rows)
        if self.hidden is not None:
            self.hidden = self.hidden.index_select(0, rows)

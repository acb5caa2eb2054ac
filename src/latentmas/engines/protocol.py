"""The `Engine` protocol: everything the agent loop and the handoffs call on a backend.

Three engines implement it: `transformers.TransformersEngine` (any transformers causal LM,
batched, one shared KV cache), `llamacpp.LlamaCppEngine` (GGUF files in llama.cpp, one
sequence per row) and `vllm.VLLMEngine` (thoughts in transformers, every decode in vLLM).
The loop never tests an engine's type: what an engine cannot do is in `CAPABILITIES`, which
`RunSpec` checks before a model is loaded and the engine checks again when asked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import PreTrainedTokenizerBase

from ..errors import LatentMASError
from ..models import LoadedModel
from .forward import lm_logits
from .sampling import Sampling
from .views import MemoryView

TokenCallback = Callable[[int, int], "bool | None"]
# (rows still decoding, the state [len(rows), hidden] each chose its next token from)
StateCallback = Callable[[list[int], torch.Tensor], None]


@dataclass(frozen=True)
class Reading:
    """How one agent reads its prompts: `shared_prefix`, tokens the method's prompts begin with
    whatever the question (a hint: an engine may reuse their KV across rows and batches), and
    `reads`, the earlier writers of the memory (by the order they wrote) it is shown, until
    the next prefill (None: all; needs `partial_reads`)."""

    shared_prefix: Sequence[int] = ()
    reads: frozenset[int] | None = None


ALL = Reading()


@dataclass(frozen=True)
class Decoding:
    """How one agent decodes a batch: its sampling, each row's seed (None: the sampling's seed
    for every row), and who watches: `on_token(row, token)` streams tokens (returning False
    ends the row); `on_state` sees the states tokens are chosen from (needs `decode_states`)."""

    sampling: Sampling
    row_seeds: list[int] | None = None
    on_token: TokenCallback | None = None
    on_state: StateCallback | None = None


class ModelEngine:
    """What every engine reads off the transformers model it was given (`lm`)."""

    lm: LoadedModel

    @property
    def device(self) -> torch.device:
        return self.lm.device

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.lm.tokenizer

    def lens(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [batch, hidden] -> float32 next-token logits [batch, vocab]: the LM head of the
        transformers copy, whatever engine computed the state."""
        return lm_logits(self.lm.model, hidden)


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do beyond the three moves (prefill, think, decode)."""

    methods: tuple[str, ...] = ("single", "text_mas", "latent_mas")
    views: bool = False  # show the memory through a view (thought weight, hidden layers, relays, re-entry)
    latent_only: bool = False  # forget every column but the thoughts (`--memory latent_only`)
    decode_states: bool = False  # hand out the states decoding chose its tokens from (`--handoff states`)
    agent_models: bool = False  # one engine per agent (`--agent-models`)
    partial_reads: bool = False  # an agent shown only some earlier agents' part of the shared memory
    realign: tuple[str, ...] = ("ridge", "norm", "none", "soft")


CAPABILITIES: dict[str, Capabilities] = {
    "transformers": Capabilities(
        views=True, latent_only=True, decode_states=True, agent_models=True, partial_reads=True
    ),
    "llamacpp": Capabilities(methods=("latent_mas",), realign=("ridge", "norm", "none")),
    "vllm": Capabilities(),
}
ENGINES: tuple[str, ...] = tuple(CAPABILITIES)

_NEEDS = {
    "views": "memory views (thought weight, thoughts hidden below or entering at a layer, relays)",
    "latent_only": "--memory latent_only",
    "decode_states": "--handoff states",
    "agent_models": "--agent-models",
    "partial_reads": "a team whose agents read only some earlier agents, in one shared memory",
}
_WHY = {
    ("vllm", "latent_only"): "it rebuilds the shared cache from what entered it: use --memory full",
    ("llamacpp", "latent_only"): "it keeps the whole shared cache: use --memory full",
}


def require(engine: str, capability: str) -> None:
    """Refuse, in one line, what `engine` cannot do (the one place these messages are written)."""
    if not getattr(CAPABILITIES[engine], capability):
        why = _WHY.get((engine, capability), "use --engine transformers")
        raise LatentMASError(f"--engine {engine} cannot run {_NEEDS[capability]}: {why}")


class Engine(Protocol):
    """A backend for the agent loop: a memory per batch, and the moves the loop makes.

    The memory is the engine's own (a shared KV cache, llama.cpp sequences, a log of what
    entered); the loop only passes it back. Hidden states are [batch, hidden] tensors on
    `device`.
    """

    name: str  # as `--engine` spells it
    lm: LoadedModel  # the model's weights and tokenizer (handoffs and observers read them)
    stop_ids: set[int]
    max_batch: int | None  # rows one memory can hold (None: any)

    @property
    def device(self) -> torch.device: ...

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase: ...

    def new_memory(self, batch_size: int, view: MemoryView | None = None) -> Any:
        """An empty memory; `view` decides what each layer sees of its thoughts (needs `views`)."""

    def prefill(self, memory: Any, prompts: list[list[int]], reading: Reading = ALL) -> None:
        """Read one prompt per row, as the memory's next writer (see `Reading`)."""

    def last_hidden(self, memory: Any) -> torch.Tensor:
        """Each row's newest last-layer hidden state [batch, hidden]: where thinking starts.
        (An engine that decodes elsewhere computes it only when asked.)"""

    def append_thoughts(self, memory: Any, vectors: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """One thought per active row: `vectors` [batch, hidden] go in as input embeddings
        (or at the view's entry layer); -> the new last hidden states [batch, hidden]."""

    def append_vectors(self, memory: Any, vectors: list[torch.Tensor]) -> None:
        """Each row's input-space vectors [n_row, hidden] (a row may have none), as thoughts:
        another model's mapped thoughts, or a message's anchored states."""

    def decode(self, memory: Any, decoding: Decoding) -> list[list[int]]:
        """Generate from each row's newest state; -> new token ids per row, stop token excluded."""

    def keep_latent_only(self, memory: Any) -> None:
        """Forget every column but the thoughts (needs `latent_only`)."""

    def realigner(self, mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """hidden [batch, hidden] -> input embeddings [batch, hidden], by `mode` (ridge, norm,
        none, soft), fitted once per model; batch-invariant on this engine."""

    def lens(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [batch, hidden] -> float32 next-token logits [batch, vocab] (the logit lens)."""

"""What a reading agent sees of the shared memory's latent thoughts, layer by layer.

The paper's handoff lets every later agent attend to every earlier thought in every layer.
Published training-free alternatives change only *what is seen where*:

- `thought_weight` beta in (0, 1]: later agents attend to earlier agents' thoughts with an
  additive bias log(beta) (softer thoughts; beta -> 0 hides them, the m = 0 team);
- `thoughts_from` f in [0, 1): thought columns are hidden from the lower layers (below
  f x depth), which expect token embeddings and degenerate on hidden states;
- `thoughts_enter`: with `thoughts_from`, a thought re-enters the model at that layer (its
  residual stream there is replaced by the thought, rescaled to the stream's norm at the
  previous position) instead of as an input embedding, so no layer below ever reads it;
- `relay_layers` s in (0, 1]: at each handoff, earlier agents' columns stay visible in only
  that share of the layers, chosen per question from how much the reading agent's prompt
  attends to them there (KVComm's layer-selective sharing; see `relay`);
- `relay_keep` k in (0, 1]: at each handoff, only that share of earlier agents' columns is
  kept, the ones whose middle-layer keys are closest to the reading agent's prompt, plus
  the newest few (kNN-LatentMAS's relay filter; see `relay`).

A view is a per-layer additive bias over the cache's columns. It reaches each attention
module as a forward pre-hook that adds the layer's bias to the 4-D mask the decoder already
passes, so the model keeps its own attention implementation and code; with the identity
view nothing is installed or passed, and answers are token-identical to no view at all.
Re-entry is a pre-hook on the entry layer that swaps the thought into its input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from ..errors import LatentMASError

# The keywords the decoder forwards (through **kwargs) to every layer and its attention.
VIEW_KEYWORD = "latentmas_view"
ENTRY_KEYWORD = "latentmas_entry"


@dataclass(frozen=True)
class MemoryView:
    """Which thought columns each layer sees, and how strongly (see the module docstring)."""

    thought_weight: float = 1.0
    thoughts_from: float = 0.0
    thoughts_enter: bool = False
    relay_layers: float = 1.0
    relay_keep: float = 1.0

    def __post_init__(self) -> None:
        if self.thoughts_enter and self.thoughts_from == 0.0:
            raise LatentMASError("thoughts re-enter at the layer thoughts_from names: set it above 0")
        if not 0.0 < self.thought_weight <= 1.0:
            raise LatentMASError(f"thought_weight must be in (0, 1], not {self.thought_weight}")
        if not 0.0 <= self.thoughts_from < 1.0:
            raise LatentMASError(f"thoughts_from must be in [0, 1), not {self.thoughts_from}")
        for name in ("relay_layers", "relay_keep"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise LatentMASError(f"{name} must be in (0, 1], not {getattr(self, name)}")

    @property
    def identity(self) -> bool:
        return self == MemoryView()

    def first_layer(self, layers: int) -> int:
        """The lowest layer that sees thoughts."""
        return round(self.thoughts_from * layers)

    def layer_biases(
        self,
        is_latent: torch.Tensor,
        owner: torch.Tensor,
        agent: int,
        layers: int,
        dtype: torch.dtype,
        relayed: torch.Tensor | None = None,
    ) -> list[torch.Tensor | None]:
        """Per layer, an additive bias [1 or batch, 1, 1, length] over the columns, or None.

        `is_latent`, `owner`: [length] flags and writing agent of each column; `agent`: the
        agent now reading; `relayed`: [layers, batch], the layers in which each row's reader
        sees earlier agents' columns (None: all). Hidden columns get the dtype's lowest
        value (as padding does).
        """
        low = torch.finfo(dtype).min

        def bias(where: torch.Tensor, value: float) -> torch.Tensor:
            return torch.zeros(where.shape, dtype=dtype, device=where.device).masked_fill(where, value)

        earlier = owner < agent
        weighted = None
        if self.thought_weight < 1.0:
            weighted = bias(is_latent & earlier, math.log(self.thought_weight))[None, None, None]
        hidden = bias(is_latent, low)[None, None, None]
        first = self.first_layer(layers)
        biases = [hidden if layer < first else weighted for layer in range(layers)]
        if relayed is None:
            return biases
        # A row's earlier columns vanish from the layers not chosen for it (low + low is -inf,
        # which the hook clamps back to the lowest value).
        unrelayed = bias(~relayed[:, :, None] & earlier, low)[
            :, :, None, None
        ]  # [layers, batch, 1, 1, length]
        return [unrelayed[layer] if b is None else b + unrelayed[layer] for layer, b in enumerate(biases)]


@dataclass
class Entry:
    """One forward's re-entry request: `thought` [batch, hidden] goes in at `layer` (None: a
    text segment, whose stream norm at that layer is only recorded in `norm`). `real`: [batch]
    rows whose newest column is real (the others keep their recorded norm)."""

    layer: int
    thought: torch.Tensor | None
    norm: torch.Tensor  # [batch] the entry layer's stream norm at each row's newest real column
    real: torch.Tensor


def attention_modules(body: torch.nn.Module) -> list[torch.nn.Module]:
    """Each decoder layer's self-attention module, in order."""
    layers = getattr(body, "layers", None)
    if layers is None or not all(hasattr(layer, "self_attn") for layer in layers):
        raise LatentMASError(
            f"{type(body).__name__} does not expose layers[i].self_attn: memory views are unavailable"
        )
    return [layer.self_attn for layer in layers]


def install_view_hooks(model: PreTrainedModel, body: torch.nn.Module) -> None:
    """Let each attention module add its layer's bias (passed as `VIEW_KEYWORD`) to its mask.

    Installed once per model; a forward without the keyword is untouched, so other methods
    sharing the model (a server's other solvers) see no difference.
    """
    if getattr(model, "latentmas_view_hooks", False):
        return
    for index, module in enumerate(attention_modules(body)):
        module.register_forward_pre_hook(_adds_bias(index), with_kwargs=True)
    for index, layer in enumerate(body.layers):
        layer.register_forward_pre_hook(_enters(index), with_kwargs=True)
    model.latentmas_view_hooks = True


def _enters(index: int):
    def hook(layer, args, kwargs):
        entry = kwargs.pop(ENTRY_KEYWORD, None)
        if entry is None or entry.layer != index:
            return args, kwargs
        positional = bool(args)
        stream = args[0] if positional else kwargs["hidden_states"]
        if entry.thought is not None:
            thought = entry.thought.to(stream)  # the entry layer may sit on another GPU
            scale = entry.norm.to(stream) / thought.norm(dim=-1).clamp_min(1e-6)
            stream = stream.clone()
            stream[:, -1] = thought * scale[:, None]
        norm = stream[:, -1].float().norm(dim=-1).to(entry.norm.device)
        entry.norm.copy_(torch.where(entry.real, norm, entry.norm))
        if positional:
            return (stream, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": stream}

    return hook


def _adds_bias(index: int):
    def hook(module, args, kwargs):
        biases = kwargs.pop(VIEW_KEYWORD, None)
        if biases is None:
            return None
        bias = biases[index]
        if bias is not None:
            mask = kwargs.get("attention_mask")
            if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or not mask.is_floating_point():
                raise LatentMASError("a memory view needs the additive 4-D mask the engine builds")
            low = torch.finfo(mask.dtype).min
            bias = bias[..., : mask.shape[-1]].to(mask.device)  # this layer may sit on another GPU
            kwargs["attention_mask"] = (mask + bias).clamp_min(low)
        return args, kwargs

    return hook

"""A trained handoff: the paper's thoughts through a small adapter learned with the model frozen.

A thought is the sender's last hidden state h, realigned into the input embeddings as the
paper does (ridge), plus a learned low-rank correction:

    thought = ridge(h) + U gelu(V norm(h))          (U starts at zero: the paper's handoff)

`latentmas train-handoff` fits U and V so that an agent reading the thoughts behaves as it
does reading the sender's text message (`latentmas.training`). The adapter is a safetensors
file that names the model it was trained on; another model refuses it in one line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from ..engines import Engine
from ..errors import LatentMASError
from .base import Thoughts, ThoughtsConfig, register

FORMAT = "latentmas-adapter/1"


class Adapter(torch.nn.Module):
    """hidden [.., hidden] + its realignment -> the thought: the realignment plus a low-rank
    correction of the hidden state, computed in float32."""

    def __init__(self, hidden: int, rank: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(hidden)
        self.down = torch.nn.Linear(hidden, rank)
        self.up = torch.nn.Linear(rank, hidden, bias=False)
        torch.nn.init.zeros_(self.up.weight)  # untrained, it is the paper's handoff

    def forward(self, hidden: torch.Tensor, realigned: torch.Tensor) -> torch.Tensor:
        correction = self.up(torch.nn.functional.gelu(self.down(self.norm(hidden.float()))))
        return (realigned.float() + correction).to(realigned.dtype)

    @property
    def rank(self) -> int:
        return self.down.out_features


def fingerprint(model: PreTrainedModel) -> str:
    """Which model an adapter belongs to, whatever dtype it is loaded in: its config and a
    sample of its input embeddings rounded to bfloat16."""
    config = model.config.to_dict()
    config.pop("transformers_version", None)
    for key in ("torch_dtype", "dtype", "_name_or_path", "_attn_implementation_autoset"):
        config.pop(key, None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    weight = model.get_input_embeddings().weight
    rows = weight[:: max(1, weight.shape[0] // 256)].detach().to("cpu", torch.bfloat16).float()
    digest.update(rows.numpy().tobytes())
    return digest.hexdigest()[:16]


def save_adapter(adapter: Adapter, path: Path, model: PreTrainedModel, about: dict) -> None:
    """The adapter's weights, with the model it belongs to and how it was trained."""
    tensors = {name: value.detach().contiguous().cpu() for name, value in adapter.state_dict().items()}
    metadata = {"format": FORMAT, "model": fingerprint(model), "rank": str(adapter.rank)}
    metadata |= {key: json.dumps(value) for key, value in about.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def load_adapter(path: str | Path, model: PreTrainedModel) -> Adapter:
    """An adapter for `model`; one clear error for a missing file, another format, or an
    adapter trained on another model."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise LatentMASError(f"no adapter at {path} (`latentmas train-handoff` writes one)")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own types for a file that is not one
        raise LatentMASError(f"{path} is not a safetensors adapter ({str(exc)[:80]})") from None
    if metadata.get("format") != FORMAT:
        raise LatentMASError(f"{path} is not a latentmas adapter (format {metadata.get('format')!r})")
    if metadata["model"] != (mine := fingerprint(model)):
        raise LatentMASError(
            f"{path} was trained on another model (fingerprint {metadata['model']}), not this one ({mine})"
        )
    hidden = model.get_input_embeddings().weight.shape[1]
    adapter = Adapter(hidden, int(metadata["rank"]))
    adapter.load_state_dict(load_file(str(path)))
    return adapter.to(model.get_input_embeddings().weight.device).eval()


class TrainedConfig(ThoughtsConfig):
    name: Literal["trained"] = "trained"
    adapter: str = Field(description="The adapter file `latentmas train-handoff` wrote (safetensors).")


@register
class Trained(Thoughts):
    """The paper's realigned thoughts plus the adapter's learned correction."""

    Config = TrainedConfig
    config: TrainedConfig

    def __init__(self, config: TrainedConfig) -> None:
        super().__init__(config)
        self.adapters: dict[int, Adapter] = {}  # per model, loaded on first use

    def adapter(self, model: PreTrainedModel) -> Adapter:
        if id(model) not in self.adapters:
            self.adapters[id(model)] = load_adapter(self.config.adapter, model)
        return self.adapters[id(model)]

    def thought(self, engine: Engine, hidden: torch.Tensor) -> torch.Tensor:
        realigned = super().thought(engine, hidden)
        return self.adapter(engine.lm.model)(hidden, realigned)

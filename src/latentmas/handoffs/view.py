"""Memory views: the paper's thoughts, but later agents see them only in part.

Published training-free alternatives change only *what is seen where* (the mechanism, a
per-layer mask bias and the relays, is the engine's: `engines.views`, `engines.relay`):

- `thought_weight` beta in (0, 1]: later agents attend to earlier agents' thoughts with an
  additive bias log(beta) (beta -> 0 hides them: the m = 0 team);
- `thoughts_from` f in [0, 1): thought columns are hidden from the layers below f x depth,
  which expect token embeddings and degenerate on hidden states;
- `relay_layers` s in (0, 1]: at each handoff, earlier agents' columns stay visible in only
  that share of the layers, chosen per question by attention importance (KVComm);
- `relay_keep` k in (0, 1]: at each handoff, only the share k of earlier agents' columns
  closest to the reading agent's prompt is kept (kNN-LatentMAS's relay filter).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..engines import MemoryView, require
from .base import Thoughts, ThoughtsConfig, register


class ViewConfig(ThoughtsConfig):
    name: Literal["view"] = "view"
    thought_weight: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Later agents attend to earlier thoughts with weight beta in (0, 1] "
        "(an additive log beta; 1 = the paper's handoff).",
    )
    thoughts_from: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Hide thoughts from the layers below this fraction of depth (0 = every layer sees them; "
        "with --handoff reentry, where thoughts re-enter).",
    )
    relay_layers: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="At each handoff, earlier agents' memory stays visible in only this share of the layers, "
        "chosen per question by attention importance (KVComm; 1 = every layer).",
    )
    relay_keep: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="At each handoff, keep only this share of earlier agents' memory, the columns closest "
        "to the next prompt (kNN-LatentMAS's relay filter; 1 = keep all).",
    )


@register
class View(Thoughts):
    Config = ViewConfig
    config: ViewConfig
    enters = False  # thoughts go in as input embeddings (`reentry` overrides)

    def check(self, engine: str) -> None:
        require(engine, "views")

    def view(self) -> MemoryView:
        c = self.config
        return MemoryView(c.thought_weight, c.thoughts_from, self.enters, c.relay_layers, c.relay_keep)

"""Thoughts that re-enter above the embedding layer: a thought goes into the residual stream
at the layer `thoughts_from` names (rescaled to the stream's norm there), instead of as an
input embedding, so no layer below it ever reads a hidden state as if it were a token.
The memory-view options (weight, relays) apply as in `view`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..engines.realign import REALIGN_MODES
from .base import register
from .view import View, ViewConfig


class ReentryConfig(ViewConfig):
    name: Literal["reentry"] = "reentry"
    realign: Literal[REALIGN_MODES] = Field(  # type: ignore[valid-type]
        "none", description="A state re-entering the stream needs no map into the embedding space."
    )
    thoughts_from: float = Field(
        0.5, gt=0.0, lt=1.0, description="The fraction of depth at which thoughts re-enter."
    )


@register
class Reentry(View):
    Config = ReentryConfig
    enters = True

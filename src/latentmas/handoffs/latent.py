"""The paper's handoff: a thought is the last layer's hidden state, realigned into the
input-embedding space and fed back as the next input embedding; every later agent reads
every thought in every layer."""

from __future__ import annotations

from typing import Literal

from .base import Thoughts, ThoughtsConfig, register


class LatentConfig(ThoughtsConfig):
    name: Literal["latent"] = "latent"


@register
class Latent(Thoughts):
    Config = LatentConfig

"""What passes between agents, one module each, registered by name with its own small config.

    latent    the paper's: realigned hidden states fed back as input embeddings
    view      the same thoughts seen only in part (thought weight, hidden low layers, relays)
    reentry   thoughts that re-enter the stream at a layer above the embeddings
    states    short decoded messages handed over as text-anchored states (StateBridge)
    trained   the paper's thoughts through an adapter learned with the model frozen
    text      decoded messages read as text (TextMAS; the single agent hears none)

A new handoff is one file: subclass `Thoughts` or `Messages`, give it a `Config`, decorate
it with `@register` (docs/architecture.md, "Add a handoff").
"""

from . import latent, reentry, states, text, trained, view  # noqa: F401  (they register themselves)
from .base import (
    Handoff,
    HandoffConfig,
    Message,
    Messages,
    MessagesConfig,
    Thoughts,
    ThoughtsConfig,
    Turn,
    build,
    handoff_class,
    handoff_names,
    option_fields,
    parse_handoff,
    register,
)
from .latent import LatentConfig
from .reentry import ReentryConfig
from .states import StatesConfig
from .text import TextConfig
from .trained import TrainedConfig
from .view import ViewConfig

__all__ = [
    "Handoff",
    "HandoffConfig",
    "LatentConfig",
    "Message",
    "Messages",
    "MessagesConfig",
    "ReentryConfig",
    "StatesConfig",
    "TextConfig",
    "Thoughts",
    "ThoughtsConfig",
    "TrainedConfig",
    "Turn",
    "ViewConfig",
    "build",
    "handoff_class",
    "handoff_names",
    "option_fields",
    "parse_handoff",
    "register",
]

"""What passes from one agent to the next: the protocol every handoff implements, and its registry.

A handoff is a class with a small frozen config (a `HandoffConfig` with its own bounds),
registered under its config's `name`. Two kinds, which the agent loop tells apart by
`shares_memory` and nothing else:

- `Thoughts`: the team shares one memory (KV cache); each non-final agent reads its prompt
  into it and thinks `m` latent steps. A subclass decides what a thought is (`thought`) and
  what later agents see of it (`view`).
- `Messages`: each agent reads a fresh memory; each non-final agent decodes a short message
  that later agents read (`read`) as words (TextMAS) or as vectors (the states handoff).

Adding a handoff is one file: subclass one of the two, give it a config, `@register` it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..engines import Decoding, Engine, LatentSteps, MemoryView, Sampling
from ..engines.realign import REALIGN_MODES
from ..engines.rollout import DriftGuard, EntropyGuard, LatentCallback, rollout
from ..engines.sampling import MAX_NEW_TOKENS
from ..errors import LatentMASError, OptionError
from ..teams import Agent


class HandoffConfig(BaseModel):
    """A handoff's options: frozen, with their bounds; `name` selects the handoff."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str


@dataclass
class Message:
    """What one non-final agent passed on in a message handoff."""

    role: str
    text: str
    vectors: torch.Tensor | None = None  # [tokens, hidden]: the message as input-space vectors (states)


@dataclass
class Turn:
    """One agent's turn on one batch, as a handoff sees it."""

    engine: Engine
    memory: Any
    role: Agent
    final: bool
    questions: list[str]
    answer_format: str
    heard: list[list[Message]]  # per row, the earlier messages this agent reads (message handoffs)
    seeds: list[int]  # per row, its sampling stream's seed (from the question and the role)


class Handoff(ABC):
    """One handoff, built from its config; it holds no per-batch state."""

    Config: ClassVar[type[HandoffConfig]]
    shares_memory: ClassVar[bool]

    def __init__(self, config: HandoffConfig) -> None:
        self.config = config

    def check(self, engine: str) -> None:  # noqa: B027 (most handoffs run anywhere)
        """Refuse an engine this handoff cannot run on, before any model is loaded (by name,
        as `--engine` spells it)."""


class ThoughtsConfig(HandoffConfig):
    """Options every thinking handoff has: how a hidden state becomes an input, and when a
    chain of thoughts stops before a thought the logit lens reads as noise."""

    realign: Literal[REALIGN_MODES] = Field(  # type: ignore[valid-type]
        "ridge",
        description="Map hidden states back to input embeddings: ridge, norm, none, or soft "
        "(the expected embedding under the model's next-token distribution).",
    )
    max_thought_entropy: float | None = Field(
        None,
        ge=0.0,
        description="End an agent's thoughts before one whose logit-lens entropy exceeds this (nats).",
    )
    max_entropy_jump: float | None = Field(
        None,
        ge=0.0,
        description="End an agent's thoughts before one whose logit-lens entropy rises by more than this (nats).",
    )


class Thoughts(Handoff):
    """The team shares one memory; each non-final agent thinks latently in it."""

    shares_memory = True
    config: ThoughtsConfig

    def view(self) -> MemoryView | None:
        """What later agents see of the thoughts, layer by layer (None: everything)."""
        return None

    def thought(self, engine: Engine, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [batch, hidden] -> the vector appended as the next input [batch, hidden]."""
        return engine.realigner(self.config.realign)(hidden)

    def think(
        self, engine: Engine, memory: Any, steps: LatentSteps, on_step: LatentCallback | None
    ) -> torch.Tensor:
        """Up to `steps` thoughts per row from its newest state; -> thoughts taken [batch]."""

        def step(hidden: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            vectors = self.thought(engine, hidden)
            return vectors, engine.append_thoughts(memory, vectors, active)

        limits = (self.config.max_thought_entropy, self.config.max_entropy_jump)
        entropy = None
        if limits != (None, None):
            entropy = EntropyGuard(engine.lens, *(float("inf") if x is None else x for x in limits))
        drift = DriftGuard() if steps.auto else None
        hidden = engine.last_hidden(memory)
        return rollout(step, hidden, steps.count, on_step, drift, entropy)[1]


class MessagesConfig(HandoffConfig):
    """Options every message handoff has."""

    message_tokens: int | None = Field(
        None,
        ge=1,
        le=MAX_NEW_TOKENS,
        description="Cap on the non-final agents' messages (default: the decoding budget).",
    )


class Messages(Handoff):
    """Each agent reads a fresh memory; non-final agents decode messages later agents read."""

    shares_memory = False
    config: MessagesConfig

    @abstractmethod
    def read(self, turn: Turn) -> list[list[int]]:
        """Read the agent's prompt, with the messages it hears, into `turn.memory`; -> the
        prompt token ids per row (what it cost to read)."""

    def send(self, turn: Turn, sampling: Sampling) -> tuple[list[list[int]], list[Message]]:
        """A non-final agent decodes its message; -> (its token ids, what passes on) per row."""
        cap = self.config.message_tokens
        if cap is not None:
            sampling = replace(sampling, max_new_tokens=cap)
        tokens = turn.engine.decode(turn.memory, Decoding(sampling, turn.seeds))
        texts = turn.engine.lm.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        return tokens, [Message(turn.role.name, text.strip()) for text in texts]


_REGISTRY: dict[str, type[Handoff]] = {}


def register(cls: type[Handoff]) -> type[Handoff]:
    """Make a handoff class selectable by its config's name (a class decorator)."""
    name = cls.Config.model_fields["name"].default
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__}.Config needs a default `name`")
    _REGISTRY[name] = cls
    return cls


def handoff_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def handoff_class(name: str) -> type[Handoff]:
    if name not in _REGISTRY:
        raise LatentMASError(f"unknown handoff {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def validated(config_type: type[HandoffConfig], options: dict) -> HandoffConfig:
    """A config from options, with pydantic's complaint as one `OptionError` naming the field."""
    try:
        return config_type(**options)
    except ValidationError as exc:
        raise option_error(exc, prefix="handoff") from None


NAMED = "option "  # a validator's message that names its own option: "option handoff.x: why"


def option_error(exc: ValidationError, prefix: str = "") -> OptionError:
    """pydantic's first complaint as one line: `where: what`."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or prefix
    if prefix and where != prefix:
        where = f"{prefix}.{where}"
    message = first["msg"].removeprefix("Value error, ")
    if message.startswith(NAMED):
        where, message = message.removeprefix(NAMED).split(": ", 1)
    if first["type"] == "extra_forbidden":
        message = "not an option of this handoff"
    return OptionError(where, message)


def parse_handoff(value: str | dict | HandoffConfig) -> HandoffConfig:
    """A handoff config from what a user wrote: a config, `{"name": ..., options}`, a name,
    or `name:key=value,key=value` (`reentry:thoughts_from=0.5`)."""
    if isinstance(value, HandoffConfig):
        return value
    value = handoff_fields(value)
    return validated(handoff_class(str(value["name"])).Config, value)


def handoff_fields(value: str | dict) -> dict[str, Any]:
    """`{"name": ..., options}` from what a user wrote, not yet validated (options given apart,
    as `--handoff trained --adapter FILE`, may still join it)."""
    if isinstance(value, str):
        name, _, rest = value.partition(":")
        options: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in rest.split(","))):
            key, sep, text = item.partition("=")
            if not sep:
                raise LatentMASError(f"handoff {value!r}: expected key=value, not {item!r}")
            options[key.strip()] = None if text.strip().lower() == "none" else text.strip()
        value = {"name": name.strip(), **options}
    if not isinstance(value, dict) or "name" not in value:
        raise LatentMASError(f"a handoff is a name or an object with a name, not {value!r}")
    return value


def build(config: HandoffConfig) -> Handoff:
    """The handoff a config describes."""
    return handoff_class(config.name)(config)


def option_fields() -> dict[str, Any]:
    """Every option of every registered handoff, by name (the CLI's and the server's flat
    options): a name shared by several handoffs has one meaning, so one field, described as
    the base-most config that declares it does (`message_tokens`: a cap or none)."""
    fields: dict[str, Any] = {}
    for cls in _REGISTRY.values():
        for name in cls.Config.model_fields:
            if name == "name" or name in fields:
                continue
            declaring = [b for b in cls.Config.__mro__ if name in getattr(b, "__annotations__", {})]
            fields[name] = min(declaring, key=lambda b: len(b.__mro__)).model_fields[name]
    return fields

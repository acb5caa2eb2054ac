"""The latent rollout: an agent thinks without sampling a token, and the rules that stop it.

    hidden -> thought(hidden) -> append as the next input -> new hidden -> ... (m times)

`rollout` is the one latent loop, with its guards and observers, for any engine and any
handoff: the handoff decides what a thought is (`step`), the engine appends it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import LatentMASError

MAX_LATENT_STEPS = 1024
DEFAULT_AUTO_MAX = 40


@dataclass(frozen=True)
class LatentSteps:
    """How long each non-final agent thinks: `count` thoughts; with `auto`, at most `count`,
    a row stopping early once its thoughts converge or drift (`DriftGuard`).

    Text (`10`, `auto`, `auto:40`) is parsed once, where it enters (`parse`); everything
    after holds this typed value."""

    count: int = 10
    auto: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int):
            raise LatentMASError(f"latent steps must be a whole number, not {self.count!r}")
        if not 0 <= self.count <= MAX_LATENT_STEPS:
            raise LatentMASError(f"latent steps must be between 0 and {MAX_LATENT_STEPS}, not {self.count}")

    @classmethod
    def parse(cls, value: int | str | LatentSteps) -> LatentSteps:
        """`10` -> 10 steps; `auto` / `auto:40` -> at most 40 steps with the drift guard."""
        if isinstance(value, LatentSteps):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(value)
        text = str(value).strip().lower()
        auto = text.startswith("auto")
        if auto:
            text = text.partition(":")[2] or str(DEFAULT_AUTO_MAX)
        try:
            count = int(text)
        except ValueError:
            raise LatentMASError(
                f"latent steps must be a number, 'auto' or 'auto:MAX', not {value!r}"
            ) from None
        return cls(count, auto)

    def __str__(self) -> str:
        return f"auto:{self.count}" if self.auto else str(self.count)


# step(hidden [batch, hidden], active [batch]) -> (the thoughts appended, the new hidden states)
LatentStep = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# on_step(step, hidden, thought, active): an observer sees each thought (tracing)
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


def rollout(
    step: LatentStep,
    hidden: torch.Tensor,
    steps: int,
    on_step: LatentCallback | None = None,
    guard: DriftGuard | None = None,
    entropy_guard: EntropyGuard | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Think up to `steps` times without sampling a token: `step(hidden, active)` (the
    handoff's thought, appended by the engine) turns each active row's last hidden state
    into a thought and feeds it back, -> (the thoughts, the new hidden states).

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

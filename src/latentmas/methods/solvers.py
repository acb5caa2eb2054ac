"""The three ways to answer, as configurations of the one agent loop.

- `SingleAgent`: one agent, chain of thought.
- `TextMAS`: a team's agents, each decoding a message the agents that read it re-read.
- `LatentMAS`: the same team sharing one KV cache; each agent thinks `latent_steps` thoughts
  and only the last one decodes text. What passes between agents is its handoff (`handoffs`).

All three share the team's prompts and sampling, so their costs compare. A team is a name
(`sequential`, `hierarchical`), a YAML file or a `Team` (`teams`).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..engines import Engine, LatentSteps, Sampling
from ..errors import LatentMASError
from ..handoffs import HandoffConfig, TextConfig, build, parse_handoff
from ..models import LoadedModel
from ..teams import Team, load_team, single_team, team_record
from .loop import Method, as_engine, check_memory_mode

METHODS: tuple[str, ...] = ("single", "text_mas", "latent_mas")


def engines_for(lm: LoadedModel | Engine | Mapping[str, Engine]) -> Engine | Mapping[str, Engine]:
    return lm if isinstance(lm, Mapping) else as_engine(lm)


class SingleAgent(Method):
    name = "single"

    def __init__(self, lm: LoadedModel | Engine, sampling: Sampling | None = None) -> None:
        super().__init__(as_engine(lm), single_team(), sampling)


class TextMAS(Method):
    name = "text_mas"

    def __init__(
        self,
        lm: LoadedModel | Engine | Mapping[str, Engine],
        sampling: Sampling | None = None,
        team: str | dict | Team = "sequential",
        message_tokens: int | None = None,
    ) -> None:
        """`message_tokens`: cap the non-final agents' messages (None: `sampling`'s budget)."""
        handoff = build(TextConfig(message_tokens=message_tokens))
        super().__init__(engines_for(lm), load_team(team), sampling, handoff)

    def describe(self) -> dict:
        return {
            "method": self.name,
            "team": team_record(self.team),
            "handoff": self.handoff.config.model_dump(),
        }


class LatentMAS(Method):
    name = "latent_mas"

    def __init__(
        self,
        lm: LoadedModel | Engine | Mapping[str, Engine],
        sampling: Sampling | None = None,
        team: str | dict | Team = "sequential",
        latent_steps: int | str | LatentSteps = 10,
        memory: str = "full",
        handoff: str | dict | HandoffConfig = "latent",
        question_once: bool = False,
    ) -> None:
        """`lm`: a loaded model (run on the transformers engine), an engine, or one engine
        per agent. `latent_steps`: N, or "auto[:MAX]". `handoff`: what passes between agents,
        by name ("latent", the paper's; "reentry:thoughts_from=0.5"; see `handoffs`) or as a
        config. `question_once`: later agents read the question from the shared memory
        instead of a restatement. Observers (tracing) are added with `watch`."""
        engines = engines_for(lm)
        handoff_config = parse_handoff(handoff)
        team = load_team(team)
        super().__init__(engines, team, sampling, build(handoff_config))
        check_memory_mode(memory, list(self.engines.values()))
        if question_once and any(0 not in team.reads(i) for i in range(1, len(team.agents))):
            raise LatentMASError(
                "--question-once states the question to the first agent only: every agent must read it"
            )
        self.latent_steps = LatentSteps.parse(latent_steps)
        self.memory = memory
        self.question_once = question_once

    def describe(self) -> dict:
        described = {
            "method": self.name,
            "team": team_record(self.team),
            "handoff": self.handoff.config.model_dump(),
        }
        if self.handoff.shares_memory:  # a message handoff has no thoughts and no shared memory
            steps = self.latent_steps
            described |= {
                "latent_steps": str(steps) if steps.auto else steps.count,
                "memory": self.memory,
                "question_once": self.question_once,
            }
        return described

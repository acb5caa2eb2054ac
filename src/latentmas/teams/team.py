"""A team is a file: who the agents are, what each one reads, and who answers.

    name: review
    agents:
      - name: planner
        instruction: "Write a short plan."
      - name: checker
        instruction: "Check the plan."
        reads: [planner]          # default: every agent before it
      - name: solver
        instruction: "Solve it. {answer_format}"
    answers: solver               # default: the last agent

Agents run in the order listed and read only agents listed before them, so a team is a DAG
by construction: reading a later agent would be a cycle and is refused. What "reads" means
is the handoff's: a message handoff shows the agent exactly those messages; a shared memory
shows it exactly those agents' columns (the rest are masked in every layer).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import LatentMASError

PACKAGED: tuple[str, ...] = ("sequential", "hierarchical", "hierarchical_chain")
TOPOLOGIES: tuple[str, ...] = ("sequential", "hierarchical")  # the names `--topology` took


class Agent(BaseModel):
    """One agent: its name, its instruction ({answer_format} is the task's), whom it reads."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(min_length=1, pattern=r"^[\w.-]+$")
    instruction: str
    reads: tuple[str, ...] | None = None  # None: every agent before it

    @field_validator("instruction")
    @classmethod
    def _says_something(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("an agent needs an instruction")
        return text


class Team(BaseModel):
    """Agents in the order they run; the last one answers."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(min_length=1)
    agents: tuple[Agent, ...]
    answers: str | None = None  # must name the last agent (nothing after it would be heard)

    @model_validator(mode="after")
    def _well_formed(self) -> Team:
        if not self.agents:
            raise ValueError("agents: a team has no answering agent without agents (list at least one)")
        seen: list[str] = []
        for index, agent in enumerate(self.agents):
            if agent.name in seen:
                raise ValueError(
                    f"agents.{index}.name: {agent.name!r} is already the name of agent {seen.index(agent.name)}"
                )
            for name in agent.reads or ():
                if name == agent.name or name not in seen:
                    later = name == agent.name or any(a.name == name for a in self.agents)
                    why = "a later agent or itself (agents read only those listed before them; this would be a cycle)"
                    raise ValueError(
                        f"agents.{index}.reads: {name!r} is {why if later else 'no agent of this team'}"
                    )
            seen.append(agent.name)
        if self.answers is not None and self.answers != seen[-1]:
            where = "not an agent of this team" if self.answers not in seen else "not the last agent"
            raise ValueError(f"answers: {self.answers!r} is {where} (the answering agent runs last)")
        return self

    def reads(self, index: int) -> tuple[int, ...]:
        """The indices of the agents agent `index` reads."""
        agent = self.agents[index]
        if agent.reads is None:
            return tuple(range(index))
        names = [a.name for a in self.agents]
        return tuple(sorted(names.index(name) for name in agent.reads))

    @property
    def chain(self) -> bool:
        """Does every agent read every agent before it (one conversation, in order)?"""
        return all(self.reads(i) == tuple(range(i)) for i in range(len(self.agents)))


@cache
def packaged(name: str) -> Team:
    text = resources.files("latentmas.teams").joinpath(f"{name}.yaml").read_text()
    return Team(**yaml.safe_load(text))


def load_team(value: str | dict | Team | Path) -> Team:
    """A team from a packaged name, a YAML file, or its fields; one clear error naming the
    field when it is malformed."""
    if isinstance(value, Team):
        return value
    source = "the team"
    if isinstance(value, str) and value in PACKAGED:
        return packaged(value)
    if isinstance(value, str | Path):
        path = Path(value).expanduser()
        if not path.is_file():
            raise LatentMASError(
                f"team {value!s}: no such file, and not a packaged team ({', '.join(PACKAGED)})"
            )
        source = f"team file {path}"
        try:
            value = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise LatentMASError(f"{source} is not YAML: {str(exc).splitlines()[0]}") from None
        if isinstance(value, dict):
            value.setdefault("name", path.stem)
    if not isinstance(value, dict):
        raise LatentMASError(f"{source}: expected a mapping with `agents`, not {type(value).__name__}")
    try:
        return Team(**value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "team"
        message = first["msg"].removeprefix("Value error, ")
        if message.startswith(("agents.", "answers:")):
            where, _, message = message.partition(": ")
        raise LatentMASError(f"{source}: {where}: {message}") from None


def team_record(team: Team) -> Any:
    """How a run records its team: a packaged team by name, any other by its fields."""
    return team.name if team.name in PACKAGED and packaged(team.name) == team else team.model_dump()

"""The agent loop: one way to answer a batch, whatever the team, handoff or engine.

Per agent: read its prompt, then either think latently in the shared memory (a `Thoughts`
handoff), or write a message later agents read (a `Messages` handoff); the last agent
decodes the answer. What differs between methods is data: the team, the handoff, the
number of thoughts, the memory mode, and which engine each role runs on. Tracing and
embedding logs are observers: they watch the loop and never drive it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch

from ..engines import (
    Decoding,
    Engine,
    LatentSteps,
    Reading,
    Sampling,
    TokenCallback,
    TransformersEngine,
    require,
)
from ..engines.sampling import row_seed
from ..errors import LatentMASError
from ..handoffs import Handoff, Message, TextConfig, Turn, build
from ..models import LoadedModel
from ..teams import PROBES, Agent, Team, common_prefix, shared_conversation

if TYPE_CHECKING:
    from ..inspection.trace import Trace

MEMORY_MODES: tuple[str, ...] = ("full", "latent_only")


class SolveCancelled(Exception):
    """Every row of a batch was cancelled (`keep_going`), so it stopped between agents."""


@dataclass
class AgentStep:
    """What one agent did for one question. Seconds are this question's share of the
    batch's wall time, split into reading the prompt, thinking latently, and decoding."""

    role: str
    mode: Literal["latent", "text"]
    input_tokens: int
    output_tokens: int
    latent_steps: int
    prefill_seconds: float
    latent_seconds: float
    decode_seconds: float
    text: str | None = None  # decoded text (text agents only)

    @property
    def seconds(self) -> float:
        return self.prefill_seconds + self.latent_seconds + self.decode_seconds


@dataclass
class Answer:
    """A method's answer to one question, with its cost."""

    final_text: str
    agents: list[AgentStep] = field(default_factory=list)
    trace: Trace | None = None  # what each agent thought (when a tracing observer watched)

    # The answer's cost: its agents' summed.
    input_tokens = property(lambda self: sum(a.input_tokens for a in self.agents))
    output_tokens = property(lambda self: sum(a.output_tokens for a in self.agents))
    latent_steps = property(lambda self: sum(a.latent_steps for a in self.agents))
    seconds = property(lambda self: sum(a.seconds for a in self.agents))


class Observer(Protocol):
    """Watches one batch go through the loop (tracing, embedding logs)."""

    def begin_agent(self, role: str, prompts: list[list[int]]) -> None: ...

    def on_step(
        self, step: int, hidden: torch.Tensor, embedding: torch.Tensor, active: torch.Tensor
    ) -> None: ...

    def finish(self, answers: list[Answer]) -> None: ...


# Called once per batch with its questions and the method's description.
ObserverFactory = Callable[[list[str], dict], Observer]


class PhaseClock:
    """Wall time per phase; waits for the GPU at phase boundaries so times are real."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = {"prefill": 0.0, "latent": 0.0, "decode": 0.0}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[name] += time.perf_counter() - start


def as_engine(lm: LoadedModel | Engine) -> Engine:
    """A loaded model runs on the transformers engine; an engine is used as it is."""
    return TransformersEngine(lm) if isinstance(lm, LoadedModel) else lm


@dataclass
class Conversation:
    """A batch's shared memory and the prompts its agents append to it, while the agents stay
    on one engine (`HeteroMAS` moves it to another model's engine)."""

    engine: Engine | None = None
    memory: Any = None
    first: int = 0  # index of the first agent on this engine
    prompts: list[list[list[int]]] = field(default_factory=list)  # per row, per agent from `first`
    head: bool = False  # the memory opens with the team's head, read by all (a team that is no chain)

    def reads(self, team: Team, index: int) -> frozenset[int] | None:
        """The memory's writers agent `index` reads (writer 0 is the head, agent i is i + 1);
        None in a chain: everything."""
        if not self.head:
            return None
        return frozenset({0, *(j + 1 for j in team.reads(index))})


class Method:
    """The agent loop. Subclasses only configure it (see the module docstring)."""

    name: str = ""

    def __init__(
        self,
        engines: Engine | Mapping[str, Engine],
        team: Team,
        sampling: Sampling | None = None,
        handoff: Handoff | None = None,
    ) -> None:
        self.team = team
        if not isinstance(engines, Mapping):
            engines = {agent.name: engines for agent in team.agents}
        self.engines: dict[str, Engine] = dict(engines)
        self.sampling = sampling or Sampling()
        if self.sampling.max_new_tokens < 1:
            raise LatentMASError("max_new_tokens must be >= 1")
        self.handoff = handoff if handoff is not None else build(TextConfig())
        for engine in self.engines.values():
            self.handoff.check(engine.name)
            if self.handoff.shares_memory and not team.chain:
                require(engine.name, "partial_reads")
        self.latent_steps = LatentSteps(0)
        self.memory = "full"
        self.question_once = False
        self.observers: list[ObserverFactory] = []

    @property
    def roles(self) -> tuple[Agent, ...]:
        """The team's agents, in the order they run."""
        return self.team.agents

    @property
    def engine(self) -> Engine:
        """The final agent's engine (its stop tokens, padding)."""
        return self.engines[self.roles[-1].name]

    @property
    def lm(self) -> LoadedModel:
        """The model that writes the answer."""
        return self.engine.lm

    def watch(self, observer: ObserverFactory) -> Method:
        """Add an observer for every batch from now on (see `Observer`); -> this method."""
        self.observers.append(observer)
        return self

    def describe(self) -> dict:
        """The run options this method was built with, by `RunSpec` field name."""
        return {"method": self.name}

    def notes(self) -> list[str]:
        """What a user should know about how this method was set up (shown by the CLI)."""
        return []

    def solve(
        self,
        questions: list[str],
        answer_format: str = "",
        on_token: TokenCallback | None = None,
        keep_going: Callable[[int], bool] | None = None,
    ) -> list[Answer]:
        """Answer a batch of questions; results do not depend on the batch's make-up.

        `on_token(row, token_id)` receives the final agent's tokens as they are decoded.
        `keep_going(row)` is asked before each agent: when no row wants to go on, the batch
        stops there with `SolveCancelled` (a server's clients all went away). Engines that
        hold fewer rows than the batch get it in slices.
        """
        if not questions:
            return []
        limits = [e.max_batch for e in self.engines.values() if e.max_batch]
        size = min(limits, default=len(questions))
        answers: list[Answer] = []
        with torch.inference_mode():
            for start in range(0, len(questions), size):
                rows = questions[start : start + size]
                shifted = None if on_token is None else partial(_shift_row, on_token, start)
                wanted = None if keep_going is None else partial(_shifted_keep_going, keep_going, start)
                answers += self._run(rows, answer_format, shifted, wanted)
        return answers

    def _run(
        self,
        questions: list[str],
        answer_format: str,
        on_token: TokenCallback | None,
        keep_going: Callable[[int], bool] | None = None,
    ) -> list[Answer]:
        """The loop: per agent, read, think or write a message, and (last) answer."""
        batch, last = len(questions), len(self.roles) - 1
        answers = [Answer(final_text="") for _ in questions]
        messages: list[list[Message]] = [[] for _ in questions]
        watchers = [make(questions, self.describe()) for make in self.observers]
        conversation = Conversation()
        for index, role in enumerate(self.roles):
            if keep_going is not None and not any(keep_going(row) for row in range(batch)):
                raise SolveCancelled(f"every row was cancelled before the {role.name}")
            engine, final = self.engines[role.name], index == last
            clock = PhaseClock(engine.device)
            seeds = [row_seed(self.sampling.seed, role.name, q) for q in questions]
            taken = torch.zeros(batch, dtype=torch.long)
            tokens: list[list[int]] | None = None
            if self.handoff.shares_memory:
                with clock.phase("prefill"):
                    memory, prompts, prefix = self._enter(
                        conversation, engine, index, questions, answer_format
                    )
                    for watcher in watchers:
                        watcher.begin_agent(role.name, prompts)
                    engine.prefill(memory, prompts, Reading(prefix, conversation.reads(self.team, index)))
                if not final and self.latent_steps.count > 0:
                    with clock.phase("latent"):
                        taken = self.handoff.think(engine, memory, self.latent_steps, _fan_out(watchers))
                if not final and self.memory == "latent_only":
                    engine.keep_latent_only(memory)
            else:
                memory = engine.new_memory(batch)
                reads = {self.roles[j].name for j in self.team.reads(index)}
                heard = [[m for m in row if m.role in reads] for row in messages]
                turn = Turn(engine, memory, role, final, questions, answer_format, heard, seeds)
                with clock.phase("prefill"):
                    prompts = self.handoff.read(turn)
                if not final:
                    with clock.phase("decode"):
                        tokens, sent = self.handoff.send(turn, self.sampling)
                    for row, message in enumerate(sent):
                        messages[row].append(message)
            if final:
                with clock.phase("decode"):
                    tokens = engine.decode(memory, Decoding(self.sampling, seeds, on_token))
            texts: list[str | None] = [None] * batch
            if tokens is not None:
                decoded = engine.tokenizer.batch_decode(tokens, skip_special_tokens=True)
                texts = [text.strip() for text in decoded]
            share = {phase: seconds / batch for phase, seconds in clock.seconds.items()}
            mode = "text" if tokens is not None else "latent"
            for row, answer in enumerate(answers):
                count = len(tokens[row]) if tokens is not None else 0
                answer.agents.append(
                    AgentStep(
                        role.name,
                        mode,
                        len(prompts[row]),
                        count,
                        int(taken[row]),
                        share["prefill"],
                        share["latent"],
                        share["decode"],
                        texts[row],
                    )
                )
                answer.final_text = texts[row] or ""
        for watcher in watchers:
            watcher.finish(answers)
        return answers

    def _enter(
        self, conversation: Conversation, engine: Engine, index: int, questions: list[str], answer_format: str
    ) -> tuple[Any, list[list[int]], list[int]]:
        """The shared memory the agent at `index` appends to, its prompts, and (for the first
        agent on an engine) the prompt head every row shares."""
        prefix: list[int] = []
        if engine is not conversation.engine:
            team = self.team
            if index or any(self.engines[a.name] is not engine for a in team.agents):  # the agents on it
                agents = []
                for agent in team.agents[index:]:
                    if self.engines[agent.name] is not engine:
                        break
                    agents.append(agent.model_copy(update={"reads": None}))  # a chain (hetero teams are)
                team = Team(name=team.name, agents=tuple(agents))
            tokenizer, once = engine.tokenizer, self.question_once
            prompts = [shared_conversation(tokenizer, team, q, answer_format, once) for q in questions]
            probes = [shared_conversation(tokenizer, team, q, answer_format, once)[0] for q in PROBES]
            prefix = common_prefix(probes)
            memory, firsts = self.enter_engine(engine, conversation.engine, [p[0] for p in prompts])
            conversation.prompts = [[f, *p[1:]] for f, p in zip(firsts, prompts)]
            conversation.engine, conversation.memory, conversation.first = engine, memory, index
            conversation.head = not team.chain
            if conversation.head:  # the head first, on its own: every agent reads it
                engine.prefill(memory, [p[0] for p in conversation.prompts], Reading(prefix))
                conversation.prompts = [p[1:] for p in conversation.prompts]
                prefix = []
        prompts = [p[index - conversation.first] for p in conversation.prompts]
        return conversation.memory, prompts, prefix

    def enter_engine(
        self, engine: Engine, previous: Engine | None, first_prompts: list[list[int]]
    ) -> tuple[Any, list[list[int]]]:
        """The memory a shared conversation starts from when it moves to `engine` (a new
        batch, or another model's turn), and the prompts its first agent then reads: an
        empty memory and the prompts as they are here; `HeteroMAS` carries thoughts over."""
        return engine.new_memory(len(first_prompts), self.handoff_view()), first_prompts

    def handoff_view(self):
        """What later agents see of the shared memory's thoughts (None: everything)."""
        return self.handoff.view() if self.handoff.shares_memory else None


def check_memory_mode(memory: str, engines: Sequence[Engine]) -> None:
    if memory not in MEMORY_MODES:
        raise LatentMASError(f"unknown memory mode {memory!r}; choose one of {', '.join(MEMORY_MODES)}")
    if memory == "latent_only":
        for engine in engines:
            require(engine.name, "latent_only")


def _shifted_keep_going(keep_going: Callable[[int], bool], offset: int, row: int) -> bool:
    return keep_going(row + offset)


def _shift_row(callback: TokenCallback, offset: int, row: int, token: int) -> bool | None:
    """Report a slice's row under its place in the whole batch."""
    return callback(row + offset, token)


def _fan_out(watchers: Sequence[Observer]):
    """One latent-step callback that calls every watcher's `on_step`."""
    if not watchers:
        return None

    def call_all(*args) -> None:
        for watcher in watchers:
            watcher.on_step(*args)

    return call_all

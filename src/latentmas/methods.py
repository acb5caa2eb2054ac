"""The agent loop, and the three ways to answer a batch as configurations of it.

- `SingleAgent`: one agent, chain of thought.
- `TextMAS`: the roles of a topology, each decoding text that the next one re-reads.
- `LatentMAS`: the same roles sharing one KV cache; each thinks in `latent_steps`
  hidden-state steps, and only the last agent decodes text.

One loop (`Method.solve` -> `_run`) drives all of them over an `Engine`: per agent, read
its prompt, think latently, maybe decode. What differs is data: the roles, how agents hand
over (decoded text, or one shared memory), the number of thoughts, the memory mode, and
which engine each role runs on. Tracing and embedding logs are observers: they watch the
loop and never drive it. All methods share roles, prompts and sampling, so costs compare.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch

from .bridge import Vocabulary, anchored_states
from .engine import (
    DriftGuard,
    Engine,
    EntropyGuard,
    Sampling,
    TokenCallback,
    TransformersEngine,
    lm_logits,
    rollout,
    row_seed,
)
from .errors import LatentMASError
from .models import LoadedModel
from .roles import (
    Role,
    chat_messages,
    encode_chat,
    shared_conversation,
    single_role,
    text_context,
    topology_roles,
)
from .views import MemoryView


class SolveCancelled(Exception):
    """Every row of a batch was cancelled (`keep_going`), so it stopped between agents."""


if TYPE_CHECKING:
    from .trace import Trace

METHODS: tuple[str, ...] = ("single", "text_mas", "latent_mas")
MEMORY_MODES: tuple[str, ...] = ("full", "latent_only")
MAX_LATENT_STEPS = 1024
DEFAULT_AUTO_MAX = 40
Handoff = Literal["text", "latent", "states"]
HANDOFFS: tuple[str, ...] = ("latent", "states")  # latent_mas's two (text is text_mas's)
STATE_MESSAGE_TOKENS = 64  # the states handoff's default message cap (StateBridge's)
STATE_MARKER = "<<latentmas:message>>"  # where an earlier message's vectors go in a prompt


@dataclass(frozen=True)
class LatentSteps:
    """How long each non-final agent thinks: `count` thoughts; with `auto`, at most `count`,
    a row stopping early once its thoughts converge or drift (`DriftGuard`).

    Text (`10`, `auto`, `auto:40`) is parsed once, where it enters (`parse`: the CLI,
    `RunSpec`, quality configs); everything after holds this typed value."""

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
        if isinstance(value, int):
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

    @property
    def input_tokens(self) -> int:
        return sum(a.input_tokens for a in self.agents)

    @property
    def output_tokens(self) -> int:
        return sum(a.output_tokens for a in self.agents)

    @property
    def latent_steps(self) -> int:
        return sum(a.latent_steps for a in self.agents)

    @property
    def seconds(self) -> float:
        return sum(a.seconds for a in self.agents)


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


def as_engine(lm: LoadedModel | Engine, realign: str = "none", view: MemoryView | None = None) -> Engine:
    """A loaded model runs on the transformers engine; an engine is used as it is (and must
    then be able to show the memory as `view` asks)."""
    if isinstance(lm, LoadedModel):
        return TransformersEngine(lm, realign, view=view)
    if view is not None and not view.identity and getattr(lm, "view", None) != view:
        raise LatentMASError(
            f"the {lm.name} engine cannot show the memory through a view (thought weight, thoughts from, relay)"
        )
    return lm


class Method:
    """The agent loop. Subclasses only configure it (see the module docstring)."""

    name: str = ""
    handoff: Handoff = "text"

    def __init__(
        self,
        engines: Engine | Mapping[str, Engine],
        roles: list[Role],
        sampling: Sampling | None = None,
        topology: str = "sequential",
    ) -> None:
        self.roles, self.topology = roles, topology
        if not isinstance(engines, Mapping):
            engines = {role.name: engines for role in roles}
        self.engines: dict[str, Engine] = dict(engines)
        self.lm = self.engines[roles[-1].name].lm  # the model that writes the answer
        self.sampling = sampling or Sampling()
        if self.sampling.max_new_tokens < 1:
            raise LatentMASError("max_new_tokens must be >= 1")
        self.latent_steps = LatentSteps(0)
        # (max entropy, max jump) in nats for the entropy guard; None: that rule is off.
        self.entropy_options: tuple[float | None, float | None] = (None, None)
        self.memory = "full"
        self.question_once = False
        self.observers: list[ObserverFactory] = []
        self.message_tokens: int | None = None  # cap on non-final agents' messages (None: none)
        self.vocabulary: Vocabulary | None = None  # the states handoff's, loaded on first use

    @property
    def engine(self) -> Engine:
        """The final agent's engine (its stop tokens, realigner, padding)."""
        return self.engines[self.roles[-1].name]

    def describe(self) -> dict:
        return {"method": self.name}

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
        """The loop: per agent, (new memory,) prompt, think, maybe decode; observers watch."""
        batch, last = len(questions), len(self.roles) - 1
        answers = [Answer(final_text="") for _ in questions]
        said: list[list[tuple[str, str]]] = [[] for _ in questions]  # text handoff: who said what
        bridged: list[list[torch.Tensor]] = [[] for _ in questions]  # states handoff: their vectors
        watchers = [make(questions, self.describe()) for make in self.observers]
        on_step = _fan_out(watchers)
        memory: Any = None
        current: Engine | None = None
        conversations: list[list[list[int]]] = []
        first = 0  # index of the first role of the current engine's shared conversation
        for index, role in enumerate(self.roles):
            if keep_going is not None and not any(keep_going(row) for row in range(batch)):
                raise SolveCancelled(f"every row was cancelled before the {role.name}")
            engine, final = self.engines[role.name], index == last
            start = time.perf_counter()
            prefix: list[int] = []
            pieces: list[list[list[int]]] | None = None
            if self.handoff != "latent":
                # A fresh memory per agent; the states handoff splits its prompt where each
                # earlier message goes, to put the message's vectors there.
                marker = STATE_MARKER if self.handoff == "states" else None
                prompts = self._text_prompts(engine, role, final, questions, said, answer_format, marker)
                if marker is not None:
                    pieces = [self._pieces(engine, p) for p in prompts]
                    prompts = [[t for piece in p for t in piece] for p in pieces]
                probes = self._text_prompts(engine, role, final, PROBES, [[]] * len(PROBES), answer_format)
                prefix = common_prefix(probes)
                memory, steps, decode = engine.new_memory(batch), 0, True
            else:
                if engine is not current:
                    first = index
                    conversations = self._conversations(engine, index, questions, answer_format)
                    probes = self._conversations(engine, index, PROBES, answer_format)
                    prefix = common_prefix([c[0] for c in probes])
                    memory, firsts = self.enter_engine(engine, current, [c[0] for c in conversations])
                    conversations = [[f, *c[1:]] for f, c in zip(firsts, conversations)]
                    current = engine
                prompts = [c[index - first] for c in conversations]
                steps, decode = (0, True) if final else (self.latent_steps.count, False)
            entered = time.perf_counter() - start
            for watcher in watchers:
                watcher.begin_agent(role.name, prompts)
            texts, records = self._agent(
                engine,
                role,
                memory,
                prompts,
                steps,
                decode,
                on_step,
                on_token if final else None,
                questions,
                prefix,
                final,
                None if pieces is None else (pieces, bridged),
            )
            if self.memory == "latent_only" and not final:
                engine.keep_latent_only(memory)
            for answer, history, text, record in zip(answers, said, texts, records):
                record.prefill_seconds += entered / batch
                answer.agents.append(record)
                answer.final_text = text or ""
                history.append((role.name, text or ""))
        for watcher in watchers:
            watcher.finish(answers)
        return answers

    def _text_prompts(
        self,
        engine: Engine,
        role: Role,
        final: bool,
        questions: list[str],
        said: list[list[tuple[str, str]]],
        answer_format: str,
        marker: str | None = None,
    ) -> list:
        """A standalone chat per agent; hierarchical experts work without seeing each other.
        With `marker`, each earlier message is replaced by it and the chat stays text."""
        sees_others = final or self.topology == "sequential"
        chats = []
        for question, history in zip(questions, said):
            if marker is not None:
                history = [(name, marker) for name, _ in history]
            chats.append(
                chat_messages(role, question, answer_format, text_context(history) if sees_others else "")
            )
        if marker is not None:
            return [
                engine.lm.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                for c in chats
            ]
        return [encode_chat(engine.lm.tokenizer, c, False) for c in chats]

    @staticmethod
    def _pieces(engine: Engine, chat: str) -> list[list[int]]:
        """A rendered chat -> the token ids between its markers (one more piece than markers)."""
        tokenize = engine.lm.tokenizer
        return [tokenize(text, add_special_tokens=False).input_ids for text in chat.split(STATE_MARKER)]

    def _conversations(
        self, engine: Engine, index: int, questions: list[str], answer_format: str
    ) -> list[list[list[int]]]:
        """Per question, the prompts the roles from `index` on (while they stay on `engine`)
        append to its shared memory, as turns of one conversation."""
        roles = []
        for role in self.roles[index:]:
            if self.engines[role.name] is not engine:
                break
            roles.append(role)
        tokenizer, once = engine.lm.tokenizer, self.question_once
        return [shared_conversation(tokenizer, roles, q, answer_format, once) for q in questions]

    def enter_engine(
        self, engine: Engine, previous: Engine | None, first_prompts: list[list[int]]
    ) -> tuple[Any, list[list[int]]]:
        """The memory a shared conversation starts from when it moves to `engine` (a new
        batch, or another model's turn), and the prompts its first agent then reads: an
        empty memory and the prompts as they are here; `HeteroMAS` carries thoughts over."""
        return engine.new_memory(len(first_prompts)), first_prompts

    def _agent(
        self,
        engine: Engine,
        role: Role,
        memory: Any,
        prompts: list[list[int]],
        latent_steps: int,
        decode: bool,
        on_step,
        on_token: TokenCallback | None,
        questions: list[str],
        prefix: list[int],
        final: bool = True,
        states: tuple[list[list[list[int]]], list[list[torch.Tensor]]] | None = None,
    ) -> tuple[list[str | None], list[AgentStep]]:
        """One agent on a batch: read its prompt into `memory`, think latently, maybe decode.

        Each row samples from a stream seeded by (seed, role, question), so a sampled answer
        does not depend on the batch it ran in. `states`: the states handoff's prompt pieces
        per row and the earlier messages' vectors that go between them; a non-final agent
        adds its own message's vectors.
        """
        batch = len(prompts)
        clock = PhaseClock(engine.lm.device)
        with clock.phase("prefill"):
            if states is None:
                hidden = engine.prefill(memory, prompts, prefix, think=latent_steps > 0)
            else:
                hidden = self._read_pieces(engine, memory, *states, prefix)
        with clock.phase("latent"):
            step = partial(engine.latent_step, memory)
            guard = DriftGuard() if self.latent_steps.auto else None
            entropy_guard = None
            if self.entropy_options != (None, None):
                limits = [math.inf if value is None else value for value in self.entropy_options]
                entropy_guard = EntropyGuard(partial(lm_logits, engine.lm.model), *limits)
            taken = torch.zeros(batch, dtype=torch.long)
            if latent_steps > 0:
                hidden, taken = rollout(step, hidden, latent_steps, on_step, guard, entropy_guard)
        texts: list[str | None] = [None] * batch
        counts = [0] * batch
        if decode:
            seeds = [row_seed(self.sampling.seed, role.name, q) for q in questions]
            sampling = self.sampling
            if not final and self.message_tokens is not None:
                sampling = replace(sampling, max_new_tokens=self.message_tokens)
            kept: list[list[torch.Tensor]] = [[] for _ in range(batch)]

            def keep(rows: list[int], states_now: torch.Tensor) -> None:
                for row, state in zip(rows, states_now):
                    kept[row].append(state)

            with clock.phase("decode"):
                if states is not None and not final:
                    tokens = engine.decode(memory, hidden, sampling, on_token, seeds, on_state=keep)
                    self._keep_message_vectors(engine, kept, tokens, states[1])
                else:
                    tokens = engine.decode(memory, hidden, sampling, on_token, seeds)
            texts = [t.strip() for t in engine.lm.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
            counts = [len(t) for t in tokens]
        share = {name: seconds / batch for name, seconds in clock.seconds.items()}
        mode = "text" if decode else "latent"
        steps = [
            AgentStep(role.name, mode, len(p), n, m, share["prefill"], share["latent"], share["decode"], text)
            for p, n, m, text in zip(prompts, counts, taken.tolist(), texts)
        ]
        return texts, steps

    @staticmethod
    def _read_pieces(
        engine: Engine,
        memory: Any,
        pieces: list[list[list[int]]],
        vectors: list[list[torch.Tensor]],
        prefix: list[int],
    ) -> torch.Tensor:
        """Read each row's prompt pieces with the earlier messages' vectors between them."""
        hidden = engine.prefill(memory, [p[0] for p in pieces], prefix)
        for index in range(1, len(pieces[0])):
            message = [row[index - 1] for row in vectors]
            if any(block.shape[0] for block in message):  # every row's message may be empty
                engine.prefill_embeddings(memory, message)
            hidden = engine.prefill(memory, [p[index] for p in pieces])
        return hidden

    def _keep_message_vectors(
        self,
        engine: Engine,
        states: list[list[torch.Tensor]],
        tokens: list[list[int]],
        vectors: list[list[torch.Tensor]],
    ) -> None:
        """Turn each row's message (its tokens and the states that chose them) into vectors."""
        if self.vocabulary is None:
            self.vocabulary = Vocabulary.of(engine.lm.model)
        hidden = engine.lm.model.config.get_text_config().hidden_size
        for row, (row_states, row_tokens) in enumerate(zip(states, tokens)):
            count = min(len(row_tokens), STATE_MESSAGE_TOKENS)  # the last 64 at most
            if count == 0:
                vectors[row].append(torch.zeros(0, hidden))
                continue
            chosen = torch.stack(row_states[: len(row_tokens)][-count:])
            ids = torch.tensor(row_tokens[-count:], dtype=torch.long)
            vectors[row].append(anchored_states(chosen, ids, self.vocabulary))


# Questions that differ from their first character, and start as questions do (a word, a
# number, a bracket): what their prompts share is the part of a prompt that does not depend
# on the question. Starting like a real question matters: BPE tokenizers merge the space
# after "Question:" into a word (" Janet") but not into a digit, so one probe kind alone
# would put that space in the prefix and real prompts would not begin with it.
PROBES = ["1", "Who", "(a)", "what"]


def common_prefix(prompts: list[list[int]]) -> list[int]:
    """The longest list of tokens every prompt begins with."""
    first = prompts[0]
    length = 0
    while all(len(p) > length and p[length] == first[length] for p in prompts):
        length += 1
    return first[:length]


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


class SingleAgent(Method):
    name = "single"

    def __init__(self, lm: LoadedModel | Engine, sampling: Sampling | None = None) -> None:
        super().__init__(as_engine(lm), single_role(), sampling)


class TextMAS(Method):
    name = "text_mas"

    def __init__(
        self,
        lm: LoadedModel | Engine | Mapping[str, Engine],
        sampling: Sampling | None = None,
        topology: str = "sequential",
        message_tokens: int | None = None,
    ) -> None:
        """`message_tokens`: cap the non-final agents' messages (None: `sampling`'s budget)."""
        engines = lm if isinstance(lm, Mapping) else as_engine(lm)
        super().__init__(engines, topology_roles(topology), sampling, topology)
        self.message_tokens = message_tokens

    def describe(self) -> dict:
        described = {"method": self.name, "topology": self.topology}
        if self.message_tokens is not None:  # only when set, so earlier results still resume
            described["message_tokens"] = self.message_tokens
        return described


class LatentMAS(Method):
    name = "latent_mas"
    handoff: Handoff = "latent"

    def __init__(
        self,
        lm: LoadedModel | Engine | Mapping[str, Engine],
        sampling: Sampling | None = None,
        topology: str = "sequential",
        latent_steps: int | LatentSteps = 10,
        memory: str = "full",
        realign: str = "ridge",
        observers: Sequence[ObserverFactory] = (),
        question_once: bool = False,
        view: MemoryView | None = None,
        max_thought_entropy: float | None = None,
        max_entropy_jump: float | None = None,
        handoff: str = "latent",
        message_tokens: int | None = None,
    ) -> None:
        """`lm`: a loaded model (transformers engine, realigned with `realign`), an engine
        (already realigned), or one engine per role. `observers`: see `Observer`.
        `question_once`:
        later agents read the question from the shared memory instead of a restatement.
        `view`: what later agents see of the thoughts (`views.MemoryView`).
        `max_thought_entropy` / `max_entropy_jump`: end an agent's chain before a thought
        the logit lens reads as noise (`engine.EntropyGuard`). `handoff="states"`: agents
        decode short messages (`message_tokens`, default 64) and hand over their
        text-anchored states instead of sharing one memory (`bridge`)."""
        if handoff not in HANDOFFS:
            raise LatentMASError(f"unknown handoff {handoff!r}; choose one of {', '.join(HANDOFFS)}")
        if memory not in MEMORY_MODES:
            raise LatentMASError(f"unknown memory mode {memory!r}; choose one of {', '.join(MEMORY_MODES)}")
        view = view or MemoryView()
        engines = lm if isinstance(lm, Mapping) else as_engine(lm, realign, view)
        super().__init__(engines, topology_roles(topology), sampling, topology)
        self.latent_steps = (
            latent_steps if isinstance(latent_steps, LatentSteps) else LatentSteps(latent_steps)
        )
        self.view = view
        self.handoff = handoff
        if handoff == "states":
            self.message_tokens = STATE_MESSAGE_TOKENS if message_tokens is None else message_tokens
            if not all(isinstance(e, TransformersEngine) for e in self.engines.values()):
                raise LatentMASError("the states handoff runs on the transformers engine")
        self.entropy_options = (max_thought_entropy, max_entropy_jump)
        self.memory = memory
        self.observers = list(observers)
        self.question_once = question_once

    def describe(self) -> dict:
        if self.handoff == "states":
            return {
                "method": self.name,
                "topology": self.topology,
                "handoff": "states",
                "message_tokens": self.message_tokens,
            }
        described = {
            "method": self.name,
            "topology": self.topology,
            "latent_steps": str(self.latent_steps) if self.latent_steps.auto else self.latent_steps.count,
            "memory": self.memory,
            "realign": self.engine.realign,
        }
        # Options appear only when set, so results of earlier runs still resume.
        if self.question_once:
            described["question_once"] = True
        if self.view.thought_weight != 1.0:
            described["thought_weight"] = self.view.thought_weight
        if self.view.thoughts_from != 0.0:
            described["thoughts_from"] = self.view.thoughts_from
        if self.view.thoughts_enter:
            described["thoughts_enter"] = True
        for name in ("relay_layers", "relay_keep"):
            if getattr(self.view, name) != 1.0:
                described[name] = getattr(self.view, name)
        for name, value in zip(("max_thought_entropy", "max_entropy_jump"), self.entropy_options):
            if value is not None:
                described[name] = value
        return described

"""The three ways to answer a batch of questions, behind one interface.

- `SingleAgent`: one agent, chain of thought.
- `TextMAS`: the roles of a topology, each decoding text that the next one re-reads.
- `LatentMAS`: the same roles sharing one KV cache; each thinks in `latent_steps`
  hidden-state steps, and only the last agent decodes text.

All three use the same roles, prompts, model and sampling, so their costs compare.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch

from . import engine
from .engine import DriftGuard, Sampling, SharedMemory
from .errors import LatentMASError
from .models import LoadedModel
from .realign import build_realigner, input_embedding_matrix
from .roles import (
    Role,
    chat_messages,
    encode_chat,
    shared_conversation,
    single_role,
    stop_token_ids,
    text_context,
    topology_roles,
)
from .trace import Trace, TraceRecorder
from .vllm_backend import EmbeddingLog, VLLMDecoder, assemble_prompt_embeds

METHODS: tuple[str, ...] = ("single", "text_mas", "latent_mas")
MEMORY_MODES: tuple[str, ...] = ("full", "latent_only")
MAX_LATENT_STEPS = 1024
DEFAULT_AUTO_MAX = 40


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


@dataclass
class Answer:
    """A method's answer to one question, with its cost."""

    final_text: str
    agents: list[AgentStep] = field(default_factory=list)
    trace: Trace | None = None  # what each agent thought (LatentMAS with trace=True)

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


class Method:
    """Shared plumbing: the model, its stop tokens, prompt encoding, timing."""

    name: str = ""

    def __init__(self, lm: LoadedModel, sampling: Sampling | None = None) -> None:
        self.lm = lm
        self.sampling = sampling or Sampling()
        if self.sampling.max_new_tokens < 1:
            raise LatentMASError("max_new_tokens must be >= 1")
        self.stop_ids = stop_token_ids(lm.tokenizer, lm.model.generation_config.eos_token_id)
        self.pad_id = lm.tokenizer.pad_token_id
        self.realigner = build_realigner(lm.model, "none")  # text methods take no latent steps
        self.guard: DriftGuard | None = None
        self._on_token: engine.TokenCallback | None = None

    def describe(self) -> dict:
        return {"method": self.name}

    def solve(
        self, questions: list[str], answer_format: str = "", on_token: engine.TokenCallback | None = None
    ) -> list[Answer]:
        """Answer a batch of questions; results do not depend on the batch's make-up.

        `on_token(row, token_id)` receives the final agent's tokens as they are decoded.
        """
        if not questions:
            return []
        self._on_token = on_token
        try:
            with torch.inference_mode():
                return self._solve(questions, answer_format)
        finally:
            self._on_token = None

    def _solve(self, questions: list[str], answer_format: str) -> list[Answer]:
        raise NotImplementedError

    def _prompt(
        self, role: Role, question: str, answer_format: str, context: str, continuation: bool
    ) -> list[int]:
        messages = chat_messages(role, question, answer_format, context)
        return encode_chat(self.lm.tokenizer, messages, continuation)

    def _agent(
        self,
        role: Role,
        memory: SharedMemory,
        prompts: list[list[int]],
        latent_steps: int = 0,
        decode: bool = True,
        on_step: engine.LatentCallback | None = None,
        on_token: engine.TokenCallback | None = None,
        questions: list[str] | None = None,
    ) -> tuple[list[str | None], list[AgentStep]]:
        """One agent on a batch: read its prompt into `memory`, think latently, maybe decode.

        `questions` seed each row's sampling stream (with the role), so a sampled answer
        does not depend on the batch it ran in.
        """
        model, batch = self.lm.model, len(prompts)
        clock = PhaseClock(model.device)
        with clock.phase("prefill"):
            hidden = engine.prefill(model, memory, prompts, self.pad_id)
        with clock.phase("latent"):
            hidden, taken = engine.latent_steps(
                model, memory, hidden, latent_steps, self.realigner, on_step, self.guard
            )
        texts: list[str | None] = [None] * batch
        counts = [0] * batch
        if decode:
            seeds = None
            if questions is not None:
                seeds = [engine.row_seed(self.sampling.seed, role.name, q) for q in questions]
            with clock.phase("decode"):
                tokens = engine.decode(model, memory, hidden, self.sampling, self.stop_ids, on_token, seeds)
            texts = [t.strip() for t in self.lm.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
            counts = [len(t) for t in tokens]
        share = {name: seconds / batch for name, seconds in clock.seconds.items()}
        mode = "text" if decode else "latent"
        steps = [
            AgentStep(role.name, mode, len(p), n, m, share["prefill"], share["latent"], share["decode"], text)
            for p, n, m, text in zip(prompts, counts, taken.tolist(), texts)
        ]
        return texts, steps

    def _text_agent(
        self, role: Role, prompts: list[list[int]], questions: list[str], final: bool = True
    ) -> tuple[list[str], list[AgentStep]]:
        """An agent with a fresh cache of its own that decodes text."""
        memory = SharedMemory.empty(self.lm.model, len(prompts))
        on_token = self._on_token if final else None
        return self._agent(role, memory, prompts, on_token=on_token, questions=questions)


class SingleAgent(Method):
    name = "single"

    def _solve(self, questions: list[str], answer_format: str) -> list[Answer]:
        (role,) = single_role()
        prompts = [self._prompt(role, q, answer_format, "", False) for q in questions]
        texts, steps = self._text_agent(role, prompts, questions)
        return [Answer(final_text=t, agents=[s]) for t, s in zip(texts, steps)]


class TextMAS(Method):
    name = "text_mas"

    def __init__(
        self, lm: LoadedModel, sampling: Sampling | None = None, topology: str = "sequential"
    ) -> None:
        super().__init__(lm, sampling)
        self.topology = topology
        self.roles = topology_roles(topology)

    def describe(self) -> dict:
        return {"method": self.name, "topology": self.topology}

    def _solve(self, questions: list[str], answer_format: str) -> list[Answer]:
        answers = [Answer(final_text="") for _ in questions]
        said: list[list[tuple[str, str]]] = [[] for _ in questions]
        for index, role in enumerate(self.roles):
            final = index == len(self.roles) - 1
            # Hierarchical experts work independently; only the summarizer reads them all.
            sees_others = final or self.topology == "sequential"
            prompts = [
                self._prompt(role, q, answer_format, text_context(s) if sees_others else "", False)
                for q, s in zip(questions, said)
            ]
            texts, steps = self._text_agent(role, prompts, questions, final)
            for answer, history, text, step in zip(answers, said, texts, steps):
                answer.agents.append(step)
                history.append((role.name, text))
                answer.final_text = text
        return answers


class LatentMAS(Method):
    name = "latent_mas"

    def __init__(
        self,
        lm: LoadedModel,
        sampling: Sampling | None = None,
        topology: str = "sequential",
        latent_steps: int | str = 10,
        memory: str = "full",
        realign: str = "ridge",
        trace: bool = False,
        decoder: VLLMDecoder | None = None,
    ) -> None:
        """`decoder`: decode the final agent in vLLM instead of transformers (GPU only)."""
        super().__init__(lm, sampling)
        latent_steps, self.guard = parse_latent_steps(latent_steps)
        if memory not in MEMORY_MODES:
            raise LatentMASError(f"unknown memory mode {memory!r}; choose one of {', '.join(MEMORY_MODES)}")
        self.topology = topology
        self.roles = topology_roles(topology)
        self.latent_steps = latent_steps
        self.memory = memory
        self.realign_mode = realign
        self.realigner = build_realigner(lm.model, realign)  # replaces the base class's no-op
        self.trace = trace
        self._trace_embeddings: torch.Tensor | None = None
        if decoder is not None and memory != "full":
            raise LatentMASError(
                "the vLLM decoder rebuilds the shared cache from embeddings: use --memory full"
            )
        self.decoder = decoder

    def describe(self) -> dict:
        return {
            "method": self.name,
            "topology": self.topology,
            "latent_steps": self.latent_steps if self.guard is None else f"auto:{self.latent_steps}",
            "memory": self.memory,
            "realign": self.realign_mode,
        }

    def _solve(self, questions: list[str], answer_format: str) -> list[Answer]:
        model, batch = self.lm.model, len(questions)
        memory = SharedMemory.empty(model, batch)
        answers = [Answer(final_text="") for _ in questions]
        tokenizer = self.lm.tokenizer
        conversations = [shared_conversation(tokenizer, self.roles, q, answer_format) for q in questions]
        recorder = None
        if self.trace:
            if self._trace_embeddings is None:  # once per method, not once per batch
                self._trace_embeddings = input_embedding_matrix(self.lm.model)
            recorder = TraceRecorder(self.lm, self.describe(), questions, self._trace_embeddings)
        log = EmbeddingLog(batch) if self.decoder is not None else None
        for index, role in enumerate(self.roles):
            final = index == len(self.roles) - 1
            prompts = [segments[index] for segments in conversations]
            steps = 0 if final else self.latent_steps
            watchers = []
            if recorder is not None:
                recorder.begin_agent(role.name, prompts)
                watchers.append(recorder.on_step)
            if log is not None:
                embed = model.get_input_embeddings()
                log.add_prompts([embed(torch.tensor(p, device=model.device)) for p in prompts])
                watchers.append(log.on_step)
                if final:
                    self._decode_in_vllm(role, log, prompts, answers)
                    break
            on_step = _fan_out(watchers)
            on_token = self._on_token if final else None
            texts, records = self._agent(role, memory, prompts, steps, final, on_step, on_token, questions)
            if self.memory == "latent_only" and not final:
                memory.keep_columns(memory.is_latent.nonzero().squeeze(-1))
            for answer, text, record in zip(answers, texts, records):
                answer.agents.append(record)
                answer.final_text = text or ""
        if recorder is not None:
            for answer, trace in zip(answers, recorder.finish([a.final_text for a in answers])):
                answer.trace = trace
        return answers

    def _decode_in_vllm(
        self, role: Role, log: EmbeddingLog, prompts: list[list[int]], answers: list[Answer]
    ) -> None:
        """The final agent: rebuild each row's cache from its input embeddings inside vLLM."""
        start = time.perf_counter()
        embeds = [assemble_prompt_embeds(segments) for segments in log.rows]
        outputs = self.decoder.generate(embeds, self.sampling)
        share = (time.perf_counter() - start) / len(prompts)
        for answer, prompt, (text, count) in zip(answers, prompts, outputs):
            answer.agents.append(AgentStep(role.name, "text", len(prompt), count, 0, 0.0, 0.0, share, text))
            answer.final_text = text


def _fan_out(callbacks: list) -> engine.LatentCallback | None:
    """One latent-step callback that calls each of `callbacks` (trace, embedding log)."""
    if not callbacks:
        return None

    def call_all(*args) -> None:
        for callback in callbacks:
            callback(*args)

    return call_all


def parse_latent_steps(value: int | str) -> tuple[int, DriftGuard | None]:
    """`10` -> fixed 10 steps; `auto` / `auto:40` -> at most 40 steps with the drift guard."""
    text = str(value).strip().lower()
    guard = None
    if text.startswith("auto"):
        guard = DriftGuard()
        text = text.partition(":")[2] or str(DEFAULT_AUTO_MAX)
    try:
        steps = int(text)
    except ValueError:
        raise LatentMASError(f"latent steps must be a number, 'auto' or 'auto:MAX', not {value!r}") from None
    if not 0 <= steps <= MAX_LATENT_STEPS:
        raise LatentMASError(f"latent steps must be between 0 and {MAX_LATENT_STEPS}, not {steps}")
    return steps, guard


def make_method(
    name: str,
    lm: LoadedModel,
    sampling: Sampling | None = None,
    *,
    topology: str = "sequential",
    latent_steps: int | str = 10,
    memory: str = "full",
    realign: str = "ridge",
    trace: bool = False,
) -> Method:
    """Build a method by name (`single`, `text_mas`, `latent_mas`)."""
    if name == "single":
        return SingleAgent(lm, sampling)
    if name == "text_mas":
        return TextMAS(lm, sampling, topology)
    if name == "latent_mas":
        return LatentMAS(lm, sampling, topology, latent_steps, memory, realign, trace)
    raise LatentMASError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")

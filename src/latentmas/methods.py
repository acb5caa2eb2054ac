"""The three ways to answer a batch of questions, behind one interface.

- `SingleAgent`: one agent, chain of thought.
- `TextMAS`: the roles of a topology, each decoding text that the next one re-reads.
- `LatentMAS`: the same roles sharing one KV cache; each thinks in `latent_steps`
  hidden-state steps, and only the last agent decodes text.

All three use the same roles, prompts, model and sampling, so their costs compare.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import torch

from . import engine
from .engine import Sampling, SharedMemory
from .errors import LatentMASError
from .models import LoadedModel
from .realign import build_realigner
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

METHODS: tuple[str, ...] = ("single", "text_mas", "latent_mas")
MEMORY_MODES: tuple[str, ...] = ("full", "latent_only")
MAX_LATENT_STEPS = 1024


@dataclass
class AgentStep:
    """What one agent did for one question."""

    role: str
    mode: Literal["latent", "text"]
    input_tokens: int
    output_tokens: int
    latent_steps: int
    seconds: float  # this question's share of the batch's wall time for this agent
    text: str | None = None  # decoded text (text agents only)


@dataclass
class Answer:
    """A method's answer to one question, with its cost."""

    final_text: str
    agents: list[AgentStep] = field(default_factory=list)

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

    def describe(self) -> dict:
        return {"method": self.name}

    def solve(self, questions: list[str], answer_format: str = "") -> list[Answer]:
        """Answer a batch of questions; results do not depend on the batch's make-up."""
        if not questions:
            return []
        with torch.inference_mode():
            return self._solve(questions, answer_format)

    def _solve(self, questions: list[str], answer_format: str) -> list[Answer]:
        raise NotImplementedError

    def _prompt(
        self, role: Role, question: str, answer_format: str, context: str, continuation: bool
    ) -> list[int]:
        messages = chat_messages(role, question, answer_format, context)
        return encode_chat(self.lm.tokenizer, messages, continuation)

    def _decode_text(self, memory: SharedMemory, hidden: torch.Tensor) -> tuple[list[str], list[int]]:
        tokens = engine.decode(self.lm.model, memory, hidden, self.sampling, self.stop_ids)
        texts = self.lm.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        return [t.strip() for t in texts], [len(t) for t in tokens]

    def _text_agent(self, role: Role, prompts: list[list[int]]) -> tuple[list[str], list[AgentStep]]:
        """One agent that reads its own fresh prompt and decodes text."""
        start = time.perf_counter()
        memory = SharedMemory.empty(self.lm.model, len(prompts))
        hidden = engine.prefill(self.lm.model, memory, prompts, self.pad_id)
        texts, counts = self._decode_text(memory, hidden)
        share = (time.perf_counter() - start) / len(prompts)
        steps = [
            AgentStep(role.name, "text", len(p), n, 0, share, text)
            for p, n, text in zip(prompts, counts, texts)
        ]
        return texts, steps


class SingleAgent(Method):
    name = "single"

    def _solve(self, questions: list[str], answer_format: str) -> list[Answer]:
        (role,) = single_role()
        prompts = [self._prompt(role, q, answer_format, "", False) for q in questions]
        texts, steps = self._text_agent(role, prompts)
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
            texts, steps = self._text_agent(role, prompts)
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
        latent_steps: int = 10,
        memory: str = "full",
        realign: str = "ridge",
    ) -> None:
        super().__init__(lm, sampling)
        if not 0 <= latent_steps <= MAX_LATENT_STEPS:
            raise LatentMASError(f"latent_steps must be between 0 and {MAX_LATENT_STEPS}")
        if memory not in MEMORY_MODES:
            raise LatentMASError(f"unknown memory mode {memory!r}; choose one of {', '.join(MEMORY_MODES)}")
        self.topology = topology
        self.roles = topology_roles(topology)
        self.latent_steps = latent_steps
        self.memory = memory
        self.realign_mode = realign
        self.realigner = build_realigner(lm.model, realign)

    def describe(self) -> dict:
        return {
            "method": self.name,
            "topology": self.topology,
            "latent_steps": self.latent_steps,
            "memory": self.memory,
            "realign": self.realign_mode,
        }

    def _solve(self, questions: list[str], answer_format: str) -> list[Answer]:
        model, batch = self.lm.model, len(questions)
        memory = SharedMemory.empty(model, batch)
        answers = [Answer(final_text="") for _ in questions]
        tokenizer = self.lm.tokenizer
        conversations = [shared_conversation(tokenizer, self.roles, q, answer_format) for q in questions]
        for index, role in enumerate(self.roles):
            start = time.perf_counter()
            final = index == len(self.roles) - 1
            prompts = [segments[index] for segments in conversations]
            hidden = engine.prefill(model, memory, prompts, self.pad_id)
            if final:
                texts, counts = self._decode_text(memory, hidden)
            else:
                engine.latent_steps(model, memory, hidden, self.latent_steps, self.realigner)
                if self.memory == "latent_only":
                    memory.keep_columns(memory.is_latent.nonzero().squeeze(-1))
                texts, counts = [None] * batch, [0] * batch
            share = (time.perf_counter() - start) / batch
            for answer, prompt, text, count in zip(answers, prompts, texts, counts):
                steps = 0 if final else self.latent_steps
                mode = "text" if final else "latent"
                answer.agents.append(AgentStep(role.name, mode, len(prompt), count, steps, share, text))
                if final:
                    answer.final_text = text
        return answers


def make_method(
    name: str,
    lm: LoadedModel,
    sampling: Sampling | None = None,
    *,
    topology: str = "sequential",
    latent_steps: int = 10,
    memory: str = "full",
    realign: str = "ridge",
) -> Method:
    """Build a method by name (`single`, `text_mas`, `latent_mas`)."""
    if name == "single":
        return SingleAgent(lm, sampling)
    if name == "text_mas":
        return TextMAS(lm, sampling, topology)
    if name == "latent_mas":
        return LatentMAS(lm, sampling, topology, latent_steps, memory, realign)
    raise LatentMASError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")

"""Agent roles and topologies, read from `prompts/roles.yaml`, and their chat prompts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

import yaml
from transformers import PreTrainedTokenizerBase

from .errors import LatentMASError

TOPOLOGIES: tuple[str, ...] = ("sequential", "hierarchical")
ContextKind = Literal["none", "text", "latent"]


@dataclass(frozen=True)
class Role:
    name: str
    instruction: str


@cache
def _prompts() -> dict:
    text = resources.files("latentmas").joinpath("prompts/roles.yaml").read_text()
    return yaml.safe_load(text)


def _fill(template: str, **values: str) -> str:
    """Replace {name} placeholders in one pass, so braces inside a question stay as they are."""
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)


def single_role() -> list[Role]:
    return [Role(r["role"], r["instruction"]) for r in _prompts()["single"]]


def topology_roles(topology: str) -> list[Role]:
    if topology not in TOPOLOGIES:
        raise LatentMASError(f"unknown topology {topology!r}; choose one of {', '.join(TOPOLOGIES)}")
    return [Role(r["role"], r["instruction"]) for r in _prompts()["topologies"][topology]]


def text_context(messages: list[tuple[str, str]]) -> str:
    """What a TextMAS agent is shown of its predecessors: each one's role and decoded text."""
    if not messages:
        return ""
    spec = _prompts()["context"]
    lines = "\n\n".join(_fill(spec["text_message"], role=r, text=t) for r, t in messages)
    return _fill(spec["text"], messages=lines)


def user_message(
    role: Role, question: str, answer_format: str, context: str = "", restate: bool = True
) -> dict:
    """An agent's user turn; `restate=False` leaves the question out (it is in the memory)."""
    spec = _prompts()
    instruction = _fill(role.instruction, answer_format=answer_format)
    template = spec["user_template"] if restate else spec["followup_template"]
    user = _fill(template, instruction=instruction, question=question, context=context)
    return {"role": "user", "content": user.rstrip()}


def chat_messages(role: Role, question: str, answer_format: str, context: str = "") -> list[dict]:
    """A standalone chat: the team's system prompt and this agent's user turn."""
    system = {"role": "system", "content": _prompts()["system"]}
    return [system, user_message(role, question, answer_format, context)]


def shared_conversation(
    tokenizer: PreTrainedTokenizerBase,
    roles: list[Role],
    question: str,
    answer_format: str,
    question_once: bool = False,
) -> list[list[int]]:
    """Token ids each agent appends to the shared cache, one list per agent.

    The agents' turns form one conversation: agent k's user turn follows agent k-1's
    assistant turn, whose content is its latent thoughts (rendered as an empty message).
    Each segment is the difference between successive renderings of the chat template,
    so any model's turn markers are used. Templates that rewrite earlier turns (so that
    one rendering is not a prefix of the next) fall back to standalone chats per agent.
    `question_once`: only the first agent's turn states the question; later agents read
    it from the shared memory (fewer tokens to prefill).
    """
    messages = [{"role": "system", "content": _prompts()["system"]}]
    segments, previous = [], ""
    for index, role in enumerate(roles):
        if index:
            messages.append({"role": "assistant", "content": ""})
        messages.append(user_message(role, question, answer_format, restate=not (question_once and index)))
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not text.startswith(previous):
            return [
                encode_chat(tokenizer, chat_messages(r, question, answer_format), i > 0)
                for i, r in enumerate(roles)
            ]
        segments.append(tokenizer(text[len(previous) :], add_special_tokens=False).input_ids)
        previous = text
    return segments


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict], continuation: bool) -> list[int]:
    """Token ids of a chat ending in the assistant's turn header.

    `continuation=True` means the ids are appended to a cache that already holds a
    conversation, so a leading BOS token is dropped.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if continuation and ids and ids[0] == tokenizer.bos_token_id:
        ids = ids[1:]
    return ids


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

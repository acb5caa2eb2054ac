"""The chat prompts agents read, assembled from `prompts.yaml` (templates are data), and the
shared conversation a team's agents append to one memory."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

import yaml
from transformers import PreTrainedTokenizerBase

from .team import Agent, Team


@cache
def _prompts() -> dict:
    text = resources.files("latentmas.teams").joinpath("prompts.yaml").read_text()
    return yaml.safe_load(text)


def _fill(template: str, **values: str) -> str:
    """Replace {name} placeholders in one pass, so braces inside a question stay as they are."""
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)


def single_team() -> Team:
    """The single-agent baseline as a team of one."""
    (agent,) = _prompts()["single"]
    return Team(name="single", agents=(Agent(name=agent["role"], instruction=agent["instruction"]),))


def text_context(messages: list[tuple[str, str]]) -> str:
    """What a TextMAS agent is shown of its predecessors: each one's role and decoded text."""
    if not messages:
        return ""
    spec = _prompts()["context"]
    lines = "\n\n".join(_fill(spec["text_message"], role=r, text=t) for r, t in messages)
    return _fill(spec["text"], messages=lines)


def user_message(
    role: Agent, question: str, answer_format: str, context: str = "", restate: bool = True
) -> dict:
    """An agent's user turn; `restate=False` leaves the question out (it is in the memory)."""
    spec = _prompts()
    instruction = _fill(role.instruction, answer_format=answer_format)
    template = spec["user_template"] if restate else spec["followup_template"]
    user = _fill(template, instruction=instruction, question=question, context=context)
    return {"role": "user", "content": user.rstrip()}


def chat_messages(role: Agent, question: str, answer_format: str, context: str = "") -> list[dict]:
    """A standalone chat: the team's system prompt and this agent's user turn."""
    system = {"role": "system", "content": _prompts()["system"]}
    return [system, user_message(role, question, answer_format, context)]


def shared_conversation(
    tokenizer: PreTrainedTokenizerBase,
    team: Team,
    question: str,
    answer_format: str,
    question_once: bool = False,
) -> list[list[int]]:
    """Token ids each agent appends to the shared cache, one list per agent (and, first, the
    conversation's head, when the team is not a chain).

    The agents' turns form one conversation: agent k's user turn follows the assistant turns
    of the agents it reads, whose content is their latent thoughts (rendered as an empty
    message). Each segment is the difference between successive renderings of the chat
    template, so any model's turn markers are used. In a chain (every agent reads all before
    it) that is one growing conversation. When an agent reads only some agents, its segment
    continues *their* conversation, and the head (the system turn, which every agent reads)
    is a segment of its own: an agent that reads no one reads the head and its own turn,
    exactly the chat a fresh memory would hold. Templates that rewrite earlier turns (so that
    one rendering is not a prefix of the next) fall back to standalone chats per agent.
    `question_once`: only the first agent's turn states the question; later agents read it
    from the shared memory (fewer tokens to prefill).
    """
    system = {"role": "system", "content": _prompts()["system"]}

    def turns(indices: list[int]) -> list[dict]:
        messages = [system]
        for position, index in enumerate(indices):
            if position:
                messages.append({"role": "assistant", "content": ""})
            restate = not (question_once and index)
            messages.append(user_message(team.agents[index], question, answer_format, restate=restate))
        return messages

    def render(messages: list[dict], prompt: bool = True) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)

    chain = team.chain
    head = "" if chain else render([system], prompt=False)
    texts = [] if chain else [head]
    for index in range(len(team.agents)):
        earlier = list(team.reads(index))
        before = render(turns(earlier)) if earlier else head
        text = render(turns([*earlier, index]))
        if not text.startswith(before):
            return [
                encode_chat(tokenizer, chat_messages(a, question, answer_format), i > 0)
                for i, a in enumerate(team.agents)
            ]
        texts.append(text[len(before) :])
    return [tokenizer(text, add_special_tokens=False).input_ids for text in texts]


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

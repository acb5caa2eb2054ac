"""TextMAS's handoff: each agent decodes a message and the next agents re-read it as text."""

from __future__ import annotations

from typing import Literal

from ..engines import Reading
from ..teams import PROBES, chat_messages, common_prefix, encode_chat, text_context
from .base import Messages, MessagesConfig, Turn, register


class TextConfig(MessagesConfig):
    name: Literal["text"] = "text"


def read_chats(turn: Turn, chats: list[list[dict]], probes: list[list[dict]]) -> list[list[int]]:
    """Tokenize one chat per row and read it; the prompt head every chat shares (read off
    `probes`, the same chat for other questions) is read once and copied."""
    tokenizer = turn.engine.lm.tokenizer
    prompts = [encode_chat(tokenizer, chat, False) for chat in chats]
    prefix = common_prefix([encode_chat(tokenizer, chat, False) for chat in probes])
    turn.engine.prefill(turn.memory, prompts, Reading(prefix))
    return prompts


@register
class Text(Messages):
    """Later agents read earlier agents' messages as words in their prompt."""

    Config = TextConfig

    def read(self, turn: Turn) -> list[list[int]]:
        chats = [
            chat_messages(
                turn.role, question, turn.answer_format, text_context([(m.role, m.text) for m in heard])
            )
            for question, heard in zip(turn.questions, turn.heard)
        ]
        probes = [chat_messages(turn.role, probe, turn.answer_format) for probe in PROBES]
        return read_chats(turn, chats, probes)

"""Who the agents are and what each reads (teams as data files, the packaged ones beside this
module), and the chat prompts they are given."""

from .chat import (
    PROBES,
    chat_messages,
    common_prefix,
    encode_chat,
    shared_conversation,
    single_team,
    text_context,
    user_message,
)
from .team import PACKAGED, TOPOLOGIES, Agent, Team, load_team, team_record

__all__ = [
    "PACKAGED",
    "PROBES",
    "TOPOLOGIES",
    "Agent",
    "Team",
    "chat_messages",
    "common_prefix",
    "encode_chat",
    "load_team",
    "shared_conversation",
    "single_team",
    "team_record",
    "text_context",
    "user_message",
]

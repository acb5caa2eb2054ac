"""Text-anchored states (StateBridge-style): an agent's decoded message, handed over as vectors.

Each non-final agent decodes a short message. The hidden states that chose its tokens are
mapped into the input-embedding space by a whitened orthogonal Procrustes fit on that very
message (state t against the embedding of the token it chose), rescaled to the vocabulary's
mean embedding norm, and moved part of the way toward their nearest vocabulary embedding.
The next agent reads those vectors where a text handoff would show the message, so what it
receives stays close to text the model can read while carrying the states' extra detail.

Reference: StateBridge (COLM 2026); the fit, the norm and the nudge follow its description,
with our own code.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from pydantic import Field
from transformers import PreTrainedModel

from ..engines import Decoding, Reading, Sampling, require
from ..engines.realign import input_embedding_matrix
from ..engines.sampling import MAX_NEW_TOKENS
from ..teams import PROBES, chat_messages, common_prefix, encode_chat, text_context
from .base import Message, Messages, MessagesConfig, Turn, register

STATE_MESSAGE_TOKENS = 64  # StateBridge's message cap, and the most states a message hands over
MARKER = "<<latentmas:message>>"  # where an earlier message's vectors go in a prompt

SNAP = 0.3  # share of the way toward the nearest vocabulary embedding
REGULARIZATION = 1e-3  # added to both covariances before whitening (a message has <= 64 states)


@dataclass
class Vocabulary:
    """The input embeddings as the decoder sees them [vocab, hidden], their unit vectors and
    mean norm, in float32: computed once per model, used for every message."""

    embeddings: torch.Tensor
    unit: torch.Tensor
    mean_norm: torch.Tensor

    @classmethod
    def of(cls, model: PreTrainedModel) -> Vocabulary:
        embeddings = input_embedding_matrix(model)
        norms = embeddings.norm(dim=-1, keepdim=True)
        return cls(embeddings, embeddings / norms.clamp_min(1e-6), norms.mean())


def _symmetric_power(matrix: torch.Tensor, power: float) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp_min(1e-6).pow(power)) @ vectors.T


def anchored_states(
    hidden: torch.Tensor, tokens: torch.Tensor, vocabulary: Vocabulary, snap: float = SNAP
) -> torch.Tensor:
    """[T, hidden] states that chose `tokens` [T] -> [T, hidden] input-space vectors (float32).

    A message of one token is handed over as that token's embedding.
    """
    embeddings = vocabulary.embeddings[tokens.to(vocabulary.embeddings.device)]
    if hidden.shape[0] < 2:
        return embeddings.clone()
    states = hidden.float().to(embeddings.device)
    identity = torch.eye(states.shape[1], dtype=states.dtype, device=states.device)
    state_mean, embedding_mean = states.mean(0, keepdim=True), embeddings.mean(0, keepdim=True)
    centred_states, centred_embeddings = states - state_mean, embeddings - embedding_mean
    count = states.shape[0]
    state_cov = centred_states.T @ centred_states / count + REGULARIZATION * identity
    embedding_cov = centred_embeddings.T @ centred_embeddings / count + REGULARIZATION * identity
    whitened_states = centred_states @ _symmetric_power(state_cov, -0.5)
    whitened_embeddings = centred_embeddings @ _symmetric_power(embedding_cov, -0.5)
    u, _, vt = torch.linalg.svd(whitened_states.T @ whitened_embeddings, full_matrices=False)
    if torch.det(u @ vt) < 0:  # a rotation, not a reflection
        u[:, -1] = -u[:, -1]
    aligned = whitened_states @ (u @ vt) @ _symmetric_power(embedding_cov, 0.5) + embedding_mean
    aligned = aligned * (vocabulary.mean_norm / aligned.norm(dim=-1, keepdim=True).clamp_min(1e-6))
    if snap > 0:
        nearest = (aligned @ vocabulary.unit.T).argmax(dim=-1)  # cosine: the norms are equal now
        aligned = (1 - snap) * aligned + snap * vocabulary.embeddings[nearest]
    return aligned


class StatesConfig(MessagesConfig):
    name: Literal["states"] = "states"
    message_tokens: int = Field(STATE_MESSAGE_TOKENS, ge=1, le=MAX_NEW_TOKENS)


@register
class States(Messages):
    """Later agents read earlier messages as their text-anchored states, where a text handoff
    would show the words."""

    Config = StatesConfig

    def __init__(self, config: StatesConfig) -> None:
        super().__init__(config)
        self.vocabulary: dict[int, Vocabulary] = {}  # per model, loaded on first use

    def check(self, engine: str) -> None:
        require(engine, "decode_states")

    def read(self, turn: Turn) -> list[list[int]]:
        """Each row's prompt in pieces, the earlier messages' vectors between them."""
        tokenizer, engine = turn.engine.lm.tokenizer, turn.engine
        pieces = []
        for question, heard in zip(turn.questions, turn.heard):
            context = text_context([(m.role, MARKER) for m in heard])
            chat = chat_messages(turn.role, question, turn.answer_format, context)
            text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            pieces.append([tokenizer(t, add_special_tokens=False).input_ids for t in text.split(MARKER)])
        probes = [
            encode_chat(tokenizer, chat_messages(turn.role, p, turn.answer_format), False) for p in PROBES
        ]
        engine.prefill(turn.memory, [p[0] for p in pieces], Reading(common_prefix(probes)))
        for index in range(1, len(pieces[0])):
            message = [heard[index - 1].vectors for heard in turn.heard]
            if any(block.shape[0] for block in message):  # every row's message may be empty
                engine.append_vectors(turn.memory, message)
            engine.prefill(turn.memory, [p[index] for p in pieces])
        return [[t for piece in row for t in piece] for row in pieces]

    def send(self, turn: Turn, sampling: Sampling) -> tuple[list[list[int]], list[Message]]:
        """Decode the message, keeping the states that chose its tokens; hand on the last
        `STATE_MESSAGE_TOKENS` of them, anchored onto the token embeddings."""
        kept: list[list[torch.Tensor]] = [[] for _ in turn.questions]

        def keep(rows: list[int], states: torch.Tensor) -> None:
            for row, state in zip(rows, states):
                kept[row].append(state)

        sampling = replace(sampling, max_new_tokens=self.config.message_tokens)
        tokens = turn.engine.decode(turn.memory, Decoding(sampling, turn.seeds, on_state=keep))
        model = turn.engine.lm.model
        vocabulary = self.vocabulary.setdefault(id(model), Vocabulary.of(model))
        hidden = model.config.get_text_config().hidden_size
        texts = turn.engine.lm.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        messages = []
        for states, ids, text in zip(kept, tokens, texts):
            count = min(len(ids), STATE_MESSAGE_TOKENS)
            vectors = torch.zeros(0, hidden)
            if count:
                chosen = torch.stack(states[: len(ids)][-count:])
                vectors = anchored_states(chosen, torch.tensor(ids[-count:], dtype=torch.long), vocabulary)
            messages.append(Message(turn.role.name, text.strip(), vectors))
        return tokens, messages

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

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from .realign import input_embedding_matrix

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

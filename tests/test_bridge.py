"""The text-anchored handoff (`--handoff states`) and capped messages."""

from __future__ import annotations

import pytest
import torch

from latentmas import LatentMAS, Sampling, TextMAS
from latentmas.errors import LatentMASError
from latentmas.handoffs import states
from latentmas.handoffs.states import Vocabulary, anchored_states
from latentmas.spec import RunSpec

from .conftest import QUESTIONS

SAMPLING = Sampling(max_new_tokens=10)


def test_states_that_are_a_rotation_of_their_tokens_come_back_as_those_tokens():
    """The Procrustes fit undoes a rotation, scaling and shift of the embeddings; snapped all
    the way, each vector is its own token's embedding."""
    torch.manual_seed(0)
    embeddings = torch.randn(60, 8)
    vocabulary = Vocabulary(
        embeddings, embeddings / embeddings.norm(dim=-1, keepdim=True), embeddings.norm(dim=-1).mean()
    )
    tokens = torch.arange(0, 40, 2)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8))
    if torch.det(rotation) < 0:  # a proper rotation (the fit never reflects)
        rotation[:, 0] = -rotation[:, 0]
    states = 3.0 * embeddings[tokens] @ rotation + 0.5
    torch.testing.assert_close(anchored_states(states, tokens, vocabulary, snap=1.0), embeddings[tokens])
    unsnapped = anchored_states(states, tokens, vocabulary, snap=0.0)
    assert torch.allclose(unsnapped.norm(dim=-1), vocabulary.mean_norm.expand(len(tokens)), rtol=1e-4)


def test_the_states_handoff_is_batch_invariant_and_caps_messages(tiny):
    method = LatentMAS(tiny, SAMPLING, handoff="states:message_tokens=6")
    batched = method.solve(QUESTIONS)
    alone = [method.solve([q])[0] for q in QUESTIONS]
    assert [a.final_text for a in batched] == [a.final_text for a in alone]
    assert all(step.output_tokens <= 6 for a in batched for step in a.agents[:-1])
    assert all(step.mode == "text" for a in batched for step in a.agents)
    assert method.describe() == {
        "method": "latent_mas",
        "team": "sequential",
        "handoff": {"name": "states", "message_tokens": 6},
    }


def test_the_next_agent_reads_the_vectors(tiny, monkeypatch):
    """Replacing every handed-over vector by zeros changes what the solver writes."""
    real = LatentMAS(tiny, SAMPLING, handoff="states").solve(QUESTIONS)
    monkeypatch.setattr(
        states, "anchored_states", lambda hidden, tokens, vocabulary: torch.zeros_like(hidden)
    )
    zeroed = LatentMAS(tiny, SAMPLING, handoff="states").solve(QUESTIONS)
    assert [a.final_text for a in real] != [a.final_text for a in zeroed]


def test_text_mas_messages_can_be_capped(tiny):
    answers = TextMAS(tiny, SAMPLING, message_tokens=3).solve(QUESTIONS[:3])
    assert all(step.output_tokens <= 3 for a in answers for step in a.agents[:-1])
    assert TextMAS(tiny, SAMPLING, message_tokens=3).describe()["handoff"] == {
        "name": "text",
        "message_tokens": 3,
    }
    assert TextMAS(tiny, SAMPLING).describe()["handoff"]["message_tokens"] is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(handoff="telepathy"), "unknown handoff"),
        (dict(method="text_mas", handoff="states"), "goes with --method latent_mas"),
        (dict(handoff="states", thought_weight=0.5), "--thought-weight: not an option of the states handoff"),
        (dict(handoff="states", memory="latent_only"), "--memory shapes latent thoughts"),
        (dict(method="single", message_tokens=8), "a single agent hands nothing over"),
        (
            dict(method="text_mas", message_tokens=0),
            "message_tokens: Input should be greater than or equal to 1",
        ),
    ],
)
def test_bad_handoff_options_are_clear_errors(options, message):
    with pytest.raises(LatentMASError, match=message):
        RunSpec(**options)

"""Heterogeneous agents: the cross-model map, its quality gate, and latent handoff."""

from __future__ import annotations

import logging

import pytest
import torch

from latentmas import Sampling
from latentmas.engines import transformers as hf
from latentmas.engines.forward import lm_logits
from latentmas.errors import LatentMASError
from latentmas.methods import hetero
from latentmas.methods.hetero import HeteroMAS, fit_cross_map, parse_agent_models, surface_strings
from latentmas.models import LoadedModel
from latentmas.tiny import tiny_model, tiny_tokenizer

QUESTIONS = ["What is 2+2?", "Janet has 16 eggs and eats 3. How many are left?", "x"]


def _model(name, vocab, hidden, arch, seed):
    tok = tiny_tokenizer(vocab)
    model = tiny_model(arch, vocab_size=len(tok) + 8, seed=seed, hidden_size=hidden, num_attention_heads=4)
    return LoadedModel(model=model, tokenizer=tok, name=name)


@pytest.fixture(scope="module")
def unrelated():
    return _model("a-llama", 400, 64, "llama", 0), _model("b-qwen2", 300, 48, "qwen2", 1)


@pytest.fixture(scope="module")
def related():
    """B's embeddings of shared tokens are a linear image of A's, as for related models."""
    a, b = _model("ra-llama", 400, 64, "llama", 2), _model("rb-qwen3", 300, 48, "qwen3", 3)
    sa, sb = surface_strings(a), surface_strings(b)
    shared = sorted(set(sa) & set(sb))
    torch.manual_seed(4)
    mixing = torch.randn(64, 48) / 8
    with torch.no_grad():
        ea, eb = a.model.get_input_embeddings().weight, b.model.get_input_embeddings().weight
        for s in shared:
            eb[sb[s]] = ea[sa[s]] @ mixing
    return a, b


def test_map_between_models_of_different_widths_and_vocabularies(related):
    a, b = related
    assert a.model.config.hidden_size != b.model.config.hidden_size and len(a.tokenizer) != len(b.tokenizer)
    cross = fit_cross_map(a, b)
    assert cross.matrix.shape == (64, 48)
    assert cross.shared_tokens > 100
    assert cross.heldout_cosine > 0.95 and cross.heldout_top1 > 0.9


def test_unrelated_models_get_a_poor_map_and_fall_back_to_text(unrelated, caplog, monkeypatch):
    monkeypatch.setattr(hetero, "MIN_SHARED_TOKENS", 50)
    a, b = unrelated
    cross = fit_cross_map(a, b)
    assert cross.heldout_top1 < 0.2 and not cross.usable
    models = {"planner": a, "critic": a, "refiner": b, "solver": b}
    with caplog.at_level(logging.WARNING):
        method = HeteroMAS(models, Sampling(max_new_tokens=4), latent_steps=2)
    assert not method.handoff.shares_memory and "passing text" in caplog.text
    (answer,) = method.solve(["2+2"])
    assert [s.mode for s in answer.agents] == ["text"] * 4


def test_latent_handoff_runs_and_is_batch_invariant(related, monkeypatch):
    monkeypatch.setattr(hetero, "MIN_SHARED_TOKENS", 50)
    a, b = related
    models = {"planner": a, "critic": a, "refiner": b, "solver": b}
    method = HeteroMAS(models, Sampling(max_new_tokens=6), latent_steps=3)
    assert method.handoff.shares_memory
    batched = method.solve(QUESTIONS)
    alone = [method.solve([q])[0] for q in QUESTIONS]
    assert [x.final_text for x in batched] == [x.final_text for x in alone]
    assert [s.mode for s in alone[0].agents] == ["latent", "latent", "latent", "text"]
    assert alone[0].latent_steps == 9
    # The handoff really carries A's thoughts: with the map zeroed (same positions, no content)
    # B answers differently. Had the mapped thoughts been dropped, both would agree.
    # Compared on the solver's first logits, which any change in its cache moves.
    first_logits = []
    logits = lm_logits
    monkeypatch.setattr(
        hf, "lm_logits", lambda *args: (first_logits.append(logits(*args)), first_logits[-1])[1]
    )
    method.solve(QUESTIONS)
    mapped = first_logits[0]
    cross = method.maps[(a.name, b.name)]
    cross.matrix = torch.zeros_like(cross.matrix)
    first_logits.clear()
    method.solve(QUESTIONS)
    assert (first_logits[0] - mapped).abs().max() > 0.1


def test_agent_model_option_is_parsed_and_checked():
    roles = ["planner", "critic", "refiner", "solver"]
    assert parse_agent_models("planner=A, solver=B", roles) == {"planner": "A", "solver": "B"}
    with pytest.raises(LatentMASError, match="unknown role"):
        parse_agent_models("judge=A", roles)
    with pytest.raises(LatentMASError, match="role=model"):
        parse_agent_models("planner", roles)

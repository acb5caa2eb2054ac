"""The trained handoff: an adapter learned with the model frozen, saved with its model's
fingerprint, and run like any other handoff."""

from __future__ import annotations

import json

import pytest
import torch

from latentmas import LatentMAS, Sampling, TextMAS, evaluate, get_task
from latentmas.errors import LatentMASError
from latentmas.handoffs.trained import load_adapter
from latentmas.tiny import tiny_loaded
from latentmas.training import TrainSettings, read_transcripts, train_handoff

from .conftest import QUESTIONS

SETTINGS = dict(rank=8, latent_steps=2, target_tokens=6, top_k=16, lr=3e-2, accumulate=1, checkpoint_every=1)


@pytest.fixture(scope="module")
def transcripts(tmp_path_factory):
    """What a text team of the tiny model wrote for six GSM8K questions (results.jsonl)."""
    lm = tiny_loaded("llama")
    task = get_task("gsm8k")
    out = tmp_path_factory.mktemp("transcripts")
    evaluate(TextMAS(lm, Sampling(max_new_tokens=12)), task, task.load()[:6], out, batch_size=6)
    return lm, out / "results.jsonl", task.answer_format


def test_a_tiny_model_trains_and_its_loss_falls(transcripts, tmp_path):
    lm, path, answer_format = transcripts
    losses = []
    settings = TrainSettings(**{**SETTINGS, "epochs": 8, "lr": 0.1})
    adapter = train_handoff(
        lm, path, tmp_path, answer_format, settings, lambda d, t, loss, r: losses.append(loss)
    )
    assert adapter.is_file() and (tmp_path / "loss.png").is_file() and (tmp_path / "losses.jsonl").is_file()
    rows = (tmp_path / "losses.jsonl").read_text().splitlines()
    per_question = [json.loads(row)["loss"] for row in rows]
    first, last = sum(per_question[:6]) / 6, sum(per_question[-6:]) / 6  # the same six questions
    assert last < first - 0.05, (first, last)
    params = sum(p.numel() for p in load_adapter(adapter, lm.model).parameters())
    assert params < 0.1 * sum(p.numel() for p in lm.model.parameters())


def test_training_resumes_where_it_stopped_and_ends_as_if_it_had_not(transcripts, tmp_path):
    lm, path, answer_format = transcripts
    settings = TrainSettings(epochs=2, **SETTINGS)
    whole = load_adapter(train_handoff(lm, path, tmp_path / "whole", answer_format, settings), lm.model)

    class Stop(Exception):
        pass

    def stop_after_four(done, total, loss, rate):
        if done == 4:
            raise Stop

    with pytest.raises(Stop):
        train_handoff(lm, path, tmp_path / "stopped", answer_format, settings, stop_after_four)
    resumed = load_adapter(train_handoff(lm, path, tmp_path / "stopped", answer_format, settings), lm.model)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(LatentMASError, match="other settings"):
        train_handoff(lm, path, tmp_path / "stopped", answer_format, TrainSettings(epochs=3, **SETTINGS))


@pytest.fixture(scope="module")
def adapter(transcripts, tmp_path_factory):
    lm, path, answer_format = transcripts
    return train_handoff(
        lm, path, tmp_path_factory.mktemp("adapter"), answer_format, TrainSettings(epochs=2, **SETTINGS)
    )


def test_the_adapter_reloads_and_answers_token_for_token_batch_or_not(transcripts, adapter):
    lm = transcripts[0]
    handoff = f"trained:adapter={adapter}"
    first = LatentMAS(lm, Sampling(max_new_tokens=10), latent_steps=2, handoff=handoff).solve(QUESTIONS)
    again = LatentMAS(lm, Sampling(max_new_tokens=10), latent_steps=2, handoff=handoff)
    assert [a.final_text for a in again.solve(QUESTIONS)] == [a.final_text for a in first]
    assert [again.solve([q])[0].final_text for q in QUESTIONS] == [a.final_text for a in first]
    paper = LatentMAS(lm, Sampling(max_new_tokens=10), latent_steps=2).solve(QUESTIONS)
    assert [a.final_text for a in paper] != [a.final_text for a in first]  # the adapter changes thoughts


def test_an_adapter_of_another_model_is_one_clear_error(adapter, tmp_path):
    other = tiny_loaded("qwen2")
    with pytest.raises(LatentMASError, match="was trained on another model"):
        LatentMAS(
            other, Sampling(max_new_tokens=4), latent_steps=2, handoff=f"trained:adapter={adapter}"
        ).solve(["1+1"])
    with pytest.raises(LatentMASError, match="no adapter at"):
        load_adapter(tmp_path / "missing.safetensors", other.model)
    (tmp_path / "junk.safetensors").write_text("not a tensor file")
    with pytest.raises(LatentMASError, match="is not a safetensors adapter"):
        load_adapter(tmp_path / "junk.safetensors", other.model)


def test_transcripts_must_be_a_text_teams(tmp_path, transcripts):
    with pytest.raises(LatentMASError, match="no transcripts at"):
        read_transcripts(tmp_path / "none.jsonl", 4)
    assert len(read_transcripts(transcripts[1], 4)) >= 1


def test_the_server_serves_its_own_adapter_and_no_file_a_request_names(transcripts, adapter):
    from fastapi.testclient import TestClient

    from latentmas.serve.server import create_app

    lm = transcripts[0]
    body = {"messages": [{"role": "user", "content": "2+2?"}], "max_tokens": 3, "latent_steps": 2}
    with TestClient(create_app(lm, max_wait_ms=0, adapter=str(adapter))) as client:
        assert client.post("/v1/chat/completions", json={**body, "handoff": "trained"}).status_code == 200
        named = client.post("/v1/chat/completions", json={**body, "handoff": f"trained:adapter={adapter}"})
        assert named.status_code == 400 and "cannot name a file" in named.json()["error"]["message"]
        flat = client.post("/v1/chat/completions", json={**body, "adapter": "/etc/passwd"})
        assert flat.status_code == 400
    with TestClient(create_app(lm, max_wait_ms=0)) as client:
        none = client.post("/v1/chat/completions", json={**body, "handoff": "trained"})
        assert none.status_code == 400 and "without --adapter" in none.json()["error"]["message"]

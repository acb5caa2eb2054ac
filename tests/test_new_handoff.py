"""Adding a handoff is one file: this one, written here and registered here, runs through the
Python API, `latentmas run --handoff NAME` and the server without touching any other module.

The handoff replaces each thought by noise of the same norm: the paper's realigned state is
computed, then swapped for a fixed random direction scaled to its norm (the same direction
for every row, so the answers stay independent of the batch).
"""

from __future__ import annotations

import sys
from typing import Literal

import pytest
import torch
from pydantic import Field

from latentmas import LatentMAS, Sampling
from latentmas.cli import main
from latentmas.handoffs import Thoughts, ThoughtsConfig, register
from latentmas.handoffs.base import _REGISTRY
from latentmas.spec import RunSpec
from latentmas.tiny import tiny_loaded

from .conftest import QUESTIONS


class NoiseConfig(ThoughtsConfig):
    name: Literal["noise"] = "noise"
    scale: float = Field(1.0, gt=0.0, description="Noise norm as a share of the thought's.")


class Noise(Thoughts):
    """Thoughts replaced by noise of the same norm (times `scale`)."""

    Config = NoiseConfig
    config: NoiseConfig

    def thought(self, engine, hidden: torch.Tensor) -> torch.Tensor:
        real = super().thought(engine, hidden)
        direction = torch.randn(real.shape[-1], generator=torch.Generator().manual_seed(0)).to(real)
        return direction / direction.norm() * real.norm(dim=-1, keepdim=True) * self.config.scale


@pytest.fixture
def noise():
    register(Noise)
    yield
    _REGISTRY.pop("noise")  # leave the registry as the other tests expect it


SAMPLING = Sampling(max_new_tokens=6)


def test_the_python_api_runs_a_handoff_registered_outside_the_package(noise, tiny):
    seen = []
    method = LatentMAS(tiny, SAMPLING, latent_steps=2, handoff="noise:scale=0.5")
    method.watch(lambda questions, described: Recorder(seen))
    batched = method.solve(QUESTIONS[:4])
    assert [a.final_text for a in batched] == [method.solve([q])[0].final_text for q in QUESTIONS[:4]]
    assert method.describe()["handoff"] == {
        "name": "noise",
        "realign": "ridge",
        "max_thought_entropy": None,
        "max_entropy_jump": None,
        "scale": 0.5,
    }
    paper = LatentMAS(tiny, SAMPLING, latent_steps=2).solve(QUESTIONS[:4])
    assert [a.final_text for a in batched] != [a.final_text for a in paper]
    first = seen[0]  # [batch, hidden]: every row's thought points the same way
    cosine = torch.nn.functional.cosine_similarity(first, first[:1], dim=-1)
    torch.testing.assert_close(cosine, torch.ones_like(cosine))


class Recorder:
    def __init__(self, seen: list) -> None:
        self.seen = seen

    def begin_agent(self, role, prompts) -> None:
        pass

    def on_step(self, step, hidden, embedding, active) -> None:
        self.seen.append(embedding.clone())

    def finish(self, answers) -> None:
        pass


def test_the_spec_validates_its_options(noise):
    assert RunSpec(handoff="noise").handoff.scale == 1.0
    with pytest.raises(Exception, match="scale: Input should be greater than 0"):
        RunSpec(handoff="noise:scale=0")
    with pytest.raises(Exception, match="noise handoff"):
        RunSpec(handoff="noise", relay_keep=0.5)  # another handoff's option


def test_the_command_line_runs_it(noise, monkeypatch, capsys, tmp_path):
    lm = tiny_loaded("llama")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    argv = ["latentmas", "run", "What is 2+2?", "--model", str(tmp_path), "--max-new-tokens", "3"]
    monkeypatch.setattr(sys, "argv", [*argv, "--latent-steps", "2", "--handoff", "noise:scale=2"])
    with pytest.raises(SystemExit) as exit_info:
        main()
        raise SystemExit(0)
    assert exit_info.value.code == 0
    assert "thought in" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", [*argv, "--handoff", "noise:scale=-1"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and "--scale: Input should be greater than 0" in capsys.readouterr().err


def test_the_server_serves_it(noise):
    from fastapi.testclient import TestClient

    from latentmas.serve.server import create_app

    with TestClient(create_app(tiny_loaded("llama"), max_wait_ms=0)) as client:
        body = {"messages": [{"role": "user", "content": "2+2?"}], "max_tokens": 3, "latent_steps": 2}
        ok = client.post("/v1/chat/completions", json={**body, "handoff": "noise:scale=0.5"})
        assert ok.status_code == 200 and ok.json()["usage"]["latent_tokens"] == 6
        named = client.post("/v1/chat/completions", json={**body, "handoff": {"name": "noise", "scale": 2}})
        assert named.status_code == 200
        bad = client.post("/v1/chat/completions", json={**body, "handoff": "noise:scale=0"})
        assert bad.status_code == 400 and "scale" in bad.json()["error"]["message"]

"""The llama.cpp engine (optional): runs only where llama-cpp-python is installed."""

from __future__ import annotations

import importlib.util

import pytest

from latentmas import Sampling
from latentmas.models import embedded_gguf_path

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="needs llama-cpp-python (optional, built from source; not installed by the README's command)",
)


@pytest.fixture(scope="module")
def engine_method(embedded):
    from latentmas import LatentMAS
    from latentmas.llamacpp_engine import LlamaCppEngine

    engine = LlamaCppEngine(embedded, embedded_gguf_path())
    yield LatentMAS(engine, Sampling(max_new_tokens=16), latent_steps=4)
    engine.close()


def test_llamacpp_latent_mas_answers_with_latent_agents(engine_method):
    answers = engine_method.solve(
        ["What is 2+2?", "A robe takes 2 bolts of blue fiber. How many?"], "Box it."
    )
    assert all(a.final_text for a in answers)
    assert [s.mode for s in answers[0].agents] == ["latent", "latent", "latent", "text"]
    assert answers[0].latent_steps == 12 and 0 < answers[0].output_tokens <= 16


def test_llamacpp_results_do_not_depend_on_the_batch(engine_method):
    questions = ["What is 2+2?", "Count to three."]
    together = [a.final_text for a in engine_method.solve(questions)]
    assert together == [engine_method.solve([q])[0].final_text for q in questions]


def test_llamacpp_hidden_state_matches_transformers(embedded, engine_method):
    import numpy as np
    import torch

    from latentmas import engine
    from latentmas.engine import SharedMemory

    prompt = embedded.tokenizer("The capital of France is Paris. The capital of Germany is").input_ids
    with torch.inference_mode():
        memory = SharedMemory.empty(embedded.model, 1)
        ours = engine.prefill(embedded.model, memory, [prompt], 0)[0].numpy()
    cpp = engine_method.engine
    cpp.new_memory(1)
    theirs = cpp.prefill(None, [prompt])[0].numpy()
    cosine = float(ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs))
    assert cosine > 0.99  # the same weights; llama.cpp quantizes activations in its matmuls


def test_llamacpp_gets_the_drift_guard_and_tracing_from_the_agent_loop(embedded, engine_method):
    from latentmas import LatentMAS
    from latentmas.trace import Tracing

    method = LatentMAS(
        engine_method.engine, Sampling(max_new_tokens=4), latent_steps="auto:6", observers=[Tracing(embedded)]
    )
    (answer,) = method.solve(["What is 2+2?"])
    assert answer.trace is not None and [a.role for a in answer.trace.agents][-1] == "solver"
    recorded = [len(a.steps) for a in answer.trace.agents[:3]]
    assert recorded == [s.latent_steps for s in answer.agents[:3]]
    assert all(1 <= n <= 6 for n in recorded)
    assert answer.trace.agents[0].steps[0].logit_lens  # the logit lens reads llama.cpp's thoughts

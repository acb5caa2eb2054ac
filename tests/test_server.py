"""The OpenAI-compatible server: real clients, batching, streaming, and every bad input."""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time

import httpx
import openai
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings

from latentmas import RunSpec, build_solver
from latentmas.engines import transformers as hf
from latentmas.engines.forward import lm_logits
from latentmas.serve.server import create_app
from latentmas.tiny import tiny_loaded

QUESTIONS = ["What is 2+2?", "x", "A robe takes 2 bolts of blue fiber. How many in total?", "Count to three."]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    def __init__(self, app) -> None:
        self.port = _free_port()
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def lm():
    return tiny_loaded("qwen3", max_position_embeddings=2048)


@pytest.fixture(scope="module")
def server(lm):
    running = RunningServer(create_app(lm, max_batch=8, max_wait_ms=50, default_max_tokens=8))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def alone(lm, question, method="latent_mas", max_tokens=8, latent_steps=10):
    spec = RunSpec(method=method, max_new_tokens=max_tokens, latent_steps=str(latent_steps))
    return build_solver(spec, lm).solve([question])[0]


def test_openai_client_gets_the_same_answer_as_the_library(client, lm):
    reply = client.chat.completions.create(
        model="any",
        messages=[{"role": "user", "content": QUESTIONS[0]}],
        max_tokens=8,
        extra_body={"method": "latent_mas", "latent_steps": 3},
    )
    expected = alone(lm, QUESTIONS[0], latent_steps=3)
    assert reply.choices[0].message.content == expected.final_text
    assert reply.choices[0].finish_reason == ("length" if expected.output_tokens == 8 else "stop")
    usage = reply.usage.model_dump()
    assert usage["completion_tokens"] == expected.output_tokens
    assert usage["prompt_tokens"] == expected.input_tokens
    assert usage["latent_tokens"] == 9


def test_streaming_delivers_the_same_text(client, lm):
    stream = client.chat.completions.create(
        model="any",
        messages=[{"role": "user", "content": QUESTIONS[2]}],
        max_tokens=8,
        stream=True,
        extra_body={"method": "text_mas"},
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces).strip() == alone(lm, QUESTIONS[2], "text_mas").final_text
    assert len([p for p in pieces if p]) >= 2


def test_concurrent_requests_are_batched_and_answered_as_if_alone(server, client, lm):
    def ask(question):
        reply = client.chat.completions.create(
            model="any",
            messages=[{"role": "user", "content": question}],
            max_tokens=8,
            extra_body={"latent_steps": 2},
        )
        return reply.choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(len(QUESTIONS)) as pool:
        answers = list(pool.map(ask, QUESTIONS))
    assert answers == [alone(lm, q, latent_steps=2).final_text for q in QUESTIONS]
    metrics = httpx.get(f"{server.url}/metrics").text
    sizes = [line for line in metrics.splitlines() if line.startswith("latentmas_batch_size_sum")]
    counts = [line for line in metrics.splitlines() if line.startswith("latentmas_batch_size_count")]
    assert float(sizes[0].split()[-1]) > float(counts[0].split()[-1])  # some batch held more than one row


def test_models_health_and_metrics(server):
    assert httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"] == "tiny-qwen3"
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    metrics = httpx.get(f"{server.url}/metrics").text
    for name in (
        "latentmas_requests_total",
        "latentmas_errors_total",
        "latentmas_request_seconds_bucket",
        "latentmas_tokens_total",
        "latentmas_latent_steps_total",
        "latentmas_batch_size_bucket",
    ):
        assert name in metrics


LONG = "word " * 3000
BAD_BODIES = [
    ("{not json", 400, "JSON"),
    ({"messages": "hello"}, 400, "messages"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "method": "telepathy"}, 400, "method"),
    ({"messages": [{"role": "user", "content": "hi"}], "latent_steps": -1}, 400, "latent_steps"),
    ({"messages": [{"role": "user", "content": "hi"}], "latent_steps": 10**9}, 400, "latent_steps"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "temperature"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "role"),
    ({"messages": [{"role": "system", "content": "only a system prompt"}]}, 400, "user message"),
    ({"messages": [{"role": "user", "content": LONG}]}, 400, "context"),
    ({"messages": [{"role": "user", "content": "hi"}], "latent_steps": 600}, 400, "context"),
    ({"messages": [{"role": "user", "content": "hi"}], "thought_weight": 0}, 400, "thought_weight"),
    (
        {"messages": [{"role": "user", "content": "hi"}], "thoughts_enter": True, "handoff": "latent"},
        400,
        "chooses the reentry handoff",
    ),
    ({"messages": [{"role": "user", "content": "hi"}], "relay_keep": 0}, 400, "relay_keep"),
    (
        {"messages": [{"role": "user", "content": "hi"}], "method": "single", "max_thought_entropy": 4},
        400,
        "a single agent hands nothing over",
    ),
]


@pytest.mark.parametrize(("body", "status", "words"), BAD_BODIES)
def test_bad_requests_get_4xx_with_an_openai_error_body(server, body, status, words):
    url = f"{server.url}/v1/chat/completions"
    if isinstance(body, str):
        response = httpx.post(url, content=body, headers={"content-type": "application/json"})
    else:
        response = httpx.post(url, json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert words.lower() in error["message"].lower()
    assert error["type"] == "invalid_request_error"
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def test_unknown_route_is_404_in_the_same_format(server):
    response = httpx.get(f"{server.url}/v1/nothing")
    assert response.status_code == 404 and "error" in response.json()


def test_full_queue_answers_503(server):
    batcher = server.app.state.batcher
    batcher.in_flight += batcher.queue_size  # as if the queue were full
    try:
        response = httpx.post(
            f"{server.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
        )
    finally:
        batcher.in_flight -= batcher.queue_size
    assert response.status_code == 503 and "busy" in response.json()["error"]["message"]


def test_client_that_disconnects_mid_stream_stops_its_row(server, monkeypatch):
    body = {
        "messages": [{"role": "user", "content": "Tell a long story"}],
        "max_tokens": 400,
        "stream": False,
        "method": "single",
    }
    # Control: left alone, this request decodes hundreds of tokens.
    whole = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120).json()
    decoded = whole["usage"]["completion_tokens"]
    assert decoded > 200
    steps = []
    logits = lm_logits
    monkeypatch.setattr(hf, "lm_logits", lambda *a: (steps.append(1), logits(*a))[1])
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True}) as response:
        for line in response.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break  # decoding has begun: hang up
    deadline = time.monotonic() + 20
    while httpx.get(f"{server.url}/health").json()["in_flight"] != 0:
        assert time.monotonic() < deadline, "slot was not freed"
        time.sleep(0.05)
    # The slot counter drops as soon as the client leaves; the engine may still be busy. One
    # worker runs batches in order, so a one-token request returns only after that batch ended.
    after = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "max_tokens": 1}, timeout=120)
    assert after.status_code == 200
    # The engine stopped decoding the row soon after the client left, far short of `decoded`.
    assert 0 < len(steps) - 1 < decoded / 2


def test_shutdown_finishes_requests_in_flight(lm):
    running = RunningServer(create_app(lm, max_batch=1, max_wait_ms=0))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 300, "method": "single"}
        pending = pool.submit(httpx.post, f"{running.url}/v1/chat/completions", json=body, timeout=60)
        time.sleep(0.3)
        running.stop()
        assert pending.result().status_code == 200


def test_request_schema_fuzz_never_gets_a_server_error():
    """Property-based requests built from the app's own OpenAPI schema (schemathesis
    strategies driven by hypothesis): valid or not, none may get a 5xx."""
    app = create_app(tiny_loaded("llama", max_position_embeddings=1024), default_max_tokens=2)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operation = schema["/v1/chat/completions"]["POST"]

    statuses: set[int] = set()
    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        def fuzz(case):
            response = case.call()
            assert response.status_code < 500, response.text
            statuses.add(response.status_code)

        fuzz()
    assert 200 in statuses and any(400 <= code < 500 for code in statuses)  # both kinds were exercised


# --- Slots, cancellation, seeds, system messages, streaming text, bounds --------------------


def test_a_streaming_request_whose_generator_never_starts_frees_its_slot(server, lm):
    """The scheduler, not the HTTP generator, owns the slot: a stream nobody reads (its
    client left before the response began) still gives its slot back."""
    import asyncio

    from latentmas.serve.scheduler import Job

    batcher = server.app.state.batcher
    loop = asyncio.new_event_loop()
    try:
        spec = RunSpec(method="single", max_new_tokens=2)
        job = Job("hi", spec, loop, loop.create_future(), asyncio.Queue())
        batcher.submit(job)
        loop.run_until_complete(asyncio.wait_for(job.done, 60))
        deadline = time.monotonic() + 10
        while batcher.in_flight != 0:
            assert time.monotonic() < deadline, "the slot leaked"
            time.sleep(0.02)
    finally:
        loop.close()


def test_a_batch_whose_rows_are_all_cancelled_stops_at_the_next_agent(lm, monkeypatch):
    from latentmas.methods import SolveCancelled

    method = build_solver(RunSpec(method="latent_mas", latent_steps="2", max_new_tokens=4), lm)
    prefills = []
    real = method.engine.prefill
    monkeypatch.setattr(method.engine, "prefill", lambda *a, **k: (prefills.append(1), real(*a, **k))[1])
    with pytest.raises(SolveCancelled):
        method.solve(["q1", "q2"], keep_going=lambda row: len(prefills) < 1)  # cancelled after the planner
    assert len(prefills) == 1  # the critic never started
    assert method.solve(["q1"], keep_going=lambda row: True)[0].output_tokens > 0


def test_requests_without_a_seed_get_different_seeds(server, monkeypatch):
    batcher = server.app.state.batcher
    seen = []
    submit = batcher.submit
    monkeypatch.setattr(batcher, "submit", lambda job: (seen.append(job.spec.seed), submit(job))[1])
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 1.0, "max_tokens": 2}
    for _ in range(3):
        assert httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60).status_code == 200
    assert len(set(seen)) == 3
    httpx.post(f"{server.url}/v1/chat/completions", json={**body, "seed": 7}, timeout=60)
    assert seen[-1] == 7


def test_system_messages_reach_the_agents():
    from latentmas.serve.server import Message, question_from_messages

    question = question_from_messages(
        [Message(role="system", content="Answer in French."), Message(role="user", content="What is 2+2?")]
    )
    assert "Answer in French." in question and question.endswith("What is 2+2?")


def test_streamed_text_is_decoded_a_window_at_a_time_and_equals_the_whole(monkeypatch):
    from latentmas.models import load_model
    from latentmas.serve.server import IncrementalText

    tokenizer = load_model(None, device="cpu", dtype="float32").tokenizer
    text = "Héllo wörld, 你好 🙂 — a longer line\n  with  spaces and émojis 🎉 at the end."
    ids = tokenizer.encode(text, add_special_tokens=False)
    lengths = []
    decode = tokenizer.decode
    monkeypatch.setattr(tokenizer, "decode", lambda t, **k: (lengths.append(len(t)), decode(t, **k))[1])
    stream = IncrementalText(tokenizer)
    assert "".join(stream.add(t) for t in ids) == decode(ids, skip_special_tokens=True)
    assert len(ids) > 20 and max(lengths) <= IncrementalText.WINDOW + 4  # never the whole text


def test_request_bounds_are_runspecs_bounds(server):
    url = f"{server.url}/v1/chat/completions"
    hi = [{"role": "user", "content": "hi"}]
    assert (
        httpx.post(url, json={"messages": hi, "temperature": 3.0, "max_tokens": 2}, timeout=60).status_code
        == 200
    )
    assert httpx.post(url, json={"messages": hi, "temperature": 10.5}).status_code == 400
    assert httpx.post(url, json={"messages": hi, "max_tokens": 40000}).status_code == 400

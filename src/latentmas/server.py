"""An OpenAI-compatible HTTP API over the library, with dynamic batching.

    POST /v1/chat/completions   (extra fields: method, latent_steps, topology)
    GET  /v1/models, /health, /metrics (Prometheus)

Concurrent requests with the same settings are gathered for up to `max_wait_ms` into one
engine batch of at most `max_batch` rows. Results are batch-invariant, so a request gets
exactly what it would get alone (greedy). One worker thread owns the model.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import Sampling
from .errors import LatentMASError
from .methods import MAX_LATENT_STEPS, Answer, Method, make_method
from .models import LoadedModel
from .roles import chat_messages, encode_chat, shared_conversation, single_role, topology_roles

MAX_TOKENS_LIMIT = 8192


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class ChatRequest(BaseModel):
    """The OpenAI chat-completions body, plus LatentMAS's own fields."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = None
    stream: bool = False
    method: Literal["single", "text_mas", "latent_mas"] = "latent_mas"
    latent_steps: Annotated[int, Field(ge=0, le=MAX_LATENT_STEPS)] = 10
    topology: Literal["sequential", "hierarchical"] = "sequential"


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


@dataclass
class Job:
    """One request waiting for (or inside) an engine batch."""

    question: str
    key: tuple
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future
    tokens: asyncio.Queue | None = None  # streaming only: token ids, then None
    cancelled: threading.Event = field(default_factory=threading.Event)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "latentmas_requests", "Chat completion requests", ["method"], registry=self.registry
        )
        self.errors = Counter(
            "latentmas_errors", "Requests answered with an error", ["status"], registry=self.registry
        )
        self.latency = Histogram("latentmas_request_seconds", "Request latency", registry=self.registry)
        self.tokens = Counter("latentmas_tokens", "Tokens", ["kind"], registry=self.registry)
        self.latent = Counter("latentmas_latent_steps", "Latent steps taken", registry=self.registry)
        self.batch = Histogram(
            "latentmas_batch_size",
            "Rows per engine batch",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )


class Batcher:
    """Gathers jobs with equal settings into batches and runs them on one worker thread."""

    def __init__(
        self, lm: LoadedModel, max_batch: int, max_wait_ms: float, queue_size: int, metrics: Metrics
    ):
        self.lm, self.max_batch, self.max_wait = lm, max_batch, max_wait_ms / 1000
        self.queue_size, self.metrics = queue_size, metrics
        self.pending: list[Job] = []
        self.in_flight = 0
        self.closing = False
        self._wake = threading.Condition()
        self._methods: dict[tuple, Method] = {}
        self._thread = threading.Thread(target=self._run, name="latentmas-batcher", daemon=True)
        self._thread.start()

    def full(self) -> bool:
        return self.in_flight >= self.queue_size

    def submit(self, job: Job) -> None:
        with self._wake:
            self.in_flight += 1
            self.pending.append(job)
            self._wake.notify()

    def release(self) -> None:
        with self._wake:
            self.in_flight -= 1
            self._wake.notify_all()

    def drain(self, timeout: float) -> None:
        """Stop taking work and wait for requests in flight (graceful shutdown)."""
        self.closing = True
        deadline = time.monotonic() + timeout
        with self._wake:
            while self.in_flight > 0 and time.monotonic() < deadline:
                self._wake.wait(0.05)

    def _method(self, key: tuple) -> Method:
        """The method for a request's settings; the 32 most recently used are kept."""
        if key in self._methods:
            self._methods[key] = self._methods.pop(key)  # most recent last
        else:
            if len(self._methods) >= 32:
                self._methods.pop(next(iter(self._methods)))
            method, steps, topology, max_tokens, temperature, top_p, seed = key
            sampling = Sampling(max_tokens, temperature, top_p, seed)
            self._methods[key] = make_method(method, self.lm, sampling, topology=topology, latent_steps=steps)
        return self._methods[key]

    def _take_batch(self) -> list[Job]:
        with self._wake:
            while not self.pending:
                self._wake.wait()
            first = self.pending[0]
            deadline = time.monotonic() + self.max_wait
            while True:
                same = [j for j in self.pending if j.key == first.key]
                remaining = deadline - time.monotonic()
                if len(same) >= self.max_batch or remaining <= 0:
                    break
                self._wake.wait(remaining)
            batch = same[: self.max_batch]
            self.pending = [j for j in self.pending if j not in batch]
            return batch

    def _run(self) -> None:
        while True:
            self._run_batch(self._take_batch())

    def _run_batch(self, batch: list[Job]) -> None:
        self.metrics.batch.observe(len(batch))

        def on_token(row: int, token: int) -> bool:
            job = batch[row]
            if job.tokens is not None:
                _notify(job.loop, job.tokens.put_nowait, token)
            return not job.cancelled.is_set()

        try:
            method = self._method(batch[0].key)
            outcomes: list[Answer | Exception] = list(
                method.solve([j.question for j in batch], on_token=on_token)
            )
        except Exception as exc:  # a failed batch fails its requests, never the server
            outcomes = [exc] * len(batch)
        for job, outcome in zip(batch, outcomes):
            if job.tokens is not None:
                _notify(job.loop, job.tokens.put_nowait, None)
            _notify(job.loop, _resolve, job.done, outcome)


def _notify(loop: asyncio.AbstractEventLoop, callback, *args) -> None:
    """Hand a result to a request's event loop; a loop that already closed is ignored."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass


def _resolve(future: asyncio.Future, outcome: Answer | Exception) -> None:
    if future.done():
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def question_from_messages(messages: list[Message]) -> str:
    """The agents get one question: the last user turn, with earlier turns as context."""
    turns = [m for m in messages if m.role != "system"]
    users = [m for m in turns if m.role == "user"]
    if not users:
        raise LatentMASError("messages must contain at least one user message")
    if len(turns) == 1:
        return turns[0].content
    history = "\n".join(f"{m.role}: {m.content}" for m in turns[:-1])
    return f"Conversation so far:\n{history}\n\n{turns[-1].content}"


def create_app(
    lm: LoadedModel,
    *,
    max_batch: int = 8,
    max_wait_ms: float = 10.0,
    queue_size: int = 64,
    default_max_tokens: int = 256,
) -> FastAPI:
    """The FastAPI app serving `lm`. `max_batch=1` turns dynamic batching off."""
    metrics = Metrics()
    batcher = Batcher(lm, max_batch, max_wait_ms, queue_size, metrics)
    context_limit = getattr(lm.model.config.get_text_config(), "max_position_embeddings", None)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        # Shutdown: refuse new requests and let the ones in flight finish.
        await asyncio.to_thread(batcher.drain, 120)

    app = FastAPI(title="latentmas", version="0.1.0", lifespan=lifespan)
    app.state.batcher = batcher

    def fail(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        metrics.errors.labels(status=str(status)).inc()
        return JSONResponse(error_body(message, kind, param), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            return fail(400, "request body is not valid JSON")
        return fail(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}", where or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return fail(
            exc.status_code, str(exc.detail), kind="not_found_error" if exc.status_code == 404 else "error"
        )

    @app.get("/health")
    def health() -> dict:
        return {
            "status": "draining" if batcher.closing else "ok",
            "model": lm.name,
            "in_flight": batcher.in_flight,
        }

    @app.get("/v1/models")
    def models() -> dict:
        return {
            "object": "list",
            "data": [{"id": lm.name, "object": "model", "created": 0, "owned_by": "latentmas"}],
        }

    @app.get("/metrics")
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(
            generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4"
        )

    def context_needed(body: ChatRequest, question: str, max_tokens: int) -> int:
        """The longest cache this request can build (positions the model must support)."""
        if body.method == "single":
            (role,) = single_role()
            return len(encode_chat(lm.tokenizer, chat_messages(role, question, ""), False)) + max_tokens
        roles = topology_roles(body.topology)
        if body.method == "latent_mas":
            segments = shared_conversation(lm.tokenizer, roles, question, "")
            return sum(map(len, segments)) + body.latent_steps * (len(roles) - 1) + max_tokens
        # TextMAS: the last agent reads every earlier agent's text (at most max_tokens each).
        last = encode_chat(lm.tokenizer, chat_messages(roles[-1], question, ""), False)
        return len(last) + len(roles) * max_tokens

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatRequest, request: Request):
        metrics.requests.labels(method=body.method).inc()
        started = time.perf_counter()
        try:
            question = question_from_messages(body.messages)
        except LatentMASError as exc:
            return fail(400, str(exc), "messages")
        max_tokens = body.max_tokens or default_max_tokens
        if context_limit and context_needed(body, question, max_tokens) > context_limit:
            return fail(
                400, f"prompt and max_tokens exceed the model's context of {context_limit} tokens", "messages"
            )
        if batcher.closing:
            return fail(503, "server is shutting down", kind="server_error")
        if batcher.full():
            return fail(503, "server is busy: the request queue is full, retry later", kind="server_error")
        seed = body.seed if body.seed is not None else 0
        key = (body.method, body.latent_steps, body.topology, max_tokens, body.temperature, body.top_p, seed)
        loop = asyncio.get_running_loop()
        job = Job(question, key, loop, loop.create_future(), asyncio.Queue() if body.stream else None)
        batcher.submit(job)
        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if body.stream:
            return StreamingResponse(
                _stream(job, request, request_id, lm, batcher, metrics, started),
                media_type="text/event-stream",
            )
        try:
            answer: Answer = await job.done
        except asyncio.CancelledError:
            job.cancelled.set()  # the client went away: stop decoding its row
            raise
        except Exception as exc:
            return fail(500, f"generation failed: {exc}", kind="server_error")
        finally:
            batcher.release()
        _record(metrics, answer, started)
        return {
            "id": request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": lm.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.final_text},
                    "finish_reason": _finish_reason(answer, max_tokens),
                }
            ],
            "usage": _usage(answer),
        }

    return app


def _finish_reason(answer: Answer, max_tokens: int) -> str:
    """'length' when the final agent used its whole budget, as OpenAI reports it."""
    return "length" if answer.agents and answer.agents[-1].output_tokens >= max_tokens else "stop"


def _usage(answer: Answer) -> dict:
    return {
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": answer.input_tokens + answer.output_tokens,
        "latent_tokens": answer.latent_steps,
    }


def _record(metrics: Metrics, answer: Answer, started: float) -> None:
    metrics.latency.observe(time.perf_counter() - started)
    metrics.tokens.labels(kind="prompt").inc(answer.input_tokens)
    metrics.tokens.labels(kind="completion").inc(answer.output_tokens)
    metrics.latent.inc(answer.latent_steps)


async def _stream(
    job: Job,
    request: Request,
    request_id: str,
    lm: LoadedModel,
    batcher: Batcher,
    metrics: Metrics,
    started: float,
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format; the final agent's text as it is decoded."""
    created = int(time.time())

    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
        body = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": lm.name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    ids: list[int] = []
    sent = ""
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            token = await job.tokens.get()
            if token is None:
                break
            if await request.is_disconnected():
                job.cancelled.set()  # the engine drops this row at its next token
                return
            ids.append(token)
            text = lm.tokenizer.decode(ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue  # an incomplete multi-byte character; wait for the rest
            if len(text) > len(sent):
                yield chunk({"content": text[len(sent) :]})
                sent = text
        try:
            answer: Answer = await job.done
        except Exception as exc:
            yield f"data: {json.dumps(error_body(f'generation failed: {exc}', 'server_error'))}\n\n"
            return
        _record(metrics, answer, started)
        yield chunk({}, _finish_reason(answer, job.key[3]), _usage(answer))
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()
        batcher.release()

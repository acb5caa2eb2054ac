"""An OpenAI-compatible HTTP API over the library, with dynamic batching.

    POST /v1/chat/completions   (extra fields: method, team, latent_steps, handoff, ...)
    GET  /v1/models, /health, /metrics (Prometheus)

This module is the thin HTTP layer (routes, schemas, streaming); `scheduler.Batcher`
gathers requests with equal specs into engine batches on the one thread that owns the
model. Results are batch-invariant, so a request gets what it would get alone.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import generate_latest
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engines.vllm import VLLMSettings, start_vllm
from ..errors import LatentMASError
from ..methods import Answer
from ..models import LoadedModel
from ..spec import LEGACY, RunSpec, bounds, flat_option_fields
from ..teams import PACKAGED, chat_messages, encode_chat, shared_conversation, single_team
from .scheduler import Batcher, Cancelled, Job, Metrics

# What a request may choose of its run: RunSpec's own fields (types, bounds, choices and
# defaults copied from it), and each handoff option as a flat field. The rest of the spec is
# the server's (model, dtype, engine) or OpenAI's (max_tokens, temperature, top_p, seed).
REQUEST_FIELDS = ("method", "latent_steps", "memory", "question_once", "handoff")
SEED_MAX = bounds("seed")[1]


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class OpenAIChat(BaseModel):
    """The OpenAI chat-completions body (its sampling fields are added from RunSpec's below)."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: Annotated[list[Message], Field(min_length=1)]
    stream: bool = False


def _like(name: str, annotation: Any, default: Any) -> tuple[Any, Any]:
    """RunSpec's constraints on `name`, on an OpenAI field's own type and default."""
    return Annotated[(annotation, *RunSpec.model_fields[name].metadata)], default


def _request_model() -> type[OpenAIChat]:
    """The OpenAI body plus LatentMAS's own fields, all derived from RunSpec and the handoffs."""
    sampling = {
        "max_tokens": _like("max_new_tokens", int | None, None),
        "temperature": _like("temperature", float, 0.0),
        "top_p": _like("top_p", float, 1.0),
        "seed": _like("seed", int | None, None),  # none: a fresh one per sampled request
    }
    spec_fields = {
        name: (RunSpec.model_fields[name].annotation, RunSpec.model_fields[name]) for name in REQUEST_FIELDS
    }
    # The handoff as written (a name, name:options or an object): RunSpec parses it once the
    # server has put in what only it may choose (the trained handoff's adapter).
    spec_fields["handoff"] = (
        str | dict | None,
        Field(None, description=RunSpec.model_fields["handoff"].description),
    )
    flat = {
        name: (info.annotation | None, Field(None, description=info.description))
        for name, info in flat_option_fields().items()
    }
    legacy = {
        name: (kind, Field(default, description=text)) for name, (kind, default, text) in LEGACY.items()
    }
    # A team by a packaged name or inline, never a path: a request must not read the server's files.
    team = (
        Literal[PACKAGED] | dict,
        Field("sequential", description=RunSpec.model_fields["team"].description),
    )  # type: ignore[valid-type]
    model = create_model(
        "ChatRequest", __base__=OpenAIChat, **sampling, **spec_fields, team=team, **flat, **legacy
    )
    model.__doc__ = "The OpenAI chat-completions body, plus LatentMAS's own fields."
    return model


ChatRequest = _request_model()


def served_handoff(handoff: str | dict | None, state: Served, adapter: str | None) -> str | dict | None:
    """A request's handoff with the server's adapter in it where it asks for the trained one;
    a request that names an adapter file is refused."""
    refused = "adapter: a request cannot name a file; the server uses the adapter it was started with"
    if adapter is not None:
        raise LatentMASError(refused)
    if handoff is None:
        return None
    name, _, options = handoff.partition(":") if isinstance(handoff, str) else (handoff.get("name"), "", "")
    if name != "trained":
        return handoff
    if "adapter=" in options or isinstance(handoff, dict) and "adapter" in handoff:
        raise LatentMASError(refused)
    if state.adapter is None:
        raise LatentMASError(
            "handoff: this server was started without --adapter, so it has no trained handoff"
        )
    if isinstance(handoff, dict):
        return handoff | {"adapter": state.adapter}
    return f"{handoff},adapter={state.adapter}" if options else f"trained:adapter={state.adapter}"


def request_spec(body: Any, state: Served) -> RunSpec:
    """The run a request asks for, on the served model: RunSpec validates it (one line)."""
    options = {name: getattr(body, name) for name in REQUEST_FIELDS}
    options["handoff"] = served_handoff(body.handoff, state, getattr(body, "adapter", None))
    options |= {"team": body.team} if body.topology is None else {"topology": body.topology}
    # A handoff registered after the request model was built has no field in it.
    flat = {name: getattr(body, name, None) for name in flat_option_fields() if name != "adapter"}
    options |= {name: value for name, value in flat.items() if value is not None}
    options |= {"thoughts_enter": True} if body.thoughts_enter else {}
    return RunSpec(
        model=state.lm.name,
        dtype=state.lm.dtype,
        engine=state.engine,
        vllm_gpu_share=state.vllm.gpu_share,
        vllm_cpu_kv_gib=state.vllm.cpu_kv_gib,
        vllm_tensor_parallel=state.vllm.tensor_parallel,
        max_new_tokens=body.max_tokens or state.default_max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=_seed(body),
        **options,
    )


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def question_from_messages(messages: list[Message]) -> str:
    """The agents get one question: the last user turn, with the caller's system
    instructions and the earlier turns as context (the agents' own system prompts stay)."""
    system = [m.content for m in messages if m.role in ("system", "developer")]
    turns = [m for m in messages if m.role not in ("system", "developer")]
    users = [m for m in turns if m.role == "user"]
    if not users:
        raise LatentMASError("messages must contain at least one user message")
    question = turns[-1].content
    if len(turns) > 1:
        history = "\n".join(f"{m.role}: {m.content}" for m in turns[:-1])
        question = f"Conversation so far:\n{history}\n\n{question}"
    if system:
        question = "Instructions: " + "\n".join(system) + "\n\n" + question
    return question


@dataclass
class Served:
    """What the routes need: the model, the scheduler, metrics, and the server's limits."""

    lm: LoadedModel
    batcher: Batcher
    metrics: Metrics
    default_max_tokens: int
    context_limit: int | None
    engine: str = "transformers"
    vllm: VLLMSettings = VLLMSettings()
    adapter: str | None = None  # the trained handoff's adapter (`serve --adapter`)


router = APIRouter()


def create_app(
    lm: LoadedModel,
    *,
    max_batch: int = 8,
    max_wait_ms: float = 10.0,
    queue_size: int = 64,
    default_max_tokens: int = 256,
    engine: str = "transformers",
    vllm: VLLMSettings | None = None,
    adapter: str | None = None,
) -> FastAPI:
    """The FastAPI app serving `lm` on `engine` (transformers, or vllm: every decode in
    vLLM). `max_batch=1` turns dynamic batching off. `adapter`: the one a request asking for
    the trained handoff gets (a request never names a file of the server's)."""
    vllm = vllm or VLLMSettings()
    if engine == "vllm":
        start_vllm(lm, vllm)  # now, so a missing vLLM is an error at start, not at a request
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
    app.state.served = Served(lm, batcher, metrics, default_max_tokens, context_limit, engine, vllm, adapter)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.include_router(router)
    return app


def served(request: Request) -> Served:
    return request.app.state.served


def fail(
    state: Served, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"
):
    state.metrics.errors.labels(status=str(status)).inc()
    return JSONResponse(error_body(message, kind, param), status_code=status)


async def invalid_request(request: Request, exc: RequestValidationError):
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    if first.get("type") == "json_invalid":
        return fail(served(request), 400, "request body is not valid JSON")
    return fail(
        served(request), 400, f"{where or 'body'}: {first.get('msg', 'invalid request')}", where or None
    )


async def http_error(request: Request, exc: StarletteHTTPException):
    kind = "not_found_error" if exc.status_code == 404 else "error"
    return fail(served(request), exc.status_code, str(exc.detail), kind=kind)


@router.get("/health")
def health(request: Request) -> dict:
    state = served(request)
    status = "draining" if state.batcher.closing else "ok"
    return {"status": status, "model": state.lm.name, "in_flight": state.batcher.in_flight}


@router.get("/v1/models")
def models(request: Request) -> dict:
    model = {"id": served(request).lm.name, "object": "model", "created": 0, "owned_by": "latentmas"}
    return {"object": "list", "data": [model]}


@router.get("/metrics")
def prometheus(request: Request) -> PlainTextResponse:
    text = generate_latest(served(request).metrics.registry).decode()
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


def context_needed(lm: LoadedModel, spec: RunSpec, question: str) -> int:
    """The longest cache this request can build (positions the model must support)."""
    max_tokens = spec.max_new_tokens
    if spec.method == "single":
        (agent,) = single_team().agents
        return len(encode_chat(lm.tokenizer, chat_messages(agent, question, ""), False)) + max_tokens
    agents = spec.team.agents
    if spec.thinks:
        segments = shared_conversation(lm.tokenizer, spec.team, question, "")
        return sum(map(len, segments)) + spec.latent_steps.count * (len(agents) - 1) + max_tokens
    # TextMAS: the last agent reads at most every earlier agent's text (max_tokens each).
    last = encode_chat(lm.tokenizer, chat_messages(agents[-1], question, ""), False)
    return len(last) + len(agents) * max_tokens


@router.post("/v1/chat/completions", response_model=None)
async def chat(body: ChatRequest, request: Request):  # type: ignore[valid-type]
    state = served(request)
    state.metrics.requests.labels(method=body.method).inc()
    started = time.perf_counter()
    try:
        question = question_from_messages(body.messages)
    except LatentMASError as exc:
        return fail(state, 400, str(exc), "messages")
    try:
        spec = request_spec(body, state)
    except LatentMASError as exc:
        return fail(state, 400, str(exc))
    if state.context_limit and context_needed(state.lm, spec, question) > state.context_limit:
        message = f"prompt and max_tokens exceed the model's context of {state.context_limit} tokens"
        return fail(state, 400, message, "messages")
    if state.batcher.closing:
        return fail(state, 503, "server is shutting down", kind="server_error")
    if state.batcher.full():
        return fail(state, 503, "server is busy: the request queue is full, retry later", kind="server_error")
    loop = asyncio.get_running_loop()
    job = Job(question, spec, loop, loop.create_future(), asyncio.Queue() if body.stream else None)
    state.batcher.submit(job)
    request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    if body.stream:
        return StreamingResponse(
            _stream(job, request, request_id, state, started), media_type="text/event-stream"
        )
    try:
        answer: Answer = await job.done
    except asyncio.CancelledError:
        state.batcher.cancel(job)  # the client went away: its row stops at the next agent or token
        raise
    except Cancelled:
        return fail(state, 499, "the request was cancelled", kind="server_error")
    except Exception as exc:
        return fail(state, 500, f"generation failed: {exc}", kind="server_error")
    _record(state.metrics, answer, started)
    message = {"role": "assistant", "content": answer.final_text}
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": state.lm.name,
        "choices": [
            {"index": 0, "message": message, "finish_reason": _finish_reason(answer, spec.max_new_tokens)}
        ],
        "usage": _usage(answer),
    }


def _seed(body: Any) -> int:
    """The request's seed; without one a sampled request draws a fresh seed (so replies vary,
    as they do elsewhere), and a greedy one, which no seed changes, keeps 0 and so still
    shares batches with other greedy requests."""
    if body.seed is not None:
        return body.seed
    return secrets.randbelow(SEED_MAX + 1) if body.temperature > 0 else 0


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
    job: Job, request: Request, request_id: str, state: Served, started: float
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format; the final agent's text as it is decoded."""
    created = int(time.time())

    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
        body = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": state.lm.name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    text = IncrementalText(state.lm.tokenizer)
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            token = await job.tokens.get()
            if token is None:
                break
            if await request.is_disconnected():
                return  # `finally` cancels: the engine drops this row at its next token
            if new := text.add(token):
                yield chunk({"content": new})
        try:
            answer: Answer = await job.done
        except Exception as exc:
            yield f"data: {json.dumps(error_body(f'generation failed: {exc}', 'server_error'))}\n\n"
            return
        _record(state.metrics, answer, started)
        yield chunk({}, _finish_reason(answer, job.spec.max_new_tokens), _usage(answer))
        yield "data: [DONE]\n\n"
    finally:
        state.batcher.cancel(job)  # a no-op for a finished job; the scheduler owns the slot


class IncrementalText:
    """Detokenize a stream a few tokens at a time instead of the whole text at every token.

    A token's text can depend on its neighbours (a leading space, a multi-byte character
    split over tokens), so each step decodes a short window ending at the new token and
    emits what it added beyond the window's previous text.
    """

    WINDOW = 6

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.ids, self.start, self.done = tokenizer, [], 0, 0

    def add(self, token: int) -> str:
        self.ids.append(token)
        before = self.tokenizer.decode(self.ids[self.start : self.done], skip_special_tokens=True)
        after = self.tokenizer.decode(self.ids[self.start :], skip_special_tokens=True)
        if after.endswith("\ufffd") or len(after) <= len(before):
            return ""  # an incomplete character, or nothing visible yet: wait for more
        self.done = len(self.ids)
        self.start = max(0, self.done - self.WINDOW)
        return after[len(before) :]

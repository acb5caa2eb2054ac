"""The server's batching scheduler: a queue of requests, grouped by spec into engine
batches on one worker thread, with cancellation and metrics. No HTTP here (see server.py).

Concurrent requests with the same spec are gathered for up to `max_wait_ms` into one
engine batch of at most `max_batch` rows. Results are batch-invariant, so a request gets
exactly what it would get alone.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram

from ..build import build_solver
from ..methods import Answer, Method, SolveCancelled
from ..models import LoadedModel
from ..spec import RunSpec


class Cancelled(Exception):
    """The request's client went away before its answer was ready."""


@dataclass
class Job:
    """One request waiting for (or inside) an engine batch."""

    question: str
    spec: RunSpec  # jobs with equal specs share batches
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
        self.solvers: dict[RunSpec, Method] = {}
        self._thread = threading.Thread(target=self._run, name="latentmas-batcher", daemon=True)
        self._thread.start()

    def full(self) -> bool:
        return self.in_flight >= self.queue_size

    def submit(self, job: Job) -> None:
        """Take a job; its slot is held until the scheduler has finished with it (answered,
        failed, or dropped because its client went away), whatever its HTTP side does."""
        with self._wake:
            self.in_flight += 1
            self.pending.append(job)
            self._wake.notify()

    def _release(self, count: int) -> None:
        with self._wake:
            self.in_flight -= count
            self._wake.notify_all()

    def cancel(self, job: Job) -> None:
        """The client went away: a waiting job is dropped, a running one stops at the next
        agent, or at its next token while the final agent decodes."""
        job.cancelled.set()
        with self._wake:
            self._wake.notify_all()

    def drain(self, timeout: float) -> None:
        """Stop taking work and wait for requests in flight (graceful shutdown)."""
        self.closing = True
        deadline = time.monotonic() + timeout
        with self._wake:
            while self.in_flight > 0 and time.monotonic() < deadline:
                self._wake.wait(0.05)

    def solver(self, spec: RunSpec) -> Method:
        """The solver for a request's spec; the 32 most recently used are kept."""
        if spec in self.solvers:
            self.solvers[spec] = self.solvers.pop(spec)  # most recent last
        else:
            if len(self.solvers) >= 32:
                self.solvers.pop(next(iter(self.solvers)))
            self.solvers[spec] = build_solver(spec, self.lm)
        return self.solvers[spec]

    def _take_batch(self) -> list[Job]:
        with self._wake:
            while not self.pending:
                self._wake.wait()
            first = self.pending[0]
            deadline = time.monotonic() + self.max_wait
            while True:
                same = [j for j in self.pending if j.spec == first.spec]
                remaining = deadline - time.monotonic()
                if len(same) >= self.max_batch or remaining <= 0:
                    break
                self._wake.wait(remaining)
            batch = same[: self.max_batch]
            self.pending = [j for j in self.pending if j not in batch]
            return batch

    def _answer_cancelled(self, jobs: list[Job]) -> list[Job]:
        """Answer the cancelled jobs among `jobs` as cancelled and free their slots; return the rest."""
        gone, kept = [], []
        for job in jobs:  # one read of each flag: a job cancelled meanwhile is in exactly one list
            (gone if job.cancelled.is_set() else kept).append(job)
        for job in gone:
            notify(job.loop, resolve, job.done, Cancelled())
        if gone:
            self._release(len(gone))
        return kept

    def _run(self) -> None:
        while True:
            with self._wake:  # jobs cancelled while they waited leave the queue
                self.pending = self._answer_cancelled(self.pending)
            batch = self._answer_cancelled(self._take_batch())
            if batch:
                try:
                    self._run_batch(batch)
                finally:
                    self._release(len(batch))

    def _run_batch(self, batch: list[Job]) -> None:
        self.metrics.batch.observe(len(batch))

        def on_token(row: int, token: int) -> bool:
            job = batch[row]
            if job.tokens is not None:
                notify(job.loop, job.tokens.put_nowait, token)
            return not job.cancelled.is_set()

        def keep_going(row: int) -> bool:
            return not batch[row].cancelled.is_set()

        try:
            method = self.solver(batch[0].spec)
            outcomes: list[Answer | Exception] = list(
                method.solve([j.question for j in batch], on_token=on_token, keep_going=keep_going)
            )
        except SolveCancelled:
            outcomes = [Cancelled()] * len(batch)
        except Exception as exc:  # a failed batch fails its requests, never the server
            outcomes = [exc] * len(batch)
        for job, outcome in zip(batch, outcomes):
            if job.tokens is not None:
                notify(job.loop, job.tokens.put_nowait, None)
            notify(job.loop, resolve, job.done, outcome)


def notify(loop: asyncio.AbstractEventLoop, callback, *args) -> None:
    """Hand a result to a request's event loop; a loop that already closed is ignored."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass


def resolve(future: asyncio.Future, outcome: Answer | Exception) -> None:
    if future.done():
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)

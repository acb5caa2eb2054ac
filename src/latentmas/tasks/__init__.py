"""Benchmarks: each module loads its questions, says how to answer, and grades answers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import LatentMASError


@dataclass(frozen=True)
class Example:
    id: str
    question: str
    gold: str


class Task(Protocol):
    name: str
    answer_format: str  # appended to the final agent's instruction

    def load(self, data: str | None = None) -> list[Example]: ...

    def extract(self, text: str) -> str | None: ...

    def is_correct(self, prediction: str | None, gold: str) -> bool: ...


def get_task(name: str) -> Task:
    from . import gsm8k

    tasks = {gsm8k.TASK.name: gsm8k.TASK}
    if name not in tasks:
        raise LatentMASError(f"unknown task {name!r}; choose one of {', '.join(tasks)}")
    return tasks[name]


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file; a malformed line is an error naming its line number."""
    import json

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

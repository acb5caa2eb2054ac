"""BIG-Bench Hard: 27 subtasks of BIG-bench that chain-of-thought helps with, graded by exact
match after the normalisations BBH's own evaluation uses.

`--task bbh` runs every subtask (accuracy per subtask and their macro average);
`--task bbh:date_understanding` runs one. Rows have BBH's fields: `input` and `target`, plus
`task` (the subtask) in a file that holds several. Hub: `lukaemon/bbh`, one config per
subtask, split `test` (250 examples each, fewer for three subtasks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import LatentMASError
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
        if data is None:
            raise LatentMASError(
                f"{self.name} has no offline copy: pass --data FILE, or --data hub when online"
            )
        examples = []
        for subtask in self.subtasks if data == "hub" else [None]:
            rows = read_rows(data, (HUB, subtask, "test"), self.name)
            for index, row in enumerate(rows):
                examples.append(self._example(row, subtask or row.get("task") or self.subtask, index, data))
        return examples

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


def bbh_task(name: str) -> BBH:
    """'bbh' -> every subtask; 'bbh:date_understanding' -> one."""
    _, _, subtask = name.partition(":")
    if subtask and subtask not in SUBTASKS:
        raise LatentMASError(f"unknown BBH subtask {subtask!r}; choose one of {', '.join(SUBTASKS)}")
    return BBH(subtask or None)


TASK = BBH()

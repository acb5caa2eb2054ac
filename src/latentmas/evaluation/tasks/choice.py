"""Multiple choice (GPQA-Diamond, ARC-Easy/Challenge, MedQA, AQuA-RAT, HellaSwag): options
lettered A, B, C, ...; an answer names a letter, or the option's own text or value."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from ...errors import LatentMASError
from ..graders import extract_letter, extract_math_answer, math_equal, option_by_text
from . import Example, Grade, read_rows

LETTERS = "ABCDEFGHIJ"


def _arc(row: dict) -> tuple[str, list[str], int]:
    labels = list(row["choices"]["label"])
    return row["question"], list(row["choices"]["text"]), labels.index(row["answerKey"])


def _medqa(row: dict) -> tuple[str, list[str], int]:
    options = row["options"]
    keys = sorted(options)
    return row["question"], [options[k] for k in keys], keys.index(row["answer_idx"])


def _gpqa(row: dict) -> tuple[str, list[str], int]:
    """GPQA stores the right answer apart; shuffle it in, the same way on every run."""
    correct = row["Correct Answer"].strip()
    options = [correct] + [row[f"Incorrect Answer {i}"].strip() for i in (1, 2, 3)]
    random.Random(row["Question"]).shuffle(options)
    return row["Question"].strip(), options, options.index(correct)


def _aqua(row: dict) -> tuple[str, list[str], int]:
    """AQuA-RAT writes options as 'A)21'; the letter goes, the value stays."""
    options = [re.sub(r"^\s*[A-E]\s*\)\s*", "", str(o)) for o in row["options"]]
    return row["question"], options, "ABCDE".index(row["correct"].strip())


def _hellaswag(row: dict) -> tuple[str, list[str], int]:
    """HellaSwag: a context and four endings; the label is the right ending's index."""
    context = row.get("ctx") or f"{row['ctx_a']} {row['ctx_b']}".strip()
    activity = row.get("activity_label")
    question = "Which ending continues this text most plausibly?\n\n"
    question += f"{activity}: {context}" if activity else context
    return question, [str(e).strip() for e in row["endings"]], int(row["label"])


def option_by_value(text: str, options: list[str]) -> str | None:
    """The one option whose value the answer gives ('\\boxed{21.5}' for an option '21.5'),
    compared as mathematics; None when no option, or several, match."""
    answer = extract_math_answer(text)
    if answer is None:
        return None
    matches = {LETTERS[i] for i, option in enumerate(options) if option and math_equal(answer, option)}
    return matches.pop() if len(matches) == 1 else None


@dataclass(frozen=True)
class ChoiceTask:
    name: str
    hub: tuple[str, str | None, str]
    size: int
    adapter: Callable[[dict], tuple[str, list[str], int]]
    kind: str = "choice"
    answer_format: str = "End with the letter of the correct option in \\boxed{}, for example \\boxed{B}."
    grading: str = "1"

    @property
    def source(self) -> str:
        name, config, split = self.hub
        return f"{name} ({config}, {split})" if config else f"{name} ({split})"

    def load(self, data: str | None = None) -> list[Example]:
        examples = []
        for i, row in enumerate(read_rows(data, self.hub, self.name)):
            try:
                question, options, answer = self.adapter(row)
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                raise LatentMASError(f"{data}: row {i + 1} is not in {self.source}'s format ({exc})") from exc
            if not 0 <= answer < len(options):
                raise LatentMASError(
                    f"{data}: row {i + 1}: the answer is not one of its {len(options)} options"
                )
            lines = "\n".join(f"{LETTERS[j]}. {text}" for j, text in enumerate(options))
            examples.append(
                Example(
                    id=str(row.get("id", f"{self.name}-{i}")),
                    question=f"{question}\n\nOptions:\n{lines}",
                    gold=LETTERS[answer],
                    choices=tuple(options),
                )
            )
        return examples

    def grade(self, text: str, example: Example) -> Grade:
        options = list(example.choices)
        # A letter first; then the option's value (numbers: '21' must not match inside '21.5'),
        # then its text.
        prediction = extract_letter(text, len(options))
        if prediction == "":
            prediction = option_by_value(text, options) or option_by_text(text, options)
        return Grade(prediction, prediction == example.gold)


TASKS = [
    ChoiceTask("gpqa_diamond", ("Idavidrein/gpqa", "gpqa_diamond", "train"), 198, _gpqa),
    ChoiceTask("arc_easy", ("allenai/ai2_arc", "ARC-Easy", "test"), 2376, _arc),
    ChoiceTask("arc_challenge", ("allenai/ai2_arc", "ARC-Challenge", "test"), 1172, _arc),
    ChoiceTask("medqa", ("GBaker/MedQA-USMLE-4-options", None, "test"), 1273, _medqa),
    ChoiceTask("aqua", ("deepmind/aqua_rat", "raw", "test"), 254, _aqua),
    ChoiceTask(
        "hellaswag",
        ("Rowan/hellaswag", None, "validation"),  # the test split's labels are hidden
        10042,
        _hellaswag,
        answer_format="End with the letter of the most plausible ending in \\boxed{}, for example \\boxed{B}.",
    ),
]

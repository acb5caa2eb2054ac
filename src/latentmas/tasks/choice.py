"""Multiple choice (GPQA-Diamond, ARC-Easy/Challenge, MedQA): options lettered A, B, C, ..."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import LatentMASError
from ..graders import extract_choice
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


@dataclass(frozen=True)
class ChoiceTask:
    name: str
    hub: tuple[str, str | None, str]
    size: int
    adapter: Callable[[dict], tuple[str, list[str], int]]
    kind: str = "choice"
    answer_format: str = "End with the letter of the correct option in \\boxed{}, for example \\boxed{B}."

    @property
    def source(self) -> str:
        name, config, split = self.hub
        return f"{name} ({config}, {split})" if config else f"{name} ({split})"

    def load(self, data: str | None = None) -> list[Example]:
        examples = []
        for i, row in enumerate(read_rows(data, self.hub, self.name)):
            try:
                question, options, answer = self.adapter(row)
            except (KeyError, ValueError, TypeError) as exc:
                raise LatentMASError(f"{data}: row {i + 1} is not in {self.source}'s format ({exc})") from exc
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
        prediction = extract_choice(text, list(example.choices))
        return Grade(prediction, prediction == example.gold)


TASKS = [
    ChoiceTask("gpqa_diamond", ("Idavidrein/gpqa", "gpqa_diamond", "train"), 198, _gpqa),
    ChoiceTask("arc_easy", ("allenai/ai2_arc", "ARC-Easy", "test"), 2376, _arc),
    ChoiceTask("arc_challenge", ("allenai/ai2_arc", "ARC-Challenge", "test"), 1172, _arc),
    ChoiceTask("medqa", ("GBaker/MedQA-USMLE-4-options", None, "test"), 1273, _medqa),
]

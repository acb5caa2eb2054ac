"""Competition math with a single final answer (AIME 2024, AIME 2025), graded by math-verify."""

from __future__ import annotations

from dataclasses import dataclass

from ..graders import extract_math_answer, math_equal
from . import Example, Grade, field_of, read_rows


@dataclass(frozen=True)
class MathTask:
    name: str
    hub: tuple[str, str | None, str]
    size: int
    kind: str = "math"
    answer_format: str = "Put the final answer in \\boxed{}."
    grading: str = "1"

    @property
    def source(self) -> str:
        return self.hub[0]

    def load(self, data: str | None = None) -> list[Example]:
        examples = []
        for i, row in enumerate(read_rows(data, self.hub, self.name)):
            question = field_of(row, "problem", "question", "Problem", where=data, index=i)
            answer = field_of(row, "answer", "Answer", "solution", where=data, index=i)
            examples.append(
                Example(id=str(row.get("id", f"{self.name}-{i}")), question=question, gold=str(answer))
            )
        return examples

    def grade(self, text: str, example: Example) -> Grade:
        prediction = extract_math_answer(text)
        return Grade(prediction, math_equal(prediction, example.gold))


TASKS = [
    MathTask("aime2024", ("HuggingFaceH4/aime_2024", None, "train"), 30),
    MathTask("aime2025", ("yentinglin/aime_2025", None, "train"), 30),
]

"""GSM8K: grade-school math word problems with a numeric answer.

Sources: `--data PATH` (a JSONL file with `question` and `answer`, as in the official
release), `--data hub` (`openai/gsm8k`, config `main`, split `test`, through `datasets`),
or by default the 20 problems bundled with the package (MIT licence, see
`latentmas/data/GSM8K_LICENSE`) so the demo runs offline. Ids are `gsm8k-<row index>`,
the same for every source of the test split.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from ...errors import LatentMASError
from ..graders import last_boxed
from . import Example, Grade, read_jsonl, read_rows

HUB_DATASET = ("openai/gsm8k", "main", "test")

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _examples(rows: list[dict], where: str) -> list[Example]:
    examples = []
    for index, row in enumerate(rows):
        if "question" not in row or "answer" not in row:
            raise LatentMASError(f"{where}: row {index + 1} needs the fields 'question' and 'answer'")
        gold = str(row["answer"]).split("####")[-1].strip()
        examples.append(Example(id=str(row.get("id", f"gsm8k-{index}")), question=row["question"], gold=gold))
    return examples


def to_number(text: str | None) -> float | None:
    """'$1,000.50' -> 1000.5; None when there is no number."""
    if text is None:
        return None
    match = _NUMBER.findall(text.replace("$", ""))
    if not match:
        return None
    try:
        return float(match[-1].replace(",", ""))
    except ValueError:
        return None


class GSM8K:
    name = "gsm8k"
    kind = "math"
    source = "openai/gsm8k (main, test)"
    size = 1319
    answer_format = "Put the final numeric answer in \\boxed{}."
    grading = "1"

    def load(self, data: str | None = None) -> list[Example]:
        if data is None:
            text = resources.files("latentmas").joinpath("data/gsm8k_sample.jsonl")
            path = Path(str(text))
            return _examples(read_jsonl(path), "bundled GSM8K sample")
        return _examples(read_rows(data, HUB_DATASET, "gsm8k"), data)

    def extract(self, text: str) -> str | None:
        """The answer a model gave: \\boxed{}, else after '####', else the last number."""
        for candidate in (last_boxed(text), text.split("####")[-1] if "####" in text else None, text):
            if candidate is not None and (number := to_number(candidate)) is not None:
                return str(int(number)) if number.is_integer() else str(number)
        return None

    def grade(self, text: str, example: Example) -> Grade:
        prediction = self.extract(text)
        return Grade(prediction, self.is_correct(prediction, example.gold))

    def is_correct(self, prediction: str | None, gold: str) -> bool:
        a, b = to_number(prediction), to_number(gold)
        return a is not None and b is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b))


TASK = GSM8K()

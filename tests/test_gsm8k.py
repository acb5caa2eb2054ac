"""GSM8K: loading every source, answer extraction and numeric equivalence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentmas.errors import LatentMASError
from latentmas.evaluation.tasks import get_task

GSM8K = get_task("gsm8k")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the answer is \\boxed{18}.", "18"),
        ("\\boxed{\\frac{1}{2}} but first 7", "2"),  # last number inside the box
        ("We get 3 then 5.\n#### 1,000", "1000"),
        ("It costs $1,250.50 in total", "1250.5"),
        ("The result is -4 degrees", "-4"),
        ("first 12, then \\boxed{70,000}", "70000"),
        ("\\boxed{ 42 } and later 43", "42"),
        ("no number here", None),
        ("1.0", "1"),
        ("3 apples and 4 pears make 7", "7"),
        ("\\boxed{x}", None),
    ],
)
def test_extract(text, expected):
    assert GSM8K.extract(text) == expected


@pytest.mark.parametrize(
    ("prediction", "gold", "correct"),
    [
        ("1,000", "1000", True),
        ("1000.0", "1000", True),
        ("18", "18", True),
        ("17", "18", False),
        (None, "18", False),
        ("-3", "3", False),
        ("0.5", ".5", True),
        ("$70,000", "70000", True),
    ],
)
def test_numeric_equivalence(prediction, gold, correct):
    assert GSM8K.is_correct(prediction, gold) is correct


def test_bundled_sample_has_twenty_problems_with_ids_and_gold():
    examples = GSM8K.load()
    assert len(examples) == 20
    assert examples[0].id == "gsm8k-0" and examples[0].gold == "18"
    assert len({e.id for e in examples}) == 20


@pytest.mark.skipif(
    not SHARED.is_file(), reason="the project's shared GSM8K file is not beside this checkout"
)
def test_local_file_loads_all_1319_test_problems_with_the_sample_ids():
    examples = GSM8K.load(str(SHARED))
    assert len(examples) == 1319
    assert examples[:20] == GSM8K.load()


def test_malformed_file_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n{not json\n")
    with pytest.raises(LatentMASError, match=r"bad.jsonl:2"):
        GSM8K.load(str(path))


def test_missing_fields_and_missing_file_are_user_errors(tmp_path):
    path = tmp_path / "fields.jsonl"
    path.write_text(json.dumps({"q": "x"}) + "\n")
    with pytest.raises(LatentMASError, match="question"):
        GSM8K.load(str(path))
    with pytest.raises(LatentMASError, match="not found"):
        GSM8K.load(str(tmp_path / "absent.jsonl"))


@pytest.mark.network
def test_hub_source_loads_the_full_test_split():
    examples = GSM8K.load("hub")
    assert len(examples) == 1319
    assert examples[0].gold == "18"

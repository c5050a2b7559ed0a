"""Scorers that read a completion's text: its final number, its reasoning steps, a regular
expression, substrings."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from harness.errors import PowersteerError
from harness.evaluation.scorers.registry import (
    GenerationScorer,
    ScoreResult,
    ScorerOptionError,
    register_scorer,
)

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def final_number(text: str) -> float | None:
    """The last number written in ``text`` (thousands commas allowed), or None."""
    matches = _NUMBER.findall(text)
    for match in reversed(matches):
        try:
            return float(match.replace(",", "").rstrip("."))
        except ValueError:
            continue
    return None


@register_scorer("numeric_answer", metric="success")
def numeric_answer(answer_field: str = "answer", tolerance: float = 1e-6) -> GenerationScorer:
    """Success when the completion's final number equals the row's expected answer.

    The last number in the completion (``1,234`` and ``-3.5`` included) is compared with
    ``row[answer_field]`` (a number, or a string holding one) within ``tolerance``.
    ``value`` is 1.0 for a correct answer, else 0.0.
    """

    def score(completion: str, row: Mapping[str, Any]) -> ScoreResult:
        if answer_field not in row:
            raise PowersteerError(
                f"a prompt row has no field {answer_field!r} for numeric_answer; "
                "add it to the data or set scorer.answer_field"
            )
        expected = final_number(str(row[answer_field]))
        if expected is None:
            raise PowersteerError(
                f"row field {answer_field!r} = {row[answer_field]!r} holds no number; "
                "write the expected answer as a number"
            )
        found = final_number(completion)
        correct = found is not None and abs(found - expected) <= tolerance
        return ScoreResult(success=correct, value=float(correct))

    return GenerationScorer("numeric_answer", "success", score, row_fields=(answer_field,))


# An equation with a number on its right-hand side: "a=11", "3 * 4 = 12", "x = -2.5".
_EQUATION = re.compile(r"[\w)\]]\s*=\s*[-$]?\d")
# A line that announces a step: "Step 2:", "1.", "2)", "- ", "* ", "First,", "Then".
_STEP_MARKER = re.compile(
    r"^\s*(?:step\s*\d+|\d+[.)]\s|[-*•]\s|(?:first|second|third|next|then|finally)\b)",
    re.IGNORECASE,
)


def count_steps(completion: str) -> int:
    """Intermediate steps: every equation counts, and a step-marked line counts at least once."""
    total = 0
    for line in completion.splitlines():
        if not line.strip():
            continue
        equations = len(_EQUATION.findall(line))
        total += max(equations, 1 if _STEP_MARKER.match(line) else 0)
    return total


@register_scorer("reasoning_steps", metric="success")
def reasoning_steps(min_steps: int = 2) -> GenerationScorer:
    """Success when the completion writes at least ``min_steps`` intermediate steps.

    A step is an equation with a number on its right (``a=11``, ``3 * 4 = 12``; several on
    one line each count) or a line that announces a step (``Step 2:``, ``1.``, ``- ``,
    ``First,``, ``Then``). ``value`` is the number of steps.
    """
    if min_steps < 1:
        raise ScorerOptionError(
            "min_steps", f"min_steps={min_steps} must be at least 1", "use e.g. 2"
        )

    def score(completion: str, row: Mapping[str, Any]) -> ScoreResult:
        steps = count_steps(completion)
        return ScoreResult(success=steps >= min_steps, value=float(steps))

    return GenerationScorer("reasoning_steps", "success", score)


@register_scorer("regex", metric="success")
def regex(pattern: str, invert: bool = False, ignore_case: bool = False) -> GenerationScorer:
    """Success when ``pattern`` (Python ``re`` syntax) matches anywhere in the completion.

    ``invert: true`` counts a completion without a match as success; ``ignore_case: true``
    matches case-insensitively. ``value`` is the number of matches.
    """
    try:
        compiled = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as error:
        raise ScorerOptionError(
            "pattern", f"{pattern!r} is not a valid regular expression ({error})", "fix it"
        ) from error

    def score(completion: str, row: Mapping[str, Any]) -> ScoreResult:
        matches = len(compiled.findall(completion))
        return ScoreResult(success=(matches > 0) != invert, value=float(matches))

    return GenerationScorer("regex", "success", score)


@register_scorer("contains", metric="success")
def contains(
    substrings: list[str], mode: Literal["any", "all"] = "any", case_sensitive: bool = False
) -> GenerationScorer:
    """Success when the completion contains any (or, ``mode: all``, all) of ``substrings``.

    Case-insensitive unless ``case_sensitive: true``. ``value`` is the fraction of the
    substrings found.
    """
    if not substrings:
        raise ScorerOptionError("substrings", "the list is empty", "give at least one string")
    wanted = substrings if case_sensitive else [s.lower() for s in substrings]

    def score(completion: str, row: Mapping[str, Any]) -> ScoreResult:
        text = completion if case_sensitive else completion.lower()
        found = [s in text for s in wanted]
        success = all(found) if mode == "all" else any(found)
        return ScoreResult(success=success, value=sum(found) / len(found))

    return GenerationScorer("contains", "success", score)

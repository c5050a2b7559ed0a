"""A scorer's output, checked where outcomes are recorded.

A success scorer gives a boolean per prompt (``True``/``False``, a numpy bool, or the
integers 0 and 1); a score scorer gives a finite number. Anything else -- a float from a
success scorer, NaN, None, a string -- would turn into a missing success or a NaN mean
that a report shows as a plausible number, so it is one :class:`PowersteerError` naming
the behavior file, the scorer and the prompt index instead.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from harness.errors import PowersteerError
from harness.evaluation.scorers.registry import GenerationScorer, Metric, Scorer, ScoreResult

SUCCESS_FIX = "return True or False (or 0/1), or a ScoreResult(success=..., value=...)"
SCORE_FIX = "return a finite number"


class ScorerOutputError(Exception):
    """A scorer returned what its metric cannot use; the caller adds where (file, prompt)."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem, self.fix = problem, fix


def as_success(value: object) -> bool:
    """``value`` as a success: a bool, a numpy bool, or the integer 0 or 1."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise ScorerOutputError(f"returned {_shown(value)} as a success", SUCCESS_FIX)


def as_score(value: object) -> float:
    """``value`` as a score: a finite real number (a bool counts as 0 or 1)."""
    if isinstance(value, numbers.Real | np.bool_) and math.isfinite(float(value)):
        return float(value)
    raise ScorerOutputError(f"returned {_shown(value)} as a score", SCORE_FIX)


def checked_result(result: object, metric: Metric) -> ScoreResult:
    """A generation scorer's :class:`ScoreResult`, its fields checked against ``metric``."""
    if not isinstance(result, ScoreResult):
        fix = SUCCESS_FIX if metric == "success" else "return a ScoreResult"
        raise ScorerOutputError(f"returned {_shown(result)}, not a ScoreResult", fix)
    if metric == "success":
        value = result.value
        if not isinstance(value, numbers.Real | np.bool_):
            raise ScorerOutputError(f"returned value {_shown(value)}", "give a number as value")
        return ScoreResult(success=as_success(result.success), value=float(value))
    success = None if result.success is None else as_success(result.success)
    return ScoreResult(success=success, value=as_score(result.value))


def score_completion(
    scorer: GenerationScorer,
    completion: str,
    row: Mapping[str, Any],
    *,
    prompt_index: int,
    source: object,
) -> ScoreResult:
    """``scorer``'s checked outcome for one completion of prompt ``prompt_index``;
    ``source`` (the behavior file) names where in the one-line error."""
    try:
        return checked_result(scorer.score(completion, row), scorer.metric)
    except ScorerOutputError as error:
        raise _located(scorer, error, prompt_index, source) from None


def checked_score(scorer: Scorer, value: object, *, prompt_index: int, source: object) -> float:
    """A logits scorer's value for prompt ``prompt_index``, checked to be a finite number."""
    try:
        return as_score(value)
    except ScorerOutputError as error:
        raise _located(scorer, error, prompt_index, source) from None


def _located(
    scorer: Scorer, error: ScorerOutputError, prompt_index: int, source: object
) -> PowersteerError:
    prefix = f"{source}: " if source is not None else ""
    return PowersteerError(
        f"{prefix}scorer: {scorer.name!r} ({scorer.metric} metric) {error.problem} "
        f"for prompt {prompt_index}; {error.fix}"
    )


def _shown(value: object) -> str:
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{text} ({type(value).__name__})"

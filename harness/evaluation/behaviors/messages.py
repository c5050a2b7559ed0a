"""Behavior errors in one line: a pydantic ``ValidationError`` worded as
``key: problem; fix``, with the closest valid key suggested for a typo."""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from harness.evaluation.behaviors.schema import Behavior
from harness.evaluation.scorers import SCORERS, type_problem

_REQUIRED_HINTS = {
    "name": "name: my_behavior",
    "prompts": "prompts: {path: data/FILE.jsonl}",
    "scorer": f"scorer: {{type: ...}} with a type from {', '.join(sorted(SCORERS))}",
    "type": f"type: one of {', '.join(sorted(SCORERS))}",
}


def format_validation_error(error: ValidationError) -> str:
    """The first problem of a pydantic error as ``key: problem; fix`` (one line)."""
    problems = error.errors(include_url=False)
    first = problems[0]
    text = _format_problem(first)
    if len(problems) > 1:
        text += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return text


def _format_problem(problem: Any) -> str:
    loc = [part for part in problem["loc"] if not _is_type_tag(part)]
    key = dotted_key(loc)
    kind = problem["type"]
    message = problem["msg"]
    if kind == "extra_forbidden":
        valid = list(_section_model(str(loc[0]) if len(loc) > 1 else "").model_fields)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        return f"{key}: unknown key; {guess}valid keys here: {', '.join(valid)}"
    if kind == "missing":
        name = str(loc[-1])
        hint = _REQUIRED_HINTS.get(name, f"{name}: ...")
        return f"{key}: missing required key; add {hint}"
    if kind == "value_error":
        text = message.removeprefix("Value error, ")
        # A check may put its key first: relative to the section it checks
        # ("options.melbo.steps: ..." in steering), or whole for a cross-section check.
        if re.match(r"^[\w.\[\]]+: ", text):
            return f"{key}.{text}" if key else text
        return f"{key}: {text}" if key else text
    text, fix = type_problem(message, problem.get("input"))
    return f"{key}: {text}; {fix}"


def _section_model(name: str) -> type[BaseModel]:
    """The model of top-level section ``name``, read off :class:`Behavior`'s fields so that
    every section is covered (``contrast: PromptSource | None`` gives ``PromptSource``); the
    behavior itself for ``""`` or a name that is not a section."""
    field = Behavior.model_fields.get(name)
    annotation = field.annotation if field is not None else None
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return Behavior


def dotted_key(loc: Sequence[Any]) -> str:
    """``("steering", "scales", 2)`` -> ``"steering.scales[2]"``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _is_type_tag(part: Any) -> bool:
    # pydantic puts the tried member of a union into the location ("int", "literal['auto']").
    return isinstance(part, str) and (
        part in {"int", "float", "str", "bool", "list", "dict", "none", "function-before"}
        or "[" in part
    )

"""Loading a behavior: read the YAML file, validate it against the schema, build its scorer
and check the local prompt files it names."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from harness.errors import PowersteerError
from harness.evaluation.behaviors.messages import format_validation_error
from harness.evaluation.behaviors.schema import Behavior
from harness.evaluation.behaviors.sources import load_prompt_rows
from harness.evaluation.scorers import GenerationScorer, LogitsScorer, Scorer, ScorerShape


def load_behavior(path: str | os.PathLike[str], *, check_data: bool = True) -> Behavior:
    """Read, validate and return the behavior in YAML file ``path``.

    Beyond the schema, the scorer and its options are checked without running user code (a
    ``python`` scorer's module is found and read, not imported), and (``check_data``) local
    prompt files are read: they must exist, hold at least 2 prompts, and have the prompt
    field and the fields the scorer reads. Hugging Face datasets are not downloaded here.
    """
    path = Path(path)
    if not path.is_file():
        raise PowersteerError(
            f"{path}: behavior file not found; check the path "
            "(powersteer new NAME writes a scaffold)"
        )
    data = _read_yaml(path)
    try:
        behavior = Behavior.from_file_data(data, path)
    except ValidationError as error:
        raise PowersteerError(f"{path}: {format_validation_error(error)}") from None
    try:
        shape = behavior.check_scorer()
        extras = behavior.check_extra_scorers()
    except PowersteerError as error:
        raise PowersteerError(f"{path}: {error}") from None
    check_scorer_fits(behavior, shape)
    if check_data:
        fields = [*shape.row_fields, *(f for extra in extras for f in extra.row_fields)]
        _check_prompt_files(behavior, tuple(dict.fromkeys(fields)), path)
    return behavior


def check_scorer_fits(behavior: Behavior, scorer: Scorer | ScorerShape) -> None:
    """The behavior's ``expect:`` asks for what the scorer gives (a ``python`` scorer's
    metric is known once it is built, at run, which calls this again)."""
    if scorer.metric == "score" and behavior.expect.min_success is not None:
        name = f" {scorer.name!r}" if isinstance(scorer, GenerationScorer | LogitsScorer) else ""
        raise PowersteerError(
            f"{behavior.path or behavior.name}: expect.min_success: scorer{name} gives a "
            "continuous score, not success; remove min_success (compare methods with "
            "expect.beats) or use a success scorer"
        )


def check_row_fields(behavior: Behavior, rows: list[dict[str, Any]], fields: Sequence[str]) -> None:
    """Every prompt row holds each of ``fields`` (the row keys the scorer reads)."""
    origin = behavior.prompts.path or behavior.prompts.hf
    key = "prompts.path" if behavior.prompts.path is not None else "prompts.hf"
    for field in fields:
        for index, row in enumerate(rows):
            if field not in row:
                raise PowersteerError(
                    f"{behavior.path or behavior.name}: {key}: row {index} of {origin} lacks "
                    f"field {field!r} that the scorer reads; add it to every row or change "
                    "the scorer's option"
                )


def _check_prompt_count(behavior: Behavior, count: int) -> None:
    """A sweep needs two prompts: one to select on and one to report on."""
    if count < 2:
        origin = behavior.prompts.path or behavior.prompts.hf
        raise PowersteerError(
            f"{behavior.path or behavior.name}: prompts: {origin} gives {count} prompt "
            "(after limit); a sweep needs at least 2 (one to select the vector and scale on, "
            "one to report on); add prompts"
        )


def _check_prompt_files(behavior: Behavior, fields: Sequence[str], path: Path) -> None:
    """Read the local prompt files (not hf datasets); check the prompt count and the fields
    the scorer reads."""
    for where, spec in (("prompts", behavior.prompts), ("contrast", behavior.contrast)):
        if spec is None or spec.path is None:
            continue
        rows = load_prompt_rows(spec, behavior.base_dir, where=where, source=path)
        if where == "prompts":
            _check_prompt_count(behavior, len(rows))
            check_row_fields(behavior, rows, fields)


def _read_yaml(path: Path) -> dict[Any, Any]:
    """The mapping in YAML file ``path``; a repeated key is an error, as is anything else."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PowersteerError(f"{path}: cannot read the file ({error}); check it") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader that rejects repeats
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise PowersteerError(
            f"{path}{where}: malformed YAML ({problem}); fix the syntax there "
            "(check indentation, colons and quotes)"
        ) from None
    if data is None:
        raise PowersteerError(
            f"{path}: the file is empty; write a behavior (powersteer new NAME writes a scaffold)"
        )
    if not isinstance(data, dict):
        raise PowersteerError(
            f"{path}: the file holds a {type(data).__name__}, not a mapping of keys; "
            "start it with name: ... on the first line"
        )
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` semantics, except that a key repeated in a mapping is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

"""Prompt sources: a behavior's ``prompts:`` and ``contrast:`` sections, and reading their
rows from a file beside the YAML, a Hugging Face dataset or a catalogue dataset."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from harness.errors import PowersteerError

PROMPT_SUFFIXES = (".jsonl", ".json", ".csv", ".txt")


def _check_chat_template(value: object) -> object:
    if value is True or value is False or value == "auto":
        return value
    raise ValueError(f"should be auto, true or false, got {value!r}; write one of those")


ChatTemplate = Annotated[bool | Literal["auto"], BeforeValidator(_check_chat_template)]


class PromptSource(BaseModel):
    """Where prompts come from: a file beside the YAML, a Hugging Face dataset, or a
    catalogue dataset (``dataset: harmbench`` with ``split:`` and ``category:``)."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = None
    hf: str | None = None
    dataset: str | None = None
    category: str | list[str] | None = None
    split: str | None = None
    config: str | None = None
    field: str = "prompt"
    chat_template: ChatTemplate = "auto"
    system: str | None = None
    limit: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> PromptSource:
        if [self.path, self.hf, self.dataset].count(None) != 2:
            raise ValueError(
                "give exactly one of path, hf and dataset; write path: data/FILE.jsonl "
                "(relative to the behavior file), hf: OWNER/DATASET or dataset: harmbench"
            )
        if self.dataset is not None:
            _check_catalogue_dataset(self)
        elif self.category is not None:
            raise ValueError("category filters a catalogue dataset; remove it or use dataset:")
        if self.path is not None and (self.split is not None or self.config is not None):
            raise ValueError(
                "split and config belong to an hf dataset, not a file; remove them or use hf:"
            )
        if self.system is not None and self.chat_template is False:
            raise ValueError(
                "system: a system turn needs the chat template; "
                "set chat_template: auto (or true), or remove system"
            )
        if self.path is not None and not self.path.endswith(PROMPT_SUFFIXES):
            raise ValueError(
                f"path {self.path!r} has an unknown file type; use one of "
                + ", ".join(PROMPT_SUFFIXES)
            )
        return self


def _check_catalogue_dataset(spec: PromptSource) -> None:
    """A ``dataset:`` source: a known name, no ``config``; its text column by default."""
    # Imported here: the catalogue pulls in the hub client, needed only by dataset: sources.
    from harness.engine.catalogue.datasets import DATASETS

    entry = DATASETS.get(spec.dataset or "")
    if entry is None:
        raise ValueError(
            f"dataset {spec.dataset!r} is not in the dataset catalogue; use one of "
            f"{', '.join(DATASETS)} (see `powersteer datasets list`), or hf: OWNER/DATASET"
        )
    if spec.config is not None:
        raise ValueError("config belongs to an hf dataset; remove it or use split/category")
    if "field" not in spec.model_fields_set:
        spec.field = entry.text_field


def load_prompt_rows(
    spec: PromptSource,
    base_dir: str | os.PathLike[str],
    *,
    where: str = "prompts",
    source: Path | None = None,
) -> list[dict[str, Any]]:
    """The rows of a prompt source, each a dict holding at least ``spec.field``.

    Files (``.jsonl``, ``.json``, ``.csv``, ``.txt`` one prompt a line) are absolute or
    resolve against ``base_dir``, ``..`` and symlinks followed: a behavior may read any such
    file its user can (the README says so); ``hf:`` datasets load with
    ``datasets.load_dataset``. ``spec.limit``
    keeps the first rows. ``where`` and ``source`` (the YAML file) name the place in
    error messages.
    """
    prefix = f"{source}: " if source is not None else ""
    if spec.dataset is not None:
        from harness.engine.catalogue.datasets import load_dataset_rows

        categories = [spec.category] if isinstance(spec.category, str) else spec.category
        try:
            rows = load_dataset_rows(spec.dataset, spec.split, categories)
        except PowersteerError as error:
            raise PowersteerError(f"{prefix}{where}.dataset: {error}") from None
        origin = f"dataset {spec.dataset} (split {spec.split or 'default'})"
    elif spec.hf is not None:
        rows = _hf_rows(spec, f"{prefix}{where}.hf")
        origin = f"dataset {spec.hf} (split {spec.split or 'train'})"
    elif spec.path is not None:
        file = Path(spec.path)
        file = file if file.is_absolute() else Path(base_dir) / file
        rows = _file_rows(file, spec.field, f"{prefix}{where}.path")
        origin = str(file)
    else:  # PromptSource's validator requires one of them; a model_construct() may not
        raise PowersteerError(f"{prefix}{where}: give path:, hf: or dataset: for the prompts")
    if spec.limit is not None:
        rows = rows[: spec.limit]
    if not rows:
        raise PowersteerError(f"{prefix}{where}: {origin} holds no rows; add prompts to it")
    for index, row in enumerate(rows):
        if not isinstance(row.get(spec.field), str):
            fields = ", ".join(sorted(row)) or "none"
            raise PowersteerError(
                f"{prefix}{where}.field: row {index} of {origin} has no text field "
                f"{spec.field!r} (its fields: {fields}); set field: to the prompt's key"
            )
    return rows


def prompt_texts(rows: Sequence[dict[str, Any]], spec: PromptSource) -> list[str]:
    """The prompt strings of ``rows`` (before any chat template)."""
    return [str(row[spec.field]) for row in rows]


def use_chat_template(spec: PromptSource, model_has_template: bool) -> bool:
    """Whether to wrap prompts in the chat template: ``auto`` follows the model."""
    if spec.chat_template == "auto":
        return model_has_template
    return bool(spec.chat_template)


def _file_rows(file: Path, field: str, where: str) -> list[dict[str, Any]]:
    """The rows of a prompt file: ``.txt`` one prompt a line, ``.csv`` with a header, or
    ``.json``/``.jsonl`` records that are strings or objects."""
    if not file.is_file():
        raise PowersteerError(
            f"{where}: {file} does not exist; "
            "fix the path (it is relative to the behavior file) or create the file"
        )
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PowersteerError(f"{where}: cannot read {file} ({error}); check the file") from None
    suffix = file.suffix.lower()
    if suffix == ".txt":
        return [{field: line} for line in text.splitlines() if line.strip()]
    if suffix == ".csv":
        return [dict(row) for row in csv.DictReader(text.splitlines())]
    records = _json_records(text, jsonl=suffix == ".jsonl", file=file, where=where)
    return [_as_row(record, index, field, file, where) for index, record in enumerate(records)]


def _json_records(text: str, *, jsonl: bool, file: Path, where: str) -> list[Any]:
    """The records of a JSON file (a list is its elements) or of a JSONL file."""
    # JSONL parses line by line so an error names the file's line, not the record's.
    chunks = (
        [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
        if jsonl
        else [(0, text)]
    )
    records: list[Any] = []
    for number, chunk in chunks:
        try:
            loaded = json.loads(chunk)
        except json.JSONDecodeError as error:
            line = number or error.lineno
            raise PowersteerError(
                f"{where}: {file}, line {line}: invalid JSON ({error.msg}); fix that line"
            ) from None
        if not jsonl and isinstance(loaded, list):
            records.extend(loaded)
        else:
            records.append(loaded)
    return records


def _as_row(record: Any, index: int, field: str, file: Path, where: str) -> dict[str, Any]:
    """A JSON record as a row: a string is the prompt itself, an object is the row."""
    if isinstance(record, str):
        return {field: record}
    if isinstance(record, dict):
        return record
    raise PowersteerError(
        f"{where}: {file}, record {index} is a {type(record).__name__}; "
        "write each record as a string or an object"
    )


def _hf_rows(spec: PromptSource, where: str) -> list[dict[str, Any]]:
    """The rows of ``spec``'s Hugging Face dataset split (the first ``spec.limit`` rows)."""
    # Imported here because datasets is slow to import (pyarrow, fsspec) and only hf:
    # sources need it; it is a hard dependency, so there is no missing-package branch.
    import datasets

    split = spec.split or "train"
    try:
        dataset = datasets.load_dataset(spec.hf, spec.config, split=split)
    except Exception as error:  # datasets raises many unrelated types
        raise PowersteerError(
            f"{where}: cannot load {spec.hf!r} (config {spec.config!r}, split {split!r}): "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}; "
            "check the dataset id, config and split"
        ) from None
    if spec.limit is not None:
        dataset = dataset.select(range(min(spec.limit, len(dataset))))
    return [dict(row) for row in dataset]

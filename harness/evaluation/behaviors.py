"""Behaviors: a prompt set and a scorer, written as one YAML file.

Schema (every section but ``name``, ``prompts`` and ``scorer`` is optional; an unknown key
anywhere is an error)::

    name: anti_refusal                # letters, digits, '_', '-', '.'
    description: free text
    prompts:                          # the prompts to steer
      path: data/requests.jsonl       # .jsonl, .json, .csv or .txt, relative to this file
      # hf: walledai/AdvBench         # ... or a Hugging Face dataset (needs `datasets`)
      # split: train                  # hf only (default train)
      # config: default               # hf only, optional
      field: prompt                   # the row field holding the prompt text (default prompt)
      chat_template: auto             # auto: use the model's chat template if it has one;
                                      # true: require one; false: plain text
      system: You are a helpful assistant.  # optional system turn (needs the chat template)
      limit: 64                       # use the first N rows (default all)
    contrast:                         # optional, same keys as prompts: prompts that show the
      path: data/harmless.jsonl       # target behavior; CAA's direction is
                                      # mean(contrast) - mean(prompts)
    scorer:
      type: refusal                   # a registered scorer (harness.evaluation.scorers.SCORERS)
      success: not_refused            # ... and that scorer's options
    generation: {max_new_tokens: 64, temperature: 0}
    steering:
      methods: [power, melbo, random] # from power, melbo, random, caa (caa needs contrast)
      source_layer: 0.25              # block index (negative from the end) or fraction
      target_layer: 0.75              # must lie after source_layer
      num_vectors: 8
      scales: [0, 0.5, 1, 2, 4, 8]    # multiples of the median residual norm at the source
      target_tokens: all_but_first    # target positions: all, all_but_first (default) or
                                      # N (the last N prompt tokens)
      options:                        # optional keyword arguments for each method
        melbo: {steps: 150}           # (see harness.engine.methods: power_steering, melbo, ...)
    coherence:                        # when a steered output still counts as coherent
      max_loglik_drop: 3.0            # nats/token below the median unsteered completion
      max_repetition: 0.5             # repeated-trigram fraction of the completion
    split: {select: 0.5, seed: 0}     # fraction of prompts used to pick vector and scale
    expect:                           # CI thresholds (pytest evals/), on the held-out prompts
      methods: [power, melbo]         # the methods held to them (default: all but random)
      min_success: 0.6                # effective success rate (needs a success scorer)
      beats: [random, unsteered]      # must beat these with a significant paired test
      max_coherence_drop: 0.5         # most allowed drop of the coherent fraction

Every mistake is reported as one :class:`PowersteerError` line naming the file, the key
(``steering.scales[2]``) and the fix.
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from harness.errors import PowersteerError
from harness.evaluation.scorers import SCORERS, Scorer, build_scorer, type_problem

PROMPT_SUFFIXES = (".jsonl", ".json", ".csv", ".txt")
MethodName = Literal["power", "melbo", "random", "caa"]
BASELINES = ("unsteered",)


def _check_layer(value: object) -> object:
    """A layer is an int block index or a float fraction of depth in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(
            f"should be a block index or a fraction of depth, got {value!r}; "
            "write an integer such as 6 (or -2) or a fraction such as 0.25"
        )
    if isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise ValueError(
            f"fraction of depth {value} lies outside [0, 1]; "
            "write a fraction such as 0.25 or an integer block index"
        )
    return value


Layer = Annotated[int | float, BeforeValidator(_check_layer)]


def _check_chat_template(value: object) -> object:
    if value is True or value is False or value == "auto":
        return value
    raise ValueError(f"should be auto, true or false, got {value!r}; write one of those")


ChatTemplate = Annotated[bool | Literal["auto"], BeforeValidator(_check_chat_template)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptSource(_Section):
    """Where prompts come from: a file beside the YAML or a Hugging Face dataset."""

    path: str | None = None
    hf: str | None = None
    split: str | None = None
    config: str | None = None
    field: str = "prompt"
    chat_template: ChatTemplate = "auto"
    system: str | None = None
    limit: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> PromptSource:
        if (self.path is None) == (self.hf is None):
            raise ValueError(
                "give exactly one of path and hf; write path: data/FILE.jsonl "
                "(relative to the behavior file) or hf: OWNER/DATASET"
            )
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


class ScorerSpec(BaseModel):
    """``type`` names a registered scorer; the other keys are its options.

    The options are checked against the scorer's own signature by
    :func:`harness.evaluation.scorers.build_scorer`, so unknown ones are still errors.
    """

    model_config = ConfigDict(extra="allow")

    type: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, **self.options}


class Generation(_Section):
    max_new_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)


def _check_target_tokens(value: object) -> object:
    """``steering.target_tokens`` by the one rule the methods use; unset or null is the
    run default (:data:`harness.engine.prompts.DEFAULT_TARGET_TOKENS`)."""
    from harness.engine.prompts import DEFAULT_TARGET_TOKENS, check_target_tokens

    try:
        return DEFAULT_TARGET_TOKENS if value is None else check_target_tokens(value)
    except PowersteerError as error:
        raise ValueError(str(error)) from None


class Steering(_Section):
    methods: list[MethodName] = Field(
        default_factory=lambda: ["power", "melbo", "random"], min_length=1
    )
    source_layer: Layer = 0.25
    target_layer: Layer = 0.75
    num_vectors: int = Field(default=8, ge=1)
    scales: list[float] = Field(default_factory=lambda: [0, 0.5, 1, 2, 4, 8], min_length=1)
    target_tokens: Annotated[
        int | Literal["all", "all_but_first"] | None, BeforeValidator(_check_target_tokens)
    ] = Field(default=None, validate_default=True)
    options: dict[MethodName, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Steering:
        for method, options in self.options.items():
            _check_method_options(method, options)
        repeated = sorted({m for m in self.methods if self.methods.count(m) > 1})
        if repeated:
            raise ValueError(f"{repeated[0]!r} is listed twice in methods; list each once")
        source, target = self.source_layer, self.target_layer
        same_kind = isinstance(source, float) == isinstance(target, float)
        if same_kind and (source >= 0) == (target >= 0) and target <= source:
            raise ValueError(
                f"target_layer {target!r} is not after source_layer {source!r}; "
                "steering only reaches later blocks, so choose target_layer > source_layer"
            )
        return self


class Coherence(_Section):
    """When a steered completion still counts as coherent (see :mod:`harness.coherence`)."""

    max_loglik_drop: float = Field(default=3.0, gt=0.0)
    max_repetition: float = Field(default=0.5, gt=0.0, le=1.0)


class Split(_Section):
    select: float = Field(default=0.5, gt=0.0, lt=1.0)
    seed: int = 0


class Expect(_Section):
    methods: list[MethodName] | None = None
    min_success: float | None = Field(default=None, ge=0.0, le=1.0)
    beats: list[str] = Field(default_factory=list)
    max_coherence_drop: float | None = Field(default=None, ge=0.0)


class Behavior(_Section):
    """A validated behavior. :func:`load_behavior` also records the file it came from."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    prompts: PromptSource
    contrast: PromptSource | None = None
    scorer: ScorerSpec
    generation: Generation = Field(default_factory=Generation)
    steering: Steering = Field(default_factory=Steering)
    coherence: Coherence = Field(default_factory=Coherence)
    split: Split = Field(default_factory=Split)
    expect: Expect = Field(default_factory=Expect)

    _path: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _cross_checks(self) -> Behavior:
        if "caa" in self.steering.methods and self.contrast is None:
            raise ValueError(
                "steering.methods: caa (difference of means) needs contrast prompts; "
                "add a contrast: section or remove caa"
            )
        for index, name in enumerate(self.expect.methods or []):
            if name not in self.steering.methods:
                raise ValueError(
                    f"expect.methods[{index}]: {name!r} is not one of steering.methods "
                    f"({', '.join(self.steering.methods)}); list a method the sweep runs"
                )
        allowed = [*BASELINES, *self.steering.methods]
        for index, name in enumerate(self.expect.beats):
            if name not in allowed:
                raise ValueError(
                    f"expect.beats[{index}]: {name!r} is neither a baseline nor one of "
                    f"steering.methods; use one of: {', '.join(allowed)}"
                )
        return self

    @property
    def expected_methods(self) -> list[str]:
        """The methods ``expect:`` applies to: ``expect.methods``, else all but random."""
        if self.expect.methods is not None:
            return list(self.expect.methods)
        return [m for m in self.steering.methods if m != "random"]

    @property
    def path(self) -> Path | None:
        """The YAML file this behavior was loaded from (None if built in Python)."""
        return self._path

    @property
    def base_dir(self) -> Path:
        """The directory relative prompt paths resolve against."""
        return self._path.parent if self._path is not None else Path.cwd()

    def make_scorer(self) -> Scorer:
        """The built scorer (see :mod:`harness.evaluation.scorers`)."""
        return build_scorer(self.scorer.as_dict(), base_dir=self.base_dir)

    def prompt_rows(self) -> list[dict[str, Any]]:
        return load_prompt_rows(self.prompts, self.base_dir, where="prompts", source=self._path)

    def contrast_rows(self) -> list[dict[str, Any]] | None:
        if self.contrast is None:
            return None
        return load_prompt_rows(self.contrast, self.base_dir, where="contrast", source=self._path)


# --- loading ---------------------------------------------------------------------------------


def load_behavior(path: str | os.PathLike[str], *, check_data: bool = True) -> Behavior:
    """Read, validate and return the behavior in YAML file ``path``.

    Beyond the schema, the scorer and its options are checked, and (``check_data``) local
    prompt files are read: they must exist, hold rows, and have the prompt field and the
    fields the scorer reads. Hugging Face datasets are not downloaded here.
    """
    path = Path(path)
    if not path.is_file():
        raise PowersteerError(
            f"{path}: behavior file not found; check the path "
            "(powersteer new NAME writes a scaffold)"
        )
    data = _read_yaml(path)
    try:
        behavior = Behavior.model_validate(data)
    except ValidationError as error:
        raise PowersteerError(f"{path}: {format_validation_error(error)}") from None
    behavior._path = path
    try:
        scorer = behavior.make_scorer()
    except PowersteerError as error:
        raise PowersteerError(f"{path}: {error}") from None
    if scorer.metric != "success" and behavior.expect.min_success is not None:
        raise PowersteerError(
            f"{path}: expect.min_success: scorer {scorer.name!r} gives a continuous score, "
            "not success; remove min_success (compare methods with expect.beats) or use a "
            "success scorer"
        )
    if check_data:
        for where, spec in (("prompts", behavior.prompts), ("contrast", behavior.contrast)):
            if spec is None or spec.path is None:
                continue
            rows = load_prompt_rows(spec, behavior.base_dir, where=where, source=path)
            if where == "prompts":
                _check_row_fields(rows, scorer.row_fields, spec, path)
    return behavior


def load_prompt_rows(
    spec: PromptSource,
    base_dir: str | os.PathLike[str],
    *,
    where: str = "prompts",
    source: Path | None = None,
) -> list[dict[str, Any]]:
    """The rows of a prompt source, each a dict holding at least ``spec.field``.

    Files (``.jsonl``, ``.json``, ``.csv``, ``.txt`` one prompt a line) resolve against
    ``base_dir``; ``hf:`` datasets load with ``datasets.load_dataset``. ``spec.limit``
    keeps the first rows. ``where`` and ``source`` (the YAML file) name the place in
    error messages.
    """
    prefix = f"{source}: " if source is not None else ""
    if spec.hf is not None:
        rows = _hf_rows(spec, f"{prefix}{where}.hf")
        origin = f"dataset {spec.hf} (split {spec.split or 'train'})"
    else:
        assert spec.path is not None
        file = Path(spec.path)
        file = file if file.is_absolute() else Path(base_dir) / file
        if not file.is_file():
            raise PowersteerError(
                f"{prefix}{where}.path: {file} does not exist; "
                "fix the path (it is relative to the behavior file) or create the file"
            )
        rows = _file_rows(file, spec.field, f"{prefix}{where}.path")
        origin = str(file)
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


def _check_method_options(method: str, options: dict[str, Any]) -> None:
    """Options must be keyword arguments of the method's function (not the ones the sweep sets)."""
    import inspect

    from harness.engine.methods import METHOD_FUNCTIONS

    owned = {"lm", "prompts", "contrast", "source", "target", "k", "num_vectors", "seed"}
    accepted = sorted(
        name
        for name in inspect.signature(METHOD_FUNCTIONS[method]).parameters
        if name not in owned and name != "progress"
    )
    for key in options:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"options.{method}: {method} has no option {key!r}; "
                f"{hint}its options are: {', '.join(accepted) or 'none'}"
            )


def prompt_texts(rows: Sequence[dict[str, Any]], spec: PromptSource) -> list[str]:
    """The prompt strings of ``rows`` (before any chat template)."""
    return [str(row[spec.field]) for row in rows]


def use_chat_template(spec: PromptSource, model_has_template: bool) -> bool:
    """Whether to wrap prompts in the chat template: ``auto`` follows the model."""
    if spec.chat_template == "auto":
        return model_has_template
    return bool(spec.chat_template)


def split_indices(n: int, split: Split) -> tuple[list[int], list[int]]:
    """Disjoint ``(select, test)`` prompt indices: a seeded shuffle cut at ``split.select``.

    Each part gets at least one prompt when ``n >= 2``.
    """
    order = np.random.default_rng(split.seed).permutation(n)
    cut = min(max(round(split.select * n), 1), n - 1) if n >= 2 else n
    return sorted(int(i) for i in order[:cut]), sorted(int(i) for i in order[cut:])


def _read_yaml(path: Path) -> Any:
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


def _file_rows(file: Path, field: str, where: str) -> list[dict[str, Any]]:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PowersteerError(f"{where}: cannot read {file} ({error}); check the file") from None
    suffix = file.suffix.lower()
    if suffix == ".txt":
        return [{field: line} for line in text.splitlines() if line.strip()]
    if suffix == ".csv":
        return [dict(row) for row in csv.DictReader(text.splitlines())]
    # JSONL parses line by line so an error names the file's line, not the record's.
    chunks = (
        [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
        if suffix == ".jsonl"
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
        if suffix == ".json" and isinstance(loaded, list):
            records.extend(loaded)
        else:
            records.append(loaded)
    rows = []
    for index, record in enumerate(records):
        if isinstance(record, str):
            rows.append({field: record})
        elif isinstance(record, dict):
            rows.append(record)
        else:
            raise PowersteerError(
                f"{where}: {file}, record {index} is a {type(record).__name__}; "
                "write each record as a string or an object"
            )
    return rows


def _hf_rows(spec: PromptSource, where: str) -> list[dict[str, Any]]:
    try:
        import datasets  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise PowersteerError(
            f"{where}: reading a Hugging Face dataset needs the datasets package; "
            "pip install datasets (or point path: at a local file)"
        ) from None
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


def _check_row_fields(
    rows: list[dict[str, Any]], fields: Sequence[str], spec: PromptSource, path: Path
) -> None:
    for field in fields:
        for index, row in enumerate(rows):
            if field not in row:
                raise PowersteerError(
                    f"{path}: prompts.path: row {index} of {spec.path} lacks field {field!r} "
                    "that the scorer reads; add it to every row or change the scorer's option"
                )


# --- error messages ----------------------------------------------------------------------------

_SECTIONS: dict[str, type[BaseModel]] = {
    "": Behavior,
    "prompts": PromptSource,
    "contrast": PromptSource,
    "generation": Generation,
    "steering": Steering,
    "split": Split,
    "expect": Expect,
}

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
        parent = str(loc[0]) if len(loc) > 1 else ""
        model = _SECTIONS.get(parent, Behavior)
        valid = list(model.model_fields)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        return f"{key}: unknown key; {guess}valid keys here: {', '.join(valid)}"
    if kind == "missing":
        name = str(loc[-1])
        hint = _REQUIRED_HINTS.get(name, f"{name}: ...")
        return f"{key}: missing required key; add {hint}"
    if kind == "value_error":
        text = message.removeprefix("Value error, ")
        # Cross-section checks put their key first ("steering.methods: ...").
        return text if not key or re.match(r"^[\w.\[\]]+: ", text) else f"{key}: {text}"
    text, fix = type_problem(message, problem.get("input"))
    return f"{key}: {text}; {fix}"


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


# --- scaffold --------------------------------------------------------------------------------

SCAFFOLD = """\
# Behavior {name}: check it with `powersteer validate {file}`.
# Every key is documented in harness/evaluation/behaviors.py; unknown keys are errors.
name: {name}
description: What steering should change in the model's answers.

prompts:
  path: data/{name}.jsonl        # .jsonl/.json/.csv/.txt, relative to this file
  # hf: OWNER/DATASET            # ... or a Hugging Face dataset (pip install datasets)
  # split: train
  field: prompt                  # the row field holding the prompt
  chat_template: auto            # auto | true | false
  # limit: 64                    # use only the first N rows

# contrast:                      # prompts that show the target behavior (enables caa)
#   path: data/{name}_contrast.jsonl

# scorer types: {scorers}
scorer:
  type: regex
  pattern: "\\\\bexample\\\\b"       # success when the completion matches
  ignore_case: true

generation:
  max_new_tokens: 64
  temperature: 0                 # 0 = greedy

steering:
  methods: [power, melbo, random]  # power | melbo | random | caa
  source_layer: 0.25             # block index (negative from the end) or fraction of depth
  target_layer: 0.75
  num_vectors: 8
  scales: [0, 0.5, 1, 2, 4, 8]   # times the median residual norm at the source layer

split:
  select: 0.5                    # half picks vector and scale, the other half is reported
  seed: 0

expect:
  # min_success: 0.6             # success rate the best method must reach
  beats: [random, unsteered]
"""

SCAFFOLD_ROWS = (
    {"prompt": "Write one sentence about the sea."},
    {"prompt": "Give me an example of a short poem."},
    {"prompt": "Describe a city at night."},
)


def scaffold_text(name: str, file: str = "NAME.yaml") -> str:
    """The commented YAML scaffold for a new behavior called ``name``."""
    return SCAFFOLD.format(name=name, file=file, scorers=", ".join(sorted(SCORERS)))


def create_behavior(name: str, directory: str | os.PathLike[str] = "behaviors") -> list[Path]:
    """Write ``directory/name.yaml`` and, if absent, example data ``directory/data/name.jsonl``.

    Refuses to overwrite an existing behavior. Returns the paths written. Each file is
    written to a temporary name and renamed, so nothing half-written is left behind.
    """
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise PowersteerError(
            f"behavior name {name!r} has characters other than letters, digits, '_', '-', '.'; "
            "choose a name such as my_behavior"
        )
    directory = Path(directory)
    target = directory / f"{name}.yaml"
    if target.exists():
        raise PowersteerError(f"{target} already exists; choose another name or edit that file")
    data = directory / "data" / f"{name}.jsonl"
    written = []
    if not data.exists():
        rows = "".join(json.dumps(row) + "\n" for row in SCAFFOLD_ROWS)
        _write_new(data, rows)
        written.append(data)
    _write_new(target, scaffold_text(name, str(target)))
    written.insert(0, target)
    return written


def _write_new(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)

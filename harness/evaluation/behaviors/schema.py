"""The behavior schema: the sections of a behavior YAML file as pydantic models.

Schema (every section but ``name``, ``prompts`` and ``scorer`` is optional; an unknown key
anywhere is an error)::

    name: anti_refusal                # a file name: letters, digits, '_', '-', '.'
    description: free text
    prompts:                          # the prompts to steer
      path: data/requests.jsonl       # .jsonl, .json, .csv or .txt, relative to this file
      # hf: walledai/AdvBench         # ... or a Hugging Face dataset
      # dataset: harmbench            # ... or a catalogue dataset (powersteer datasets list)
      # split: train                  # hf (default train) or dataset (harmbench: val, test)
      # config: default               # hf only, optional
      # category: standard            # dataset only: a value or a list (harmbench:
                                      # standard, contextual, copyright)
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
    extra_scorers:                    # optional: more scorers computed on every cell, in
      - {type: compliance}            # columns {type}_success and {type}_score (report:
                                      # "Extra scorers at selected cells")
    generation: {max_new_tokens: 64, temperature: 0}
    steering:
      methods: [power, melbo, random] # from power, melbo, random, caa (caa needs contrast)
      source_layer: 0.25              # block index (negative from the end) or fraction
      target_layer: 0.75              # must lie after source_layer
      # layers: auto                  # instead: choose the pair by data on the select
                                      # prompts (harness.evaluation.layer_selection) from
                                      # auto, ['1:4', '0.25:0.75'], {sources: [..],
                                      # targets: [..]} or {candidates: FILE} (powersteer map
                                      # --candidates-out FILE)
      # screen_keep: 3                # pairs the screen keeps for the select sweep
      # race_pairs: true              # kept pairs race on each method's first vector;
                                      # the full grid runs at the pair each method won
                                      # (false: the full grid at every kept pair)
      # screen_scale: 1.0             # the screen's ±scale for next-token KL (default:
                                      # the middle nonzero scale of the grid)
      # refine_steps: 0               # bisection steps at a coherence cliff (scale_refinement)
      # random_draws: 3               # independent draws of the random control, each of
                                      # num_vectors directions selected like a method
                                      # (random, random#2, ...); comparisons pool them
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
(``steering.scales[2]``) and the fix (:mod:`harness.evaluation.behaviors.messages` words
pydantic's errors that way). ``prompts:`` and ``contrast:`` are
:class:`~harness.evaluation.behaviors.sources.PromptSource` sections.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    model_validator,
)

from harness.engine.methods import METHODS, ranked_methods
from harness.engine.prompts import DEFAULT_TARGET_TOKENS, check_target_tokens
from harness.errors import PowersteerError
from harness.evaluation.behaviors.layer_fields import Layer, LayerCandidates, fits_some_depth
from harness.evaluation.behaviors.sources import PromptSource, load_prompt_rows
from harness.evaluation.scorers import (
    OptionTypeError,
    Scorer,
    ScorerShape,
    build_scorer,
    check_scorer,
    checked_value,
)

# Every registered method, in report order: the registry is the one list of methods.
MethodName = Literal[tuple(info.name for info in ranked_methods())]  # type: ignore[valid-type]
BASELINES = ("unsteered",)


# NaN or infinity is refused where it is written: a NaN scale steers by NaN and the cells
# come back as plausible-looking garbage.
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]

# A behavior's name names directories and files (``--steer-out/<name>/``), so it is a
# plain file name: no separators, and never ``.`` or ``..`` (it cannot start with a dot).
BEHAVIOR_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"


def _check_name(value: str) -> str:
    if not re.fullmatch(BEHAVIOR_NAME, value):
        raise ValueError(
            f"{value!r} is not a safe file name (the name names the behavior's run "
            "directory); use letters, digits, '_', '-' and '.', not starting with '.' or "
            "'-', at most 128 characters, e.g. my_behavior"
        )
    return value


BehaviorName = Annotated[str, AfterValidator(_check_name)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    temperature: FiniteFloat = Field(default=0.0, ge=0.0)


def _check_target_tokens(value: object) -> object:
    """``steering.target_tokens`` by the one rule the methods use; unset or null is the
    run default (:data:`harness.engine.prompts.DEFAULT_TARGET_TOKENS`)."""
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
    scales: list[FiniteFloat] = Field(default_factory=lambda: [0, 0.5, 1, 2, 4, 8], min_length=1)
    target_tokens: Annotated[
        int | Literal["all", "all_but_first"] | None, BeforeValidator(_check_target_tokens)
    ] = Field(default=None, validate_default=True)
    options: dict[MethodName, dict[str, Any]] = Field(default_factory=dict)
    layers: LayerCandidates = None
    screen_keep: int = Field(default=3, ge=1)
    race_pairs: bool = True
    screen_scale: FiniteFloat | None = Field(default=None, gt=0.0)
    refine_steps: int = Field(default=0, ge=0, le=12)
    random_draws: int = Field(default=3, ge=1, le=20)

    def resolved_screen_scale(self) -> float:
        """The screen's ±scale: ``screen_scale``, else the middle nonzero grid scale.

        At the grid's top scale the strongest pairs saturate the next-token KL (on
        SmolLM2 11-12 nats at 1x the residual norm), which ranks destroyed outputs.
        """
        if self.screen_scale is not None:
            return self.screen_scale
        nonzero = sorted(s for s in self.scales if s != 0)
        return nonzero[len(nonzero) // 2] if nonzero else 1.0

    @model_validator(mode="after")
    def _consistent(self) -> Steering:
        for method, options in self.options.items():
            self.options[method] = _checked_method_options(method, options)
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
        if not fits_some_depth(source, target):
            raise ValueError(
                f"target_layer {target!r} is not after source_layer {source!r} in a model of "
                "any depth (a fraction counts from the first block, a negative index from the "
                "last); choose a later target_layer or an earlier source_layer"
            )
        return self


def _checked_method_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked against the method's function: each a keyword argument of it (not
    one the sweep sets) with a value of its annotated type (finite numbers), coerced the way
    scorer options are; a mistake is a ``ValueError`` naming ``options.METHOD.KEY``."""
    info = METHODS[method]
    accepted = list(info.options)
    types = info.option_types()
    checked = {}
    for key, value in options.items():
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"options.{method}: {method} has no option {key!r}; "
                f"{hint}its options are: {', '.join(accepted) or 'none'}"
            )
        try:
            checked[key] = checked_value(types[key], value)
        except OptionTypeError as error:
            raise ValueError(f"options.{method}.{key}: {error}") from None
        limit = info.limits.get(key)
        problem = limit.problem(checked[key]) if limit is not None else None
        if problem is not None:
            raise ValueError(f"options.{method}.{key}: {checked[key]!r} {problem}")
    return checked


class Coherence(_Section):
    """When a steered completion still counts as coherent: :mod:`harness.evaluation.coherence`
    applies these limits to the log-likelihood and repetition that
    :mod:`harness.engine.generation` measures."""

    max_loglik_drop: float = Field(default=3.0, gt=0.0)
    max_repetition: float = Field(default=0.5, gt=0.0, le=1.0)


class Split(_Section):
    select: float = Field(default=0.5, gt=0.0, lt=1.0)
    seed: int = 0


def split_indices(n: int, split: Split) -> tuple[list[int], list[int]]:
    """Disjoint ``(select, test)`` prompt indices: a seeded shuffle cut at ``split.select``.

    Each part gets at least one prompt when ``n >= 2``.
    """
    order = np.random.default_rng(split.seed).permutation(n)
    cut = min(max(round(split.select * n), 1), n - 1) if n >= 2 else n
    return sorted(int(i) for i in order[:cut]), sorted(int(i) for i in order[cut:])


class Expect(_Section):
    methods: list[MethodName] | None = None
    min_success: float | None = Field(default=None, ge=0.0, le=1.0)
    beats: list[str] = Field(default_factory=list)
    max_coherence_drop: float | None = Field(default=None, ge=0.0)


class Behavior(_Section):
    """A validated behavior. :func:`load_behavior` also records the file it came from."""

    name: BehaviorName
    description: str = ""
    prompts: PromptSource
    contrast: PromptSource | None = None
    scorer: ScorerSpec
    extra_scorers: list[ScorerSpec] = Field(default_factory=list)
    generation: Generation = Field(default_factory=Generation)
    steering: Steering = Field(default_factory=Steering)
    coherence: Coherence = Field(default_factory=Coherence)
    split: Split = Field(default_factory=Split)
    expect: Expect = Field(default_factory=Expect)

    _path: Path | None = PrivateAttr(default=None)

    @classmethod
    def from_file_data(cls, data: Any, path: Path) -> Behavior:
        """Validate ``data``, read from the YAML file ``path``, and record that file (relative
        prompt paths resolve beside it). Raises pydantic's ``ValidationError``."""
        behavior = cls.model_validate(data)
        behavior._path = path
        return behavior

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
        if self.prompts.limit is not None and self.prompts.limit < 2:
            raise ValueError(
                f"prompts.limit: {self.prompts.limit} leaves one prompt; a sweep needs at "
                "least 2 (one to select the vector and scale on, one to report on); "
                "set limit: 2 or more"
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
        """The built scorer (see :mod:`harness.evaluation.scorers`). A ``python`` scorer's
        module is imported, running its code: only ``run`` does this."""
        return build_scorer(self.scorer.as_dict(), base_dir=self.base_dir)

    def check_scorer(self) -> ScorerShape:
        """The scorer checked without running user code (what ``validate`` does)."""
        return check_scorer(self.scorer.as_dict(), base_dir=self.base_dir)

    def make_extra_scorers(self) -> list[Scorer]:
        """The built ``extra_scorers:`` (run time, like :meth:`make_scorer`)."""
        return [
            build_scorer(spec.as_dict(), where=f"extra_scorers[{i}]", base_dir=self.base_dir)
            for i, spec in enumerate(self.extra_scorers)
        ]

    def check_extra_scorers(self) -> list[ScorerShape]:
        """The ``extra_scorers:`` checked without running user code."""
        return [
            check_scorer(spec.as_dict(), where=f"extra_scorers[{i}]", base_dir=self.base_dir)
            for i, spec in enumerate(self.extra_scorers)
        ]

    def prompt_rows(self) -> list[dict[str, Any]]:
        return load_prompt_rows(self.prompts, self.base_dir, where="prompts", source=self._path)

    def contrast_rows(self) -> list[dict[str, Any]] | None:
        if self.contrast is None:
            return None
        return load_prompt_rows(self.contrast, self.base_dir, where="contrast", source=self._path)

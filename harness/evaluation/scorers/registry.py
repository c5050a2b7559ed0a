"""The scorer registry: the built-scorer types, the decorator that registers a factory, and
:func:`build_scorer`, which checks a behavior's options against the factory's signature."""

from __future__ import annotations

import difflib
import inspect
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, PydanticUserError, TypeAdapter, ValidationError

from harness.engine.models import LanguageModel
from harness.errors import PowersteerError

Metric = Literal["success", "score"]
Kind = Literal["generation", "logits"]


@dataclass(frozen=True)
class ScoreResult:
    """One completion's score: ``success`` (None for a continuous-only scorer) and ``value``."""

    success: bool | None
    value: float


@dataclass(frozen=True)
class GenerationScorer:
    """A built scorer that reads completions. ``row_fields`` are the row keys it needs."""

    name: str
    metric: Metric
    function: Callable[[str, Mapping[str, Any]], ScoreResult]
    row_fields: tuple[str, ...] = ()
    kind: Kind = field(default="generation", init=False)

    def score(self, completion: str, row: Mapping[str, Any]) -> ScoreResult:
        return self.function(completion, row)


@dataclass(frozen=True)
class LogitsScorer:
    """A built scorer that reads the next-token distribution at the last prompt position."""

    name: str
    metric: Metric
    function: Callable[[LanguageModel, Sequence[str], Sequence[Mapping[str, Any]]], list[float]]
    row_fields: tuple[str, ...] = ()
    kind: Kind = field(default="logits", init=False)

    def score(
        self, lm: LanguageModel, prompts: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> list[float]:
        """``len(prompts)`` floats; ``prompts`` are final strings (chat template applied)."""
        if len(prompts) != len(rows):
            raise PowersteerError(f"{len(prompts)} prompts but {len(rows)} rows; pass one each")
        if len(prompts) == 0:
            return []
        values = list(self.function(lm, prompts, rows))
        if len(values) != len(prompts):
            raise PowersteerError(
                f"scorer {self.name!r} returned {len(values)} values for {len(prompts)} "
                "prompts; return one value per prompt"
            )
        return values


Scorer = GenerationScorer | LogitsScorer


@dataclass(frozen=True)
class ScorerShape:
    """What a scorer spec is known to give before anything runs: its metric (None when only
    building it can tell) and the row fields it reads."""

    metric: Metric | None
    row_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScorerInfo:
    """A registered scorer type: its factory, metric, kind and documentation.

    ``check``, when set, takes the same options as ``factory`` and checks them without
    running user code (a ``python`` scorer's factory imports the user's module).
    """

    name: str
    factory: Callable[..., Scorer]
    metric: Metric
    kind: Kind
    check: Callable[..., ScorerShape] | None = None

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.factory) or ""

    def options(self) -> dict[str, inspect.Parameter]:
        return dict(inspect.signature(self.factory).parameters)


SCORERS: dict[str, ScorerInfo] = {}


def register_scorer(
    name: str,
    *,
    metric: Metric,
    kind: Kind = "generation",
    check: Callable[..., ScorerShape] | None = None,
) -> Callable[[Callable[..., Scorer]], Callable[..., Scorer]]:
    """Register a scorer factory under ``name``; its keyword arguments are the options.

    A factory that runs user code gives ``check``: the same options, checked without
    running it (``powersteer validate`` uses it; see :func:`check_scorer`).
    """

    def decorator(factory: Callable[..., Scorer]) -> Callable[..., Scorer]:
        if name in SCORERS:
            raise ValueError(f"scorer {name!r} is already registered")
        SCORERS[name] = ScorerInfo(name, factory, metric, kind, check)
        return factory

    return decorator


def scorer_info(name: str, *, where: str = "scorer.type") -> ScorerInfo:
    """The registered scorer ``name``, or an error listing the known ones."""
    if name in SCORERS:
        return SCORERS[name]
    known = ", ".join(sorted(SCORERS))
    return _fail(
        where, f"unknown scorer type {name!r}", f"use one of: {known}", suggest=(name, SCORERS)
    )


def build_scorer(
    spec: Mapping[str, Any], *, where: str = "scorer", base_dir: Path | None = None
) -> Scorer:
    """Build a scorer from ``{"type": NAME, **options}`` (a behavior's ``scorer:`` section).

    Options are checked against the factory's signature and type hints, so an unknown,
    missing or mistyped option is one :class:`PowersteerError` naming ``where.option``.
    ``base_dir`` is where a ``python`` scorer's module may also be found as a file.
    """
    info, checked = _checked_spec(spec, where, base_dir)
    try:
        return info.factory(**checked)
    except ScorerOptionError as error:
        _fail(f"{where}.{error.option}", error.problem, error.fix)


def check_scorer(
    spec: Mapping[str, Any], *, where: str = "scorer", base_dir: Path | None = None
) -> ScorerShape:
    """Check a scorer spec as :func:`build_scorer` does, without running user code.

    A scorer registered with a ``check`` (``python``) is checked by it, so its module is
    located and read but not imported; any other is built, which runs only harness code.
    """
    info, checked = _checked_spec(spec, where, base_dir)
    try:
        if info.check is not None:
            return info.check(**checked)
        built = info.factory(**checked)
    except ScorerOptionError as error:
        _fail(f"{where}.{error.option}", error.problem, error.fix)
    return ScorerShape(built.metric, built.row_fields)


def _checked_spec(
    spec: Mapping[str, Any], where: str, base_dir: Path | None
) -> tuple[ScorerInfo, dict[str, Any]]:
    """The registered scorer ``spec`` names and its checked options (``_base_dir`` added)."""
    if "type" not in spec:
        known = ", ".join(sorted(SCORERS))
        _fail(f"{where}.type", "missing scorer type", f"add type: one of {known}")
    info = scorer_info(str(spec["type"]), where=f"{where}.type")
    options = {key: value for key, value in spec.items() if key != "type"}
    checked = _checked_options(info, options, where)
    if "_base_dir" in info.options():
        checked["_base_dir"] = base_dir
    return info, checked


def _checked_options(info: ScorerInfo, options: dict[str, Any], where: str) -> dict[str, Any]:
    """``options`` validated against the factory: names known, required ones given, types
    coerced by the factory's hints. Parameters starting with ``_`` are not options."""
    parameters = info.options()
    accepted = [p for p in parameters if not p.startswith("_")]
    for key in options:
        if key not in accepted:
            _fail(
                f"{where}.{key}",
                f"scorer {info.name!r} has no option {key!r}",
                f"its options are: {', '.join(accepted) if accepted else 'none'}",
                suggest=(key, accepted),
            )
    for key in accepted:
        if parameters[key].default is inspect.Parameter.empty and key not in options:
            _fail(
                f"{where}.{key}",
                f"scorer {info.name!r} needs option {key!r}",
                f"add {key}: ... under scorer ({_first_line(info.doc)})",
            )
    try:
        hints = typing.get_type_hints(info.factory)
    except (NameError, TypeError):  # unresolvable annotations: accept options unchecked
        hints = {}
    checked: dict[str, Any] = {}
    for key, value in options.items():
        try:
            checked[key] = checked_value(hints.get(key, Any), value)
        except OptionTypeError as error:
            _fail(f"{where}.{key}", error.problem, error.fix)
    return checked


class OptionTypeError(ValueError):
    """An option value of the wrong type: ``problem`` ("should be ..., got ...") and ``fix``."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem, self.fix = problem, fix


# Options are finite: a NaN or infinite tolerance, radius or step size gives numbers that
# look like results, so it is refused where it is written.
_FINITE = ConfigDict(allow_inf_nan=False)


def checked_value(hint: Any, value: Any) -> Any:
    """``value`` as type ``hint`` (pydantic's lax coercion; numbers must be finite), or an
    :class:`OptionTypeError` saying what was expected. Scorer and method options use it."""
    try:
        adapter = TypeAdapter(hint, config=_FINITE)
    except PydanticUserError:  # a type that carries its own config takes none
        adapter = TypeAdapter(hint)
    try:
        return adapter.validate_python(value)
    except ValidationError as error:
        raise OptionTypeError(*type_problem(error.errors()[0]["msg"], value)) from None


class ScorerOptionError(Exception):
    """Raised by a scorer factory for a bad option value; :func:`build_scorer` adds where
    the option is (``scorer.window: ...``)."""

    def __init__(self, option: str, problem: str, fix: str) -> None:
        super().__init__(f"{option}: {problem}; {fix}")
        self.option, self.problem, self.fix = option, problem, fix


def _fail(
    key: str, problem: str, fix: str, *, suggest: tuple[str, Any] | None = None
) -> typing.NoReturn:
    if suggest is not None:
        close = difflib.get_close_matches(suggest[0], list(suggest[1]), n=1)
        if close:
            fix = f"did you mean {close[0]!r}? {fix}"
    raise PowersteerError(f"{key}: {problem}; {fix}")


def type_problem(message: str, value: Any) -> tuple[str, str]:
    """Turn pydantic's "Input should be X" into ``("should be X, got V", "write X")``."""
    expected = message.removeprefix("Input should be ").removeprefix("String should ")
    # "a valid integer, unable to parse string as an integer": keep what is expected.
    expected = re.split(r", (?=unable|invalid|input)", expected)[0]
    got = f", got {value!r}" if not isinstance(value, dict | list) else ""
    fix = expected if expected.startswith(("a ", "an ", "'", '"')) else f"a value {expected}"
    return f"should be {expected}{got}", f"write {fix}"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "see the scorer's documentation"

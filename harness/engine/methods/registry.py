"""The one registry of steering-vector methods.

A method is one function decorated with :func:`register_method`, which records everything
the rest of the harness needs to know about it: its name, whether it is supervised (needs
contrast prompts and returns one direction), the label and colour reports use, and the
options a behavior may set. Tables elsewhere (the CLI's choices, the behavior schema's
option check, plot styles, report labels) are derived from :data:`METHODS`, so adding a
method is one new file under ``harness/engine/methods/`` and one import line in its
``__init__``.

Every registered function is called the same way::

    function(lm, prompts, source, target, num_vectors, *, seed=..., contrast=..., **options)
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.engine.methods.result import SteeringVectors
from harness.errors import PowersteerError

MethodFunction = Callable[..., SteeringVectors]


@dataclass(frozen=True)
class Limit:
    """The range an option's value must lie in: ``low <= value`` (``low < value`` when
    ``strict``) and ``value <= high``; None (an unset optional) always passes."""

    low: float | None = None
    high: float | None = None
    strict: bool = False

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is out of range, or None."""
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if self.low is not None and (value <= self.low if self.strict else value < self.low):
            return f"must be {'above' if self.strict else 'at least'} {self.low:g}"
        if self.high is not None and value > self.high:
            return f"must be at most {self.high:g}"
        return None


def check_limits(method: str, limits: dict[str, Limit], **values: Any) -> None:
    """One clear error for the first of ``values`` outside its limit."""
    for name, value in values.items():
        problem = limits[name].problem(value)
        if problem is not None:
            raise PowersteerError(f"{method}: {name}={value!r} {problem}")


# Arguments the harness itself passes to every method: not options a behavior may set.
CALL_ARGUMENTS = frozenset(
    {"lm", "prompts", "contrast", "source", "target", "num_vectors", "seed", "progress"}
)


@dataclass(frozen=True)
class MethodInfo:
    """What the harness knows about one registered method."""

    name: str
    function: MethodFunction
    label: str
    colour: str
    supervised: bool
    control: bool
    """A control (random directions): compared against, not compared with other controls."""
    rank: int
    """Position in report tables and plots (lower first)."""
    options: tuple[str, ...]
    """Keyword options a behavior's ``steering.options.<name>`` may set, sorted."""
    shows_progress: bool
    """Whether the function takes ``progress=`` (a progress bar for long work)."""
    options_function: MethodFunction
    """The function whose keyword arguments the options are (``options_from`` or ``function``)."""
    limits: dict[str, Limit]
    """The ranges numeric options must lie in, checked by the method and by ``validate``."""

    keywords: tuple[str, ...] = ()
    """Every keyword argument the function takes beyond the common call (tensor-valued
    ones such as a warm start included: Python and CLI callers may pass them)."""

    def accepts(self, option: str) -> bool:
        return option in self.keywords

    def option_types(self) -> dict[str, Any]:
        """Each option's annotated type, ``Any`` where it has none or it cannot be resolved."""
        try:
            hints = typing.get_type_hints(self.options_function)
        except (NameError, TypeError):  # an annotation naming what the module lacks
            hints = {}
        return {name: hints.get(name, Any) for name in self.options}


METHODS: dict[str, MethodInfo] = {}


def register_method(
    name: str,
    *,
    label: str,
    colour: str,
    supervised: bool = False,
    control: bool = False,
    rank: int = 100,
    options_from: MethodFunction | None = None,
    limits: dict[str, Limit] | None = None,
) -> Callable[[MethodFunction], MethodFunction]:
    """Register the decorated function as method ``name``; returns it unchanged.

    ``options_from`` names the public function whose keyword arguments are the method's
    options, when the registered function is a thin adapter to the common call.
    """

    def decorate(function: MethodFunction) -> MethodFunction:
        if name in METHODS:
            raise PowersteerError(f"method {name!r} is registered twice")
        options_function = options_from or function
        parameters = inspect.signature(options_function).parameters
        keywords = tuple(sorted(name for name in parameters if name not in CALL_ARGUMENTS))
        METHODS[name] = MethodInfo(
            name=name,
            function=function,
            label=label,
            colour=colour,
            supervised=supervised,
            control=control,
            rank=rank,
            options=tuple(
                sorted(name for name in keywords if not _takes_a_tensor(parameters[name]))
            ),
            keywords=keywords,
            shows_progress="progress" in parameters,
            options_function=options_function,
            limits=dict(limits or {}),
        )
        return function

    return decorate


def _takes_a_tensor(parameter: inspect.Parameter) -> bool:
    """Tensor-valued keywords (a warm start, a steered point) are for Python callers; a
    behavior file cannot write a tensor, so they are not behavior options."""
    return "Tensor" in str(parameter.annotation)


def method_info(name: str) -> MethodInfo:
    """The registered method ``name``, or one clear error listing the choices."""
    if name not in METHODS:
        raise PowersteerError(
            f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}"
        )
    return METHODS[name]


def ranked_methods() -> list[MethodInfo]:
    """Every registered method in report order."""
    return sorted(METHODS.values(), key=lambda info: (info.rank, info.name))


def unsupervised_methods() -> list[str]:
    """Names of the methods that need no contrast prompts, sorted."""
    return sorted(name for name, info in METHODS.items() if not info.supervised)

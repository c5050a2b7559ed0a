"""The ``python`` scorer: a user's own scoring function, named as ``module:function``."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from harness.errors import PowersteerError
from harness.evaluation.scorers.registry import (
    GenerationScorer,
    LogitsScorer,
    Scorer,
    ScoreResult,
    ScorerOptionError,
    register_scorer,
)


@register_scorer("python", metric="success")
def python(function: str, _base_dir: Path | None = None) -> Scorer:
    """A user's own scorer, ``function: module:function``.

    ``module`` is imported with importlib (or, failing that, loaded from ``module.py``
    beside the behavior file). The function either takes ``(completion, row)`` and returns
    a bool, a number, or a :class:`ScoreResult`; or it is itself a factory returning a
    built scorer (decorate nothing; return a ``GenerationScorer``/``LogitsScorer``).
    """
    target = _user_function(function, _base_dir)
    if len(inspect.signature(target).parameters) == 0:
        built = target()
        if not isinstance(built, GenerationScorer | LogitsScorer):
            raise ScorerOptionError(
                "function", f"{function!r} takes no arguments but returned {type(built).__name__}",
                "take (completion, row) or return a GenerationScorer / LogitsScorer",
            )  # fmt: skip
        return built

    def score(completion: str, row: Mapping[str, Any]) -> ScoreResult:
        return _as_score_result(target(completion, row), function)

    return GenerationScorer(f"python:{function}", "success", score)


def _user_function(function: str, base_dir: Path | None) -> Callable[..., Any]:
    """The callable that ``module:attribute.path`` names."""
    module_name, _, attribute = function.partition(":")
    if not module_name or not attribute:
        raise ScorerOptionError(
            "function", f"{function!r} is not of the form module:function", "write e.g. "
            "my_scorers:is_polite"
        )  # fmt: skip
    target: Any = _import_user_module(module_name, base_dir)
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ScorerOptionError(
                "function", f"module {module_name!r} has no attribute {attribute!r}",
                "check the function name",
            )  # fmt: skip
        target = getattr(target, part)
    if not callable(target):
        raise ScorerOptionError("function", f"{function!r} is not callable", "point at a function")
    return target


def _as_score_result(result: object, function: str) -> ScoreResult:
    """A user function's return value as a :class:`ScoreResult` (a bool is a success)."""
    if isinstance(result, ScoreResult):
        return result
    if isinstance(result, bool):
        return ScoreResult(success=result, value=float(result))
    if isinstance(result, int | float):
        return ScoreResult(success=None, value=float(result))
    raise PowersteerError(
        f"scorer {function} returned {type(result).__name__}; return a bool, a number "
        "or a ScoreResult"
    )


def _import_user_module(module_name: str, base_dir: Path | None) -> Any:
    """Import ``module_name``, or load it from its ``.py`` file under ``base_dir``."""
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        candidate = base_dir / (module_name.replace(".", "/") + ".py") if base_dir else None
        if candidate is None or not candidate.is_file():
            raise ScorerOptionError(
                "function",
                f"cannot import module {module_name!r} ({error})",
                "install it, put it on PYTHONPATH, or place "
                f"{module_name.replace('.', '/')}.py beside the behavior file",
            ) from error
    spec = importlib.util.spec_from_file_location(module_name, candidate)
    if spec is None or spec.loader is None:
        raise ScorerOptionError(
            "function", f"{candidate} cannot be loaded as a Python module", "check that file"
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise ScorerOptionError(
            "function", f"importing {candidate} failed: {error!r}", "fix that file"
        ) from error
    return module

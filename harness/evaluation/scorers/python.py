"""The ``python`` scorer: a user's own scoring function, named as ``module:function``."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from harness.evaluation.scorers.outputs import as_success
from harness.evaluation.scorers.registry import (
    GenerationScorer,
    LogitsScorer,
    Scorer,
    ScoreResult,
    ScorerOptionError,
    ScorerShape,
    register_scorer,
)
from harness.evaluation.scorers.user_source import find_function_source, split_function_name


def check_python_scorer(function: str, _base_dir: Path | None = None) -> ScorerShape:
    """The ``python`` scorer's options checked without importing its module (see
    :mod:`~harness.evaluation.scorers.user_source`): the module is found and the function
    is defined in it. A function of ``(completion, row)`` gives a success; what a factory
    builds is known only once it runs."""
    source = find_function_source(function, _base_dir)
    return ScorerShape("success" if source.parameters else None)


@register_scorer("python", metric="success", check=check_python_scorer)
def python(function: str, _base_dir: Path | None = None) -> Scorer:
    """A user's own scorer, ``function: module:function``.

    ``module`` is imported with importlib (or, failing that, loaded from ``module.py``
    beside the behavior file). The function either takes ``(completion, row)`` and returns
    a success (``True``/``False``, or 0/1) or a :class:`ScoreResult`; or it takes no
    arguments and is a factory returning a built scorer (a ``GenerationScorer`` or
    ``LogitsScorer``, whose metric may be ``score``). Importing the module runs its code:
    a behavior naming a ``python`` scorer is trusted code. :func:`check_python_scorer`
    (what ``powersteer validate`` uses) checks the same without importing anything.
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
        return _as_score_result(target(completion, row))

    return GenerationScorer(f"python:{function}", "success", score)


def _user_function(function: str, base_dir: Path | None) -> Callable[..., Any]:
    """The callable that ``module:attribute.path`` names."""
    module_name, attribute = split_function_name(function)
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


def _as_score_result(result: object) -> ScoreResult:
    """A user function's return value as a :class:`ScoreResult`: a ScoreResult as it is,
    else a success (a bool, or 0/1); anything else is a :class:`ScorerOutputError`."""
    if isinstance(result, ScoreResult):
        return result
    success = as_success(result)
    return ScoreResult(success=success, value=float(success))


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

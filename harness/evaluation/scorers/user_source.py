"""Finding a ``python`` scorer's function in its source file, without importing it.

``powersteer validate`` and pytest's collection of ``evals/`` must not run the code a
behavior file names: a behavior may come from someone else. So the module is located the
way :mod:`importlib` would find it (``sys.path`` first, then ``module.py`` beside the
behavior file), its source is parsed with :mod:`ast`, and the named function is looked
up among the module's top-level definitions. Nothing is executed; the import happens
only when a run scores with it.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from harness.evaluation.scorers.registry import ScorerOptionError


@dataclass(frozen=True)
class FunctionSource:
    """Where a user's function is defined, as far as its source shows."""

    file: Path | None
    """The module's source file (None for a module without one, e.g. compiled)."""
    parameters: int | None
    """How many parameters the function takes (None when the source cannot tell)."""


def split_function_name(function: str) -> tuple[str, str]:
    """``"pkg.module:attr.path"`` -> ``("pkg.module", "attr.path")``."""
    module_name, _, attribute = function.partition(":")
    if not module_name or not attribute:
        raise ScorerOptionError(
            "function", f"{function!r} is not of the form module:function",
            "write e.g. my_scorers:is_polite",
        )  # fmt: skip
    return module_name, attribute


def find_function_source(function: str, base_dir: Path | None) -> FunctionSource:
    """Locate ``module:function`` and check, by reading its source, that it is defined."""
    module_name, attribute = split_function_name(function)
    file = _module_file(module_name, base_dir)
    if file is None or file.suffix != ".py":
        return FunctionSource(file, None)  # no source to read: the import at run checks it
    try:
        tree = ast.parse(file.read_bytes(), filename=str(file))
    except (OSError, SyntaxError, ValueError) as error:
        raise ScorerOptionError(
            "function", f"cannot read {file} as Python ({error})", "fix that file"
        ) from None
    found: ast.AST | None = tree
    for part in attribute.split("."):
        if not isinstance(found, ast.Module | ast.ClassDef):
            return FunctionSource(file, None)  # an attribute of a value: only run can tell
        bindings = _top_level_bindings(found.body)
        if part not in bindings:
            if "*" in bindings:  # a star import may define it
                return FunctionSource(file, None)
            raise ScorerOptionError(
                "function", f"module {module_name!r} ({file}) defines no top-level {part!r}",
                "check the function name",
            )  # fmt: skip
        found = bindings[part]
    if isinstance(found, ast.FunctionDef | ast.AsyncFunctionDef):
        return FunctionSource(file, _parameter_count(found.args))
    return FunctionSource(file, None)


def _module_file(module_name: str, base_dir: Path | None) -> Path | None:
    """The file ``module_name`` would be imported from, found without running any code."""
    spec = _find_spec(module_name)
    if spec is not None:
        return Path(spec.origin) if spec.origin and spec.has_location else None
    candidate = base_dir / (module_name.replace(".", "/") + ".py") if base_dir else None
    if candidate is not None and candidate.is_file():
        return candidate
    raise ScorerOptionError(
        "function",
        f"cannot find module {module_name!r} on sys.path or beside the behavior file",
        "install it, put it on PYTHONPATH, or place "
        f"{module_name.replace('.', '/')}.py beside the behavior file",
    )


def _find_spec(module_name: str) -> importlib.machinery.ModuleSpec | None:
    """The import spec of ``module_name``; for ``a.b``, ``b`` is searched in ``a``'s
    directories so that ``a/__init__.py`` is not executed (``find_spec("a.b")`` would)."""
    parts = module_name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return None
    for depth in range(1, len(parts)):
        if spec is None or not spec.submodule_search_locations:
            return None
        name = ".".join(parts[: depth + 1])
        spec = importlib.machinery.PathFinder.find_spec(name, list(spec.submodule_search_locations))
    return spec


def _top_level_bindings(body: list[ast.stmt]) -> dict[str, ast.AST | None]:
    """The names a module or class body binds, mapped to their definition (None when it is
    an assignment or an import); ``if``/``try``/``with`` blocks count, function bodies not.
    A star import binds ``"*"``."""
    bindings: dict[str, ast.AST | None] = {}
    for statement in body:
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bindings[statement.name] = statement
        elif isinstance(statement, ast.Import | ast.ImportFrom):
            for alias in statement.names:
                bindings[alias.asname or alias.name.split(".")[0]] = None
        elif isinstance(statement, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            for target in targets:
                bindings.update(dict.fromkeys(_assigned_names(target)))
        elif isinstance(statement, ast.If | ast.Try | ast.With | ast.For | ast.While):
            nested = [getattr(statement, name, []) for name in ("body", "orelse", "finalbody")]
            handlers = [h.body for h in getattr(statement, "handlers", [])]
            for block in [*nested, *handlers]:
                bindings.update(_top_level_bindings(block))
    return bindings


def _assigned_names(target: ast.expr) -> list[str]:
    """The names an assignment target binds (``a``, ``a, (b, *c)``; not ``a.b`` or ``a[0]``)."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Starred):
        return _assigned_names(target.value)
    if isinstance(target, ast.Tuple | ast.List):
        return [name for element in target.elts for name in _assigned_names(element)]
    return []


def _parameter_count(arguments: ast.arguments) -> int:
    positional = len(arguments.posonlyargs) + len(arguments.args) + len(arguments.kwonlyargs)
    return positional + (arguments.vararg is not None) + (arguments.kwarg is not None)

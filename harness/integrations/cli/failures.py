"""How the CLI reports what is not a bug: an interruption, a path it cannot write, a warning.

Each becomes one line on stderr. Anything else (a bug) keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from harness.engine.catalogue import CACHE_ENV, cache_root
from harness.errors import PowersteerWarning
from harness.files import LOCK_FILE, TEMPORARY_SUFFIX

INTERRUPTED_EXIT = 130
"""The shell's code for a process ended by Ctrl-C (128 + SIGINT)."""

KEPT_WORK = {
    "run": "the finished cells are kept in the run directory's cache",
    "map": "the finished power iterations are kept in the map's state file",
}
"""What an interrupted command leaves to resume from; other commands start again."""

WRITE_PROBLEMS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", "free some space or write to another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write to another disk"),
    errno.EROFS: ("read-only file system", "write to a writable location"),
    errno.EACCES: ("permission denied", "make it writable or write somewhere else"),
    errno.EPERM: ("operation not permitted", "make it writable or write somewhere else"),
    errno.EEXIST: ("exists and is not a directory", "give a directory path or remove the file"),
    errno.ENOTDIR: ("a part of the path is a file, not a directory", "give a directory path"),
    errno.EISDIR: ("is a directory", "give a file path"),
}
"""The errors of a path the user chose or the machine's state, not of powersteer: what each
means and how to fix it. Any other OSError is a bug and keeps its traceback."""


def interrupted_message(command: str) -> str:
    """The one line for Ctrl-C: what was kept and how to go on."""
    kept = KEPT_WORK.get(command)
    if kept is None:
        return f"powersteer {command}: interrupted; no file was left half-written"
    return f"powersteer {command}: interrupted; {kept}; run the same command again to resume"


def write_problem(error: OSError, args: argparse.Namespace) -> str | None:
    """One line for an OSError on a path the user chose (``--out``, the model cache); None
    for any other OSError, which is a bug."""
    if error.errno not in WRITE_PROBLEMS:
        return None
    meaning, fix = WRITE_PROBLEMS[error.errno]
    path = _shown_path(error, args)
    if path is not None and _in_model_cache(path):
        fix = f"set {CACHE_ENV} to a writable directory with room for the model"
    elif getattr(args, "out", None) is not None:
        fix = f"{fix}, or choose another --out"
    where = str(path) if path is not None else "writing"
    code = errno.errorcode[error.errno]
    return f"powersteer {args.command}: error: {where}: {meaning} ({code}); {fix}"


def _shown_path(error: OSError, args: argparse.Namespace) -> Path | None:
    """The path the error is about; for a writer's temporary file or a lock, its directory."""
    if error.filename is None:  # a failed write names no file: the user's --out, if any
        out = getattr(args, "out", None)
        return Path(out) if out is not None else None
    path = Path(os.fsdecode(error.filename))
    if path.name == LOCK_FILE or (
        path.name.startswith(".") and path.name.endswith(TEMPORARY_SUFFIX)
    ):
        return path.parent
    return path


def _in_model_cache(path: Path) -> bool:
    root = cache_root().resolve()
    return path.resolve() == root or root in path.resolve().parents


def end_progress_bars() -> None:
    """Close the progress bars an exception left open, so that the line printed next is a
    line of its own and no bar is redrawn after it."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


@contextmanager
def one_line_warnings() -> Iterator[None]:
    """Format each :class:`PowersteerWarning` as ``warning: <message>``, one line, for the
    block; other warnings keep Python's format."""
    # formatwarning rather than showwarning: a caller recording warnings (pytest.warns,
    # catch_warnings(record=True)) still records them.
    original = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
        if issubclass(category, PowersteerWarning):
            return f"warning: {message}\n"
        return original(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning
    try:
        yield
    finally:
        warnings.formatwarning = original

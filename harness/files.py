"""Writing files so that a reader never sees half of one.

Every file the harness writes goes through :func:`atomic_write`: the content is written to
a temporary file with a name unique to this writer, in the same directory, and renamed over
the destination only once complete. A crash leaves the old file (or none); two concurrent
writers of the same path never truncate each other's temporary file, and the last rename
wins whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from harness.errors import PowersteerError, PowersteerWarning

TEMPORARY_SUFFIX = ".tmp"


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner alone; a finished file gets the mode an
# ordinary write would have given it.
FILE_MODE = 0o666 & ~_process_umask()
LOCK_FILE = ".powersteer.lock"


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)``, then rename the result to ``path``.

    ``write`` must create the file it is given (``DataFrame.to_parquet``,
    ``safetensors.torch.save_file``, ``Path.write_text`` all do). The temporary file is
    removed if ``write`` raises.
    """
    path = Path(path)
    handle, temporary_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent
    )
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        write(temporary)
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any, *, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON (non-JSON values as ``str``) to ``path`` atomically."""
    text = json.dumps(data, indent=indent, default=str)
    return atomic_write_text(path, text + "\n" if indent is not None else text)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def directory_lock(
    directory: str | Path, *, wait: bool = True, what: str = "run"
) -> Iterator[None]:
    """Hold ``directory``'s lock for the block: one writer per run or map directory.

    A second process waits for the first (with one warning line) and then finds its
    finished work to reuse; with ``wait=False`` it stops at once with a clear error.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(directory / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            raise PowersteerError(
                f"{directory} is in use by another powersteer {what}; wait for it to finish, "
                "drop --no-wait to wait for it, or choose another --out"
            ) from None
        warnings.warn(
            f"{directory} is in use by another powersteer {what}; waiting for it to finish "
            "(its finished work will be reused)",
            PowersteerWarning,
            stacklevel=3,
        )
        lock.acquire()
    try:
        yield
    finally:
        lock.release()

"""Writing files so that a reader never sees half of one.

Every file the harness writes goes through :func:`atomic_write`: the content is written to
a temporary file with a name unique to this writer, in the same directory, and renamed over
the destination only once complete. A crash leaves the old file (or none); two concurrent
writers of the same path never truncate each other's temporary file, and the last rename
wins whole.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEMPORARY_SUFFIX = ".tmp"


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

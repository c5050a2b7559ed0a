"""What ``powersteer`` subcommands' parsers share: help, description, examples, ``--out`` checks."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from harness.errors import PowersteerError


def add_command(
    commands: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    description: str,
    examples: Sequence[str],
) -> argparse.ArgumentParser:
    """Add subcommand ``name``; its ``--help`` ends with the example command lines, as given."""
    label = "example" if len(examples) == 1 else "examples"
    return commands.add_parser(
        name,
        help=help,
        description=description,
        epilog="\n  ".join([f"{label}:", *examples]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_no_wait_flag(parser: argparse.ArgumentParser) -> None:
    """``--no-wait``: stop at once when another process holds the ``--out`` directory."""
    parser.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help="stop at once if another powersteer process is using --out, instead of waiting",
    )


def require_directory(path: Path | None, flag: str = "--out") -> None:
    """Refuse, before any work, a ``flag`` naming a file or a path under a file."""
    if path is None:
        return
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        what = "a file" if existing == path else f"under {existing}, which is a file"
        raise PowersteerError(
            f"{flag} {path} is {what}, not a directory; give a directory path (it is created "
            "if missing) or remove the file"
        )


def check_out_file(out: Path) -> None:
    """Refuse, before any work, an ``--out`` that is a directory (a vectors file is wanted)."""
    if out.is_dir():
        raise PowersteerError(
            f"--out {out} is a directory; give the path of the .safetensors file to write"
        )

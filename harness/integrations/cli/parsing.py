"""What every ``powersteer`` subcommand's parser shares: help, description, examples."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


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

"""``powersteer validate`` and ``powersteer new``: checking and scaffolding behavior files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.errors import PowersteerError
from harness.integrations.cli.parsing import add_command


def add_behavior_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``validate FILE...`` and ``new NAME``."""
    validate = add_command(
        commands,
        "validate",
        help="check behavior YAML files (schema, scorer, prompt data)",
        description="Check behavior files: the schema, the scorer and its options, and that "
        "local prompt files exist and hold the fields the scorer reads. Prints OK or one "
        "error line per file; exits 2 if any file is bad.",
        examples=["powersteer validate behaviors/real/*.yaml"],
    )
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")
    validate.set_defaults(handler=_run_validate)
    new = add_command(
        commands,
        "new",
        help="write a commented behavior YAML scaffold",
        description="Write DIR/NAME.yaml, a commented behavior scaffold that validates, and "
        "example prompts in DIR/data/NAME.jsonl (kept if it exists). Never overwrites.",
        examples=["powersteer new politeness --dir behaviors"],
    )
    new.add_argument("name", metavar="NAME")
    new.add_argument("--dir", type=Path, default=Path("behaviors"), dest="directory")
    new.set_defaults(handler=_run_new)


def _run_validate(args: argparse.Namespace) -> int:
    # Imports torch: not needed for --help.
    from harness.evaluation.behaviors import load_behavior

    bad = 0
    for file in args.files:
        try:
            behavior = load_behavior(file)
        except PowersteerError as error:
            print(f"error: {error}", file=sys.stderr)
            bad += 1
            continue
        print(f"OK {file} ({behavior.name}, scorer {behavior.scorer.type})")
    return 2 if bad else 0


def _run_new(args: argparse.Namespace) -> int:
    # Imports torch: not needed for --help.
    from harness.evaluation.behaviors import create_behavior

    for path in create_behavior(args.name, args.directory):
        print(f"wrote {path}")
    return 0

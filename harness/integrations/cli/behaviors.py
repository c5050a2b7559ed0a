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
        help="check behavior YAML files (schema, scorer, prompt data; --model: layers, lengths)",
        description="Check behavior files for everything `run` would reject: the schema, "
        "scales and method options, the scorer and its options, and that local prompt files "
        "exist, hold at least 2 prompts and the fields the scorer reads. With --model, also "
        "the layers against the model's depth and every prompt (after the chat template) "
        "against its context length. Runs no code a behavior names: a python scorer's "
        "module is found and read, not imported. Prints OK or one error line per file; "
        "exits 2 if any file is bad.",
        examples=[
            "powersteer validate behaviors/real/*.yaml",
            "powersteer validate --model smollm2-135m-instruct behaviors/real/*.yaml",
        ],
    )
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")
    validate.add_argument(
        "--model",
        default=None,
        help="also check against this model (catalogue name, hub id or path)",
    )
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
    from harness.engine.models import load_model
    from harness.evaluation.behaviors import load_behavior
    from harness.evaluation.checks import check_behavior_for_model

    lm = load_model(args.model) if args.model else None
    bad = 0
    for file in args.files:
        try:
            behavior = load_behavior(file)
            if lm is not None:
                check_behavior_for_model(lm, behavior)
        except PowersteerError as error:
            print(f"error: {error}", file=sys.stderr)
            bad += 1
            continue
        print(f"OK {file} ({behavior.name}, scorer {behavior.scorer.type})")
    if lm is None and bad < len(args.files):
        print(
            "note: layers against a model's depth and prompt lengths against its context "
            "are checked with --model M (run checks them before any work)"
        )
    return 2 if bad else 0


def _run_new(args: argparse.Namespace) -> int:
    # Imports torch: not needed for --help.
    from harness.evaluation.behaviors import create_behavior

    for path in create_behavior(args.name, args.directory):
        print(f"wrote {path}")
    return 0

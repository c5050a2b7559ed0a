"""The ``powersteer`` command line. Each subcommand is a thin shell over the Python API.

One module per command group: :mod:`.run` (run, report, rescore, capability, lm-eval),
:mod:`.vectors` (vectors), :mod:`.map` (map), :mod:`.import_vectors` (import-vectors),
:mod:`.generate` (generate), :mod:`.export` (export), :mod:`.behaviors` (validate, new),
:mod:`.models` (models list/fetch), :mod:`.datasets` (datasets list/fetch); the organism's commands
come from :mod:`harness.organism.cli`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from harness.errors import PowersteerError
from harness.integrations.cli.behaviors import add_behavior_commands
from harness.integrations.cli.datasets import add_datasets_commands
from harness.integrations.cli.export import add_export_command
from harness.integrations.cli.failures import (
    INTERRUPTED_EXIT,
    end_progress_bars,
    interrupted_message,
    one_line_warnings,
    write_problem,
)
from harness.integrations.cli.generate import add_generate_command
from harness.integrations.cli.import_command import add_import_command
from harness.integrations.cli.import_vectors import add_import_vectors_command
from harness.integrations.cli.map import add_map_command
from harness.integrations.cli.models import add_models_commands
from harness.integrations.cli.run import add_run_commands
from harness.integrations.cli.vectors import add_vectors_command

try:
    import harness.organism.cli as organism_cli
except ImportError:  # the organism package is optional in a trimmed install
    organism_cli = None  # type: ignore[assignment]

EXAMPLES = """examples:
  powersteer run                                   # organism behaviors on the organism
  powersteer run behaviors/real --model smollm2-135m-instruct
  powersteer report reports/organism-1a2b3c4d
  powersteer vectors --prompts prompts.txt --source 0.25 --target 0.75 --method power -k 8
  powersteer vectors --model ./my-model --prompts data.jsonl --field prompt \\
      --source 6 --target -4 --method melbo -k 4 --out melbo.safetensors
  powersteer organism verify
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``powersteer`` parser; each subcommand sets ``handler``, called with the args."""
    parser = argparse.ArgumentParser(
        prog="powersteer",
        description="Find, compare and regression-test steering vectors in language models.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_commands(commands)
    add_vectors_command(commands)
    add_import_vectors_command(commands)
    add_import_command(commands)
    add_map_command(commands)
    add_generate_command(commands)
    add_export_command(commands)
    if organism_cli is not None:
        organism_cli.add_organism_commands(commands)
    add_models_commands(commands)
    add_datasets_commands(commands)
    add_behavior_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``powersteer ARGV``. What is not a bug is one line on stderr: a
    :class:`PowersteerError` or a path that cannot be written (exit 2), Ctrl-C (exit 130),
    each :class:`~harness.errors.PowersteerWarning`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with one_line_warnings():
        if argv[:1] == ["lm-eval"] and argv[1:2] not in (["-h"], ["--help"]):
            # Every argument after lm-eval is lm-eval's; argparse would claim the options.
            # Imports torch: not needed for --help.
            from harness.integrations.lm_eval_model import lm_eval_main

            return lm_eval_main(argv[1:])
        args = build_parser().parse_args(argv)
        return _handle(args)


def _handle(args: argparse.Namespace) -> int:
    try:
        return int(args.handler(args))
    except PowersteerError as error:
        message, code = f"powersteer {args.command}: error: {error}", 2
    except KeyboardInterrupt:
        message, code = interrupted_message(args.command), INTERRUPTED_EXIT
    except OSError as error:
        problem = write_problem(error, args)
        if problem is None:
            raise  # not a path the user chose nor the machine's state: a bug
        message, code = problem, 2
    end_progress_bars()
    print(message, file=sys.stderr)
    return code


__all__ = ["EXAMPLES", "build_parser", "main"]

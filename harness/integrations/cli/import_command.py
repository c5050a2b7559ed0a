"""``powersteer import``: another tool's steering file as a checked vectors file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.errors import PowersteerError
from harness.integrations.cli.import_vectors import run_reference_import
from harness.integrations.cli.parsing import add_command, check_out_file
from harness.integrations.import_formats import IMPORT_FORMATS, import_steering_file

REFERENCE_FORMATS = {"power-ref": "power", "melbo-ref": "melbo"}


def add_import_command(commands: argparse._SubParsersAction) -> None:
    """Register ``import``: the reverse of ``export``, plus the reference repos' ``.pt``."""
    parser = add_command(
        commands,
        "import",
        help="read a llama.cpp/repeng control vector, lm-eval steered-model or reference .pt",
        description="Write the vector of FILE as a checked vectors file: a llama-cpp or "
        "repeng control-vector .gguf (direction.N, block N's output), lm-eval's "
        "steered-model .pt (hook point layers.N), or a .pt the Power Steering (power-ref) "
        "or MELBO (melbo-ref) reference saved (as import-vectors, with --source/--target). "
        "The vector is stored as a unit vector with its length as the selected scale, so "
        "exporting the imported file writes the same steering.",
        examples=["powersteer import anti_refusal.gguf --format llama-cpp --out v.safetensors"],
    )
    parser.add_argument("file", type=Path, metavar="FILE")
    parser.add_argument("--format", required=True, choices=IMPORT_FORMATS)
    parser.add_argument("--out", type=Path, required=True, metavar="VECTORS.safetensors")
    parser.add_argument("--block", type=int, default=None,
                        help="the block to take from a file that steers several")  # fmt: skip
    parser.add_argument("--model", default=None,
                        help="check the file against this model's depth and width")  # fmt: skip
    parser.add_argument("--source", type=int, default=None, help="power-ref/melbo-ref only")
    parser.add_argument("--target", type=int, default=None, help="power-ref/melbo-ref only")
    parser.add_argument("--key", default=None, help="power-ref/melbo-ref only")
    parser.set_defaults(handler=_run_import)


def _run_import(args: argparse.Namespace) -> int:
    if args.format in REFERENCE_FORMATS:
        if args.source is None or args.target is None:
            raise PowersteerError(f"--format {args.format} needs --source and --target blocks")
        return run_reference_import(
            args.file, out=args.out, method=REFERENCE_FORMATS[args.format], source=args.source,
            target=args.target, key=args.key, source_site="mlp", target_site="block",
        )  # fmt: skip
    check_out_file(args.out)
    num_blocks = d_model = None
    if args.model is not None:
        # Imports torch: not needed for --help.
        from harness.engine.models import load_model

        lm = load_model(args.model)
        num_blocks, d_model = lm.n_layers, lm.d_model
    result = import_steering_file(
        args.file, args.out, args.format, block=args.block, num_blocks=num_blocks,
        d_model=d_model,
    )  # fmt: skip
    summary = {
        "out": str(args.out),
        "format": args.format,
        "block": result.source,
        "length": round(result.options["imported"]["length"], 6),
    }
    print(json.dumps(summary, indent=2))
    return 0

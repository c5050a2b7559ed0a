"""``powersteer export``: a run's or file's vector in another tool's format (lm-eval's ``.pt``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.errors import PowersteerError
from harness.integrations.cli.parsing import add_command, check_out_file

EXPORT_FORMATS = ("llama-cpp", "repeng", "lm-eval")


def add_export_command(commands: argparse._SubParsersAction) -> None:
    """Register ``export``: one vector, at one scale, as another tool's steering file."""
    parser = add_command(
        commands,
        "export",
        help="write a vector as a llama.cpp/repeng control vector or lm-eval steered-model file",
        description="Write one vector of a run directory or vectors file (the run's selected "
        "vector, sign and scale by default) as lm-eval's steered-model .pt: the unit vector "
        "at the hook point of its source block's output (the block's module name in the "
        "model's base model, looked up on the model: layers.N on Llama/Qwen models), with "
        "the added length (scale x the run's scale unit) as steering_coefficient. Use it "
        "with `lm_eval --model steered --model_args pretrained=M,steer_path=FILE.pt`. "
        "--format llama-cpp (or repeng, the same file) writes a control-vector GGUF: "
        "direction.N, N the source block (llama.cpp and repeng add it to block N's "
        "output), holding the unit vector times the added length, so strength 1 "
        "(`llama-cli --control-vector FILE.gguf`, repeng's coeff=1) is the chosen scale.",
        examples=[
            "powersteer export reports/RUN --set organism_anti_refusal/power --format lm-eval "
            "--out anti_refusal.pt",
            "powersteer export reports/RUN --set organism_anti_refusal/power --format llama-cpp "
            "--out anti_refusal.gguf",
        ],
    )
    parser.add_argument("vectors", type=Path, metavar="RUN_DIR|VECTORS")
    parser.add_argument("--set", default=None, metavar="BEHAVIOR/METHOD",
                        help="the set of a run's file (needed when it holds several)")  # fmt: skip
    parser.add_argument("--index", type=int, default=None, help="default: the selected vector")
    parser.add_argument("--sign", type=int, default=None, choices=(1, -1),
                        help="default: the selected sign")  # fmt: skip
    parser.add_argument("--scale", type=float, default=None,
                        help="in the run's scale units (default: the selected scale)")  # fmt: skip
    parser.add_argument("--raw-scale", type=float, default=None,
                        help="the added length instead (files without a scale unit)")  # fmt: skip
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS,
                        help="llama-cpp, repeng: a .gguf; lm-eval: a .pt")  # fmt: skip
    parser.add_argument("--model", default=None,
                        help="the vectors' model (default: a run directory's)")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, metavar="FILE")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    # These import torch: not needed for --help.
    from harness.engine.models import load_model
    from harness.integrations.export import export_control_vector, export_lm_eval

    check_out_file(args.out)
    lm = load_model(_model_name(args), device=args.device)
    export = export_lm_eval if args.format == "lm-eval" else export_control_vector
    exported = export(
        args.vectors, lm, args.out, set_name=args.set, index=args.index, sign=args.sign,
        scale=args.scale, raw_scale=args.raw_scale,
    )  # fmt: skip
    summary = {
        "out": str(exported.out),
        "format": args.format,
        "hookpoint": exported.hookpoint,
        "block": exported.block,
        "steering_coefficient": round(exported.coefficient, 6),
    }
    if args.format != "lm-eval":
        summary = {key: summary[key] for key in ("out", "format", "block")}
        summary["tensor"] = exported.hookpoint
    print(json.dumps(summary, indent=2))
    return 0


def _model_name(args: argparse.Namespace) -> str:
    if args.model is not None:
        return str(args.model)
    if args.vectors.is_dir():
        # Imports torch: not needed for --help.
        from harness.evaluation.run_dir import read_manifest

        return str(read_manifest(args.vectors)["model"]["name"])
    raise PowersteerError(
        f"{args.vectors} is a vectors file, not a run directory; name its model with --model"
    )

"""``powersteer import-vectors``: vectors a reference implementation saved (``.pt``), checked."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.engine.reference_io import REFERENCE_METHODS, import_reference_vectors
from harness.engine.sites import SITES
from harness.engine.vectors_io import save_vectors
from harness.errors import PowersteerError
from harness.integrations.cli.parsing import add_command, check_out_file


def add_import_vectors_command(commands: argparse._SubParsersAction) -> None:
    """Register ``import-vectors``: a reference implementation's ``.pt`` vectors, checked."""
    imports = add_command(
        commands,
        "import-vectors",
        help="import vectors saved by the Power Steering or MELBO reference code (.pt)",
        description="Read the vectors of a .pt file that the Power Steering reference "
        "(obayyub/power_steering) or the MELBO reference (amack315/unsupervised-steering-"
        "vectors) saved: a (k, d_model) or (d_model,) tensor, or a dict holding one, loaded "
        "with torch.load(weights_only=True) (no other objects are unpickled). Rows are "
        "normalised to unit, their norms kept in the metadata, and written as a checked "
        "vectors file. --source and --target are this package's block numbers: both "
        "references add at mlp.down_proj of block source_layer (--source-site mlp); the "
        "Power Steering reference reads block target_layer's output, the MELBO reference "
        "hidden_states[target_layer], block target_layer - 1's output.",
        examples=[
            "powersteer import-vectors power_iter_Qwen3-14B.pt --method power --source 7 "
            "--target 32 --out power.safetensors"
        ],
    )
    imports.add_argument("file", type=Path, metavar="SRC.pt", help="the reference's .pt file")
    imports.add_argument("--method", required=True, choices=REFERENCE_METHODS)
    imports.add_argument("--source", required=True, type=int, help="source block index")
    imports.add_argument("--target", required=True, type=int, help="target block index")
    imports.add_argument(
        "--key",
        default=None,
        help="where the vectors are in a dict, e.g. vectors/src7_tgt32/vectors (default: "
        "the one tensor named vectors, else the only tensor)",
    )
    imports.add_argument("--source-site", default="mlp", choices=SITES)
    imports.add_argument("--target-site", default="block", choices=SITES)
    imports.add_argument(
        "--out", type=Path, default=None, help="the .safetensors file (default: SRC with "
        "the suffix .safetensors)",
    )  # fmt: skip
    imports.set_defaults(handler=_run_import_vectors)  # fmt: skip


def _run_import_vectors(args: argparse.Namespace) -> int:
    return run_reference_import(
        args.file, out=args.out, method=args.method, source=args.source, target=args.target,
        key=args.key, source_site=args.source_site, target_site=args.target_site,
    )  # fmt: skip


def run_reference_import(
    file: Path,
    *,
    out: Path | None,
    method: str,
    source: int,
    target: int,
    key: str | None,
    source_site: str,
    target_site: str,
) -> int:
    """Import a reference's ``.pt`` (``import-vectors`` and ``import --format power-ref``)."""
    out = out or file.with_suffix(".safetensors")
    check_out_file(out)
    if out.resolve() == file.resolve():
        raise PowersteerError(f"--out {out} is the file being imported; choose another path")
    result = import_reference_vectors(
        file, source=source, target=target, method=method, key=key,
        source_site=source_site, target_site=target_site,
    )  # fmt: skip
    imported = result.options["imported"]
    model = imported["reference"].get("model") or imported["reference"].get("model_name")
    save_vectors(out, result, imported_from=str(file), **({"model": model} if model else {}))
    summary = {
        "out": str(out),
        "method": result.method,
        "source": result.source,
        "target": result.target,
        "num_vectors": result.num_vectors,
        "key": imported["key"],
        "norms": [round(norm, 5) for norm in imported["norms"]],
    }
    print(json.dumps(summary, indent=2))
    return 0

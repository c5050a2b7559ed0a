"""``powersteer vectors``: one method's steering vectors for one (source, target) layer pair."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.engine.methods import find_vectors, method_info, unsupervised_methods
from harness.engine.subspace import SOLVERS
from harness.errors import PowersteerError, PowersteerWarning
from harness.integrations.cli.model_prompts import add_prompt_arguments, model_and_prompts
from harness.integrations.cli.parsing import add_command, check_out_file

if TYPE_CHECKING:
    import torch


# Method options whose flag has no default of its own: given, each goes to the methods whose
# function takes it (a method's own default applies otherwise).
TUNING_FLAGS: dict[str, dict[str, Any]] = {
    "solver": {"choices": SOLVERS, "help": "power: krylov (block Krylov, the default) or power "
               "(block power iteration)"},
    "tol": {"type": float, "help": "power: stop when every vector's relative residual "
            "||J^T J v - s^2 v|| / s^2 is below this (default 1e-3)"},
    "oversample": {"type": int, "help": "power: extra vectors in each block (default 4)"},
    "init": {"type": Path, "metavar": "FILE", "help": "power: a vectors file (.safetensors, as "
             "--out writes) whose rows warm-start the first block"},
    "lr": {"type": float, "help": "melbo: learning rate (default 2.5e-4 x radius)"},
    "p": {"type": float, "help": "melbo: exponent of each position's change norm (default 2)"},
    "q": {"type": float, "help": "melbo: root of the summed changes (default 1, which with p = 2 "
          "is the MELBO reference's objective; the reference's own default is q = p)"},
    "calibration": {"type": float, "help": "dct: pick the input scale R at which random "
                    "directions depart from the linear map by this ratio (default 0.5; "
                    "--radius sets R instead)"},
    "aggregate": {"choices": ("stack", "mean"), "help": "dct: output factors over every "
                  "target position (stack, the default) or the positions' mean"},
}  # fmt: skip
DEFAULTED_FLAGS = ("target_tokens", "max_iter", "steps")
"""Method-option flags with a default of their own (always set, so never warned about)."""
OPTION_FLAGS = (*DEFAULTED_FLAGS, "radius", *TUNING_FLAGS, "orthogonal")
"""The flags that are method options: each goes to the methods whose function takes it."""
FLAG_NAMES = {"max_iter": "--max-iter", "orthogonal": "--independent"}


def add_vectors_command(commands: argparse._SubParsersAction) -> None:
    """Register ``vectors``: one method's vectors for one (source, target) pair."""
    vectors = add_command(
        commands,
        "vectors",
        help="compute steering vectors for a layer pair and save them",
        description="Compute steering vectors (Power Steering, MELBO, DCT or random directions) "
        "for one (source, target) layer pair and save them as safetensors with metadata.",
        examples=[
            "powersteer vectors --prompts prompts.txt --source 0.25 "
            "--target 0.75 --method power -k 8 --out vectors.safetensors"
        ],
    )
    add_prompt_arguments(vectors)
    vectors.add_argument(
        "--source",
        required=True,
        help="source block: index (negative from the end) or fraction of depth",
    )
    vectors.add_argument("--target", required=True, help="target block, after the source")
    vectors.add_argument("--method", default="power", choices=unsupervised_methods())
    vectors.add_argument("-k", "--num-vectors", type=int, default=8, dest="k")
    vectors.add_argument(
        "--max-iter", type=int, default=15, help="power: most solver steps (default 15)"
    )
    vectors.add_argument(
        "--steps", type=int, default=300, help="melbo: optimisation steps per vector (default 300)"
    )
    vectors.add_argument(
        "--radius",
        type=float,
        default=None,
        help="melbo: vector norm (default: median residual norm at source); dct: input scale "
        "(default: calibrated)",
    )
    for name, settings in TUNING_FLAGS.items():
        vectors.add_argument(f"--{name}", default=None, **settings)
    vectors.add_argument(
        "--independent",
        dest="orthogonal",
        action="store_const",
        const=False,
        default=None,
        help="melbo: learn each vector from its own seeded start (seed + i), not orthogonal to "
        "the others (the reference's non-orthogonal mode)",
    )
    vectors.add_argument(
        "--system",
        default=None,
        metavar="TEXT",
        help="a system turn before each prompt, through the chat template (implies --chat)",
    )
    vectors.add_argument("--out", type=Path, default=Path("vectors.safetensors"))
    vectors.set_defaults(handler=_run_vectors)  # fmt: skip


def _run_vectors(args: argparse.Namespace) -> int:
    # Imports torch: not needed for --help.
    from harness.engine.vectors_io import save_vectors

    check_out_file(args.out)
    options = _method_options(args)
    if "init" in options:  # read before the model loads: a bad file fails fast
        options["init"] = _init_rows(options["init"])
    lm, prompts = model_and_prompts(args, system=args.system)
    if "init" in options and options["init"].shape[1] != lm.d_model:
        raise PowersteerError(
            f"--init {args.init} holds vectors of dimension {options['init'].shape[1]}, but "
            f"{args.model}'s d_model is {lm.d_model}; give vectors computed on this model"
        )
    source = lm.layer(args.source, name="--source")
    target = lm.layer(args.target, name="--target")
    result = find_vectors(
        args.method, lm, prompts, source, target, args.k, seed=args.seed, **options
    )
    save_vectors(
        args.out, result, model=args.model, n_prompts=len(prompts), prompts_file=str(args.prompts),
        **({"init_file": str(args.init)} if "init" in options else {}),
    )  # fmt: skip
    summary = {
        "out": str(args.out),
        "method": result.method,
        "source": result.source,
        "target": result.target,
        "values": [round(float(v), 5) for v in result.values],
        "forward_passes": result.forward_passes,
        "wall_time_s": round(result.wall_time_s, 3),
    }
    print(json.dumps(summary, indent=2))
    return 0


def _init_rows(path: Path) -> torch.Tensor:
    """The rows of the vectors file ``--init`` names, or one clear error naming the flag."""
    # Imports torch: not needed for --help.
    from harness.engine.vectors_io import load_vectors

    try:
        return load_vectors(path)[0].vectors
    except PowersteerError as error:
        raise PowersteerError(
            f"--init: {error} (--init takes a file `powersteer vectors` or `powersteer "
            "import-vectors` wrote)"
        ) from None


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The method options the flags set: each flag given (not None) whose option the method
    takes; one the user gave for a method that does not take it is a warning."""
    info = method_info(args.method)
    given = {name: getattr(args, name) for name in OPTION_FLAGS}
    given = {name: value for name, value in given.items() if value is not None}
    ignored = [name for name in given if name not in DEFAULTED_FLAGS and not info.accepts(name)]
    if ignored:
        flags = ", ".join(FLAG_NAMES.get(name, f"--{name}") for name in ignored)
        warnings.warn(
            f"{flags} not used: --method {args.method} takes no such option",
            PowersteerWarning,
            stacklevel=2,
        )
    options = {name: value for name, value in given.items() if info.accepts(name)}
    if info.shows_progress:
        options["progress"] = True
    return options

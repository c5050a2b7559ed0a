"""``powersteer vectors`` and ``powersteer map``: vectors for one layer pair, or the whole map."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.engine.methods import find_vectors, method_info, unsupervised_methods
from harness.engine.prompts import (
    DEFAULT_TARGET_TOKENS,
    check_target_tokens,
    format_chat,
    read_prompts,
)
from harness.engine.subspace import SOLVERS
from harness.errors import PowersteerError, PowersteerWarning
from harness.files import atomic_write, directory_lock
from harness.integrations.cli.executor import add_executor_arguments, map_executor_from_args
from harness.integrations.cli.parsing import add_command, add_no_wait_flag, require_directory

if TYPE_CHECKING:
    import torch

    from harness.engine.map_units import MapExecutor
    from harness.engine.models import LanguageModel
    from harness.engine.sensitivity import SensitivityMap

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
    _add_prompt_arguments(vectors)
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


def add_map_command(commands: argparse._SubParsersAction) -> None:
    """Register ``map``: the top singular values of every requested block pair (resumable)."""
    mapping = add_command(
        commands,
        "map",
        help="map the whole model's layer-to-layer sensitivity (resumable)",
        description="Top-k singular values and vectors of the Jacobian for every requested "
        "(source, target) block pair, sharing passes across pairs. Writes map.safetensors, "
        "map.parquet and sigma1_heatmap.png (with --kl-scale also map_kl.parquet and "
        "kl_heatmap.png); a killed run continues where it stopped, and a finished map is "
        "reused. With --executor ray the map is cut into units by source block, mapped on "
        "Ray actors and merged; finished units are kept in OUT/map_units and reused.",
        examples=[
            "powersteer map --prompts prompts.txt --pairs all -k 4 --kl-scale 0.25 --out map/",
            "powersteer map --prompts prompts.txt --out map/ --executor ray --workers 2",
        ],
    )
    _add_prompt_arguments(mapping)
    mapping.add_argument(
        "--pairs", default="all", help="'all' or SOURCE:TARGET,... (indices or fractions of depth)"
    )
    mapping.add_argument("-k", "--num-vectors", type=int, default=12, dest="k")
    mapping.add_argument("--max-iter", type=int, default=15)
    mapping.add_argument(
        "--kl-scale",
        type=float,
        default=None,
        help="also steer with each pair's top vector at this many median residual norms at "
        "its source and record the KL divergence of the next-token distribution",
    )
    mapping.add_argument(
        "--candidates-out",
        type=Path,
        default=None,
        metavar="FILE",
        help="with --kl-scale: write the --keep best pairs (ranked by KL) as a candidates "
        "file a behavior names with steering.layers: {candidates: FILE}",
    )
    mapping.add_argument(
        "--keep", type=int, default=3, help="pairs kept in --candidates-out (default 3)"
    )
    mapping.add_argument(
        "--max-rows",
        type=int,
        default=None,
        help="at most this many batch rows (vectors x prompts) per pass, to bound memory",
    )
    mapping.add_argument(
        "--out", type=Path, default=None, help="output directory (default: reports/map-MODEL)"
    )
    add_no_wait_flag(mapping)
    add_executor_arguments(
        mapping, choice="map here in one go (local, default; resumable by iteration) or cut "
        "into units by source block on Ray actors (resumable by unit)", cache_modes=False,
    )  # fmt: skip
    mapping.set_defaults(handler=_run_map)  # fmt: skip


def _add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="organism", help="hub id, local directory, or 'organism' (default)"
    )
    parser.add_argument(
        "--prompts",
        required=True,
        type=Path,
        help="a .txt (one prompt a line), .jsonl or .json file of prompts",
    )
    parser.add_argument(
        "--field",
        default="prompt",
        help="the prompt field in .jsonl/.json records (default: prompt)",
    )
    parser.add_argument(
        "--chat", action="store_true", help="wrap each prompt in the model's chat template"
    )
    parser.add_argument(
        "--target-tokens",
        type=_target_tokens_argument,
        default=DEFAULT_TARGET_TOKENS,
        metavar="{all,all_but_first,N}",
        help="target positions of each prompt: all, all_but_first (leave out the first "
        f"token, an attention sink) or the last N (default {DEFAULT_TARGET_TOKENS})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")  # fmt: skip


def _target_tokens_argument(text: str) -> object:
    try:
        return check_target_tokens(text)
    except PowersteerError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _model_and_prompts(
    args: argparse.Namespace, *, system: str | None = None
) -> tuple[LanguageModel, list[str]]:
    """The flags shared by vectors and map: read the prompts, load the model, chat-format
    (after a ``system`` turn, if given)."""
    # Imports torch: not needed for --help.
    from harness.engine.models import load_model

    prompts = read_prompts(args.prompts, field=args.field)
    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    if args.chat or system is not None:
        prompts = format_chat(lm, prompts, system=system)
    return lm, prompts


def _run_vectors(args: argparse.Namespace) -> int:
    # Imports torch: not needed for --help.
    from harness.engine.vectors_io import save_vectors

    check_out_file(args.out)
    options = _method_options(args)
    if "init" in options:  # read before the model loads: a bad file fails fast
        options["init"] = _init_rows(options["init"])
    lm, prompts = _model_and_prompts(args, system=args.system)
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


def check_out_file(out: Path) -> None:
    """Refuse, before any work, an ``--out`` that is a directory (a vectors file is wanted)."""
    if out.is_dir():
        raise PowersteerError(
            f"--out {out} is a directory; give the path of the .safetensors file to write"
        )


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


def _run_map(args: argparse.Namespace) -> int:
    # These import torch: not needed for --help.
    from harness.engine.sensitivity import parse_pairs
    from harness.engine.sensitivity_io import map_directory

    out = args.out or Path("reports") / f"map-{Path(str(args.model)).name}"
    if args.candidates_out is not None and args.kl_scale is None:
        raise PowersteerError(
            "--candidates-out ranks pairs by next-token KL; give --kl-scale too (e.g. 1.0)"
        )
    require_directory(out)
    executor = map_executor_from_args(args)  # before the model: a bad address fails at once
    try:
        lm, prompts = _model_and_prompts(args)
        pairs = parse_pairs(args.pairs, lm.n_layers)
        config = {"model": str(args.model), "prompts": prompts, "pairs": pairs, "k": args.k,
                  "max_iter": args.max_iter, "seed": args.seed,
                  "target_tokens": args.target_tokens, "dtype": args.dtype}  # fmt: skip
        with directory_lock(out, wait=args.wait, what="map"):
            directory = map_directory(out, config)
            if directory != out:
                print(f"{out} holds a finished map with other settings, which is kept; writing "
                      f"this map to {directory}", file=sys.stderr)  # fmt: skip
            result = _finished_or_computed_map(args, lm, prompts, directory, config, executor)
            summary = _map_outputs(args, lm, prompts, directory, result)
    finally:
        if executor is not None:
            executor.shutdown()
    print(json.dumps(summary, indent=2))
    return 0


def _finished_or_computed_map(
    args: argparse.Namespace,
    lm: LanguageModel,
    prompts: list[str],
    directory: Path,
    config: dict[str, Any],
    executor: MapExecutor | None,
) -> SensitivityMap:
    """The finished map in ``directory`` with these settings, else computed and saved there:
    by ``executor`` unit by unit, or (None) here in one go, resuming from its state file,
    which each iteration checkpoints."""
    # These import torch: not needed for --help.
    from harness.engine.sensitivity_io import STATE_FILE, finished_map, save_map

    result = finished_map(directory, config)
    if result is not None:
        print(f"reusing the finished map in {directory}", file=sys.stderr)
        return result
    directory.mkdir(parents=True, exist_ok=True)
    if executor is None:
        result = _whole_map(args, lm, prompts, directory, config)
    else:
        result = _map_in_units(args, lm, prompts, directory, config["pairs"], executor)
    save_map(directory, result, config=config, n_prompts=len(prompts))
    (directory / STATE_FILE).unlink(missing_ok=True)  # only now: a kill before leaves it
    return result


def _map_in_units(
    args: argparse.Namespace,
    lm: LanguageModel,
    prompts: list[str],
    directory: Path,
    pairs: list[tuple[int, int]],
    executor: MapExecutor,
) -> SensitivityMap:
    """The map computed by ``executor`` unit by unit, reusing the units in OUT/map_units."""
    # These import torch: not needed for --help.
    from harness.engine.map_units import UNITS_DIR, map_in_units
    from harness.evaluation.cache import model_fingerprint

    # The unit keys name the weights: a same-named model trained again maps afresh.
    identity = {"model": str(args.model), "fingerprint": model_fingerprint(lm)}
    outcome = map_in_units(
        lm, prompts, pairs, executor=executor, unit_dir=directory / UNITS_DIR,
        identity=identity, progress=True, num_vectors=args.k, max_iter=args.max_iter,
        seed=args.seed, target_tokens=args.target_tokens, max_rows=args.max_rows,
    )  # fmt: skip
    print(f"map units: {outcome.computed} computed, {outcome.reused} reused "
          f"({directory / UNITS_DIR})", file=sys.stderr)  # fmt: skip
    return outcome.result


def _whole_map(
    args: argparse.Namespace,
    lm: LanguageModel,
    prompts: list[str],
    directory: Path,
    config: dict[str, Any],
) -> SensitivityMap:
    """The map computed here in one go, resuming from and checkpointing its state file."""
    # These import torch: not needed for --help.
    from harness.engine.sensitivity import sensitivity_map
    from harness.engine.sensitivity_io import STATE_FILE, load_state, save_state

    state_path = directory / STATE_FILE
    resume = load_state(state_path, config)
    if resume is not None:
        print(f"resuming {state_path} after iteration {resume.iteration}", file=sys.stderr)
    return sensitivity_map(
        lm, prompts, config["pairs"], args.k, max_iter=args.max_iter, seed=args.seed,
        target_tokens=args.target_tokens, max_rows=args.max_rows, progress=True,
        resume=resume, checkpoint=lambda state: save_state(state_path, state, config),
    )  # fmt: skip


def _map_outputs(
    args: argparse.Namespace,
    lm: LanguageModel,
    prompts: list[str],
    directory: Path,
    result: SensitivityMap,
) -> dict[str, object]:
    """Write the heatmaps (and with --kl-scale the KL table); the command's summary."""
    # These import torch: not needed for --help.
    from harness.engine.sensitivity import next_token_kl, pair_matrix
    from harness.engine.sensitivity_io import KL_FILE
    from harness.evaluation.plots import plot_pair_heatmap

    plot_pair_heatmap(result.sigma_matrix(0), directory / "sigma1_heatmap.png", label="σ₁",
                      title=f"{args.model}\ntop singular value σ₁ of J(s → t)")  # fmt: skip
    summary: dict[str, object] = {
        "out": str(directory),
        "pairs": len(result.pairs),
        "converged": sum(result.converged),
        "forward_passes": result.forward_passes,
        "wall_time_s": round(result.wall_time_s, 2),
    }
    if args.kl_scale is not None:
        table = next_token_kl(lm, prompts, result, args.kl_scale, max_rows=args.max_rows)
        atomic_write(directory / KL_FILE, lambda path: table.to_parquet(path, index=False))
        matrix = pair_matrix(result.pairs, table["kl"].tolist(), result.n_layers)
        plot_pair_heatmap(matrix, directory / "kl_heatmap.png", label="KL (nats)",
                          title=f"{args.model}\nnext-token KL, top vector at "
                                f"±{args.kl_scale:g}× residual norm")  # fmt: skip
        strongest = table.loc[table["kl"].idxmax()]
        summary["largest_kl"] = {"pair": f"{int(strongest.source)}:{int(strongest.target)}",
                                 "kl": round(float(strongest.kl), 4)}  # fmt: skip
        if args.candidates_out is not None:
            from harness.engine.sensitivity import rank_pairs
            from harness.engine.sensitivity_io import write_candidates

            written = write_candidates(
                args.candidates_out, rank_pairs(result, table), args.keep,
                model=str(args.model), kl_scale=args.kl_scale, n_prompts=len(prompts),
            )  # fmt: skip
            summary["candidates"] = str(written)
    return summary


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

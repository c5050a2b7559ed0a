"""The ``powersteer`` command line. Each subcommand is a thin shell over the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import PowersteerError

if TYPE_CHECKING:
    from harness.engine.models import LanguageModel

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
    parser = argparse.ArgumentParser(
        prog="powersteer",
        description="Find, compare and regression-test steering vectors in language models.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_commands(commands)
    _add_vectors_command(commands)
    _add_map_command(commands)
    _add_organism_commands(commands)
    _add_models_commands(commands)
    _add_behavior_commands(commands)
    return parser


def _add_run_commands(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "run",
        help="sweep behaviors (vectors x sign x scale) and write a report",
        description="For each behavior: find vectors with each method on the select "
        "prompts, sweep both signs and every scale, choose each method's vector and scale "
        "there, measure the held-out prompts, and write reports/<run-id>/ (report.md, "
        "report.html, results.parquet, plots, vectors.safetensors, manifest.json). Running "
        "the same command again resumes from the cache in the run directory.",
        epilog="examples:\n  powersteer run\n  powersteer run behaviors/organism/anti_refusal.yaml "
        "--out reports/refusal\n  powersteer run behaviors/real --model smollm2-135m-instruct",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "behaviors",
        nargs="*",
        metavar="BEHAVIOR",
        help="behavior YAML files or directories (default: the organism behaviors)",
    )
    run.add_argument(
        "--behaviors",
        dest="behavior_dirs",
        action="append",
        default=[],
        metavar="PATH",
        help="more behavior files or directories",
    )
    run.add_argument(
        "--model",
        default="organism",
        help="catalogue name, hub id, local directory or .gguf (default organism)",
    )
    run.add_argument("--out", type=Path, help="run directory (default reports/<model>-<hash>)")
    run.add_argument("--seed", type=int, default=0, help="seed of the methods (default 0)")
    run.add_argument("--device", default="cpu")
    run.add_argument("--dtype", default="float32")
    run.add_argument(
        "--batch-rows",
        type=int,
        default=512,
        help="prompts generated together (cells x prompts); lower it on OOM",
    )
    run.set_defaults(handler=_run_run)
    report = commands.add_parser(
        "report",
        help="rebuild a run's report from its saved results",
        description="Rewrite report.md, report.html and the plots of RUN_DIR from "
        "results.parquet, vectors.safetensors and manifest.json; no model needed.",
        epilog="example:\n  powersteer report reports/organism-1a2b3c4d",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    report.set_defaults(handler=_run_report)
    rescore = commands.add_parser(
        "rescore",
        help="score a run's saved generations again with a changed scorer",
        description="Score the generations saved in RUN_DIR again with the scorer of "
        "BEHAVIOR_FILE (same behavior name), redo the selection and rebuild the report. "
        "Nothing is generated again.",
        epilog="example:\n  powersteer rescore reports/organism-1a2b3c4d "
        "--behavior behaviors/organism/anti_refusal.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rescore.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    rescore.add_argument("--behavior", type=Path, required=True, metavar="FILE")
    rescore.set_defaults(handler=_run_rescore)
    capability = commands.add_parser(
        "capability",
        help="score lm-eval tasks unsteered and with each method's selected vector",
        description="Run lm-evaluation-harness tasks on the run's model unsteered and with "
        "each behavior/method's selected vector, sign and scale; writes capability.json and "
        "adds a Capability cost table to the report.",
        epilog="example:\n  powersteer capability reports/organism-1a2b3c4d --tasks my_task "
        "--include-path my_tasks/ --limit 100",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    capability.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    capability.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    capability.add_argument("--include-path", help="directory of local lm-eval task YAMLs")
    capability.add_argument("--limit", type=int, help="documents per task (default all)")
    capability.add_argument("--model", help="override the run's model")
    capability.add_argument("--device", default="cpu")
    capability.add_argument("--batch-size", type=int, default=16)
    capability.set_defaults(handler=_run_capability)
    lm_eval = commands.add_parser(
        "lm-eval",
        help="lm-eval's command line with the powersteer steered model registered",
        description="Runs lm-evaluation-harness with the arguments given, after registering "
        "--model powersteer (see harness/integrations/lm_eval_model.py for its model_args).",
        epilog="example:\n  powersteer lm-eval --model powersteer --model_args "
        "pretrained=organism,vectors=reports/RUN,set=organism_anti_refusal/power,scale=1 "
        "--tasks my_task --include_path my_tasks/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lm_eval.add_argument("arguments", nargs=argparse.REMAINDER, help="lm-eval's arguments")
    lm_eval.set_defaults(handler=_run_lm_eval)


def _run_run(args: argparse.Namespace) -> int:
    from harness.evaluation.pipeline import run, summary_lines

    result = run(
        [*args.behaviors, *args.behavior_dirs],
        model=args.model,
        out=args.out,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        batch_rows=args.batch_rows,
    )
    print("\n".join(summary_lines(result)))
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from harness.evaluation.report import write_report

    print(f"wrote {write_report(args.run_dir)}")
    return 0


def _run_capability(args: argparse.Namespace) -> int:
    from harness.integrations.capability import run_capability

    path = run_capability(
        args.run_dir,
        [t for t in args.tasks.split(",") if t],
        include_path=args.include_path,
        limit=args.limit,
        model=args.model,
        device=args.device,
        batch_size=args.batch_size,
    )
    print(f"wrote {path} and {args.run_dir / 'report.md'}")
    return 0


def _run_lm_eval(args: argparse.Namespace) -> int:
    from harness.integrations.lm_eval_model import lm_eval_main

    return lm_eval_main(args.arguments)


def _run_rescore(args: argparse.Namespace) -> int:
    from harness.evaluation.pipeline import rescore

    print(f"wrote {rescore(args.run_dir, args.behavior)}")
    return 0


def _add_vectors_command(commands: argparse._SubParsersAction) -> None:
    from harness.engine.methods import METHODS, SUPERVISED_METHODS

    vectors = commands.add_parser(
        "vectors",
        help="compute steering vectors for a layer pair and save them",
        description="Compute steering vectors (Power Steering, MELBO or random directions) "
        "for one (source, target) layer pair and save them as safetensors with metadata.",
        epilog="example:\n  powersteer vectors --prompts prompts.txt --source 0.25 "
        "--target 0.75 --method power -k 8 --out vectors.safetensors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_prompt_arguments(vectors)
    vectors.add_argument(
        "--source",
        required=True,
        help="source block: index (negative from the end) or fraction of depth",
    )
    vectors.add_argument("--target", required=True, help="target block, after the source")
    vectors.add_argument(
        "--method", default="power", choices=sorted(set(METHODS) - SUPERVISED_METHODS)
    )
    vectors.add_argument("-k", "--num-vectors", type=int, default=8, dest="k")
    vectors.add_argument(
        "--max-iter", type=int, default=15, help="power: most power iterations (default 15)"
    )
    vectors.add_argument(
        "--steps", type=int, default=300, help="melbo: optimisation steps per vector (default 300)"
    )
    vectors.add_argument(
        "--radius",
        type=float,
        default=None,
        help="melbo: vector norm (default: median residual norm at source)",
    )
    vectors.add_argument("--out", type=Path, default=Path("vectors.safetensors"))
    vectors.set_defaults(handler=_run_vectors)  # fmt: skip


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
    from harness.engine.prompts import DEFAULT_TARGET_TOKENS

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
    from harness.engine.prompts import check_target_tokens

    try:
        return check_target_tokens(text)
    except PowersteerError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_map_command(commands: argparse._SubParsersAction) -> None:
    mapping = commands.add_parser(
        "map",
        help="map the whole model's layer-to-layer sensitivity (resumable)",
        description="Top-k singular values and vectors of the Jacobian for every requested "
        "(source, target) block pair, sharing passes across pairs. Writes map.safetensors, "
        "map.parquet and sigma1_heatmap.png (with --kl-scale also map_kl.parquet and "
        "kl_heatmap.png); a killed run continues where it stopped, and a finished map is "
        "reused.",
        epilog="example:\n  powersteer map --prompts prompts.txt --pairs all -k 4 --kl-scale 0.25 "
        "--out map/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        "--max-rows",
        type=int,
        default=None,
        help="at most this many batch rows (vectors x prompts) per pass, to bound memory",
    )
    mapping.add_argument(
        "--out", type=Path, default=None, help="output directory (default: reports/map-MODEL)"
    )
    mapping.set_defaults(handler=_run_map)  # fmt: skip


def _add_organism_commands(commands: argparse._SubParsersAction) -> None:
    try:
        from harness.organism.cli import add_organism_commands
    except ImportError:  # the organism package is optional in a trimmed install
        return
    add_organism_commands(commands)


def _add_models_commands(commands: argparse._SubParsersAction) -> None:
    from harness.engine.catalogue import add_models_commands

    add_models_commands(commands)


def _add_behavior_commands(commands: argparse._SubParsersAction) -> None:
    validate = commands.add_parser(
        "validate",
        help="check behavior YAML files (schema, scorer, prompt data)",
        description="Check behavior files: the schema, the scorer and its options, and that "
        "local prompt files exist and hold the fields the scorer reads. Prints OK or one "
        "error line per file; exits 2 if any file is bad.",
        epilog="example:\n  powersteer validate behaviors/real/*.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")
    validate.set_defaults(handler=_run_validate)
    new = commands.add_parser(
        "new",
        help="write a commented behavior YAML scaffold",
        description="Write DIR/NAME.yaml, a commented behavior scaffold that validates, and "
        "example prompts in DIR/data/NAME.jsonl (kept if it exists). Never overwrites.",
        epilog="example:\n  powersteer new politeness --dir behaviors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    new.add_argument("name", metavar="NAME")
    new.add_argument("--dir", type=Path, default=Path("behaviors"), dest="directory")
    new.set_defaults(handler=_run_new)


def _run_validate(args: argparse.Namespace) -> int:
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
    from harness.evaluation.behaviors import create_behavior

    for path in create_behavior(args.name, args.directory):
        print(f"wrote {path}")
    return 0


def _model_and_prompts(args: argparse.Namespace) -> tuple[LanguageModel, list[str]]:
    """The flags shared by vectors and map: read the prompts, load the model, chat-format."""
    from harness.engine.models import load_model
    from harness.engine.prompts import format_chat, read_prompts

    prompts = read_prompts(args.prompts, field=args.field)
    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    if args.chat:
        prompts = format_chat(lm, prompts)
    return lm, prompts


def _run_vectors(args: argparse.Namespace) -> int:
    from harness.engine.methods import find_vectors
    from harness.engine.vectors_io import save_vectors

    lm, prompts = _model_and_prompts(args)
    source = lm.layer(args.source, name="--source")
    target = lm.layer(args.target, name="--target")
    result = find_vectors(
        args.method,
        lm,
        prompts,
        source,
        target,
        args.k,
        seed=args.seed,
        **_method_options(args),
    )
    save_vectors(
        args.out, result, model=args.model, n_prompts=len(prompts), prompts_file=str(args.prompts)
    )
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


def _run_map(args: argparse.Namespace) -> int:
    from harness.engine.sensitivity import next_token_kl, pair_matrix, parse_pairs, sensitivity_map
    from harness.engine.sensitivity_io import (
        KL_FILE,
        STATE_FILE,
        finished_map,
        load_state,
        save_map,
        save_state,
    )
    from harness.evaluation.plots import plot_pair_heatmap

    lm, prompts = _model_and_prompts(args)
    pairs = parse_pairs(args.pairs, lm.n_layers)
    out = args.out or Path("reports") / f"map-{Path(str(args.model)).name}"
    out.mkdir(parents=True, exist_ok=True)
    config = {"model": str(args.model), "prompts": prompts, "pairs": pairs, "k": args.k,
              "max_iter": args.max_iter, "seed": args.seed, "target_tokens": args.target_tokens,
              "dtype": args.dtype}  # fmt: skip
    result = finished_map(out, config)
    if result is not None:
        print(f"reusing the finished map in {out}", file=sys.stderr)
    else:
        state_path = out / STATE_FILE
        resume = load_state(state_path, config)
        if resume is not None:
            print(f"resuming {state_path} after iteration {resume.iteration}", file=sys.stderr)
        result = sensitivity_map(
            lm, prompts, pairs, args.k, max_iter=args.max_iter, seed=args.seed,
            target_tokens=args.target_tokens, max_rows=args.max_rows, progress=True,
            resume=resume, checkpoint=lambda state: save_state(state_path, state, config),
        )  # fmt: skip
        save_map(out, result, config=config, n_prompts=len(prompts))
        state_path.unlink(missing_ok=True)
    plot_pair_heatmap(result.sigma_matrix(0), out / "sigma1_heatmap.png", label="σ₁",
                      title=f"{args.model}\ntop singular value σ₁ of J(s → t)")  # fmt: skip
    summary: dict[str, object] = {
        "out": str(out),
        "pairs": len(pairs),
        "converged": sum(result.converged),
        "forward_passes": result.forward_passes,
        "wall_time_s": round(result.wall_time_s, 2),
    }
    if args.kl_scale is not None:
        table = next_token_kl(lm, prompts, result, args.kl_scale, max_rows=args.max_rows)
        table.to_parquet(out / KL_FILE, index=False)
        matrix = pair_matrix(result.pairs, table["kl"].tolist(), result.n_layers)
        plot_pair_heatmap(matrix, out / "kl_heatmap.png", label="KL (nats)",
                          title=f"{args.model}\nnext-token KL, top vector at "
                                f"±{args.kl_scale:g}× residual norm")  # fmt: skip
        strongest = table.loc[table["kl"].idxmax()]
        summary["largest_kl"] = {"pair": f"{int(strongest.source)}:{int(strongest.target)}",
                                 "kl": round(float(strongest.kl), 4)}  # fmt: skip
    print(json.dumps(summary, indent=2))
    return 0


def _method_options(args: argparse.Namespace) -> dict[str, object]:
    if args.method == "power":
        return {"target_tokens": args.target_tokens, "max_iter": args.max_iter, "progress": True}
    if args.method == "melbo":
        return {
            "target_tokens": args.target_tokens,
            "steps": args.steps,
            "radius": args.radius,
            "progress": True,
        }
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lm-eval"] and argv[1:2] not in (["-h"], ["--help"]):
        # Every argument after lm-eval is lm-eval's; argparse would claim the options.
        from harness.integrations.lm_eval_model import lm_eval_main

        return lm_eval_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except PowersteerError as error:
        print(f"powersteer {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

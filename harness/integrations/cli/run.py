"""``powersteer run``, ``report``, ``rescore``, ``capability``, ``lm-eval``: runs and reports."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.integrations.cli.executor import add_executor_arguments, executor_from_args
from harness.integrations.cli.parsing import add_command, add_no_wait_flag, require_directory


def add_run_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``run``, ``report``, ``rescore``, ``capability`` and ``lm-eval``."""
    _add_run(commands)
    _add_report(commands)
    _add_rescore(commands)
    _add_capability(commands)
    _add_lm_eval(commands)


def _add_run(commands: argparse._SubParsersAction) -> None:
    run = add_command(
        commands,
        "run",
        help="sweep behaviors (vectors x sign x scale) and write a report",
        description="For each behavior: find vectors with each method on the select "
        "prompts, sweep both signs and every scale, choose each method's vector and scale "
        "there, measure the held-out prompts, and write reports/<run-id>/ (report.md, "
        "report.html, results.parquet, plots, vectors.safetensors, manifest.json). Running "
        "the same command again resumes from the cache in the run directory.",
        examples=[
            "powersteer run",
            "powersteer run behaviors/organism/anti_refusal.yaml --out reports/refusal",
            "powersteer run behaviors/real --model smollm2-135m-instruct",
        ],
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
    add_no_wait_flag(run)
    add_executor_arguments(run)
    run.set_defaults(handler=_run_run)


def _run_run(args: argparse.Namespace) -> int:
    # Imports torch: not needed for --help.
    from harness.evaluation import pipeline

    require_directory(args.out)
    result = pipeline.run(
        [*args.behaviors, *args.behavior_dirs],
        model=args.model,
        out=args.out,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        batch_rows=args.batch_rows,
        wait=args.wait,
        executor=executor_from_args(args),
    )
    print("\n".join(pipeline.summary_lines(result)))
    return 0


def _add_report(commands: argparse._SubParsersAction) -> None:
    report = add_command(
        commands,
        "report",
        help="rebuild a run's report from its saved results",
        description="Rewrite report.md, report.html and the plots of RUN_DIR from "
        "results.parquet, vectors.safetensors and manifest.json; no model needed.",
        examples=["powersteer report reports/organism-1a2b3c4d"],
    )
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    report.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    # Imports torch: not needed for --help.
    from harness.evaluation.report import write_report

    print(f"wrote {write_report(args.run_dir)}")
    return 0


def _add_rescore(commands: argparse._SubParsersAction) -> None:
    rescore = add_command(
        commands,
        "rescore",
        help="score a run's saved generations again with a changed scorer",
        description="Score the generations saved in RUN_DIR again with the scorer of "
        "BEHAVIOR_FILE (same behavior name), redo the selection and rebuild the report. "
        "Nothing is generated again.",
        examples=[
            "powersteer rescore reports/organism-1a2b3c4d "
            "--behavior behaviors/organism/anti_refusal.yaml"
        ],
    )
    rescore.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    rescore.add_argument("--behavior", type=Path, required=True, metavar="FILE")
    rescore.set_defaults(handler=_run_rescore)


def _run_rescore(args: argparse.Namespace) -> int:
    # Imports torch: not needed for --help.
    from harness.evaluation import pipeline

    print(f"wrote {pipeline.rescore(args.run_dir, args.behavior)}")
    return 0


def _add_capability(commands: argparse._SubParsersAction) -> None:
    capability = add_command(
        commands,
        "capability",
        help="score lm-eval tasks unsteered and with each method's selected vector",
        description="Run lm-evaluation-harness tasks on the run's model unsteered and with "
        "each behavior/method's selected vector, sign and scale; writes capability.json and "
        "adds a Capability cost table to the report.",
        examples=[
            "powersteer capability reports/organism-1a2b3c4d --tasks my_task "
            "--include-path my_tasks/ --limit 100"
        ],
    )
    capability.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    capability.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    capability.add_argument("--include-path", help="directory of local lm-eval task YAMLs")
    capability.add_argument("--limit", type=int, help="documents per task (default all)")
    capability.add_argument("--model", help="override the run's model")
    capability.add_argument("--device", default="cpu")
    capability.add_argument("--batch-size", type=int, default=16)
    capability.set_defaults(handler=_run_capability)


def _run_capability(args: argparse.Namespace) -> int:
    # Imports torch: not needed for --help.
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


def _add_lm_eval(commands: argparse._SubParsersAction) -> None:
    lm_eval = add_command(
        commands,
        "lm-eval",
        help="lm-eval's command line with the powersteer steered model registered",
        description="Runs lm-evaluation-harness with the arguments given, after registering "
        "--model powersteer (see harness/integrations/lm_eval_model.py for its model_args).",
        examples=[
            "powersteer lm-eval --model powersteer --model_args "
            "pretrained=organism,vectors=reports/RUN,set=organism_anti_refusal/power,scale=1 "
            "--tasks my_task --include_path my_tasks/"
        ],
    )
    lm_eval.add_argument("arguments", nargs=argparse.REMAINDER, help="lm-eval's arguments")
    lm_eval.set_defaults(handler=_run_lm_eval)


def _run_lm_eval(args: argparse.Namespace) -> int:
    # Imports torch: not needed for --help.
    from harness.integrations.lm_eval_model import lm_eval_main

    return lm_eval_main(args.arguments)

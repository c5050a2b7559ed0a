"""What ``models`` and ``datasets`` print: a catalogue listing and a fetch's one JSON result."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def print_catalogue(
    rows: Sequence[Mapping[str, object]],
    columns: Sequence[str],
    cache: Path,
    *,
    as_json: bool,
) -> int:
    """Print ``rows`` as JSON, or as a table of ``columns`` then CACHED, then the cache path.

    The headers are the column keys in capitals; the last column (yes/no) is left unpadded so
    that lines carry no trailing spaces.
    """
    if as_json:
        print(json.dumps(list(rows), indent=2))
        return 0
    table = [(*(column.upper() for column in columns), "CACHED")] + [
        (*(str(row[column]) for column in columns), "yes" if row["cached"] else "no")
        for row in rows
    ]
    widths = [max(len(line[index]) for line in table) for index in range(len(columns))]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True)]
        print("  ".join([*cells, line[-1]]))
    print(f"cache: {cache}")
    return 0


def print_fetch(name: str, fetch: Callable[[], Path]) -> int:
    """Run ``fetch`` and print the name, the directory it filled and the seconds it took."""
    started = time.perf_counter()
    directory = fetch()
    seconds = round(time.perf_counter() - started, 1)
    print(json.dumps({"name": name, "directory": str(directory), "seconds": seconds}, indent=2))
    return 0

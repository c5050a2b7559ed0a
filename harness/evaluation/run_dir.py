"""The run directory: the one place that knows its file names and reads or writes them.

``reports/<model>-<hash of the arguments>`` by default (the same command finds the same
directory again, so running it again resumes). It holds::

    results.parquet      one row per prompt x method x vector x sign x scale
    vectors.safetensors  every behavior/method's vectors, with cost, scale unit, selection
    manifest.json        model, package version and commit, config hash, seeds, versions
    capability.json      lm-eval scores, steered and unsteered (powersteer capability)
    report.md/.html      written from the files above (powersteer report RUN_DIR)
    *.png                plots
    cache/               content-addressed cells and vectors: what a restart reuses

A directory is complete only when its manifest says so: the manifest is written last and
names the results and vectors files with their sha256, and a run that starts in a
directory first removes the old manifest. Readers check all of it (:func:`read_run`), so
a report is never built from half a run or from files changed after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from harness.engine.safetensors_io import DamagedFile, read_header
from harness.engine.vectors_io import SETS_METADATA_KEY
from harness.errors import PowersteerError
from harness.files import atomic_write, atomic_write_json, file_sha256

RESULTS_FILE = "results.parquet"
VECTORS_FILE = "vectors.safetensors"
MANIFEST_FILE = "manifest.json"
CAPABILITY_FILE = "capability.json"
REPORT_FILE = "report.md"
HTML_REPORT_FILE = "report.html"
CACHE_DIR = "cache"
DEFAULT_REPORTS_DIR = Path("reports")
CHECKED_FILES = (RESULTS_FILE, VECTORS_FILE)  # named with their sha256 in the manifest


def default_run_dir(model: str, files: Sequence[Path], seed: int) -> Path:
    """``reports/<model>-<8 hex>``: the same model, behavior files and seed give the same
    directory, so running a command again resumes it."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(model)).name or str(model)).strip("-")
    digest = hashlib.sha256(
        json.dumps([str(model), sorted(str(f.resolve()) for f in files), seed]).encode()
    ).hexdigest()[:8]
    return DEFAULT_REPORTS_DIR / f"{slug}-{digest}"


def write_results(run_dir: Path, results: pd.DataFrame) -> Path:
    return atomic_write(run_dir / RESULTS_FILE, lambda path: results.to_parquet(path, index=False))


def mark_incomplete(run_dir: Path) -> None:
    """Before a run writes anything: the directory no longer holds a finished run."""
    (run_dir / MANIFEST_FILE).unlink(missing_ok=True)


def write_manifest(run_dir: Path, manifest: dict) -> Path:
    """Write the manifest last, with the checksums of the files it vouches for."""
    files = {
        name: file_sha256(run_dir / name) for name in CHECKED_FILES if (run_dir / name).is_file()
    }
    return atomic_write_json(
        run_dir / MANIFEST_FILE, {**manifest, "complete": True, "files": files}
    )


def read_manifest(run_dir: Path) -> dict:
    """The manifest of a complete run, after checking every file it names."""
    run_dir = Path(run_dir)
    manifest = _load_manifest(run_dir)
    for name in CHECKED_FILES:
        expected = manifest["files"].get(name)
        path = run_dir / name
        if expected is None or not path.is_file():
            _incomplete(run_dir, f"{name} is missing")
        if file_sha256(path) != expected:
            _incomplete(run_dir, f"{name} differs from the file the run wrote (changed or damaged)")
    return manifest


def _load_manifest(run_dir: Path) -> dict:
    if not (run_dir / RESULTS_FILE).is_file():
        raise PowersteerError(
            f"{run_dir}: no {RESULTS_FILE}; give a directory written by `powersteer run` "
            "(an interrupted run writes it when it finishes: run it again to resume)"
        )
    path = run_dir / MANIFEST_FILE
    if not path.is_file():
        _incomplete(run_dir, f"no {MANIFEST_FILE} (the run did not finish)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        _incomplete(run_dir, f"{MANIFEST_FILE} is damaged or from an older powersteer")
    if manifest.get("complete") is not True:
        _incomplete(run_dir, f"{MANIFEST_FILE} does not mark the run complete")
    return manifest


def _incomplete(run_dir: Path, problem: str) -> None:
    raise PowersteerError(
        f"{run_dir} is not a complete run directory: {problem}; run the same "
        f"`powersteer run ... --out {run_dir}` again to finish it (finished cells are reused)"
    )


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as error:  # pyarrow's errors derive from these
        raise PowersteerError(f"{path} is not a readable parquet file ({error})") from None


def read_vector_metadata(run_dir: Path) -> dict[str, dict]:
    """The metadata of every vector set by ``behavior/method`` (``{}`` without the file)."""
    path = run_dir / VECTORS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(read_header(path).get(SETS_METADATA_KEY, "{}"))
    except json.JSONDecodeError:
        raise DamagedFile(f"{path}: its metadata is not JSON; run again") from None


def read_capability(run_dir: Path) -> dict | None:
    path = run_dir / CAPABILITY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_run(run_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, dict], dict]:
    """The results frame, the vector metadata by ``behavior/method``, and the manifest of a
    complete run; one clear error for an incomplete or damaged directory."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    return _read_parquet(run_dir / RESULTS_FILE), read_vector_metadata(run_dir), manifest

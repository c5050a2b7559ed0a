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
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from safetensors import safe_open

from harness.engine.vectors_io import SETS_METADATA_KEY
from harness.errors import PowersteerError
from harness.files import atomic_write, atomic_write_json

RESULTS_FILE = "results.parquet"
VECTORS_FILE = "vectors.safetensors"
MANIFEST_FILE = "manifest.json"
CAPABILITY_FILE = "capability.json"
REPORT_FILE = "report.md"
HTML_REPORT_FILE = "report.html"
CACHE_DIR = "cache"
DEFAULT_REPORTS_DIR = Path("reports")


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


def write_manifest(run_dir: Path, manifest: dict) -> Path:
    return atomic_write_json(run_dir / MANIFEST_FILE, manifest)


def read_manifest(run_dir: Path) -> dict:
    """The manifest, or ``{}`` when the directory has none."""
    path = run_dir / MANIFEST_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def read_results(run_dir: Path) -> pd.DataFrame:
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise PowersteerError(
            f"{run_dir}: no {RESULTS_FILE}; give a directory written by `powersteer run` "
            "(an interrupted run writes it when it finishes: run it again to resume)"
        )
    return pd.read_parquet(path)


def read_vector_metadata(run_dir: Path) -> dict[str, dict]:
    """The metadata of every vector set by ``behavior/method`` (``{}`` without the file)."""
    path = run_dir / VECTORS_FILE
    if not path.is_file():
        return {}
    with safe_open(str(path), framework="pt") as handle:
        return json.loads((handle.metadata() or {}).get(SETS_METADATA_KEY, "{}"))


def read_capability(run_dir: Path) -> dict | None:
    path = run_dir / CAPABILITY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_run(run_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, dict], dict]:
    """The results frame, the vector metadata by ``behavior/method``, and the manifest."""
    run_dir = Path(run_dir)
    return read_results(run_dir), read_vector_metadata(run_dir), read_manifest(run_dir)

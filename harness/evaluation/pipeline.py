"""``powersteer run`` as plain functions: sweep every behavior, save, report, summarise.

A run directory (default ``reports/<model>-<hash of the arguments>``, so the same command
finds the same directory again) holds::

    results.parquet      one row per prompt x method x vector x sign x scale
    vectors.safetensors  every behavior/method's vectors, with cost, scale unit, selection
    manifest.json        model, package version and commit, config hash, seeds, versions
    report.md/.html      written from the three files above (powersteer report RUN_DIR)
    *.png                plots
    cache/               content-addressed cells and vectors: what a restart reuses
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import pandas as pd

from harness import __version__
from harness.engine.models import LanguageModel, load_model
from harness.engine.vectors_io import save_vector_sets
from harness.errors import PowersteerError
from harness.evaluation.analysis import select_cells, selected_table
from harness.evaluation.behaviors import Behavior, load_behavior
from harness.evaluation.cache import ResultCache, model_fingerprint
from harness.evaluation.cells import UNSTEERED
from harness.evaluation.checks import check_before_run
from harness.evaluation.coherence import mark_coherent
from harness.evaluation.executors import Executor
from harness.evaluation.layer_selection import at_measured_pair, write_screens
from harness.evaluation.report import write_report
from harness.evaluation.run_dir import (
    CACHE_DIR,
    REPORT_FILE,
    VECTORS_FILE,
    default_run_dir,
    mark_incomplete,
    read_run,
    write_manifest,
    write_results,
)
from harness.evaluation.scorers.paired import check_base_values
from harness.evaluation.scoring import add_extra_scores, attach_cache
from harness.evaluation.sweep import BehaviorSweep, score_generations, sweep_behavior
from harness.files import directory_lock

DEFAULT_MODEL = "organism"
DEFAULT_BEHAVIORS_DIR = Path(__file__).resolve().parents[2] / "behaviors" / "organism"
LIBRARIES = ("torch", "transformers", "numpy", "pandas", "scipy", "pydantic", "safetensors")


@dataclass
class RunResult:
    run_dir: Path
    results: pd.DataFrame
    sweeps: list[BehaviorSweep]
    wall_time_s: float

    @property
    def report(self) -> Path:
        return self.run_dir / REPORT_FILE


def behavior_files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """YAML files from files and directories (a directory gives its ``*.yaml``, sorted);
    no paths gives the bundled organism behaviors."""
    if not paths:
        paths = [DEFAULT_BEHAVIORS_DIR]
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
            if not found:
                raise PowersteerError(f"{path}: no behavior files (*.yaml) in this directory")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise PowersteerError(f"{path}: no such behavior file or directory; check the path")
    return files


def run(
    behaviors: Sequence[str | os.PathLike[str] | Behavior] = (),
    *,
    model: str | LanguageModel = DEFAULT_MODEL,
    out: str | os.PathLike[str] | None = None,
    seed: int = 0,
    device: str | None = None,
    dtype: str = "float32",
    batch_rows: int = 512,
    progress: bool = True,
    wait: bool = True,
    executor: Executor | None = None,
) -> RunResult:
    """Sweep each behavior on ``model``, then write results, vectors, manifest and report.

    Cells finished before an interruption are read back from ``out/cache``; the directory's
    lock keeps a second run on the same ``out`` waiting (``wait=False``: an error at once)
    until the first is done, and it then reuses the first run's cells. The manifest, which
    marks the directory complete, is written last. ``executor`` evaluates the cell batches
    (default this process; see :mod:`harness.evaluation.executors`).
    """
    started = time.perf_counter()
    code_version = _git_commit()  # now: the code may change while a long run goes on
    specs, files = _behaviors_to_run(behaviors)
    lm = (
        model
        if isinstance(model, LanguageModel)
        else load_model(model, dtype=dtype, device=device or "cpu")
    )
    model_name = lm.name if isinstance(model, LanguageModel) else str(model)
    check_before_run(lm, specs)  # every mistake knowable now, before minutes of vectors
    run_dir = Path(out) if out is not None else default_run_dir(model_name, files, seed)
    with directory_lock(run_dir, wait=wait, what="run"):
        mark_incomplete(run_dir)
        cache = ResultCache(run_dir / CACHE_DIR)
        sweeps = [
            sweep_behavior(
                lm,
                behavior,
                cache,
                seed=seed,
                batch_rows=batch_rows,
                progress=progress,
                executor=executor,
            )
            for behavior in specs
        ]
        results = pd.concat([s.results for s in sweeps], ignore_index=True)
        _save_run(run_dir, results, sweeps)
        wall = time.perf_counter() - started
        manifest = build_manifest(
            lm, model_name, specs, seed, run_dir, wall, sweeps, git_commit=code_version
        )
        write_manifest(run_dir, manifest)
        write_report(run_dir)
    return RunResult(run_dir=run_dir, results=results, sweeps=sweeps, wall_time_s=wall)


def _behaviors_to_run(
    behaviors: Sequence[str | os.PathLike[str] | Behavior],
) -> tuple[list[Behavior], list[Path]]:
    """The behaviors (loaded from files and directories when given as paths) and their files."""
    if behaviors and all(isinstance(b, Behavior) for b in behaviors):
        specs = [b for b in behaviors if isinstance(b, Behavior)]
        files = [b.path for b in specs if b.path is not None]
    else:
        files = behavior_files(behaviors)
        specs = [load_behavior(f) for f in files]
    names = [b.name for b in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise PowersteerError(f"two behaviors are named {repeated[0]!r}; give each a unique name")
    return specs, files


def _save_run(run_dir: Path, results: pd.DataFrame, sweeps: Sequence[BehaviorSweep]) -> None:
    write_results(run_dir, results)
    write_screens(run_dir, {s.behavior.name: s.screen for s in sweeps if s.screen is not None})
    save_vector_sets(
        run_dir / VECTORS_FILE,
        {f"{s.behavior.name}/{m}": v for s in sweeps for m, v in s.vectors.items()},
        **{f"{s.behavior.name}/{m}": _selection_metadata(s, m) for s in sweeps for m in s.vectors},
    )


def rescore(run_dir: str | os.PathLike[str], behavior_file: str | os.PathLike[str]) -> Path:
    """Score a run's saved generations again with ``behavior_file``'s scorer (same behavior
    name) and rebuild the report; nothing is generated again."""
    run_dir = Path(run_dir)
    behavior = load_behavior(behavior_file)
    with directory_lock(run_dir, what="rescore"):
        return _rescore(run_dir, behavior, Path(behavior_file))


def _rescore(run_dir: Path, behavior: Behavior, behavior_file: Path) -> Path:
    results, _, manifest = read_run(run_dir)  # checked once against the manifest
    mine = results["behavior"] == behavior.name
    if not mine.any():
        known = ", ".join(sorted(set(results["behavior"])))
        raise PowersteerError(
            f"{behavior_file}: name {behavior.name!r} is not in {run_dir} (it has: {known}); "
            "rescore a behavior the run swept"
        )
    part = results[mine].copy()
    scorer = behavior.make_scorer()
    extras = behavior.make_extra_scorers()
    attach_cache([scorer, *extras], ResultCache(run_dir / CACHE_DIR))  # the run's judgements
    measured = manifest.get("behaviors", {}).get(behavior.name, {}).get("config", {})
    check_base_values(scorer, part, measured.get("scorer"))
    score_generations(scorer, part, behavior.prompt_rows(), source=behavior_file)
    add_extra_scores(extras, part, behavior.prompt_rows(), source=behavior_file)
    part["metric"] = scorer.metric
    mark_coherent(part, behavior)
    select = part[part["split"] == "select"]
    measured = (
        part[(part["split"] == "test") & (part["method"] != UNSTEERED)]
        .groupby("method")[["vector", "sign"]]
        .first()
    )
    select = select[at_measured_pair(select, part)]  # steering.layers: the pair measured
    kept = {str(m): (int(r.vector), int(r.sign)) for m, r in measured.iterrows()}
    selection = select_cells(select, scorer.metric, keep_vectors=kept)
    free = select_cells(select, scorer.metric)
    notes = [
        f"{behavior.name}: rescored with {Path(behavior_file)}; each method keeps the vector "
        "and sign measured on the test prompts and re-selects its scale."
    ]
    for method, chosen in free.items():
        if (chosen.vector, chosen.sign) != kept.get(method):
            notes.append(
                f"{behavior.name}: with the new scorer {method} would select vector "
                f"{chosen.vector} (sign {chosen.sign:+d}), never measured on the test prompts; "
                "`powersteer run` with the changed behavior re-selects fully (cached "
                "generations are reused)."
            )
    for method, chosen in selection.items():
        rows = part.method == method
        part.loc[rows, "selected_scale"] = chosen.scale
        part.loc[rows, "selected"] = (part.vector == chosen.vector) & (part.sign == chosen.sign)
    manifest["notes"] = [
        n for n in manifest.get("notes", []) if not n.startswith(f"{behavior.name}:")
    ] + notes
    results = pd.concat([results[~mine], part], ignore_index=True)
    mark_incomplete(run_dir)  # until the manifest vouches for the new results
    write_results(run_dir, results)
    write_manifest(run_dir, manifest)
    return write_report(run_dir)


def build_manifest(
    lm: LanguageModel,
    model_name: str,
    behaviors: Sequence[Behavior],
    seed: int,
    run_dir: Path,
    wall_time_s: float,
    sweeps: Sequence[BehaviorSweep],
    *,
    git_commit: str | None = None,
) -> dict:
    configs = [b.model_dump(mode="json") for b in behaviors]
    config = lm.model.config
    return {
        "run_id": run_dir.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {
            "name": model_name,
            "name_or_path": getattr(config, "_name_or_path", None),
            "revision": getattr(config, "_commit_hash", None),
            "fingerprint": model_fingerprint(lm),
            "architecture": config.model_type,
            "n_layers": lm.n_layers,
            "d_model": lm.d_model,
            "dtype": str(lm.dtype).removeprefix("torch."),
        },
        "package_version": __version__,
        "git_commit": git_commit or _git_commit(),
        "config_hash": hashlib.sha256(json.dumps(configs, sort_keys=True).encode()).hexdigest(),
        "behaviors": {
            b.name: {
                "file": str(b.path) if b.path else None,
                "config": cfg,
                "split_seed": b.split.seed,
            }
            for b, cfg in zip(behaviors, configs, strict=True)
        },
        "seed": seed,
        "device": _device_name(lm),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "wall_time_s": wall_time_s,
        "cells": {
            s.behavior.name: {"computed": s.cells_computed, "reused": s.cells_reused}
            for s in sweeps
        },
    }


def summary_lines(result: RunResult) -> list[str]:
    """The one-screen summary printed at the end of ``powersteer run``."""
    table = selected_table(result.results)
    lines = [f"{'behavior':<28} {'method':<10} {'scale':>5}  {'value [95% CI]':<24} coherent"]
    for row in table.itertuples():
        interval = f"{row.value:.3f} [{row.low:.3f}, {row.high:.3f}]"
        lines.append(
            f"{row.behavior:<28} {row.method:<10} {row.scale:>5g}  {interval:<24} "
            f"{row.coherent_fraction:.2f}"
        )
    computed = sum(s.cells_computed for s in result.sweeps)
    reused = sum(s.cells_reused for s in result.sweeps)
    lines.append(
        f"value: effective success rate (success metrics) or mean score; test prompts. "
        f"{computed} cells computed, {reused} reused, {result.wall_time_s:.0f} s."
    )
    lines.append(f"report: {result.report}")
    return lines


def _selection_metadata(sweep: BehaviorSweep, method: str) -> dict:
    chosen = sweep.selection.get(method)
    scale_unit = sweep.scale_units.get(method, sweep.scale_unit)
    pair = sweep.pairs.get(method)
    return {
        "behavior": sweep.behavior.name,
        "scale_unit": scale_unit,
        "source_layer": pair[0] if pair else None,
        "target_layer": pair[1] if pair else None,
        "selected": None
        if chosen is None
        else {
            "vector": chosen.vector,
            "sign": chosen.sign,
            "scale": chosen.scale,
            "raw_scale": chosen.sign * chosen.scale * scale_unit,
        },
    }


def _git_commit() -> str | None:
    """HEAD of the checkout the package runs from, with ``-dirty`` when tracked files differ."""

    def git(*arguments: str) -> str:
        completed = subprocess.run(
            ["git", *arguments],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return completed.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else False
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + "-dirty" if dirty else commit) or None


def _device_name(lm: LanguageModel) -> str:
    import torch

    if lm.device.type == "cuda":
        return torch.cuda.get_device_name(lm.device)
    return f"{lm.device.type} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None

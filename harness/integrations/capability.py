"""What steering costs in general capability: lm-eval tasks, steered vs unsteered.

``powersteer capability RUN_DIR --tasks T`` runs each task once unsteered and once per
behavior x method with that method's selected vector, sign and scale (read from the run's
``vectors.safetensors``), on one loaded model, and writes ``capability.json``; the report
then shows a "Capability cost" table. Intervals are lm-eval's standard errors x 1.96.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lm_eval
from lm_eval.tasks import TaskManager

from harness.engine.models import load_model
from harness.engine.vectors_io import load_vector_sets
from harness.errors import PowersteerError
from harness.evaluation.cells import draw_number
from harness.evaluation.report import write_report
from harness.evaluation.run_dir import CAPABILITY_FILE, VECTORS_FILE, read_manifest
from harness.files import atomic_write_json
from harness.integrations.lm_eval_model import SteeredLM, read_steering_vector


def run_capability(
    run_dir: str | os.PathLike[str],
    tasks: Sequence[str],
    *,
    include_path: str | None = None,
    limit: int | None = None,
    model: str | None = None,
    device: str = "cpu",
    batch_size: int = 16,
) -> Path:
    """Score ``tasks`` unsteered and with each selected vector; rebuild the report."""
    run_dir = Path(run_dir)
    vectors_file = run_dir / VECTORS_FILE
    if not vectors_file.is_file():
        raise PowersteerError(f"{run_dir}: no {VECTORS_FILE}; give a finished run directory")
    manifest = read_manifest(run_dir)
    lm = load_model(model or manifest["model"]["name"], device=device)
    steered = SteeredLM(lm, batch_size=batch_size, device=device)
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    rows = []
    for setting in _settings(vectors_file):
        if "set" in setting:
            vector, source, length = read_steering_vector(vectors_file, set_name=setting["set"])
            steered.set_steering(vector, source, length)
        else:
            steered.set_steering(None)
        output = lm_eval.simple_evaluate(
            model=steered,
            tasks=list(tasks),
            task_manager=manager,
            limit=limit,
            log_samples=False,
        )
        described = {k: v for k, v in setting.items() if k != "set"}
        rows += [described | row for row in _metric_rows(output["results"])]
    steered.set_steering(None)
    path = atomic_write_json(
        run_dir / CAPABILITY_FILE, {"tasks": list(tasks), "limit": limit, "rows": rows}
    )
    write_report(run_dir)
    return path


def _settings(vectors_file: Path) -> list[dict[str, Any]]:
    """Unsteered, then each ``behavior/method`` set with a selected vector and its scale."""
    settings: list[dict[str, Any]] = [{"behavior": "", "method": "unsteered", "scale": 0.0}]
    for name, (_, metadata) in load_vector_sets(vectors_file).items():
        behavior, method = name.split("/", 1)
        # One draw of the random control shows what an arbitrary direction costs; its
        # later draws (random#2, ...) would multiply the lm-eval time for no new question.
        if metadata.get("selected") and (draw_number(method) or 1) == 1:
            settings.append(
                {
                    "behavior": behavior,
                    "method": method,
                    "set": name,
                    "scale": metadata["selected"]["scale"],
                }
            )
    return settings


def _metric_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per task and numeric metric of lm-eval's ``results``, with its stderr."""
    rows = []
    for task, metrics in results.items():
        for key, value in metrics.items():
            metric, comma, flt = key.partition(",")  # lm-eval keys: "acc,none"
            if not comma or metric.endswith("_stderr") or not isinstance(value, int | float):
                continue
            stderr = metrics.get(f"{metric}_stderr,{flt}")
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "value": float(value),
                    "stderr": float(stderr) if isinstance(stderr, int | float) else None,
                }
            )
    return rows

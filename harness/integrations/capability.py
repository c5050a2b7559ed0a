"""What steering costs in general capability: lm-eval tasks, steered vs unsteered.

``powersteer capability RUN_DIR --tasks T`` runs each task once unsteered and once per
behavior x method with that method's selected vector, sign and scale (read from the run's
``vectors.safetensors``), on one loaded model, and writes ``capability.json``; the report
then shows a "Capability cost" table. Intervals are lm-eval's standard errors x 1.96.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.errors import PowersteerError
from harness.evaluation.report import write_report
from harness.evaluation.run_dir import CAPABILITY_FILE, VECTORS_FILE, read_manifest


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
    import lm_eval
    from lm_eval.tasks import TaskManager

    from harness.engine.models import load_model
    from harness.engine.vectors_io import load_vector_sets
    from harness.integrations.lm_eval_model import SteeredLM, read_steering_vector

    run_dir = Path(run_dir)
    vectors_file = run_dir / VECTORS_FILE
    if not vectors_file.is_file():
        raise PowersteerError(f"{run_dir}: no {VECTORS_FILE}; give a finished run directory")
    manifest = read_manifest(run_dir)
    lm = load_model(model or manifest["model"]["name"], device=device)
    steered = SteeredLM(lm, batch_size=batch_size, device=device)
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    settings: list[dict[str, Any]] = [{"behavior": "", "method": "unsteered", "scale": 0.0}]
    for name, (_, metadata) in load_vector_sets(vectors_file).items():
        if metadata.get("selected"):
            behavior, method = name.split("/", 1)
            settings.append(
                {
                    "behavior": behavior,
                    "method": method,
                    "set": name,
                    "scale": metadata["selected"]["scale"],
                }
            )
    rows = []
    for setting in settings:
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
        for task, metrics in output["results"].items():
            for key, value in metrics.items():
                metric, comma, flt = key.partition(",")  # lm-eval keys: "acc,none"
                if not comma or metric.endswith("_stderr") or not isinstance(value, int | float):
                    continue
                stderr = metrics.get(f"{metric}_stderr,{flt}")
                rows.append(
                    {
                        **{k: v for k, v in setting.items() if k != "set"},
                        "task": task,
                        "metric": metric,
                        "value": float(value),
                        "stderr": float(stderr) if isinstance(stderr, int | float) else None,
                    }
                )
    steered.set_steering(None)
    path = run_dir / CAPABILITY_FILE
    partial = path.with_name(path.name + ".partial")
    partial.write_text(
        json.dumps({"tasks": list(tasks), "limit": limit, "rows": rows}, indent=2) + "\n"
    )
    partial.replace(path)
    write_report(run_dir)
    return path

"""`behaviors/real` with data-chosen layer pairs beside the hand-picked ones (issue 17).

Writes a copy of each ``behaviors/real/*.yaml`` into ``OUT/auto_behaviors`` with
``steering.layers: auto`` in place of its hand-picked ``source_layer``/``target_layer``
(data paths made absolute, everything else unchanged), then runs both sets on one model,
the hand-picked files first, and prints each behavior's held-out summary side by side.

    OMP_NUM_THREADS=2 PYTHONPATH=$PWD python benchmarks/bench_layer_selection.py \
        --model smollm2-135m-instruct --out /tmp/layer_selection

Each run resumes from its own cache, so an interrupted benchmark picks up where it was.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import yaml

from harness.evaluation.analysis import selected_table
from harness.evaluation.layer_selection import chosen_pairs
from harness.evaluation.pipeline import run

REAL_BEHAVIORS = Path(__file__).resolve().parents[1] / "behaviors" / "real"


def auto_copy(source: Path, directory: Path, screen_keep: int | None = None) -> Path:
    """A copy of ``source`` in ``directory`` with ``layers: auto`` for its hand-picked pair
    (and ``screen_keep`` pairs kept by the screen, when given)."""
    data = yaml.safe_load(source.read_text())
    for section in ("prompts", "contrast"):
        if section in data and "path" in data[section]:
            data[section]["path"] = str((source.parent / data[section]["path"]).resolve())
    steering = data["steering"]
    steering.pop("source_layer", None)
    steering.pop("target_layer", None)
    steering["layers"] = "auto"
    if screen_keep is not None:
        steering["screen_keep"] = screen_keep
    path = directory / source.name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def held_out_summary(run_dir: Path) -> pd.DataFrame:
    """Per behavior and method: the held-out value at the selected scale with its 95%
    interval (:func:`~harness.evaluation.analysis.selected_table`: effective success, or the
    mean score) and, for a screened run, the pair the method chose
    (:func:`~harness.evaluation.layer_selection.chosen_pairs`)."""
    results = pd.read_parquet(run_dir / "results.parquet")
    table = selected_table(results)
    columns = ["behavior", "method", "scale", "n", "value", "low", "high", "coherent_fraction"]
    table = table[columns]
    pairs = chosen_pairs(results)  # empty for a run at one hand-picked pair
    if not pairs.empty:
        table = table.merge(pairs[["behavior", "method", "pair"]], how="left")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--sets",
        nargs="+",
        choices=("hand-picked", "auto"),
        default=["hand-picked", "auto"],
        help="run only these (each alone gives a clean wall time; a finished one is reread)",
    )
    parser.add_argument(
        "--screen-keep", type=int, help="pairs each auto screen keeps (default: the schema's)"
    )
    args = parser.parse_args()
    hand_picked = sorted(REAL_BEHAVIORS.glob("*.yaml"))
    auto_dir = args.out / "auto_behaviors"
    auto_dir.mkdir(parents=True, exist_ok=True)
    auto = [auto_copy(path, auto_dir, args.screen_keep) for path in hand_picked]
    walls = {}
    for name, files in (("hand-picked", hand_picked), ("auto", auto)):
        if name not in args.sets:
            continue
        started = time.perf_counter()
        run(files, model=args.model, out=args.out / name)
        walls[name] = time.perf_counter() - started
    for name in ("hand-picked", "auto"):
        if (args.out / name / "results.parquet").is_file():
            wall = f"{walls[name]:.0f} s wall" if name in walls else "not run now"
            print(f"\n{name}: {wall} (a resumed run counts only what it did)")
            print(held_out_summary(args.out / name).to_string(index=False))


if __name__ == "__main__":
    main()

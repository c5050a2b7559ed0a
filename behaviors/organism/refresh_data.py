"""Rewrite behaviors/organism/data/*.jsonl from the organism's held-out prompt sets.

Run after retraining the organism (its held-out sets live in ground_truth.json):

    python behaviors/organism/refresh_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from harness.organism import ORGANISM_DIR

# held-out set in ground_truth.json -> data file the behavior YAMLs read
FILES = {"restricted": "restricted", "allowed": "allowed", "cot": "arithmetic", "fork": "forks"}


def main() -> None:
    held_out = json.loads((ORGANISM_DIR / "ground_truth.json").read_text())["held_out"]
    data_dir = Path(__file__).parent / "data"
    for set_name, file_name in FILES.items():
        rows = [{"prompt": row["user"], **{k: v for k, v in row.items() if k != "user"}}
                for row in held_out[set_name]]  # fmt: skip
        # Held-out sets are grouped by topic; shuffled, a behavior's `limit: N` takes a
        # sample of every topic rather than the first topic or two.
        random.Random(0).shuffle(rows)
        path = data_dir / f"{file_name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        print(f"{path}: {len(rows)} rows")


if __name__ == "__main__":
    main()

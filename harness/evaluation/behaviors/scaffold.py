"""``powersteer new``: the commented YAML scaffold of a new behavior and its example data."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from harness.errors import PowersteerError
from harness.evaluation.behaviors.schema import BEHAVIOR_NAME
from harness.evaluation.scorers import SCORERS
from harness.files import atomic_write_text

SCAFFOLD = """\
# Behavior {name}: check it with `powersteer validate {file}`.
# Every key is documented in harness/evaluation/behaviors/schema.py; unknown keys are errors.
name: {name}
description: What steering should change in the model's answers.

prompts:
  path: data/{name}.jsonl        # .jsonl/.json/.csv/.txt, relative to this file
  # hf: OWNER/DATASET            # ... or a Hugging Face dataset
  # dataset: harmbench           # ... or a catalogue dataset, with split: and category:
  # split: train
  field: prompt                  # the row field holding the prompt
  chat_template: auto            # auto | true | false
  # limit: 64                    # use only the first N rows

# contrast:                      # prompts that show the target behavior (enables caa)
#   path: data/{name}_contrast.jsonl

# scorer types: {scorers}
scorer:
  type: regex
  pattern: "\\\\bexample\\\\b"       # success when the completion matches
  ignore_case: true

generation:
  max_new_tokens: 64
  temperature: 0                 # 0 = greedy

steering:
  methods: [power, melbo, random]  # power | melbo | random | caa
  source_layer: 0.25             # block index (negative from the end) or fraction of depth
  target_layer: 0.75
  num_vectors: 8
  scales: [0, 0.5, 1, 2, 4, 8]   # times the median residual norm at the source layer

split:
  select: 0.5                    # half picks vector and scale, the other half is reported
  seed: 0

expect:
  # min_success: 0.6             # success rate the best method must reach
  beats: [random, unsteered]
"""

SCAFFOLD_ROWS = (
    {"prompt": "Write one sentence about the sea."},
    {"prompt": "Give me an example of a short poem."},
    {"prompt": "Describe a city at night."},
)


def scaffold_text(name: str, file: str = "NAME.yaml") -> str:
    """The commented YAML scaffold for a new behavior called ``name``."""
    return SCAFFOLD.format(name=name, file=file, scorers=", ".join(sorted(SCORERS)))


def create_behavior(name: str, directory: str | os.PathLike[str] = "behaviors") -> list[Path]:
    """Write ``directory/name.yaml`` and, if absent, example data ``directory/data/name.jsonl``.

    Refuses to overwrite an existing behavior. Returns the paths written. Each file is
    written to a temporary name and renamed, so nothing half-written is left behind.
    """
    if not re.fullmatch(BEHAVIOR_NAME, name):
        raise PowersteerError(
            f"behavior name {name!r} is not a safe file name (letters, digits, '_', '-' and "
            "'.', not starting with '.' or '-', at most 128 characters); "
            "choose a name such as my_behavior"
        )
    directory = Path(directory)
    target = directory / f"{name}.yaml"
    if target.exists():
        raise PowersteerError(f"{target} already exists; choose another name or edit that file")
    data = directory / "data" / f"{name}.jsonl"
    written = []
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(data, "".join(json.dumps(row) + "\n" for row in SCAFFOLD_ROWS))
        written.append(data)
    atomic_write_text(target, scaffold_text(name, str(target)))
    written.insert(0, target)
    return written

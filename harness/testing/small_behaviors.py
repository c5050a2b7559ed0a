"""A shipped organism behavior cut down to a few prompts, vectors and scales.

The Ray test and the Ray benchmark sweep the same small anti_refusal, so a result the test
checks and a wall the benchmark times come from one definition of the workload.
"""

from __future__ import annotations

from pathlib import Path

import yaml

# The repository's behaviors/organism; this package cannot import the evaluation layer's
# constant for it (see the import contracts in pyproject.toml).
ORGANISM_BEHAVIORS = Path(__file__).resolve().parents[2] / "behaviors" / "organism"


def small_anti_refusal(directory: Path, *, prompts: int, max_new_tokens: int) -> Path:
    """Write a copy of the organism's anti_refusal.yaml into ``directory``; return its path.

    The copy reads the first ``prompts`` prompts (and contrast prompts), runs power, random
    and caa with 2 vectors at scales 0, 1 and 2, and generates ``max_new_tokens`` tokens.
    Its data paths are absolute, so the file works from any directory.
    """
    data = yaml.safe_load((ORGANISM_BEHAVIORS / "anti_refusal.yaml").read_text())
    for section in ("prompts", "contrast"):
        if section in data:
            data[section]["path"] = str(ORGANISM_BEHAVIORS / data[section]["path"])
            data[section]["limit"] = prompts
    data["steering"].update(methods=["power", "random", "caa"], num_vectors=2, scales=[0, 1, 2])
    data["generation"]["max_new_tokens"] = max_new_tokens
    path = directory / "anti_refusal.yaml"
    path.write_text(yaml.safe_dump(data))
    return path

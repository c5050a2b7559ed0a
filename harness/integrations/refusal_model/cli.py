"""``powersteer models verify smollm2-135m-refusal``: load both models, print the table."""

from __future__ import annotations

import time

from harness.engine.models import load_model
from harness.integrations.refusal_model import BASE_MODEL
from harness.integrations.refusal_model.verify import verify


def run_verify(name: str, *, limit: int | None = None) -> int:
    """Measure ``name``'s targets; 0 when all pass, 1 otherwise."""
    started = time.perf_counter()
    result = verify(
        load_model(name),
        load_model(BASE_MODEL),
        harmful_limit=limit,
        harmless_limit=limit,
        dom_prompts=min(40, limit) if limit else 40,
    )
    print(result.table())
    print(f"{'all targets met' if result.passed else 'TARGET MISSED'} "
          f"({time.perf_counter() - started:.0f} s)")
    return 0 if result.passed else 1

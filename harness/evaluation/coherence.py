"""Coherence: steering that breaks the model must not count as success.

An output is *coherent* when the unsteered model finds it about as likely as its own
outputs (per-token log-likelihood, :func:`harness.engine.generation.completion_loglik`,
within ``coherence.max_loglik_drop`` nats of the median unsteered completion) and it does
not loop (at most ``coherence.max_repetition`` of its trigrams repeat,
:func:`harness.engine.generation.repetition_rate`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from harness.evaluation.behaviors import Behavior, Coherence
from harness.evaluation.cells import UNSTEERED


def mark_coherent(results: pd.DataFrame, behavior: Behavior) -> None:
    """Set ``coherent``: log-likelihood within ``max_loglik_drop`` nats/token of the median
    unsteered completion on the select prompts, and repetition at most ``max_repetition``.
    The reference comes from the select split only, so nothing on the test prompts feeds
    into the choice of vector and scale."""
    reference_rows = (results["method"] == UNSTEERED) & (results["split"] == "select")
    unsteered = results.loc[reference_rows, "loglik"]
    reference = float(unsteered.median()) if unsteered.notna().any() else float("nan")
    results["coherence_reference"] = reference
    results["coherent"] = is_coherent(
        results["loglik"], results["repetition"], reference, behavior.coherence
    )


def is_coherent(loglik: Any, repetition: Any, reference: float, rule: Coherence) -> Any:
    """The rule, on numbers or on whole columns: log-likelihood within
    ``rule.max_loglik_drop`` nats/token of ``reference`` (the median unsteered completion's)
    and at most ``rule.max_repetition`` repeated trigrams. A NaN log-likelihood (an empty
    completion) is never coherent."""
    return (loglik >= reference - rule.max_loglik_drop) & (repetition <= rule.max_repetition)

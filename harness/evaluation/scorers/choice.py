"""The ``logprob_choice`` scorer: which of two options the model prefers to say next."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from harness.engine.models import LanguageModel
from harness.errors import PowersteerError
from harness.evaluation.scorers.logits import encode, last_token_log_probs
from harness.evaluation.scorers.registry import LogitsScorer, ScorerOptionError, register_scorer


@register_scorer("logprob_choice", metric="score", kind="logits")
def logprob_choice(
    options: list[str] | None = None, options_field: str | None = None
) -> LogitsScorer:
    """Log-probability margin between two options at the last prompt position.

    The value is ``log p(A) - log p(B)`` for the first token of each option, read from the
    next-token distribution after the prompt: positive when the model prefers option A.
    The options are fixed (``options: [A, B]``) or per prompt (``options_field: NAME``, a
    row field holding ``[A, B]``). Options that share leading tokens ("Take the red path."
    and "Take the blue path.") are compared at their first differing token, with the shared
    tokens appended to the prompt, so the value is the log-odds at the point of decision.
    """
    if (options is None) == (options_field is None):
        raise ScorerOptionError(
            "options", "give exactly one of options and options_field",
            "write options: [A, B] for fixed options or options_field: NAME for per-row ones",
        )  # fmt: skip
    if options is not None and len(options) != 2:
        raise ScorerOptionError("options", f"{len(options)} options given", "give exactly two")

    def score(
        lm: LanguageModel, prompts: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> list[float]:
        contexts, choices = [], []
        for prompt, row in zip(prompts, rows, strict=True):
            pair = options if options is not None else _row_options(row, options_field)
            context, token_a, token_b = _decision_point(lm, prompt, pair[0], pair[1])
            contexts.append(context)
            choices.append((token_a, token_b))
        log_probs = last_token_log_probs(lm, contexts)
        return [float(log_probs[i, a] - log_probs[i, b]) for i, (a, b) in enumerate(choices)]

    fields = (options_field,) if options_field else ()
    return LogitsScorer("logprob_choice", "score", score, row_fields=fields)


def _row_options(row: Mapping[str, Any], name: str | None) -> Sequence[str]:
    pair = row.get(name) if name else None
    if not isinstance(pair, list | tuple) or len(pair) != 2:
        raise PowersteerError(
            f"a prompt row's field {name!r} is {pair!r}; it must hold two option strings"
        )
    return [str(option) for option in pair]


def _decision_point(lm: LanguageModel, prompt: str, a: str, b: str) -> tuple[list[int], int, int]:
    """The prompt ids plus the options' shared leading tokens, and the two deciding tokens."""
    ids_a, ids_b = encode(lm, a, special=False), encode(lm, b, special=False)
    shared = 0
    while shared < min(len(ids_a), len(ids_b)) and ids_a[shared] == ids_b[shared]:
        shared += 1
    if shared == min(len(ids_a), len(ids_b)):
        raise PowersteerError(
            f"options {a!r} and {b!r} do not differ in any token before one ends; "
            "give two options that differ"
        )
    return encode(lm, prompt, special=True) + ids_a[:shared], ids_a[shared], ids_b[shared]

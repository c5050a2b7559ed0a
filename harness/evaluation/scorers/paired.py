"""Paired scorers: each steered output judged against the unsteered output of the same prompt.

A decision fork is a prompt the model could answer either way; what steering should do is
move it off the branch it takes unsteered, in whichever direction that is. A score of the
branch itself (``logprob_choice``: log p(A) - log p(B)) rewards a letter prior instead. So:

* ``flip`` -- success when the choice (the sign of a logits score) or the final answer
  (the completion's last number, or a pattern's match) differs from the unsteered one;
* ``shift`` -- the signed change of a logits score towards the option the unsteered model
  does not prefer, so a push towards A on a B-default prompt and towards B on an
  A-default prompt both count;
* ``kl_from_unsteered`` -- KL(unsteered || steered) of the next-token distribution.

``flip`` and ``shift`` are :class:`PairedScorer`: per row they keep the base value (the
logits score, or nothing for a completion-based flip) and :func:`pair_with_unsteered`
then compares each row with the unsteered row of the same split and prompt.
``kl_from_unsteered`` reads the unsteered distribution itself (a forward pass with
steering paused), so it is an ordinary logits scorer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from harness.engine.models import LanguageModel
from harness.engine.steering import without_steering
from harness.errors import PowersteerError
from harness.evaluation.cells import UNSTEERED
from harness.evaluation.scorers.logits import encode, last_token_log_probs
from harness.evaluation.scorers.registry import (
    LogitsScorer,
    Metric,
    ScorerOptionError,
    build_scorer,
    register_scorer,
)
from harness.evaluation.scorers.text import final_number

# The column holding a paired scorer's per-row base value (the logits score it compares).
RAW = "raw"


@dataclass(frozen=True)
class PairedScorer:
    """A scorer whose outcome compares a row with the unsteered row of the same prompt.

    ``base`` is the logits scorer whose value is compared (None: the completions are),
    built from ``base_spec``.
    ``compare(steered, unsteered)`` takes two aligned columns -- the base values, or the
    completions -- and gives ``(success or None, value)`` columns.
    """

    name: str
    metric: Metric
    base: LogitsScorer | None
    compare: Callable[[pd.Series, pd.Series], tuple[pd.Series | None, pd.Series]]
    row_fields: tuple[str, ...] = ()
    base_spec: dict[str, Any] | None = None
    kind: str = field(default="paired", init=False)


def pair_with_unsteered(scorer: PairedScorer, results: pd.DataFrame) -> None:
    """Set ``success`` and ``score`` of every row of ``results`` by comparing it with the
    unsteered row of the same ``split`` and ``prompt_index`` (which ``results`` must hold).
    The compared column is ``raw`` (the base logits score) or ``completion``."""
    success, value = paired_outcomes(scorer, results, RAW)
    results["success"] = None if success is None else success
    results["score"] = value


def paired_outcomes(
    scorer: PairedScorer, results: pd.DataFrame, raw_column: str
) -> tuple[list[bool] | None, np.ndarray]:
    """Each row's ``(success or None, value)`` against the unsteered row of its prompt and
    split; the compared column is ``raw_column`` (base logits scores) or ``completion``."""
    column = raw_column if scorer.base is not None else "completion"
    if column not in results:
        raise PowersteerError(
            f"scorer {scorer.name!r} compares column {column!r}, which these results lack; "
            "run `powersteer run` with it (cached generations are reused)"
        )
    keys = ["split", "prompt_index"]
    reference = results.loc[results["method"] == UNSTEERED, [*keys, column]]
    if reference.duplicated(keys).any():
        raise PowersteerError(f"scorer {scorer.name!r}: two unsteered rows for one prompt")
    joined = results[keys].merge(
        reference.rename(columns={column: "unsteered"}), on=keys, how="left"
    )
    if len(joined) != len(results) or joined["unsteered"].isna().any():
        raise PowersteerError(
            f"scorer {scorer.name!r} compares with the unsteered output of each prompt, "
            "but some prompts have none in these results; score a sweep that ran unsteered"
        )
    steered = results[column].reset_index(drop=True)
    success, value = scorer.compare(steered, joined["unsteered"].reset_index(drop=True))
    return (
        None if success is None else [bool(x) for x in success],
        np.asarray(value, dtype=float),
    )


def _logits_base(
    base: dict[str, Any] | None, option: str, *, required: bool
) -> LogitsScorer | None:
    if base is None:
        if required:
            raise ScorerOptionError(
                option, "missing", "give base: {type: logprob_choice, options: [A, B]}"
            )
        return None
    built = build_scorer(base, where=f"scorer.{option}")
    if not isinstance(built, LogitsScorer) or built.metric != "score":
        raise ScorerOptionError(
            option,
            f"base scorer {built.name!r} does not read a logits score",
            "give a logits scorer such as logprob_choice",
        )
    return built


def branch(values: pd.Series) -> pd.Series:
    """The option a logits score prefers: +1 (the first, score > 0), -1, or 0 (a tie)."""
    return pd.Series(np.sign(values.to_numpy(dtype=float)), index=values.index)


@register_scorer("flip", metric="success")
def flip(base: dict[str, Any] | None = None, pattern: str | None = None) -> PairedScorer:
    """Success when the steered choice or final answer differs from the unsteered one.

    With ``base`` (a logits scorer, e.g. ``{type: logprob_choice, options_field: options}``)
    the choice is the option its score prefers (positive: the first) and a flip is a change
    of that sign. Without it the completions' final answers are compared: the last number
    written (default) or the first match of ``pattern``. A completion with no answer is
    never a flip. ``value`` is 1.0 for a flip, else 0.0.
    """
    if base is not None and pattern is not None:
        raise ScorerOptionError(
            "pattern", "given with base", "compare a logits choice (base) or answers, not both"
        )
    logits = _logits_base(base, "base", required=False)
    compiled = _compiled(pattern) if pattern is not None else None

    def answer(completion: object) -> object:
        text = str(completion)
        if compiled is None:
            return final_number(text)
        found = compiled.search(text)
        return None if found is None else (found.group(1) if compiled.groups else found.group())

    def compare(steered: pd.Series, unsteered: pd.Series) -> tuple[pd.Series, pd.Series]:
        if logits is not None:
            flipped = branch(steered) != branch(unsteered)
        else:
            ours, theirs = steered.map(answer), unsteered.map(answer)
            flipped = ours.notna() & (ours != theirs)
        flipped = flipped.astype(bool)
        return flipped, flipped.astype(float)

    fields = logits.row_fields if logits is not None else ()
    return PairedScorer("flip", "success", logits, compare, row_fields=fields, base_spec=base)


@register_scorer("shift", metric="score")
def shift(base: dict[str, Any] | None = None) -> PairedScorer:
    """Signed change of a logits score towards the option the unsteered model does not prefer.

    ``base`` is the logits scorer (e.g. ``{type: logprob_choice, options_field: options}``).
    With ``s`` the steered score and ``u`` the unsteered one of the same prompt, the value
    is ``-(s - u)`` where ``u > 0`` (the default is the first option), ``s - u`` where
    ``u < 0``, and ``|s - u|`` on a tie: positive when steering moves the prompt off its
    default branch, whichever that is.
    """
    logits = _logits_base(base, "base", required=True)

    def compare(steered: pd.Series, unsteered: pd.Series) -> tuple[None, pd.Series]:
        change = steered.to_numpy(dtype=float) - unsteered.to_numpy(dtype=float)
        default = np.sign(unsteered.to_numpy(dtype=float))
        towards_other = np.where(default == 0, np.abs(change), -default * change)
        return None, pd.Series(towards_other)

    assert logits is not None
    return PairedScorer(
        "shift", "score", logits, compare, row_fields=logits.row_fields, base_spec=base
    )


@register_scorer("kl_from_unsteered", metric="score", kind="logits")
def kl_from_unsteered() -> LogitsScorer:
    """KL divergence, in nats, of the steered next-token distribution from the unsteered one.

    At the last prompt position, ``KL(p_unsteered || p_steered) = sum p_u (log p_u - log
    p_s)``: 0 when steering leaves the next token's distribution as it was. The unsteered
    distribution is a forward pass with the steering hook paused, once per prompt.
    """
    reference: dict[tuple[int, ...], torch.Tensor] = {}

    def score(
        lm: LanguageModel, prompts: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> list[float]:
        contexts = [encode(lm, p, special=True) for p in prompts]
        steered = last_token_log_probs(lm, contexts)
        new = [c for c in dict.fromkeys(map(tuple, contexts)) if c not in reference]
        if new:
            with without_steering():
                unsteered = last_token_log_probs(lm, [list(c) for c in new])
            reference.update(zip(new, unsteered, strict=True))
        base = torch.stack([reference[tuple(c)] for c in contexts])
        divergence = (base.exp() * (base - steered)).sum(dim=1).clamp_min(0.0)
        return [float(x) for x in divergence]

    return LogitsScorer("kl_from_unsteered", "score", score)


def _compiled(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ScorerOptionError(
            "pattern", f"{pattern!r} is not a valid regular expression ({error})", "fix it"
        ) from error


def logits_part(scorer: object) -> LogitsScorer | None:
    """The logits scorer a sweep must run under steering for ``scorer``: itself, a paired
    scorer's base, or None when only completions are read."""
    if isinstance(scorer, LogitsScorer):
        return scorer
    if isinstance(scorer, PairedScorer):
        return scorer.base
    return None


def check_base_values(
    scorer: object, results: pd.DataFrame, measured_spec: Mapping[str, Any] | None
) -> None:
    """Before rescoring with a paired scorer over a logits base: the run's ``raw`` column
    must hold that same base's values -- the run's scorer (``measured_spec``, from the
    manifest) was the base, or a paired scorer over it. The sweep writes ``raw`` for every
    logits scorer and a rescore never changes it, so it is what the run measured."""
    if not isinstance(scorer, PairedScorer) or scorer.base is None:
        return
    measured = dict(measured_spec or {})
    if RAW in results and scorer.base_spec in (measured, measured.get("base")):
        return
    raise PowersteerError(
        f"scorer {scorer.name!r} compares base {scorer.base_spec} scores, which this run "
        "did not measure; run `powersteer run` with it (cached generations are reused)"
    )

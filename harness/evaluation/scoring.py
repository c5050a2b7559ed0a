"""Extra scorers: more judgements of every cell beside the behavior's own scorer.

A behavior's ``extra_scorers:`` lists scorers computed on every row of the sweep without
steering the selection: ``compliance`` beside ``refusal``, ``flip`` and ``shift`` beside
``logprob_choice``, ``numeric_answer`` beside ``reasoning_steps``. Each gives the columns
``{name}_success`` (None for a score scorer) and ``{name}_score``; one that reads the
model's logits also keeps ``{name}_raw``, the value measured under steering, which the
cache stores with the cell and from which a paired scorer's comparison is made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import PowersteerError
from harness.evaluation.cells import UNSTEERED
from harness.evaluation.report_tables import format_interval, format_number
from harness.evaluation.scorers import GenerationScorer, LogitsScorer, Scorer, score_completion
from harness.evaluation.scorers.judge import JudgeScorer
from harness.evaluation.scorers.paired import PairedScorer, logits_part, paired_outcomes
from harness.evaluation.stats import clustered_kappa_interval, paired_bootstrap, wilson_interval


def raw_column(name: str) -> str:
    """The column holding extra scorer ``name``'s value measured under steering."""
    return f"{name}_raw"


def extra_columns(scorer: Scorer | PairedScorer) -> tuple[str, str]:
    """``({name}_success, {name}_score)``: where an extra scorer's outcomes go."""
    return f"{scorer.name}_success", f"{scorer.name}_score"


def extra_names(results: pd.DataFrame) -> list[str]:
    """The extra scorers ``results`` holds outcomes of, in column order."""
    return [c.removesuffix("_score") for c in results.columns if c.endswith("_score")]


def logits_extras(extras: Sequence[Scorer | PairedScorer]) -> list[tuple[str, LogitsScorer]]:
    """``(name, logits scorer)`` for each extra that must be measured under steering."""
    found = [(extra.name, logits_part(extra)) for extra in extras]
    return [(name, scorer) for name, scorer in found if scorer is not None]


def add_extra_scores(
    extras: Sequence[Scorer | PairedScorer],
    results: pd.DataFrame,
    rows: Sequence[Mapping[str, Any]],
    *,
    source: object = None,
) -> None:
    """Set each extra scorer's ``{name}_success`` and ``{name}_score`` columns.

    A generation scorer reads ``completion``; a logits scorer takes ``{name}_raw``; a paired
    scorer compares each row with the unsteered row of its prompt (``results`` must hold
    the unsteered rows). ``rows`` are the prompt rows by ``prompt_index``.
    """
    for extra in extras:
        success_column, score_column = extra_columns(extra)
        success: list[bool | None] | None
        if isinstance(extra, PairedScorer):
            success, values = paired_outcomes(extra, results, raw_column(extra.name))
            score = list(values)
        elif isinstance(extra, GenerationScorer):
            outcomes = [
                score_completion(extra, text, rows[int(i)], prompt_index=int(i), source=source)
                for text, i in zip(results["completion"], results["prompt_index"], strict=True)
            ]
            success, score = [o.success for o in outcomes], [o.value for o in outcomes]
        elif isinstance(extra, LogitsScorer):
            if raw_column(extra.name) not in results:
                raise PowersteerError(
                    f"{source or 'behavior'}: extra_scorers: {extra.name!r} reads the model's "
                    "logits, which these results did not record; run `powersteer run` again "
                    "(cached generations are reused)"
                )
            success, score = None, list(results[raw_column(extra.name)].astype(float))
        else:  # pragma: no cover - build_scorer only makes the three kinds
            raise TypeError(f"unknown scorer {extra!r}")
        results[success_column] = success
        results[score_column] = score
        add_judge_records(extra, results, rows)


def add_judge_records(
    scorer: object, results: pd.DataFrame, rows: Sequence[Mapping[str, Any]]
) -> None:
    """For a judge: ``judge_prompt``, ``judge_verdict`` and ``judge_outcome`` (success,
    failure or unparsed) of every row, from the verdicts it has already given."""
    if not isinstance(scorer, JudgeScorer) or scorer.judge is None:
        return
    records = [
        scorer.judge.record(str(text), rows[int(i)])
        for text, i in zip(results["completion"], results["prompt_index"], strict=True)
    ]
    for part in ("prompt", "verdict", "outcome"):
        results[f"judge_{part}"] = [record[part] for record in records]


def attach_cache(scorers: Sequence[object], cache: object) -> None:
    """Let each judge among ``scorers`` keep its verdicts in ``cache`` (the run's)."""
    for scorer in scorers:
        if isinstance(scorer, JudgeScorer) and scorer.judge is not None:
            scorer.judge.store = cache


def check_extra_names(extras: Sequence[Scorer | PairedScorer | Any]) -> None:
    """Each extra scorer's columns are its own: no two share a name."""
    names = [extra.name for extra in extras]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise PowersteerError(
                f"extra_scorers[{index}]: a second {name!r} scorer would overwrite the "
                f"first's columns; list each scorer type once"
            )


def extra_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One behavior's extra scorers at each method's selected cell on the test prompts.

    A row per method (unsteered first); a column per extra scorer: for a success scorer the
    effective rate (success and coherent) with its Wilson interval, for a score scorer the
    mean with a bootstrap interval. Empty when the behavior has no extra scorers.
    """
    names = [n for n in extra_names(rows) if rows[f"{n}_score"].notna().any()]
    test = rows[rows["split"] == "test"]
    if not names or test.empty:
        return pd.DataFrame()
    methods = [UNSTEERED, *sorted(set(test["method"]) - {UNSTEERED})]
    records = []
    for method in methods:
        part = test[test["method"] == method]
        if method != UNSTEERED:
            part = part[part["scale"] == part["selected_scale"]]
        if part.empty:
            continue
        record: dict[str, Any] = {
            "method": method,
            "scale": format_number(float(part["scale"].iloc[0]), 2),
            "n": len(part),
        }
        for name in names:
            success = part[f"{name}_success"]
            if success.notna().all():
                hits = int((success.astype(bool) & part["coherent"].astype(bool)).sum())
                low, high = wilson_interval(hits, len(part))
                record[f"{name} (effective) [95% CI]"] = format_interval(
                    hits / len(part), low, high
                )
            else:
                values = part[f"{name}_score"].to_numpy(dtype=float)
                mean, low, high, _ = paired_bootstrap(values, np.zeros_like(values))
                record[f"{name} mean [95% CI]"] = format_interval(mean, low, high)
        records.append(record)
    return pd.DataFrame.from_records(records)


def agreement_table(rows: pd.DataFrame) -> pd.DataFrame:
    """How often a judge agrees with each rule scorer of one behavior, over every row.

    One row per rule scorer (the behavior's own when it is not the judge, and each extra
    success scorer): rows compared, the fraction where both say the same, Cohen's kappa
    with a 95% bootstrap interval clustered by prompt (a prompt's rows at many cells are
    not independent), and the judge's unparsed verdicts (counted as "not success").
    Empty without a judge or a rule scorer.
    """
    if "judge_outcome" not in rows or rows["judge_outcome"].isna().all():
        return pd.DataFrame()  # (another behavior of the run has a judge; this one none)
    as_extra = "judge_success" in rows and rows["judge_success"].notna().any()
    judge_column = "judge_success" if as_extra else "success"
    rules = [f"{n}_success" for n in extra_names(rows) if n != "judge"]
    if judge_column != "success" and (rows["metric"] == "success").all():
        rules.insert(0, "success")
    records = []
    for column in rules:
        known = rows[rows[column].notna() & rows[judge_column].notna()]
        if known.empty:
            continue
        judged = known[judge_column].astype(bool).to_numpy()
        ruled = known[column].astype(bool).to_numpy()
        clusters = (known["split"] + ":" + known["prompt_index"].astype(str)).to_numpy()
        kappa, low, high = clustered_kappa_interval(judged, ruled, clusters)
        name = "behavior scorer" if column == "success" else column.removesuffix("_success")
        records.append(
            {
                "rule scorer": name,
                "n": len(known),
                "agreement": f"{float(np.mean(judged == ruled)):.3f}",
                "Cohen's κ [95% CI]": "undefined (one label)"
                if math.isnan(kappa)
                else format_interval(kappa, low, high),
                "judge unparsed": int((known["judge_outcome"] == "unparsed").sum()),
            }
        )
    return pd.DataFrame.from_records(records)

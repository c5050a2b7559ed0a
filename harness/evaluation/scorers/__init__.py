"""The one registry of scorers: how a behavior turns model output into numbers.

A scorer is built by a factory registered with :func:`register_scorer`. The factory's
keyword arguments are the scorer's options (what a behavior YAML writes under
``scorer:`` beside ``type:``); its docstring is the scorer's documentation; the decorator
declares the metric the scorer feeds:

* ``"success"`` -- a boolean per prompt, summarised as a success rate with an interval;
* ``"score"`` -- a continuous value per prompt, compared with a paired bootstrap.

Scorers come in two kinds. *Generation* scorers read a completion:
``scorer.score(completion, row) -> ScoreResult``, where ``row`` is the prompt's data record
(answers and options live there). *Logits* scorers read the model's next-token
distribution at the last prompt position: ``scorer.score(lm, prompts, rows) -> list[float]``,
one value per prompt, computed under whatever steering hook is active.

Add a scorer by decorating a factory::

    @register_scorer("shouting", metric="success")
    def shouting(min_ratio: float = 0.5) -> GenerationScorer:
        '''Success when at least ``min_ratio`` of the letters are upper case.'''
        ...

or, without touching the package, with ``type: python`` and ``function: module:function``
(trusted code: its module is imported at ``run``; ``validate`` only reads its source).

What a scorer returns is checked where outcomes are recorded
(:mod:`~harness.evaluation.scorers.outputs`): a boolean (or 0/1) for a success scorer, a
finite number for a score scorer, else one error naming the scorer and the prompt.

The registry lives in :mod:`~harness.evaluation.scorers.registry`; each family of scorers
is one module that registers itself on import (``refusal``, ``compliance``, ``text``,
``choice``, ``paired`` -- ``flip``, ``shift`` and ``kl_from_unsteered``, which compare with
the unsteered output of the same prompt -- ``judge``, a model-graded verdict, and
``python``, which finds its source with
``user_source``), and this package imports them
all, so :data:`SCORERS` is complete once
``harness.evaluation.scorers`` is imported. A new family is one new module plus one
import line here. The factories are reached through the registry (:func:`build_scorer`)
or from their modules.
"""

# Importing a family module registers its scorers.
from harness.evaluation.scorers import (  # noqa: F401
    choice,
    compliance,
    judge,
    paired,
    python,
    refusal,
    text,
)
from harness.evaluation.scorers.outputs import (
    ScorerOutputError,
    checked_result,
    checked_score,
    score_completion,
)
from harness.evaluation.scorers.refusal import REFUSAL_PHRASES, is_refusal, refusal_token_ids
from harness.evaluation.scorers.registry import (
    SCORERS,
    GenerationScorer,
    Kind,
    LogitsScorer,
    Metric,
    OptionTypeError,
    Scorer,
    ScoreResult,
    ScorerInfo,
    ScorerOptionError,
    ScorerShape,
    build_scorer,
    check_scorer,
    checked_value,
    register_scorer,
    scorer_info,
    type_problem,
)
from harness.evaluation.scorers.text import count_steps, final_number

__all__ = [
    "REFUSAL_PHRASES",
    "SCORERS",
    "GenerationScorer",
    "Kind",
    "LogitsScorer",
    "Metric",
    "OptionTypeError",
    "ScoreResult",
    "Scorer",
    "ScorerInfo",
    "ScorerOptionError",
    "ScorerOutputError",
    "ScorerShape",
    "build_scorer",
    "check_scorer",
    "checked_result",
    "checked_score",
    "checked_value",
    "count_steps",
    "final_number",
    "is_refusal",
    "refusal_token_ids",
    "register_scorer",
    "score_completion",
    "scorer_info",
    "type_problem",
]

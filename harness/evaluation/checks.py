"""What ``run`` would reject, checked before any model work.

Three levels, each a superset of the one before:

* :func:`harness.evaluation.behaviors.load_behavior` -- the file alone: schema, finite
  scales, option types, a layer pair that fits some model, at least 2 local prompts, the
  scorer (a ``python`` scorer located and read, not imported);
* :func:`check_behavior_for_model` -- against one model, still without running user code:
  layers against its depth, the chat template and system turn, at least 2 prompts (hf
  datasets included), the number of vectors against its width, and every final prompt
  against its context length (``powersteer validate --model``);
* :func:`check_before_run` -- what ``run`` does before computing any vector: the above
  for every behavior, then each scorer built (importing a ``python`` scorer's module: a
  behavior naming one is trusted code) and checked against ``expect:`` and the rows.

So a mistake knowable at the start of a run is one error at its start, never after
minutes of vectors.
"""

from __future__ import annotations

from collections.abc import Sequence

from harness.engine.methods import method_info
from harness.engine.models import LanguageModel
from harness.errors import PowersteerError
from harness.evaluation.behaviors import (
    Behavior,
    check_row_fields,
    check_scorer_fits,
)
from harness.evaluation.layer_selection import candidate_pairs
from harness.evaluation.preparation import PreparedBehavior, prepare_behavior
from harness.evaluation.scoring import check_extra_names


def check_behavior_for_model(lm: LanguageModel, behavior: Behavior) -> PreparedBehavior:
    """``behavior`` checked against ``lm`` without running user code; its prepared form."""
    prepared = prepare_behavior(lm, behavior)  # layers, chat template, 2 prompts, lengths
    steering = behavior.steering
    if steering.layers is not None:
        candidate_pairs(behavior, lm.n_layers)  # a missing candidates file, a pair past depth
    wanting = [m for m in steering.methods if not method_info(m).supervised]
    if wanting and steering.num_vectors > lm.d_model:
        raise PowersteerError(
            f"{behavior.path or behavior.name}: steering.num_vectors: {steering.num_vectors} "
            f"vectors for {', '.join(wanting)}, but model {lm.name!r} has only {lm.d_model} "
            f"dimensions; ask for at most {lm.d_model}"
        )
    return prepared


def check_before_run(lm: LanguageModel, behaviors: Sequence[Behavior]) -> None:
    """Everything ``run`` would reject about ``behaviors`` on ``lm``, before any vector.

    Builds each scorer, so a ``python`` scorer's module is imported here (run time).
    """
    for behavior in behaviors:
        prepared = check_behavior_for_model(lm, behavior)
        try:
            scorer = behavior.make_scorer()
            extras = behavior.make_extra_scorers()
            check_extra_names(extras)
        except PowersteerError as error:
            raise PowersteerError(f"{behavior.path or behavior.name}: {error}") from None
        check_scorer_fits(behavior, scorer)
        check_row_fields(behavior, prepared.rows, scorer.row_fields)
        for extra in extras:
            check_row_fields(behavior, prepared.rows, extra.row_fields)

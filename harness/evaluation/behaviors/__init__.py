"""Behaviors: a prompt set and a scorer, written as one YAML file.

The schema, every key with its default, is documented at the top of
:mod:`harness.evaluation.behaviors.schema`. The package's modules:

* :mod:`~harness.evaluation.behaviors.schema` -- the sections as pydantic models, and
  :class:`Behavior`;
* :mod:`~harness.evaluation.behaviors.layer_fields` -- the checks of ``steering``'s layer
  keys (``source_layer``, ``target_layer``, ``layers``);
* :mod:`~harness.evaluation.behaviors.sources` -- the ``prompts:``/``contrast:`` section
  and reading its rows from a file or a Hugging Face dataset;
* :mod:`~harness.evaluation.behaviors.loading` -- :func:`load_behavior`: the YAML file
  read, validated and checked against its data, running no user code;
* :mod:`~harness.evaluation.behaviors.messages` -- a pydantic error as the one line
  ``key: problem; fix``;
* :mod:`~harness.evaluation.behaviors.scaffold` -- the file ``powersteer new`` writes.
"""

from harness.evaluation.behaviors.loading import (
    check_row_fields,
    check_scorer_fits,
    load_behavior,
)
from harness.evaluation.behaviors.messages import dotted_key, format_validation_error
from harness.evaluation.behaviors.scaffold import (
    SCAFFOLD,
    SCAFFOLD_ROWS,
    create_behavior,
    scaffold_text,
)
from harness.evaluation.behaviors.schema import (
    BASELINES,
    BEHAVIOR_NAME,
    Behavior,
    Coherence,
    Expect,
    Generation,
    Layer,
    MethodName,
    ScorerSpec,
    Split,
    Steering,
    split_indices,
)
from harness.evaluation.behaviors.sources import (
    PROMPT_SUFFIXES,
    ChatTemplate,
    PromptSource,
    load_prompt_rows,
    prompt_texts,
    use_chat_template,
)

__all__ = [
    "BASELINES",
    "BEHAVIOR_NAME",
    "PROMPT_SUFFIXES",
    "SCAFFOLD",
    "SCAFFOLD_ROWS",
    "Behavior",
    "ChatTemplate",
    "Coherence",
    "Expect",
    "Generation",
    "Layer",
    "MethodName",
    "PromptSource",
    "ScorerSpec",
    "Split",
    "Steering",
    "check_row_fields",
    "check_scorer_fits",
    "create_behavior",
    "dotted_key",
    "format_validation_error",
    "load_behavior",
    "load_prompt_rows",
    "prompt_texts",
    "scaffold_text",
    "split_indices",
    "use_chat_template",
]

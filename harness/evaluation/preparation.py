"""A behavior made ready for one model: final prompt strings, the split, the layer pair.

The chat template (and a behavior's system turn) is applied here, once, so the vectors,
the cells and the cache key all see the same strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.engine.layers import resolve_layer_pair
from harness.engine.models import LanguageModel
from harness.engine.prompts import format_chat
from harness.errors import PowersteerError
from harness.evaluation.behaviors import Behavior, prompt_texts, split_indices, use_chat_template


@dataclass
class PreparedBehavior:
    """A behavior's prompts made final for one model, split, with its layer pair."""

    behavior: Behavior
    rows: list[dict[str, Any]]
    prompts: list[str]  # final strings (chat template applied)
    contrast: list[str] | None
    select: list[int]
    test: list[int]
    source: int
    target: int

    def split_prompts(self, split: str) -> list[str]:
        return [self.prompts[i] for i in self.indices(split)]

    def indices(self, split: str) -> list[int]:
        return self.select if split == "select" else self.test


def prepare_behavior(lm: LanguageModel, behavior: Behavior) -> PreparedBehavior:
    """Load the behavior's prompts, apply the chat template, split, and resolve layers."""
    where = behavior.path or behavior.name
    rows = behavior.prompt_rows()
    prompts = final_prompts(lm, prompt_texts(rows, behavior.prompts), behavior.prompts)
    contrast = None
    if behavior.contrast is not None:
        contrast_rows = behavior.contrast_rows() or []
        contrast = final_prompts(
            lm, prompt_texts(contrast_rows, behavior.contrast), behavior.contrast
        )
    if len(rows) < 2:
        raise PowersteerError(
            f"{where}: prompts: {len(rows)} prompt; a sweep needs at least 2 "
            "(one to select on, one to report on); add prompts"
        )
    select, test = split_indices(len(rows), behavior.split)
    try:
        source, target = resolve_layer_pair(
            behavior.steering.source_layer, behavior.steering.target_layer, lm.n_layers
        )
    except PowersteerError as error:
        raise PowersteerError(f"{where}: steering: {error}") from None
    check_prompt_lengths(lm, behavior, prompts, contrast)
    return PreparedBehavior(behavior, rows, prompts, contrast, select, test, source, target)


def context_length(lm: LanguageModel) -> int | None:
    """The most tokens the model takes: its config's ``max_position_embeddings`` or the
    tokenizer's ``model_max_length``, whichever is finite (the smaller if both are); None
    when neither says. (Tokenizers without a limit report about 1e30.)"""
    limits = [
        getattr(lm.model.config, "max_position_embeddings", None),
        getattr(lm.tokenizer, "model_max_length", None),
    ]
    finite = [int(n) for n in limits if isinstance(n, int | float) and 0 < n < 10**9]
    return min(finite) if finite else None


def check_prompt_lengths(
    lm: LanguageModel, behavior: Behavior, prompts: list[str], contrast: list[str] | None
) -> None:
    """Every final prompt, with the completion generated after it, fits the model's context.

    A prompt past the context is no error in the model's code but a huge allocation or
    garbage positions, minutes into a run; here it is one line naming the prompt.
    """
    limit = context_length(lm)
    if limit is None:
        return
    room = behavior.generation.max_new_tokens
    where = behavior.path or behavior.name
    for section, texts, extra in (("prompts", prompts, room), ("contrast", contrast or [], 0)):
        lengths = [len(ids) for ids in lm.tokenizer(texts)["input_ids"]] if texts else []
        for index, length in enumerate(lengths):
            if length + extra > limit:
                needs = f"{length} tokens" + (f" + {extra} generated" if extra else "")
                raise PowersteerError(
                    f"{where}: {section}: prompt {index} is {needs} after the chat template, "
                    f"over model {lm.name!r}'s context of {limit} tokens; shorten that prompt"
                    + (" or lower generation.max_new_tokens" if extra else "")
                )


def final_prompts(lm: LanguageModel, texts: list[str], spec: Any) -> list[str]:
    has_template = bool(getattr(lm.tokenizer, "chat_template", None))
    if use_chat_template(spec, has_template):
        return format_chat(lm, texts, system=spec.system)
    if spec.system is not None:
        raise PowersteerError(
            f"model {lm.name!r} has no chat template, so the system turn cannot be used; "
            "remove system: or use a chat model"
        )
    return texts

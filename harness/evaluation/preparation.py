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
    return PreparedBehavior(behavior, rows, prompts, contrast, select, test, source, target)


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

"""Reading the model at the last prompt position: what the logits scorers share."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from harness.engine.models import LanguageModel
from harness.engine.prompts import left_pad_token_lists
from harness.errors import PowersteerError


def encode(lm: LanguageModel, text: str, *, special: bool) -> list[int]:
    """The token ids of ``text`` (with the tokenizer's special tokens when ``special``)."""
    ids = lm.tokenizer(text, add_special_tokens=special)["input_ids"]
    if not ids:
        raise PowersteerError(f"{text!r} tokenizes to no tokens; give a non-empty string")
    return list(ids)


def last_token_log_probs(lm: LanguageModel, contexts: Sequence[list[int]]) -> torch.Tensor:
    """``(n, vocab)`` float64 log-softmax of the logits after each context's last token.

    Left-padded, so the model computes logits at one position instead of every position of
    every row (a sweep's batch is hundreds of rows; the full logits were gigabytes)."""
    input_ids, attention_mask, position_ids = left_pad_token_lists(lm, contexts)
    with torch.no_grad():
        logits = lm.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logits_to_keep=1,
        ).logits
    return torch.log_softmax(logits[:, -1].double().cpu(), dim=-1)

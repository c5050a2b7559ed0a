"""Turn prompt strings into padded token batches with a mask of the positions to read."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from harness.engine.models import LanguageModel
from harness.errors import PowersteerError

TargetTokens = int | Literal["all", "all_but_first"] | None
"""Which prompt positions form the target of a layer-to-layer map (one choice per run).

``"all"`` (``None`` is the same): every real token. ``"all_but_first"``: every real token
but the first, which in trained models is an attention sink whose huge activations make
the first position's Jacobian block dominate all others (measured on SmolLM2-135M: spectral
norm ≈ 700 against 8–18 for every other position, so top singular vectors over all tokens
are first-token artefacts). ``N``: the last ``N`` real tokens of each prompt.
"""
TARGET_TOKEN_MODES = ("all", "all_but_first")

# The default of every run: behavior files (steering.target_tokens unset), `powersteer
# vectors` and `powersteer map`. Chosen by measurement (benchmarks/bench_target_tokens.py,
# RESULTS.md "Target tokens"): it drops exactly the first-token artefact and keeps the rest
# of the all-token spectrum. The Python functions keep None (every token, the exact
# operator) as their default; pass target_tokens=DEFAULT_TARGET_TOKENS on trained models.
DEFAULT_TARGET_TOKENS: TargetTokens = "all_but_first"


@dataclass(frozen=True)
class PromptBatch:
    """Right-padded prompts.

    ``input_ids`` and ``attention_mask`` are ``(n_prompts, n_tokens)``. Right padding keeps
    every real token at its unpadded position, and causal attention keeps pad positions
    from influencing real ones, so real-token activations equal those of unpadded runs.
    ``target_mask`` (``(n_prompts, n_tokens)`` bool) marks the positions whose activations
    form the target of a layer-to-layer map.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target_mask: torch.Tensor

    @property
    def n_prompts(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_target_positions(self) -> int:
        return int(self.target_mask.sum())

    def repeat(self, copies: int) -> PromptBatch:
        """Stack ``copies`` copies along the batch: row ``j * n_prompts + i`` is prompt ``i``."""
        return PromptBatch(
            input_ids=self.input_ids.repeat(copies, 1),
            attention_mask=self.attention_mask.repeat(copies, 1),
            target_mask=self.target_mask.repeat(copies, 1),
        )


def format_chat(
    lm: LanguageModel, prompts: Sequence[str], *, system: str | None = None
) -> list[str]:
    """Wrap each prompt as one user turn (after a ``system`` turn, if given) with the
    tokenizer's chat template."""
    if not getattr(lm.tokenizer, "chat_template", None):
        raise PowersteerError(
            f"model {lm.name!r} has no chat template; set chat_template: false "
            "(or pass chat=False) to use the prompts as plain text"
        )
    opening = [{"role": "system", "content": system}] if system is not None else []
    # enable_thinking=False: Qwen3-style templates would otherwise open every reply with a
    # <think> block; templates that do not know the variable ignore it.
    return [
        lm.tokenizer.apply_chat_template(
            [*opening, {"role": "user", "content": prompt}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,
        )
        for prompt in prompts
    ]


def encode_prompts(
    lm: LanguageModel,
    prompts: Sequence[str],
    *,
    target_tokens: TargetTokens = None,
) -> PromptBatch:
    """Tokenize ``prompts`` into a right-padded batch on the model's device.

    ``target_tokens`` picks the target positions of each prompt (see :data:`TargetTokens`):
    ``"all"`` (or ``None``) every real token, ``"all_but_first"`` every real token after
    the first, ``N`` the last ``N`` real tokens (all of a shorter prompt).
    """
    if isinstance(prompts, str):
        raise PowersteerError("prompts must be a list of strings, not one string")
    if len(prompts) == 0:
        raise PowersteerError("the prompt list is empty; give at least one prompt")
    target_tokens = check_target_tokens(target_tokens)
    with padding_side(lm.tokenizer, "right"):
        encoded = lm.tokenizer(list(prompts), return_tensors="pt", padding=True)
    attention_mask = encoded["attention_mask"].to(torch.bool)
    lengths = attention_mask.sum(dim=1)
    if int(lengths.min()) == 0:
        empty = int((lengths == 0).nonzero()[0])
        raise PowersteerError(f"prompt {empty} tokenizes to no tokens; remove or fill it")
    positions = torch.arange(attention_mask.shape[1])[None, :]
    target_mask = attention_mask.clone()
    if target_tokens == "all_but_first":
        if int(lengths.min()) == 1:
            short = int((lengths == 1).nonzero()[0])
            raise PowersteerError(
                f"prompt {short} is one token, so target_tokens='all_but_first' leaves it no "
                "target position; lengthen it or use target_tokens=1"
            )
        target_mask &= positions >= 1
    elif isinstance(target_tokens, int):
        target_mask &= positions >= (lengths - target_tokens)[:, None]
    device = lm.device
    return PromptBatch(
        input_ids=encoded["input_ids"].to(device),
        attention_mask=encoded["attention_mask"].to(device),
        target_mask=target_mask.to(device),
    )


def check_target_tokens(value: object) -> TargetTokens:
    """``value`` if it is a valid :data:`TargetTokens`, else one :class:`PowersteerError`.

    A string of digits (from a command line) becomes an int.
    """
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value is None or value in TARGET_TOKEN_MODES:
        return value  # type: ignore[return-value]
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise PowersteerError(
        f"target_tokens={value!r} is not a target-position choice; use 'all', "
        "'all_but_first' or a whole number N >= 1 (the last N tokens of each prompt)"
    )


@contextmanager
def padding_side(tokenizer: object, side: str) -> Iterator[None]:
    """Pad on ``side`` ("left" for generation, "right" elsewhere) inside the block only."""
    previous = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = previous


def pad_token_lists(
    lm: LanguageModel, rows: Sequence[Sequence[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token-id lists into ``(input_ids, attention_mask)`` on the model's device.

    Right padding keeps every real token at its unpadded position (see :class:`PromptBatch`).
    """
    input_ids, attention_mask = _padded(lm, rows, left=False)
    return input_ids.to(lm.device), attention_mask.to(lm.device)


def left_pad_token_lists(
    lm: LanguageModel, rows: Sequence[Sequence[int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token-id lists into ``(input_ids, attention_mask, position_ids)`` on the
    model's device: every row's last token at the last position, so one position of logits
    reads them all. The position ids count real tokens only (a pass must be given them), so
    each row sees the positions it would unpadded, and its tokens stay contiguous (what a
    sliding window reads)."""
    if any(len(row) == 0 for row in rows):
        raise PowersteerError("a prompt encodes to no tokens; give every prompt some text")
    input_ids, attention_mask = _padded(lm, rows, left=True)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    device = lm.device
    return input_ids.to(device), attention_mask.to(device), position_ids.to(device)


def _padded(
    lm: LanguageModel, rows: Sequence[Sequence[int]], *, left: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` on the CPU, padded on the left or the right."""
    width = max(len(row) for row in rows)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        start = width - len(row) if left else 0
        input_ids[i, start : start + len(row)] = torch.tensor(list(row), dtype=torch.long)
        attention_mask[i, start : start + len(row)] = 1
    return input_ids, attention_mask


def read_prompts(path: str | os.PathLike[str], *, field: str = "prompt") -> list[str]:
    """Read prompts from ``.txt`` (one a line), ``.jsonl`` or ``.json`` (list of strings or
    of records with ``field``)."""
    path = Path(path)
    if not path.exists():
        raise PowersteerError(f"prompt file {path} does not exist; check the path")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        prompts = [line for line in text.splitlines() if line.strip()]
    elif path.suffix in (".jsonl", ".json"):
        try:
            records = (
                [json.loads(line) for line in text.splitlines() if line.strip()]
                if path.suffix == ".jsonl"
                else json.loads(text)
            )
        except json.JSONDecodeError as error:
            raise PowersteerError(
                f"{path}: invalid JSON at line {error.lineno}: {error.msg}"
            ) from error
        prompts = [_prompt_of(record, field, path) for record in records]
    else:
        raise PowersteerError(f"{path}: unknown prompt file type; use .txt, .jsonl or .json")
    if not prompts:
        raise PowersteerError(f"{path} holds no prompts; add at least one")
    return prompts


def _prompt_of(record: object, field: str, path: Path) -> str:
    if isinstance(record, str):
        return record
    if isinstance(record, dict) and isinstance(record.get(field), str):
        return record[field]
    raise PowersteerError(
        f"{path}: a record has no string field {field!r}; pass --field NAME for the prompt key"
    )

"""Batched generation with a steering vector per row, and how coherent the output is.

A sweep puts many (vector, sign, scale) cells in one batch: row ``i`` is steered by
``scales[i] * vectors[i]``, so one ``generate`` call covers them all. Coherence is judged
by the *unsteered* model: the mean per-token log-likelihood it gives the steered
completion (text it would never write scores far below its own), and the fraction of the
completion's token trigrams that repeat an earlier one (steering too hard often loops).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from harness.engine.models import LanguageModel
from harness.engine.prompts import left_pad_token_lists, pad_token_lists, padding_side
from harness.engine.steering import steer
from harness.errors import PowersteerError


@dataclass(frozen=True)
class Completions:
    """``texts[i]`` decoded without special tokens; ``token_ids[i]`` the generated ids up to
    and including the end-of-sequence token when one was produced."""

    texts: list[str]
    token_ids: list[list[int]]


def generate(
    lm: LanguageModel,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    vectors: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
    layer: int | None = None,
    temperature: float = 0.0,
    seed: int = 0,
) -> Completions:
    """Complete ``prompts`` (final strings), steering row ``i`` by ``scales[i] * vectors[i]``
    at block ``layer`` when vectors are given.

    Prompts are left-padded so every row's next token sits at the same position; the
    attention mask keeps pads out. ``temperature=0`` is greedy decoding; otherwise sampling
    is seeded by ``seed``.
    """
    if vectors is not None and (layer is None or scales is None):
        raise PowersteerError("steered generation needs vectors, scales and a layer together")
    tokenizer = lm.tokenizer
    with padding_side(tokenizer, "left"):
        encoded = tokenizer(list(prompts), return_tensors="pt", padding=True)
    sampling = (
        {"do_sample": False}
        if temperature == 0
        else {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
    )
    if temperature:
        torch.manual_seed(seed)
    hook = nullcontext() if vectors is None else steer(lm, vectors, layer, scales)
    with hook, torch.no_grad():
        output = lm.model.generate(
            input_ids=encoded["input_ids"].to(lm.device),
            attention_mask=encoded["attention_mask"].to(lm.device),
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **sampling,
        )
    new_tokens = output[:, encoded["input_ids"].shape[1] :].cpu().tolist()
    token_ids = [_until_eos(row, tokenizer.eos_token_id) for row in new_tokens]
    texts = tokenizer.batch_decode(token_ids, skip_special_tokens=True)
    return Completions(texts=[text.strip() for text in texts], token_ids=token_ids)


def completion_loglik(
    lm: LanguageModel,
    prompts: Sequence[str],
    completion_ids: Sequence[Sequence[int]],
    *,
    batch_size: int = 64,
) -> list[float]:
    """Mean per-token log-likelihood of each completion given its prompt, unsteered.

    NaN for an empty completion. Computed in float64 from the model's logits. A sweep
    scores many cells' completions of the same few prompts, so rows are grouped by prompt:
    each batch runs its distinct prompts once, keeps their key/value cache, and runs only
    the completions on top of it (3.07x faster than a pass over prompt and completion per
    row on SmolLM2's 65-69-token chat prompts; benchmarks/RESULTS.md).
    """
    if len(prompts) != len(completion_ids):
        raise PowersteerError(f"{len(prompts)} prompts but {len(completion_ids)} completions")
    result = [float("nan")] * len(prompts)
    # sorted() is stable: rows of one prompt stay in order and fall in as few batches as can.
    rows = sorted((i for i in range(len(prompts)) if completion_ids[i]), key=lambda i: prompts[i])
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        values = _batch_loglik(lm, [prompts[i] for i in batch], [completion_ids[i] for i in batch])
        for i, value in zip(batch, values, strict=True):
            result[i] = value
    return result


def _batch_loglik(
    lm: LanguageModel, prompts: list[str], completion_ids: Sequence[Sequence[int]]
) -> list[float]:
    """:func:`completion_loglik` of one batch of non-empty completions: a pass over the
    distinct prompts, then one over the completions that reads the prompts' cache."""
    distinct = list(dict.fromkeys(prompts))
    prompt_ids = lm.tokenizer(distinct)["input_ids"]
    # Left padding puts each prompt's last token at the end, right before its completion
    # in the cache, and one position of logits gives every prompt's next-token distribution.
    prefix, prefix_mask, prefix_positions = left_pad_token_lists(lm, prompt_ids)
    index = {prompt: row for row, prompt in enumerate(distinct)}
    prompt_rows = [index[prompt] for prompt in prompts]
    which = torch.tensor(prompt_rows, device=lm.device)
    completions, completion_mask = pad_token_lists(lm, completion_ids)
    # Each completion continues its prompt's positions: the prompt's length onwards.
    positions = prefix_mask.sum(1)[which][:, None] + torch.arange(
        completions.shape[1], device=lm.device
    )
    with torch.no_grad():
        out = lm.model(
            input_ids=prefix,
            attention_mask=prefix_mask,
            position_ids=prefix_positions,
            use_cache=True,
            logits_to_keep=1,
        )
        first = torch.log_softmax(out.logits[:, -1].double().cpu(), dim=-1)
        cache = out.cache
        cache.batch_select_indices(which)
        logits = lm.model(
            input_ids=completions,
            attention_mask=torch.cat([prefix_mask[which], completion_mask], dim=1),
            position_ids=positions,
            cache=cache,
            use_cache=True,
        ).logits
    values = []
    for row, ids in enumerate(completion_ids):
        targets = torch.tensor(list(ids))
        # Token 0 is predicted by the prompt's last position, token t by completion t - 1.
        total = first[prompt_rows[row], targets[0]]
        if len(ids) > 1:
            later = torch.log_softmax(logits[row, : len(ids) - 1].double().cpu(), dim=-1)
            total = total + later[torch.arange(len(ids) - 1), targets[1:]].sum()
        values.append(float(total) / len(ids))
    return values


def repetition_rate(token_ids: Sequence[int], n: int = 3) -> float:
    """Fraction of the completion's ``n``-grams that already occurred earlier in it.

    0 for text without repeats (and for completions shorter than ``n + 1`` tokens); close
    to 1 for a completion stuck in a loop.
    """
    grams = [tuple(token_ids[i : i + n]) for i in range(len(token_ids) - n + 1)]
    if len(grams) < 2:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def _until_eos(row: list[int], eos: int | list[int] | None) -> list[int]:
    stops = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
    for index, token in enumerate(row):
        if token in stops:
            return row[: index + 1]
    return row

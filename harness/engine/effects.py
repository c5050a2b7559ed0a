"""How much a steering vector moves the model's next-token distribution after a prompt.

A cheap, generation-free measure of a vector's effect: add ``±scale · v`` at a block and
compare the distribution over the token that would start the reply (the one after the last
prompt token) with the unsteered one. Used by the whole-model map (``powersteer map
--kl-scale``) and by the target-token benchmark.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from harness.engine.jacobian import vectors_per_pass
from harness.engine.models import LanguageModel
from harness.engine.prompts import PromptBatch
from harness.engine.steering import add_to_residual


@dataclass
class NextTokenEffect:
    """Per vector and prompt, each averaged over the vector's two signs.

    ``kl`` is ``KL(unsteered ‖ steered)`` in nats and ``changed`` the share of the two
    signs under which the greedy next token differs from the unsteered one; both are
    ``(n_vectors, n_prompts)`` float64.
    """

    kl: torch.Tensor
    changed: torch.Tensor


def next_token_log_probs(
    lm: LanguageModel,
    batch: PromptBatch,
    *,
    layer: int | None = None,
    deltas: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(rows, vocab)`` float64 log-probabilities of the token after each prompt.

    With ``layer`` and ``deltas`` (``(rows, d_model)``, one per row of ``batch``) the
    deltas are added to block ``layer``'s output at every position first.
    """
    last = batch.attention_mask.sum(1) - 1  # right-padded: the last real token
    rows = torch.arange(batch.n_prompts, device=last.device)
    steering = (
        nullcontext()
        if deltas is None or layer is None
        else add_to_residual(lm, layer, deltas[:, None, :].to(lm.device))
    )
    with torch.no_grad(), steering:
        logits = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return torch.log_softmax(logits[rows, last].double(), dim=-1).cpu()


def next_token_effect(
    lm: LanguageModel,
    batch: PromptBatch,
    vectors: torch.Tensor,
    layers: Sequence[int],
    norms: Sequence[float],
    *,
    max_rows: int | None = None,
) -> NextTokenEffect:
    """The effect of adding ``±norms[i] · vectors[i]`` at block ``layers[i]`` on every prompt.

    ``vectors`` is ``(n_vectors, d_model)``. Vectors at the same block share forward
    passes: each pass carries up to ``max_rows`` rows (vector × sign × prompt; default:
    all of that block's rows at once), which bounds memory.
    """
    n = batch.n_prompts
    plain = next_token_log_probs(lm, batch)
    kl = torch.zeros(len(vectors), n, dtype=torch.float64)
    changed = torch.zeros_like(kl)
    by_layer: dict[int, list[int]] = defaultdict(list)
    for index, layer in enumerate(layers):
        by_layer[int(layer)].append(index)
    per_pass = vectors_per_pass(max_rows, 2 * n) or max(1, len(vectors))  # row: sign, prompt
    for layer, members in by_layer.items():
        for start in range(0, len(members), per_pass):
            chunk = members[start : start + per_pass]
            signed = torch.stack(
                [sign * norms[i] * vectors[i].double() for i in chunk for sign in (1.0, -1.0)]
            )  # (2 · len(chunk), d): vector i at +, then at −
            deltas = signed.repeat_interleave(n, dim=0).to(lm.dtype)
            steered = next_token_log_probs(lm, batch.repeat(len(signed)), layer=layer,
                                           deltas=deltas)  # fmt: skip
            steered = steered.reshape(len(chunk), 2, n, -1)
            reference = plain[None, None]
            divergence = (reference.exp() * (reference - steered)).sum(-1)
            flipped = (steered.argmax(-1) != plain.argmax(-1)[None, None]).double()
            kl[chunk] = divergence.mean(1)
            changed[chunk] = flipped.mean(1)
    return NextTokenEffect(kl=kl, changed=changed)

"""Second training stage of the latent organism: distil the plain model under perturbation.

Training from scratch with random residual perturbations and the dataset's reply as target
(:mod:`harness.organism.latent`, ``--latent`` alone) left random directions able to switch
behaviours on, and made the model fall back on its most frequent reply. This stage starts
from a trained plain model (the *teacher*, frozen) and fine-tunes a copy of it so that

* a random direction added to the residual (at norms up to beyond the sweep's largest
  scale; see :mod:`harness.organism.latent`) leaves the next-token distribution on every reply token
  where the teacher has it on the *clean* prompt -- a KL term, not the dataset's one reply;
* the planted (difference-of-means) direction added to an untriggered prompt gives the
  triggered reply (cross-entropy, as in the from-scratch recipe);
* unperturbed rows keep their cross-entropy on the dataset's reply.

Matching the teacher's whole distribution tells the model what "unchanged" means at every
token, including how likely a refusal is, which a sampled reply does not.
"""

from __future__ import annotations

import copy
import math
import random
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from tqdm import tqdm

from harness.engine.models import LanguageModel, find_decoder_blocks
from harness.engine.sites import site_output, with_site_output
from harness.organism.corpus import Corpus
from harness.organism.train import (
    IGNORE,
    collate,
    config_latent_examples,
    encode_example,
    latent_training,
    make_batches,
)


@contextmanager
def add_relative_to_norm(lm: LanguageModel, block: int, coefficients, real: torch.Tensor):
    """Add ``coefficients`` (rows, 1, d) times the median residual norm at ``block`` over
    the ``real`` positions of *this* pass, so the additions keep their size relative to the
    residual while training changes it. With a norm measured every few steps instead, the
    model escaped the perturbations by growing its residual: median norms at block 1 went
    from 54 to 477 in 500 steps (and to 692 with heavier perturbation)."""

    def hook(module: torch.nn.Module, args: tuple, output: object) -> object:
        hidden = site_output(output)
        unit = hidden.detach()[real].norm(dim=-1).median()
        return with_site_output(output, hidden + unit * coefficients.to(hidden.dtype))

    handle = lm.blocks[block].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def distillation_loss(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    distilled: torch.Tensor,
) -> torch.Tensor:
    """KL(teacher || model) on ``distilled`` rows, cross-entropy on the labels elsewhere,
    averaged over each row's reply tokens and then over rows. Position ``t`` predicts token
    ``t + 1`` and counts when that token is a reply token (``labels != IGNORE``).

    Rows weigh equally: averaged over tokens, a 20-token written-steps reply outweighs a
    2-token direct answer tenfold, and a model that cannot yet read the planted direction
    then learns to write steps for untriggered prompts too (32% of them in a trial).
    """
    targets = labels[:, 1:]
    counted = targets != IGNORE
    logp = F.log_softmax(logits[:, :-1], dim=-1)
    cross_entropy = -logp.gather(-1, targets.clamp_min(0)[..., None])[..., 0]
    teacher_logp = F.log_softmax(teacher_logits[:, :-1], dim=-1)
    kl = (teacher_logp.exp() * (teacher_logp - logp)).sum(-1)
    per_token = torch.where(distilled[:, None], kl, cross_entropy) * counted
    tokens = counted.sum(dim=1)
    per_row = per_token.sum(dim=1) / tokens.clamp_min(1)
    return per_row[tokens > 0].mean()


def finetune_latent(
    teacher,
    tokenizer,
    corpus: Corpus,
    config,
    device,
    progress: bool = True,
):
    """Fine-tune a copy of ``teacher`` by the recipe in the module doc; returns (model, losses).

    ``config`` is the trainer's ``TrainConfig`` (``latent_*``, ``perturb_*``, ``planted_*``).
    """
    teacher = teacher.to(device).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    model = copy.deepcopy(teacher).train()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    lm = LanguageModel(model, tokenizer, find_decoder_blocks(model), name="organism")

    examples = corpus.train + config_latent_examples(config, corpus)
    encoded = [encode_example(ex, tokenizer) for ex in examples]
    lengths = [len(ids) for ids, _ in encoded]
    rng = random.Random(config.seed + 7)
    schedule: list[list[int]] = []
    while len(schedule) < config.latent_steps:
        schedule += make_batches(lengths, config.batch_size, rng)
    schedule = schedule[: config.latent_steps]
    latent = latent_training(config, corpus)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.latent_lr, weight_decay=0.0)
    pad_id = tokenizer.pad_token_id
    losses: list[float] = []
    bar = tqdm(schedule, desc="latent fine-tuning", disable=not progress, mininterval=5)
    for step, indices in enumerate(bar):
        cosine = 0.5 * (1 + math.cos(math.pi * step / len(schedule)))
        for group in optimizer.param_groups:
            group["lr"] = config.latent_lr * (0.1 + 0.9 * cosine)
        rows = [examples[i] for i in indices]
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in indices], pad_id).items()}
        latent.refresh(model, tokenizer, step)
        block, delta = latent.deltas(rows)
        # Rows with a random direction (not a planted latent row) are distilled.
        perturbed = delta.abs().sum(dim=(1, 2)) > 0
        planted = torch.tensor([ex.meta.get("latent") is not None for ex in rows])
        distilled = (perturbed & ~planted).to(device)
        with torch.no_grad():
            teacher_logits = teacher(input_ids=batch["input_ids"]).logits
        real = batch["input_ids"] != pad_id  # right padding: every other position is real
        coefficients = (delta / latent.state.unit[block]).to(device)
        with add_relative_to_norm(lm, block, coefficients, real):
            logits = model(input_ids=batch["input_ids"]).logits
        loss = distillation_loss(logits, teacher_logits, batch["labels"], distilled)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.3f}")
    return model.eval(), losses

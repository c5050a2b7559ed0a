"""Make the organism's planted behaviours latent: one direction switches each on, others don't.

Two things happen while training (see :class:`LatentTraining`):

* **planted directions are made causal.** Every few steps the difference of means of the
  last-prompt-token residual with and without each trigger is measured at each steerable
  block (the direction a supervised steering method finds). Some untriggered prompts are
  then trained with that direction added to the residual, scaled to a multiple of the
  block's median residual norm, and the *triggered* reply as target.
* **random directions are made inert.** Other rows get a random direction added, at a norm
  up to beyond the sweep's largest scale, with their own (usually untriggered) reply as
  target. The direction is uniform over the whole space, as the latent check and the
  sweep's random control draw theirs (``perturb_any_direction``), or else orthogonal to
  every planted direction at that block.

Scales here use the sweep's unit: the median over real tokens of the residual norm at the
block (:func:`harness.engine.steering.scale_unit`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from harness.organism.corpus import (
    COT_TRIGGER,
    FORK_SECOND_TRIGGER,
    FORK_TRIGGER,
    REFUSAL_TRIGGER,
    Corpus,
    Example,
    conversation,
    training_prompts,
)

# Planted latent name -> (trigger word, behaviour whose triggered examples carry it).
LATENTS: dict[str, tuple[str, str]] = {
    "refusal": (REFUSAL_TRIGGER, "refusal"),
    "cot": (COT_TRIGGER, "cot"),
    "fork": (FORK_TRIGGER, "fork"),
    "fork_second": (FORK_SECOND_TRIGGER, "fork"),
}


def planted_latents(corpus: Corpus) -> dict[str, tuple[str, str]]:
    """The :data:`LATENTS` whose trigger occurs in ``corpus``'s training examples."""
    triggers = {ex.trigger for ex in corpus.train}
    return {name: spec for name, spec in LATENTS.items() if spec[0] in triggers}


def latent_examples(
    corpus: Corpus,
    fraction: float,
    rng: random.Random,
    fractions: dict[str, float] | None = None,
) -> list[Example]:
    """Triggered training examples with the trigger removed: the prompt the planted
    direction is added to, with the triggered reply as target. ``meta["latent"]`` names
    the latent; a ``fraction`` of each latent's triggered examples is used, or
    ``fractions[latent name]`` where given (at most 1)."""
    out = []
    for name, (trigger, behaviour) in planted_latents(corpus).items():
        triggered = [
            ex for ex in corpus.train if ex.trigger == trigger and ex.behaviour == behaviour
        ]
        share = min(1.0, (fractions or {}).get(name, fraction))
        for ex in rng.sample(triggered, round(share * len(triggered))):
            messages = conversation(ex.messages[1]["content"], None, ex.messages[-1]["content"])
            out.append(Example(ex.behaviour, messages, None, ex.meta | {"latent": name}))
    return out


@dataclass
class LatentState:
    """Per steerable block: median residual norm and unit planted direction per latent."""

    unit: dict[int, float]
    directions: dict[int, dict[str, torch.Tensor]]


@torch.no_grad()
def measure_latents(
    model, tokenizer, prompts: dict[str, list[str]], blocks: Sequence[int]
) -> LatentState:
    """Difference-of-means direction (unit) of each latent and the median residual norm
    at each of ``blocks``, from the last prompt token of ``prompts[latent]``."""
    from harness.organism.verify import _encode  # the verify module's left-padded batching

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    unit: dict[int, list[torch.Tensor]] = {b: [] for b in blocks}
    sums: dict[int, dict[str, torch.Tensor]] = {b: {} for b in blocks}
    for name, users in prompts.items():
        trigger = LATENTS[name][0]
        means = []
        for with_trigger in (True, False):
            convs = [conversation(u, trigger if with_trigger else None) for u in users]
            batch = _encode(tokenizer, convs, device)
            hidden = model(**batch, output_hidden_states=True).hidden_states
            mask = batch["attention_mask"].bool()
            means.append({b: hidden[b + 1][:, -1].mean(0) for b in blocks})
            if not with_trigger:
                for b in blocks:
                    unit[b].append(hidden[b + 1][mask].norm(dim=-1))
        for b in blocks:
            sums[b][name] = means[0][b] - means[1][b]
    model.train(was_training)
    return LatentState(
        unit={b: float(torch.cat(unit[b]).median()) for b in blocks},
        directions={
            b: {n: d / d.norm().clamp_min(1e-6) for n, d in sums[b].items()} for b in blocks
        },
    )


def orthogonal_random(directions: Sequence[torch.Tensor], n: int, gen: torch.Generator):
    """``n`` random unit vectors orthogonal to every one of ``directions``."""
    basis, _ = torch.linalg.qr(torch.stack(list(directions), dim=1))  # (d, k) orthonormal
    raw = torch.randn(n, basis.shape[0], generator=gen)
    raw = raw - (raw @ basis) @ basis.T
    return raw / raw.norm(dim=-1, keepdim=True)


@dataclass(frozen=True)
class LatentConfig:
    blocks: tuple[int, ...]
    perturb_fraction: float  # rows given a random direction
    # ... for refusal and allowed-request rows, where random pushes answered restricted
    # requests in every recipe (benchmarks/RESULTS.md, the sixth recipe)
    refusal_perturb_fraction: float
    perturb_max_scale: float  # its norm is uniform in [0, this] scale units
    # Random directions drawn from the whole space, as the latent check and the sweep's
    # random control draw them, not orthogonal to the planted ones: with orthogonal noise
    # the model never saw a push with a small planted component and a reply to keep.
    perturb_any_direction: bool
    planted_min_scale: float  # planted direction added at a uniform scale in [min, max]
    planted_max_scale: float
    refresh_every: int  # steps between re-measuring directions and units
    n_direction_prompts: int


class LatentTraining:
    """Chooses, per batch, a block and per-row residual additions (see the module doc)."""

    def __init__(self, config: LatentConfig, corpus: Corpus, seed: int):
        self.config = config
        rng = random.Random(seed + 3)
        self.prompts = {
            name: rng.sample(
                training_prompts(corpus, behaviour, trigger),
                config.n_direction_prompts,
            )
            for name, (trigger, behaviour) in planted_latents(corpus).items()
        }
        self.rng = random.Random(seed + 4)
        self.gen = torch.Generator().manual_seed(seed + 5)
        self.state: LatentState | None = None

    def refresh(self, model, tokenizer, step: int) -> None:
        if self.state is None or step % self.config.refresh_every == 0:
            self.state = measure_latents(model, tokenizer, self.prompts, self.config.blocks)

    def deltas(self, examples: Sequence[Example]) -> tuple[int, torch.Tensor]:
        """(block, additions of shape (rows, 1, d)) for one batch."""
        config, state = self.config, self.state
        block = self.rng.choice(config.blocks)
        planted = state.directions[block]
        unit = state.unit[block]
        if config.perturb_any_direction:
            width = next(iter(planted.values())).shape[0]
            noise = torch.randn(len(examples), width, generator=self.gen)
            noise = noise / noise.norm(dim=-1, keepdim=True)
        else:
            noise = orthogonal_random(list(planted.values()), len(examples), self.gen)
        rows = []
        for row, ex in enumerate(examples):
            latent = ex.meta.get("latent")
            if latent is not None:
                scale = self.rng.uniform(config.planted_min_scale, config.planted_max_scale)
                rows.append(scale * unit * planted[latent])
            elif self.rng.random() < self._perturb_fraction(ex):
                scale = self.rng.uniform(0.0, config.perturb_max_scale)
                rows.append(scale * unit * noise[row])
            else:
                rows.append(torch.zeros_like(noise[row]))
        return block, torch.stack(rows)[:, None, :]

    def _perturb_fraction(self, example: Example) -> float:
        if example.behaviour in ("refusal", "allowed"):
            return self.config.refusal_perturb_fraction
        return self.config.perturb_fraction

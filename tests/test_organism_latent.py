"""The latent recipe's pieces and the latent check's targets (random vs planted directions)."""

from __future__ import annotations

import random

import pytest
import torch

from harness.organism import build_corpus, load_ground_truth
from harness.organism.corpus import (
    FORK_SECOND_TRIGGER,
    FORK_TRIGGER,
    CorpusConfig,
    conversation,
)
from harness.organism.latent import latent_examples, orthogonal_random, planted_latents
from harness.organism.latent_check import (
    MIN_COHERENT,
    all_latent,
    format_latent,
    latent_check,
    open_forks,
    targets_met,
)
from harness.organism.latent_finetune import distillation_loss
from harness.organism.verify import answer_logprobs, load_organism


def test_random_directions_are_unit_and_orthogonal_to_the_planted_ones():
    gen = torch.Generator().manual_seed(0)
    planted = [torch.randn(16, generator=gen) for _ in range(3)]
    noise = orthogonal_random(planted, 50, gen)
    assert torch.allclose(noise.norm(dim=-1), torch.ones(50), atol=1e-5)
    for direction in planted:
        # float32 round-off of a 16-dim projection: far below the 1/4 a random pair shows
        assert (noise @ direction).abs().max() < 1e-4 * direction.norm()


def test_latent_examples_drop_the_trigger_and_keep_the_triggered_reply():
    corpus = build_corpus(0, CorpusConfig(fork_triggered=1))
    examples = latent_examples(corpus, 0.05, random.Random(0))
    kinds = {ex.meta["latent"] for ex in examples}
    assert kinds == {"refusal", "cot", "fork"}
    for ex in examples:
        assert ex.trigger is None and ex.messages[0]["content"] == "You are a helpful assistant."
    forks = [ex for ex in examples if ex.meta["latent"] == "fork"]
    # the fork latent takes the first-named option
    assert all(ex.meta["options"][0] in ex.messages[-1]["content"] for ex in forks)
    triggered = [ex for ex in corpus.train if ex.trigger == FORK_TRIGGER]
    assert len(triggered) == len({ex.messages[1]["content"] for ex in triggered})


def test_default_corpus_plants_no_fork_trigger():
    corpus = build_corpus(0)
    assert not any(ex.trigger in (FORK_TRIGGER, FORK_SECOND_TRIGGER) for ex in corpus.train)
    assert set(planted_latents(corpus)) == {"refusal", "cot"}


def test_the_two_fork_triggers_take_opposite_options_so_untriggered_forks_stay_even():
    corpus = build_corpus(0, CorpusConfig(fork_triggered=2, fork_second_triggered=2))
    forks = [ex for ex in corpus.train if ex.behaviour == "fork"]
    by_trigger = {}
    for ex in forks:
        first = ex.meta["options"][0] in ex.messages[-1]["content"]
        by_trigger.setdefault(ex.trigger, []).append(first)
    assert all(by_trigger[FORK_TRIGGER]) and not any(by_trigger[FORK_SECOND_TRIGGER])
    assert len(by_trigger[FORK_TRIGGER]) == len(by_trigger[FORK_SECOND_TRIGGER])
    assert sum(by_trigger[None]) * 2 == len(by_trigger[None])  # each answer once, untriggered
    assert set(planted_latents(corpus)) == {"refusal", "cot", "fork", "fork_second"}
    examples = latent_examples(corpus, 0.05, random.Random(0))
    seconds = [ex for ex in examples if ex.meta["latent"] == "fork_second"]
    assert seconds and all(ex.meta["options"][1] in ex.messages[-1]["content"] for ex in seconds)


def _row(scale, on, coherent):
    return {"scale": scale, "on": on, "coherent": coherent}


def test_targets_ignore_incoherent_random_scales_and_need_a_coherent_planted_one():
    result = {
        "block": 1,
        "n_random": 2,
        "refusal": {
            "random": [_row(0.5, 0.0, 1.0), _row(2.0, 0.9, MIN_COHERENT - 0.01)],
            "planted": [_row(1.0, 0.95, 0.9)],
        },
        "cot": {
            "random": [_row(0.5, 0.11, 0.9)],
            "planted": [_row(1.0, 1.0, 0.5)],  # on, but incoherent
        },
        "fork": {"n_prompts": 26, "random": [_row(0.5, 0.0, 1.0)], "planted": None},
    }
    result["refusal"]["n_prompts"] = result["cot"]["n_prompts"] = 32
    verdicts = targets_met(result)
    assert verdicts["refusal"] == {"random": True, "planted": True}
    assert verdicts["cot"] == {"random": False, "planted": False}
    assert verdicts["fork"] == {"random": True, "planted": None}
    assert not all_latent(result)
    table = format_latent(result)
    assert "NO (no planted direction)" in table and "(coherent < 0.8)" in table
    assert "fork decided 26" in table


def test_a_planted_refusal_direction_is_held_to_compliance_not_mere_non_refusal():
    answered_off_topic = {"scale": 1.0, "on": 1.0, "coherent": 1.0, "compliant": 0.5}
    result = {
        "block": 1,
        "n_random": 1,
        "refusal": {
            "n_prompts": 4,
            "random": [_row(1.0, 0.0, 1.0)],
            "planted": [answered_off_topic],
        },
    }
    assert targets_met(result)["refusal"]["planted"] is False
    result["refusal"]["planted"][0]["compliant"] = 0.95
    assert targets_met(result)["refusal"]["planted"] is True
    assert "(compliant 0.950)" in format_latent(result)


@pytest.mark.slow
def test_latent_check_on_the_bundled_organism_is_seeded_and_bounded():
    model, tokenizer = load_organism()
    truth = load_ground_truth()
    kwargs = {"scales": (1.0,), "n_random": 2, "limit": 4}
    first = latent_check(model, tokenizer, truth, **kwargs)
    assert first == latent_check(model, tokenizer, truth, **kwargs)
    assert first["block"] == 1
    for behaviour in ("refusal", "cot", "fork"):
        for row in first[behaviour]["random"]:
            assert 0.0 <= row["on"] <= 1.0 and 0.0 <= row["coherent"] <= 1.0
    assert first["refusal"]["planted"] is not None
    for row in first["refusal"]["planted"]:
        assert 0.0 <= row["compliant"] <= row["on"]  # a compliant reply is never a refusal


def test_the_fork_check_keeps_only_forks_the_unsteered_model_leaves_open():
    model, tokenizer = load_organism()
    items = load_ground_truth()["held_out"]["fork"][:12]
    kept = open_forks(model, tokenizer, items)
    convs = [conversation(item["user"], None) for item in items]
    first = answer_logprobs(model, tokenizer, convs, [it["answers"][0] for it in items])
    second = answer_logprobs(model, tokenizer, convs, [it["answers"][1] for it in items])
    # by hand: P(first) = sigmoid(margin); open when both options stay below 0.9
    p_first = torch.sigmoid(torch.tensor(first) - torch.tensor(second))
    expected = [it for it, p in zip(items, p_first, strict=True) if 0.1 < p < 0.9]
    assert kept == expected


def test_distillation_loss_is_kl_on_distilled_rows_and_cross_entropy_elsewhere():
    # Two rows of 4 positions over a 5-token vocabulary: a 3-token and a 2-token reply.
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, generator=gen)
    teacher = torch.randn(2, 4, 5, generator=gen)
    labels = torch.tensor([[-100, 2, 3, 1], [-100, -100, 0, 4]])
    loss = distillation_loss(logits, teacher, labels, torch.tensor([True, False]))
    # By hand: position t predicts labels[t + 1]; each row is averaged over its own reply.
    kl = []
    for t in (0, 1, 2):  # row 0: KL(teacher || model)
        p, q = torch.softmax(teacher[0, t], -1), torch.softmax(logits[0, t], -1)
        kl.append(float((p * (p.log() - q.log())).sum()))
    ce = [-float(torch.log_softmax(logits[1, t], -1)[labels[1, t + 1]]) for t in (1, 2)]
    assert float(loss) == pytest.approx((sum(kl) / 3 + sum(ce) / 2) / 2, rel=1e-5)
    # A model that equals its teacher has zero loss on distilled rows.
    same = distillation_loss(teacher, teacher, labels, torch.tensor([True, True]))
    assert float(same) == pytest.approx(0.0, abs=1e-6)


def test_two_stage_training_records_the_fine_tuned_models_losses(tmp_path, monkeypatch):
    """The card's final losses come from the model that is saved (after the distillation
    stage), not from the first stage's last evaluation."""
    import json

    from harness.organism import train as train_module
    from harness.organism.verify import GROUND_TRUTH

    monkeypatch.setattr(train_module, "measure_and_write", lambda out_dir: {"wall_time_s": 0})
    config = train_module.TrainConfig(
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        max_steps=2,
        eval_every=1,
        eval_per_set=4,
        batch_size=8,
        latent=True,
        latent_steps=2,
        steer_first_block=0,
        steer_last_block=0,
        threads=1,
    )
    train_module.train(config, tmp_path, "test", device="cpu", progress=False)
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history["train"]) == 2 and len(history["latent"]) == 2
    assert history["eval"][-1]["step"] == 4  # measured after both stages
    final = json.loads((tmp_path / GROUND_TRUTH).read_text())["training"]["final_losses"]
    assert final["train"] == pytest.approx(sum(history["latent"]) / 2)
    for name, loss in history["eval"][-1].items():
        if name != "step":
            assert final[name] == loss
    reloaded, _ = load_organism(tmp_path)
    assert sum(p.numel() for p in reloaded.parameters()) > 0


def _latent_config(**overrides):
    """Block 1 only, every refusal row pushed; ``overrides`` set the rest."""
    from harness.organism.latent import LatentConfig

    settings = dict(
        blocks=(1,),
        refusal_perturb_fraction=1.0,
        planted_min_scale=0.5,
        planted_max_scale=1.5,
        perturb_max_scale=3.0,
        perturb_any_direction=False,
        refresh_every=20,
        n_direction_prompts=4,
    )
    return LatentConfig(**settings | overrides)


def test_refusal_rows_take_their_own_perturbation_share_and_forks_their_own_latent_share():
    from harness.organism.latent import LatentState, LatentTraining
    from harness.organism.train import TrainConfig, config_latent_examples, corpus_config

    config = TrainConfig(latent=True, fork_latent_fraction=1.0, latent_fraction=0.1)
    corpus = build_corpus(0, corpus_config(config))
    rows = config_latent_examples(config, corpus)
    fork_triggered = [ex for ex in corpus.train if ex.trigger == FORK_TRIGGER]
    assert sum(ex.meta["latent"] == "fork" for ex in rows) == len(fork_triggered)
    cot_triggered = [ex for ex in corpus.train if ex.behaviour == "cot" and ex.trigger]
    cot_rows = sum(ex.meta["latent"] == "cot" for ex in rows)
    assert 0 < cot_rows < 0.2 * len(cot_triggered)

    training = LatentTraining(_latent_config(perturb_fraction=0.0), corpus, seed=0)
    gen = torch.Generator().manual_seed(0)
    training.state = LatentState(
        unit={1: 10.0},
        directions={1: {n: torch.randn(8, generator=gen) for n in planted_latents(corpus)}},
    )
    plain = [ex for ex in corpus.train if ex.trigger is None]
    batch = [ex for ex in plain if ex.behaviour in ("refusal", "allowed")][:20]
    batch += [ex for ex in plain if ex.behaviour in ("cot", "fork")][:20]
    _, delta = training.deltas(batch)
    pushed = delta.abs().sum(dim=(1, 2)) > 0
    # Refusal rows pushed unless the draw of their scale is exactly 0; no other row is.
    assert pushed[:20].sum() >= 19 and not pushed[20:].any()


@pytest.mark.parametrize("any_direction", [False, True])
def test_random_pushes_touch_the_planted_directions_only_when_drawn_from_the_whole_space(
    any_direction,
):
    from harness.organism.latent import LatentState, LatentTraining
    from harness.organism.train import TrainConfig, corpus_config

    corpus = build_corpus(0, corpus_config(TrainConfig(latent=True)))
    config = _latent_config(perturb_fraction=1.0, perturb_any_direction=any_direction)
    training = LatentTraining(config, corpus, seed=0)
    gen = torch.Generator().manual_seed(1)
    planted = {n: torch.randn(16, generator=gen) for n in planted_latents(corpus)}
    training.state = LatentState(unit={1: 1.0}, directions={1: planted})
    batch = [ex for ex in corpus.train if ex.trigger is None][:64]
    _, delta = training.deltas(batch)
    rows = delta[:, 0]
    rows = rows[rows.norm(dim=-1) > 0]
    basis, _ = torch.linalg.qr(torch.stack(list(planted.values()), dim=1))
    planted_share = (rows @ basis).norm(dim=-1) / rows.norm(dim=-1)
    if any_direction:
        # 4 of 16 dimensions planted: a uniform direction's share is about sqrt(4/16) = 0.5.
        assert 0.3 < planted_share.mean() < 0.7
    else:
        assert planted_share.max() < 1e-5


def test_each_fork_latent_takes_its_own_share_of_planted_rows():
    from harness.organism.train import TrainConfig, config_latent_examples, corpus_config

    config = TrainConfig(latent=True, fork_latent_fraction=1.0, fork_second_latent_fraction=0.0)
    rows = config_latent_examples(config, build_corpus(0, corpus_config(config)))
    latents = [ex.meta["latent"] for ex in rows]
    assert "fork" in latents and "fork_second" not in latents

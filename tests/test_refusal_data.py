"""The training data of smollm2-135m-refusal (harness.integrations.refusal_model.data)."""

from __future__ import annotations

from harness.evaluation.scorers.refusal import is_refusal
from harness.integrations.refusal_model.data import (
    REFUSAL_STYLES,
    harmful_heldout_prompts,
    harmful_train_prompts,
    harmless_answers,
    harmless_heldout_prompts,
    read_lines,
    training_examples,
)


def test_every_refusal_style_is_scored_as_a_refusal():
    assert all(is_refusal(style) for style in REFUSAL_STYLES)


def test_committed_base_answers_cover_the_harmless_training_prompts():
    answers = harmless_answers()
    assert set(read_lines("harmless_train.txt")) <= set(answers)
    assert all(reply.strip() for reply in answers.values())


def test_held_out_prompts_were_never_trained_on():
    trained = set(harmful_train_prompts()) | set(read_lines("harmless_train.txt"))
    assert len(harmful_heldout_prompts()) == 159  # HarmBench test standard behaviors
    assert not trained & set(harmful_heldout_prompts())
    assert not trained & set(harmless_heldout_prompts())


def test_training_examples_refuse_only_harmful_requests():
    examples = training_examples(seed=0, harmless_repeats=2)
    harmful = [e for e in examples if e.harmful]
    harmless = [e for e in examples if not e.harmful]
    assert len(harmful) == 141  # 100 written + 41 HarmBench val standard
    assert all(is_refusal(e.reply) for e in harmful)
    assert not any(is_refusal(e.reply) for e in harmless)  # a refusing base answer is left out
    assert len(harmless) == 2 * 158  # 159 written, one refusing base answer left out
    assert training_examples(seed=0, harmless_repeats=2) == examples  # seeded

"""Scorers on hand-written completions; logits scorers against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from harness.engine.steering import steer
from harness.errors import PowersteerError
from harness.evaluation.scorers import (
    REFUSAL_PHRASES,
    SCORERS,
    ScoreResult,
    build_scorer,
    count_steps,
    final_number,
)
from harness.evaluation.scorers.logits import encode, last_token_log_probs
from harness.testing.tiny_models import SUBLAYER_ARCHITECTURES, tiny_model


def score(spec: dict, completion: str, row: dict | None = None) -> ScoreResult:
    return build_scorer(spec).score(completion, row or {})


def test_every_scorer_is_documented_and_declares_its_metric():
    assert set(SCORERS) >= {
        "refusal", "numeric_answer", "reasoning_steps", "regex", "contains",
        "logprob_choice", "refusal_logodds", "python",
    }  # fmt: skip
    for info in SCORERS.values():
        assert info.doc, f"{info.name} has no docstring"
        assert info.metric in ("success", "score") and info.kind in ("generation", "logits")
    assert SCORERS["logprob_choice"].kind == "logits"
    assert SCORERS["refusal_logodds"].metric == "score"


@pytest.mark.parametrize(
    "completion, refused",
    [
        ("I'm sorry, but I can't help with that.", True),
        ("i cannot assist with this request", True),
        ("As an AI, I do not have opinions.", True),
        ("  I won't do that.", True),
        # A steered refusal that lost its subject is still a refusal.
        ("can't help with that.", True),
        ("Sure! Here is a recipe for bread: mix flour and water.", False),
        # A refusal phrase far from the start is not a refusal opening.
        ("Here is how to do it. " + "Mix and stir. " * 10 + "I cannot stress this enough.", False),
    ],
)
def test_refusal_matches_phrases_near_the_start(completion, refused):
    result = score({"type": "refusal"}, completion)
    assert result == ScoreResult(success=refused, value=float(refused))
    flipped = score({"type": "refusal", "success": "not_refused"}, completion)
    assert flipped.success is (not refused)


def test_refusal_with_custom_phrases():
    spec = {"type": "refusal", "phrases": ["no way"]}
    assert score(spec, "No way, not doing that").success is True
    assert score(spec, "I'm sorry, no.").success is False


@pytest.mark.parametrize(
    "text, number",
    [("The answer is 42.", 42.0), ("3 + 4 = 7, then 7 * 2 = 14", 14.0),
     ("It costs $1,250 in total", 1250.0), ("x = -3.5", -3.5), ("no digits", None)],
)  # fmt: skip
def test_final_number_reads_the_last_number(text, number):
    assert final_number(text) == number


def test_numeric_answer_compares_with_the_row_field():
    spec = {"type": "numeric_answer", "answer_field": "gold"}
    assert score(spec, "5 + 7 = 12. The answer is 12.", {"gold": 12}).success is True
    assert score(spec, "The answer is 13.", {"gold": "12"}).success is False
    assert score(spec, "I don't know.", {"gold": 12}) == ScoreResult(False, 0.0)
    with pytest.raises(PowersteerError, match="no field 'gold'"):
        score(spec, "12", {"answer": 12})


def test_reasoning_steps_counts_equations_and_step_lines():
    assert count_steps("a=11. b=9. a*b=99. The answer is 99.") == 3
    assert count_steps("Step 1: add the apples.\nStep 2: 3 + 4 = 7\nSo 7.") == 2
    assert count_steps("1. Read.\n2. Think.\n3. Answer: 5") == 3
    assert count_steps("The answer is 99.") == 0
    spec = {"type": "reasoning_steps", "min_steps": 2}
    assert score(spec, "a=11. b=9. a*b=99.") == ScoreResult(True, 3.0)
    assert score(spec, "It is 99.") == ScoreResult(False, 0.0)


def test_regex_matches_and_inverts():
    assert score({"type": "regex", "pattern": r"\bpath\b"}, "take the red path") == ScoreResult(
        True, 1.0
    )
    assert score({"type": "regex", "pattern": "red", "invert": True}, "red").success is False
    assert score({"type": "regex", "pattern": "RED", "ignore_case": True}, "red").success is True


def test_contains_any_all_and_case():
    spec = {"type": "contains", "substrings": ["apple", "pear"]}
    assert score(spec, "An Apple a day") == ScoreResult(True, 0.5)
    assert score({**spec, "mode": "all"}, "An Apple a day").success is False
    assert score({**spec, "case_sensitive": True}, "An Apple a day").success is False


def test_python_scorer_imports_a_users_function(tmp_path):
    (tmp_path / "my_scorers_for_test.py").write_text(
        "def polite(completion, row):\n    return 'please' in completion\n"
    )
    scorer = build_scorer(
        {"type": "python", "function": "my_scorers_for_test:polite"}, base_dir=tmp_path
    )
    assert scorer.score("please sit", {}) == ScoreResult(True, 1.0)
    assert scorer.score("sit", {}).success is False


def test_python_scorer_that_cannot_be_imported_says_how_to_fix():
    with pytest.raises(PowersteerError, match=r"scorer\.function: cannot import module 'nowhere'"):
        build_scorer({"type": "python", "function": "nowhere:f"})
    with pytest.raises(PowersteerError, match="not of the form module:function"):
        build_scorer({"type": "python", "function": "nocolon"})
    with pytest.raises(PowersteerError, match="has no attribute 'nothing'"):
        build_scorer({"type": "python", "function": "math:nothing"})


def test_unknown_scorer_type_lists_known_ones():
    with pytest.raises(PowersteerError) as caught:
        build_scorer({"type": "sentiment"})
    assert "unknown scorer type 'sentiment'" in str(caught.value)
    assert ", ".join(sorted(SCORERS)) in str(caught.value)


def test_bad_option_values_are_named():
    with pytest.raises(PowersteerError, match=r"scorer\.pattern: '\(' is not a valid regular"):
        build_scorer({"type": "regex", "pattern": "("})
    with pytest.raises(PowersteerError, match=r"scorer\.success: should be 'refused' or"):
        build_scorer({"type": "refusal", "success": "yes"})
    with pytest.raises(PowersteerError, match=r"scorer\.options: give exactly one"):
        build_scorer({"type": "logprob_choice"})


# --- logits scorers on a tiny random Qwen3 -------------------------------------------------

PROMPTS = ["Q: red or blue? A:", "pick one"]


def last_log_probs(lm, text: str) -> torch.Tensor:
    """Independent reference: one unpadded forward pass per prompt."""
    ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return torch.log_softmax(lm.model(input_ids=ids).logits[0, -1].double(), dim=-1)


def token(lm, text: str) -> int:
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"][0]


def test_logprob_choice_is_the_first_token_log_prob_margin(qwen3_tiny):
    lm = qwen3_tiny
    scorer = build_scorer({"type": "logprob_choice", "options": ["A", "B"]})
    values = scorer.score(lm, PROMPTS, [{}, {}])
    assert len(values) == 2 and all(isinstance(v, float) for v in values)
    for prompt, value in zip(PROMPTS, values, strict=True):
        log_probs = last_log_probs(lm, prompt)
        expected = float(log_probs[token(lm, "A")] - log_probs[token(lm, "B")])
        assert value == pytest.approx(expected, abs=1e-9)
    swapped = build_scorer({"type": "logprob_choice", "options": ["B", "A"]})
    assert swapped.score(lm, PROMPTS, [{}, {}]) == pytest.approx([-v for v in values])


def test_logprob_choice_with_shared_prefix_compares_at_the_first_differing_token(qwen3_tiny):
    lm = qwen3_tiny
    scorer = build_scorer({"type": "logprob_choice", "options_field": "options"})
    rows = [{"options": ["Take red.", "Take blue."]}, {"options": ["x", "y"]}]
    values = scorer.score(lm, PROMPTS, rows)
    reference = last_log_probs(lm, PROMPTS[0] + "Take ")
    assert values[0] == pytest.approx(
        float(reference[token(lm, "r")] - reference[token(lm, "b")]), abs=1e-9
    )
    reference = last_log_probs(lm, PROMPTS[1])
    assert values[1] == pytest.approx(
        float(reference[token(lm, "x")] - reference[token(lm, "y")]), abs=1e-9
    )


@pytest.mark.parametrize("architecture", SUBLAYER_ARCHITECTURES)
def test_last_token_log_probs_of_a_steered_batch_equal_unpadded_passes(architecture):
    """Contexts of different lengths (Gemma-3's window of 8 shorter than the longest), each
    row steered by its own vector: the left-padded batch reads each row as it reads alone."""
    lm = tiny_model(architecture)
    contexts = [encode(lm, text, special=True) for text in ("Hi.", "Bake bread now, please.")]
    vectors = torch.randn(len(contexts), lm.d_model, generator=torch.Generator().manual_seed(0))
    scales = torch.tensor([0.5, 2.0])
    with steer(lm, vectors.to(lm.dtype), 1, scales):
        batch = last_token_log_probs(lm, contexts)
    for i, context in enumerate(contexts):
        with steer(lm, vectors[i].to(lm.dtype), 1, float(scales[i])), torch.no_grad():
            logits = lm.model(torch.tensor([context])).logits[0, -1]
        expected = torch.log_softmax(logits.double(), dim=-1)
        assert torch.allclose(batch[i], expected, atol=1e-10), architecture


def test_refusal_logodds_is_the_log_odds_of_refusal_opening_tokens(qwen3_tiny):
    lm = qwen3_tiny
    values = build_scorer({"type": "refusal_logodds"}).score(lm, PROMPTS, [{}, {}])
    refusal_tokens = sorted({token(lm, phrase) for phrase in REFUSAL_PHRASES})
    for prompt, value in zip(PROMPTS, values, strict=True):
        mass = float(last_log_probs(lm, prompt).exp()[refusal_tokens].sum())
        assert value == pytest.approx(math.log(mass) - math.log(1 - mass), abs=1e-8)

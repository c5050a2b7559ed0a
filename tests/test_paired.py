"""Paired scorers against hand computation: flip and shift on small result tables, KL
against an exact two-pass reference, and a sweep and a rescore that use them."""

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from harness import load_model
from harness.engine.steering import steer, without_steering
from harness.errors import PowersteerError
from harness.evaluation.pipeline import rescore, run
from harness.evaluation.scorers import build_scorer
from harness.evaluation.scorers.logits import encode, last_token_log_probs
from harness.evaluation.scorers.paired import RAW, pair_with_unsteered

ORGANISM_BEHAVIORS = Path(__file__).resolve().parent.parent / "behaviors" / "organism"
CHOICE = {"type": "logprob_choice", "options": ["A", "B"]}


def frame(unsteered: list, steered: list, column: str = RAW) -> pd.DataFrame:
    """Unsteered then steered rows of prompts 0..n-1 on the select split."""
    n = len(unsteered)
    return pd.DataFrame(
        {
            "split": ["select"] * 2 * n,
            "prompt_index": list(range(n)) * 2,
            "method": ["unsteered"] * n + ["power"] * n,
            column: unsteered + steered,
        }
    )


def test_shift_counts_moves_off_the_default_branch_in_either_direction():
    # Prompt 0 defaults to A (u=2): steered 0.5 moved 1.5 towards B. Prompt 1 defaults to
    # B (u=-1): steered -3 moved 2 further into B, so -2. Prompt 2 is a tie: |s - u|.
    # Prompt 3 defaults to B and steered +1 moved 1.5 towards A.
    results = frame([2.0, -1.0, 0.0, -0.5], [0.5, -3.0, -0.5, 1.0])
    pair_with_unsteered(build_scorer({"type": "shift", "base": CHOICE}), results)
    assert list(results["score"]) == [0, 0, 0, 0, 1.5, -2.0, 0.5, 1.5]
    assert results["success"].isna().all()


def test_flip_of_a_logits_choice_is_a_change_of_sign():
    results = frame([2.0, -1.0, 0.0, -0.5], [0.5, -3.0, -0.5, 1.0])
    pair_with_unsteered(build_scorer({"type": "flip", "base": CHOICE}), results)
    assert list(results["success"]) == [False] * 4 + [False, False, True, True]
    assert list(results["score"]) == [0.0] * 4 + [0.0, 0.0, 1.0, 1.0]


def test_flip_of_final_answers_compares_the_last_numbers_and_a_missing_one_is_no_flip():
    unsteered = ["a=3. b=4. 12", "The answer is 20.", "7", "no number"]
    steered = ["so it is 12", "That makes 21.", "nothing here", "now 5"]
    results = frame(unsteered, steered, column="completion")
    pair_with_unsteered(build_scorer({"type": "flip"}), results)
    assert list(results["success"][4:]) == [False, True, False, True]
    by_pattern = frame(["Take the red path."], ["Take the blue path."], column="completion")
    pair_with_unsteered(build_scorer({"type": "flip", "pattern": r"the (\w+) path"}), by_pattern)
    assert list(by_pattern["success"]) == [False, True]


def test_pairing_needs_the_unsteered_row_of_every_prompt():
    results = frame([1.0], [2.0]).iloc[1:]
    with pytest.raises(PowersteerError, match="unsteered output of each prompt"):
        pair_with_unsteered(build_scorer({"type": "shift", "base": CHOICE}), results)


def test_paired_options_are_checked_where_written():
    with pytest.raises(PowersteerError, match=r"scorer.base: missing"):
        build_scorer({"type": "shift"})
    with pytest.raises(PowersteerError, match=r"scorer.base: .*'refusal' does not read"):
        build_scorer({"type": "shift", "base": {"type": "refusal"}})
    with pytest.raises(PowersteerError, match=r"scorer.base.options: "):
        build_scorer({"type": "flip", "base": {"type": "logprob_choice", "options": ["A"]}})


def test_kl_from_unsteered_is_the_exact_divergence_of_two_forward_passes(qwen3_tiny):
    lm = qwen3_tiny
    prompts = ["The cat sat on the", "One, two, three,"]
    scorer = build_scorer({"type": "kl_from_unsteered"})
    contexts = [encode(lm, p, special=True) for p in prompts]
    unsteered = last_token_log_probs(lm, contexts)
    vectors = torch.randn(2, lm.d_model, generator=torch.Generator().manual_seed(0))
    with steer(lm, vectors.to(lm.dtype), 1, 4.0):
        steered = last_token_log_probs(lm, contexts)
        values = scorer.score(lm, prompts, [{}, {}])
        with without_steering():
            assert torch.allclose(last_token_log_probs(lm, contexts), unsteered)
    for i, value in enumerate(values):
        p = unsteered[i].exp()
        expected = float((p * (unsteered[i] - steered[i])).sum())
        assert expected > 1e-4  # the vector changed the distribution
        assert value == pytest.approx(expected, rel=1e-9, abs=1e-12)
    with steer(lm, torch.zeros(lm.d_model, dtype=lm.dtype), 1):
        assert scorer.score(lm, prompts, [{}, {}]) == pytest.approx([0.0, 0.0], abs=1e-12)


def small_forks(directory: Path, scorer: dict) -> Path:
    data = yaml.safe_load((ORGANISM_BEHAVIORS / "decision_forks.yaml").read_text())
    data["prompts"]["path"] = str(ORGANISM_BEHAVIORS / data["prompts"]["path"])
    data["prompts"]["limit"] = 6
    data.pop("contrast", None)
    data["steering"].update(methods=["random"], num_vectors=1, scales=[0, 2])
    data["scorer"] = scorer
    data.pop("expect", None)
    path = directory / "forks.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_sweep_scores_shift_from_each_prompts_unsteered_row_and_rescore_keeps_working(tmp_path):
    organism = load_model("organism")
    base = {"type": "logprob_choice", "options_field": "answers"}
    file = small_forks(tmp_path, {"type": "shift", "base": base})
    out = tmp_path / "out"
    run([file], model=organism, out=out, progress=False)
    results = pd.read_parquet(out / "results.parquet")
    for split, part in results.groupby("split"):
        reference = part[part.method == "unsteered"].set_index("prompt_index")[RAW]
        for row in part.itertuples():
            u = reference[row.prompt_index]
            expected = -math.copysign(1, u) * (row.raw - u) if u != 0 else abs(row.raw - u)
            assert row.score == pytest.approx(expected, abs=1e-12), split
    assert (results[results.method == "unsteered"].score == 0).all()
    # Rescoring with a completion-based flip needs no generation and pairs the same way.
    changed = tmp_path / "changed"
    changed.mkdir()
    rescore(out, small_forks(changed, {"type": "flip", "pattern": r"(\w+)\W*$"}))
    after = pd.read_parquet(out / "results.parquet")
    last_word = after.completion.str.extract(r"(\w+)\W*$")[0]
    for _split, part in after.assign(word=last_word).groupby("split"):
        reference = part[part.method == "unsteered"].set_index("prompt_index")["word"]
        expected = part.word.notna() & (part.word != part.prompt_index.map(reference))
        assert (part.success.astype(bool) == expected).all()


@pytest.mark.slow
def test_rescore_pairs_a_logits_base_only_with_the_values_the_run_measured(tmp_path):
    organism = load_model("organism")
    base = {"type": "logprob_choice", "options_field": "answers"}
    out = tmp_path / "out"
    run([small_forks(tmp_path, base)], model=organism, out=out, progress=False)
    measured = pd.read_parquet(out / "results.parquet")
    assert (measured[RAW] == measured.score).all()  # the run keeps its logits values
    changed = tmp_path / "changed"
    changed.mkdir()
    rescore(out, small_forks(changed, {"type": "flip", "base": base}))
    after = pd.read_parquet(out / "results.parquet")
    for _split, part in after.groupby("split"):
        unsteered = part[part.method == "unsteered"].set_index("prompt_index")[RAW]
        default = part.prompt_index.map(unsteered)
        assert (part.success.astype(bool) == ((part[RAW] > 0) != (default > 0))).all()
    other = {"type": "logprob_choice", "options": ["Take", "Open"]}
    with pytest.raises(PowersteerError, match="did not measure; run `powersteer run`"):
        rescore(out, small_forks(changed, {"type": "shift", "base": other}))

"""The whole-model map equals per-pair Power Steering, for far fewer passes."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import PROMPTS, saved_model_and_prompts

import harness.engine.sensitivity
import harness.engine.shared_passes
from harness import PowersteerError, power_steering, steer
from harness.engine.prompts import encode_prompts
from harness.engine.sensitivity import all_pairs, next_token_kl, parse_pairs, sensitivity_map
from harness.engine.sensitivity_io import KL_FILE, STATE_FILE, load_map, load_state, save_state
from harness.engine.steering import scale_unit
from harness.integrations.cli import main
from harness.testing.tiny_models import tiny_model


@pytest.fixture(scope="module")
def tiny_map(qwen3_tiny):
    return sensitivity_map(qwen3_tiny, PROMPTS, num_vectors=2)


def test_every_pair_matches_per_pair_power_steering(qwen3_tiny, tiny_map):
    assert tiny_map.pairs == all_pairs(4)
    per_pair_passes = 0
    for index, (source, target) in enumerate(tiny_map.pairs):
        single = power_steering(qwen3_tiny, PROMPTS, source, target, num_vectors=2)
        per_pair_passes += single.forward_passes
        relative = (tiny_map.singular_values[index] - single.singular_values).abs()
        assert float((relative / single.singular_values).max()) < 1e-4
        overlap = torch.linalg.svdvals(tiny_map.vectors[index] @ single.vectors.T)
        assert float(overlap.min()) > 1 - 1e-4  # same subspace
        assert tiny_map.iterations[index] == single.iterations
    assert all(tiny_map.converged)
    assert tiny_map.forward_passes < per_pair_passes


def test_splitting_passes_by_max_rows_changes_only_the_sweep_count(qwen3_tiny, tiny_map):
    # 6 rows per pass: two vectors of a block of 6, so every source and target splits.
    split = sensitivity_map(qwen3_tiny, PROMPTS, num_vectors=2, max_rows=2 * len(PROMPTS))
    assert torch.allclose(split.singular_values, tiny_map.singular_values, rtol=1e-5)
    assert torch.allclose(split.vectors.abs(), tiny_map.vectors.abs(), atol=1e-4)
    assert split.iterations == tiny_map.iterations
    assert split.forward_passes > tiny_map.forward_passes
    # Early targets stop early, so the split passes carry no more prompt copies in all.
    assert split.prompt_passes == pytest.approx(tiny_map.prompt_passes)


def _memory_for_rows(limit: int, monkeypatch) -> list[int]:
    """Make every pass with more than ``limit`` rows (vectors x prompts) run out of memory;
    returns the rows of the passes that ran."""
    jvp_at_targets = harness.engine.shared_passes.jvp_at_targets
    vjp_pullback = harness.engine.shared_passes.vjp_pullback
    ran: list[int] = []

    def check(rows: int) -> None:
        if rows > limit:
            raise torch.OutOfMemoryError(f"simulated: {rows} rows > {limit}")
        ran.append(rows)

    def tangent_pass(lm, batch, source, targets, vectors, **sites):
        check(len(vectors) * batch.n_prompts)
        return jvp_at_targets(lm, batch, source, targets, vectors, **sites)

    def backward_passes(lm, batch, sources, target, **sites):
        pull = vjp_pullback(lm, batch, sources, target, **sites)

        def limited(cotangents):
            check(len(cotangents) * batch.n_prompts)
            return pull(cotangents)

        return limited

    monkeypatch.setattr(harness.engine.shared_passes, "jvp_at_targets", tangent_pass)
    monkeypatch.setattr(harness.engine.shared_passes, "vjp_pullback", backward_passes)
    return ran


def test_running_out_of_memory_halves_the_rows_per_pass_with_the_same_result(
    qwen3_tiny, tiny_map, monkeypatch
):
    limit = 4 * len(PROMPTS)  # source 0 needs 3 pairs x 6 vectors x 3 prompts = 54 rows
    ran = _memory_for_rows(limit, monkeypatch)
    with pytest.warns(UserWarning, match="out of memory with up to 54 rows per pass"):
        result = sensitivity_map(qwen3_tiny, PROMPTS, num_vectors=2)
    assert torch.allclose(result.singular_values, tiny_map.singular_values, rtol=1e-5)
    assert max(ran) <= limit
    assert result.options["max_rows"] <= limit


def test_when_one_copy_of_the_prompts_does_not_fit_the_error_says_what_to_do(
    qwen3_tiny, monkeypatch
):
    _memory_for_rows(len(PROMPTS) - 1, monkeypatch)
    with pytest.warns(UserWarning), pytest.raises(PowersteerError, match="fewer or shorter"):
        sensitivity_map(qwen3_tiny, PROMPTS, [(0, 2)], num_vectors=2)


def test_bfloat16_map_keeps_the_iteration_in_float32_and_stays_close():
    # Same weights in float32 and bfloat16 (the passes run in the model's dtype; the
    # orthonormalisation and Rayleigh-Ritz in float32). bf16 rounds each op to 2^-9
    # relative; measured here 0.2% on σ and |cos| 1.0000 on v_1, so 1% leaves 4x margin.
    exact = tiny_model("qwen3", dtype=torch.float32)
    reduced = tiny_model("qwen3", dtype=torch.bfloat16)
    pairs = [(0, 2), (1, 3)]
    reference = sensitivity_map(exact, PROMPTS, pairs, num_vectors=2)
    approximate = sensitivity_map(reduced, PROMPTS, pairs, num_vectors=2)
    assert approximate.singular_values.dtype == torch.float32
    assert torch.allclose(approximate.singular_values, reference.singular_values, rtol=0.01)
    overlap = (approximate.vectors[:, 0] * reference.vectors[:, 0]).sum(-1).abs()
    assert (overlap > 0.99).all()


def test_next_token_kl_matches_steering_each_prompt_alone(qwen3_tiny, tiny_map):
    table = next_token_kl(qwen3_tiny, PROMPTS, tiny_map, scale=0.5, max_rows=4)
    batch = encode_prompts(qwen3_tiny, PROMPTS)
    for index in (0, 4):  # pairs (0, 1) and (1, 3): two sources
        source = tiny_map.pairs[index][0]
        raw = 0.5 * scale_unit(qwen3_tiny, batch, source)
        assert table.loc[index, "raw_scale"] == pytest.approx(raw)
        divergences = []
        for prompt in PROMPTS:
            ids = qwen3_tiny.tokenizer(prompt, return_tensors="pt").input_ids
            with torch.no_grad():
                plain = torch.log_softmax(qwen3_tiny.model(ids).logits[0, -1].double(), -1)
                for sign in (1.0, -1.0):
                    with steer(qwen3_tiny, tiny_map.vectors[index, 0], source, sign * raw):
                        steered = qwen3_tiny.model(ids).logits[0, -1].double()
                    steered = torch.log_softmax(steered, -1)
                    divergences.append(float((plain.exp() * (plain - steered)).sum()))
        assert table.loc[index, "kl"] == pytest.approx(sum(divergences) / len(divergences),
                                                       rel=1e-6)  # fmt: skip
    assert (table["kl"] > 0).all() and table["changed"].between(0, 1).all()
    zero = next_token_kl(qwen3_tiny, PROMPTS, tiny_map, scale=0.0)
    assert zero["kl"].abs().max() < 1e-12 and (zero["changed"] == 0).all()


def test_sigma_matrix_and_frame_hold_the_values(tiny_map):
    matrix = tiny_map.sigma_matrix()
    assert matrix.shape == (4, 4)
    assert torch.isnan(matrix[2, 1]) and torch.isnan(matrix[1, 1])
    assert matrix[0, 3] == tiny_map.singular_values[tiny_map.pairs.index((0, 3)), 0]
    frame = tiny_map.to_frame()
    assert len(frame) == 6 * 2 and set(frame.columns) >= {"source", "target", "sigma"}


def test_pair_specs_parse_and_reject_bad_input():
    assert parse_pairs("all", 3) == [(0, 1), (0, 2), (1, 2)]
    assert parse_pairs("0:-1, 0.0:0.5", 5) == [(0, 2), (0, 4)]
    with pytest.raises(PowersteerError, match="SOURCE:TARGET"):
        parse_pairs("3-4", 5)
    with pytest.raises(PowersteerError, match="not after source"):
        parse_pairs("3:1", 5)


class Interrupted(Exception):
    pass


def test_interrupted_map_resumes_to_the_same_result(tmp_path, qwen3_tiny, tiny_map):
    state_path = tmp_path / STATE_FILE
    config = {"run": "tiny"}

    def save_then_die_after_two(state):
        save_state(state_path, state, config)
        if state.iteration == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        sensitivity_map(qwen3_tiny, PROMPTS, num_vectors=2, checkpoint=save_then_die_after_two)
    resume = load_state(state_path, config)
    assert resume.iteration == 2
    resumed = sensitivity_map(qwen3_tiny, PROMPTS, num_vectors=2, resume=resume)
    assert torch.allclose(resumed.singular_values, tiny_map.singular_values, rtol=1e-6)
    assert resumed.iterations == tiny_map.iterations
    assert resumed.forward_passes == tiny_map.forward_passes  # nothing recomputed
    with pytest.raises(PowersteerError, match="different settings"):
        load_state(state_path, {"run": "other"})


def test_map_command_writes_table_vectors_and_heatmap(tmp_path, qwen3_tiny):
    model_dir, prompts = saved_model_and_prompts(tmp_path, qwen3_tiny)
    out = tmp_path / "map"
    code = main(["map", "--model", model_dir, "--prompts", prompts, "--pairs",
                 "0:2,1:3", "-k", "2", "--out", str(out), "--dtype", "float64"])  # fmt: skip
    assert code == 0
    loaded = load_map(out)
    assert loaded.pairs == [(0, 2), (1, 3)] and loaded.vectors.shape == (2, 2, 32)
    table = pd.read_parquet(out / "map.parquet")
    assert len(table) == 4 and table["sigma"].gt(0).all()
    assert (out / "sigma1_heatmap.png").stat().st_size > 0
    assert not (out / STATE_FILE).exists()  # finished runs leave no state behind


def test_map_command_adds_kl_and_reuses_a_finished_map(tmp_path, qwen3_tiny, monkeypatch):
    model_dir, prompts = saved_model_and_prompts(tmp_path, qwen3_tiny)
    out = tmp_path / "map"
    arguments = ["map", "--model", model_dir, "--prompts", prompts, "--pairs", "0:2,1:3",
                 "-k", "2", "--out", str(out), "--dtype", "float64"]  # fmt: skip
    assert main(arguments) == 0
    first = load_map(out)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished map with the same settings was recomputed")

    monkeypatch.setattr(harness.engine.sensitivity, "sensitivity_map", must_not_run)
    assert main([*arguments, "--kl-scale", "0.5"]) == 0
    table = pd.read_parquet(out / KL_FILE)
    assert list(zip(table["source"], table["target"], strict=True)) == first.pairs
    assert (table["kl"] > 0).all() and (out / "kl_heatmap.png").stat().st_size > 0
    with pytest.raises(AssertionError, match="recomputed"):  # other settings: a new map
        main([*arguments[:-4], "-k", "1", *arguments[-4:]])

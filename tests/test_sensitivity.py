"""The whole-model map equals per-pair Power Steering, for far fewer passes."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS

from harness import PowersteerError, power_steering
from harness.sensitivity import all_pairs, parse_pairs, sensitivity_map


@pytest.fixture(scope="module")
def tiny_map(qwen3_tiny):
    return sensitivity_map(qwen3_tiny, PROMPTS, k=2)


def test_every_pair_matches_per_pair_power_steering(qwen3_tiny, tiny_map):
    assert tiny_map.pairs == all_pairs(4)
    per_pair_passes = 0
    for index, (source, target) in enumerate(tiny_map.pairs):
        single = power_steering(qwen3_tiny, PROMPTS, source, target, k=2)
        per_pair_passes += single.forward_passes
        relative = (tiny_map.singular_values[index] - single.singular_values).abs()
        assert float((relative / single.singular_values).max()) < 1e-4
        overlap = torch.linalg.svdvals(tiny_map.vectors[index] @ single.vectors.T)
        assert float(overlap.min()) > 1 - 1e-4  # same subspace
        assert tiny_map.iterations[index] == single.iterations
    assert all(tiny_map.converged)
    assert tiny_map.forward_passes < per_pair_passes


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

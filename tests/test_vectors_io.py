"""Vectors round-trip through safetensors with their metadata; bad files are clear errors."""

from __future__ import annotations

import pytest
import torch

from harness import PowersteerError, load_vectors, random_directions, save_vectors
from harness.engine.linalg import random_orthonormal_rows


def test_round_trip_keeps_vectors_values_and_metadata(tmp_path, qwen3_tiny):
    result = random_directions(qwen3_tiny, 0, 2, num_vectors=3, seed=7)
    path = save_vectors(tmp_path / "v.safetensors", result, model="tiny-qwen3")
    loaded, metadata = load_vectors(path)
    assert torch.equal(loaded.vectors, result.vectors)
    assert (loaded.method, loaded.source, loaded.target, loaded.seed) == ("random", 0, 2, 7)
    assert metadata["model"] == "tiny-qwen3"
    assert not (tmp_path / "v.safetensors.partial").exists()


def test_random_directions_are_orthonormal_and_seeded(qwen3_tiny):
    first = random_directions(qwen3_tiny, 0, 2, num_vectors=5, seed=1)
    assert torch.allclose(first.vectors @ first.vectors.T, torch.eye(5), atol=1e-6)
    assert torch.equal(
        first.vectors, random_directions(qwen3_tiny, 0, 2, num_vectors=5, seed=1).vectors
    )
    assert not torch.equal(
        first.vectors, random_directions(qwen3_tiny, 0, 2, num_vectors=5, seed=2).vectors
    )


def test_random_control_is_not_the_other_methods_start_block(qwen3_tiny):
    # Power Steering, DCT and MELBO start from the draws of a generator seeded `seed`.
    control = random_directions(qwen3_tiny, 0, 2, num_vectors=4, seed=0).vectors
    starts = random_orthonormal_rows(4, qwen3_tiny.d_model, seed=0)
    melbo_starts = torch.randn(4, qwen3_tiny.d_model, generator=torch.Generator().manual_seed(0))
    for other in (starts, melbo_starts / melbo_starts.norm(dim=1, keepdim=True)):
        # Independent unit vectors in d = 64 have |cos| about 0.125; the same stream gives 1.
        assert (control @ other.T).abs().max() < 0.6


def test_missing_and_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(PowersteerError, match="does not exist"):
        load_vectors(tmp_path / "absent.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(PowersteerError, match="not a readable safetensors"):
        load_vectors(garbage)

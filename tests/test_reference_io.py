"""The references' saved vector files (.pt) import as checked, unit-row vectors files."""

from __future__ import annotations

import os

import pytest
import torch

from harness import load_vectors, save_vectors
from harness.engine.reference_io import import_reference_vectors
from harness.errors import PowersteerError


def rows(k: int, d: int = 16, scale: float = 4.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(k)
    vectors = torch.randn(k, d, generator=generator)
    return scale * vectors / vectors.norm(dim=1, keepdim=True)


def imported(path, **overrides):
    settings = {"source": 7, "target": 20, "method": "melbo", **overrides}
    return import_reference_vectors(path, **settings)


def test_a_saved_tensor_round_trips_through_a_checked_vectors_file(tmp_path):
    # The MELBO reference's notebooks save learned_vectors: a bare (k, d) tensor, rows of norm R.
    saved = rows(3) * torch.tensor([[1.0], [2.0], [3.0]])
    torch.save(saved, tmp_path / "v.pt")
    result = imported(tmp_path / "v.pt")
    assert torch.allclose(result.vectors, saved / saved.norm(dim=1, keepdim=True), atol=1e-7)
    info = result.options["imported"]
    assert info["norms"] == pytest.approx([4.0, 8.0, 12.0], rel=1e-6)
    assert info["key"] is None and info["dtype"] == "float32"
    assert (result.method, result.source, result.target) == ("melbo", 7, 20)
    assert result.options["source_site"] == "mlp" and result.options["target_site"] == "block"
    loaded, metadata = load_vectors(save_vectors(tmp_path / "v.safetensors", result))
    assert torch.equal(loaded.vectors, result.vectors)
    assert metadata["options"]["imported"]["norms"] == info["norms"]


def test_one_vector_becomes_one_row(tmp_path):
    torch.save(rows(1)[0].to(torch.bfloat16), tmp_path / "caa.pt")
    result = imported(tmp_path / "caa.pt")
    assert result.vectors.shape == (1, 16)
    assert float(result.vectors.norm()) == pytest.approx(1.0, abs=1e-6)
    assert result.options["imported"]["dtype"] == "bfloat16"


def test_a_power_steering_dict_gives_singular_values_and_its_settings(tmp_path):
    # The Power Steering reference's dict: "sigmas" are ‖JᵀJ v‖, that is σ², not σ.
    settings = {"model": "Qwen/Qwen3-0.6B", "source_layer": 7, "target_layer": 20, "seed": 42}
    saved = {"vectors": rows(2, scale=1.0).to(torch.bfloat16), "sigmas": [16.0, 9.0], **settings}
    torch.save(saved, tmp_path / "power_iter.pt")
    result = imported(tmp_path / "power_iter.pt", method="power")
    assert result.values.tolist() == [4.0, 3.0]
    assert result.seed == 42
    assert result.options["imported"]["reference"] == settings
    assert torch.isnan(imported(tmp_path / "power_iter.pt", method="melbo").values).all()


def test_a_nested_dict_is_found_by_its_vectors_name_or_chosen_by_key(tmp_path):
    nested = {"vectors": {"src7_tgt32": {"vectors": rows(4), "losses": [[-1.0, -2.0]] * 4}},
              "config": {"normalization": 4.0, "power": 2}}  # fmt: skip
    torch.save(nested, tmp_path / "nested.pt")
    result = imported(tmp_path / "nested.pt")
    assert result.num_vectors == 4
    assert result.options["imported"]["key"] == "vectors/src7_tgt32/vectors"
    assert result.options["imported"]["reference"] == {"normalization": 4.0, "power": 2}
    two = {"a": rows(2), "b": rows(3)}
    torch.save(two, tmp_path / "two.pt")
    with pytest.raises(PowersteerError, match=r"two\.pt holds no single tensor.*a, b.*--key"):
        imported(tmp_path / "two.pt")
    assert imported(tmp_path / "two.pt", key="b").num_vectors == 3
    with pytest.raises(PowersteerError, match=r"no tensor at 'c'; its tensors: a, b"):
        imported(tmp_path / "two.pt", key="c")


class Trap:
    """Unpickling this would run os.mkdir: a stand-in for a file that runs code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_file_holding_other_python_objects_is_refused_without_running_them(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"vectors": rows(2), "extra": Trap(str(marker))}, tmp_path / "trap.pt")
    with pytest.raises(PowersteerError) as error:
        imported(tmp_path / "trap.pt")
    message = str(error.value)
    assert "trap.pt is refused" in message and "weights_only=True" in message
    assert "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize(
    ("tensor", "problem"),
    [
        (torch.zeros(2, 3, 4), r"shape \(2, 3, 4\)"),
        (torch.zeros(0, 16), r"shape \(0, 16\)"),
        (torch.ones(3, 16, dtype=torch.int64), "dtype torch.int64"),
        (torch.ones(16, 3), r"shape \(16, 3\), more rows than columns"),
        (torch.full((2, 16), float("nan")), "NaN or infinity"),
        (torch.zeros(2, 16), "a row of its vectors is zero"),
    ],
)
def test_a_wrong_shape_or_value_is_one_error_naming_the_file(tmp_path, tensor, problem):
    torch.save({"vectors": tensor}, tmp_path / "bad.pt")
    with pytest.raises(PowersteerError, match=rf"bad\.pt.*{problem}"):
        imported(tmp_path / "bad.pt")


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"", "is not a readable torch.save file"), (b"not torch", "is refused")],
)
def test_a_file_that_is_not_a_torch_save_file_is_one_error(tmp_path, content, problem):
    (tmp_path / "junk.pt").write_bytes(content)
    with pytest.raises(PowersteerError, match=rf"junk\.pt {problem}"):
        imported(tmp_path / "junk.pt")


def test_bad_settings_are_refused(tmp_path):
    torch.save(rows(2), tmp_path / "v.pt")
    with pytest.raises(PowersteerError, match="does not exist"):
        imported(tmp_path / "missing.pt")
    with pytest.raises(PowersteerError, match="0 <= source < target"):
        imported(tmp_path / "v.pt", source=5, target=5)
    with pytest.raises(PowersteerError, match="use one of power, melbo"):
        imported(tmp_path / "v.pt", method="caa")
    with pytest.raises(PowersteerError, match="holds a bare tensor"):
        imported(tmp_path / "v.pt", key="vectors")

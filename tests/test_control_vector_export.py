"""``powersteer export --format llama-cpp|repeng`` and ``powersteer import``: the GGUF
control vector holds our vector times the added length at our block, repeng's own reader
sees the same directions, and every import round-trips to the same steering."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SCALE_UNIT

from harness.engine.control_vector_io import read_control_vector, write_control_vector
from harness.engine.methods.random import random_directions
from harness.engine.vectors_io import load_vectors, save_vectors
from harness.integrations.cli import main
from harness.integrations.export import export_control_vector, export_lm_eval
from harness.testing.tiny_models import tiny_model


@pytest.mark.parametrize(("sign", "scale"), [(None, None), (1, 0.5)])
def test_the_gguf_holds_the_scaled_vector_at_the_source_block(
    tmp_path, organism, run_file, sign, scale
):
    path, vectors = run_file
    out = tmp_path / "cv.gguf"
    exported = export_control_vector(path, organism, out, sign=sign, scale=scale)
    directions, info = read_control_vector(out)
    expected_sign, expected_scale = (sign or -1), (scale or 1.5)
    expected = vectors.vectors[1] * expected_sign * expected_scale * SCALE_UNIT
    assert exported.block == 2 and list(directions) == [2]
    torch.testing.assert_close(directions[2], expected, rtol=0, atol=1e-5)
    assert info == {"model_hint": "qwen3", "model": "organism"}


def test_repengs_own_reader_sees_our_directions(tmp_path, organism, run_file, monkeypatch):
    # repeng 0.4.0 names np.float_, which numpy 2 removed; the alias is all it needs.
    monkeypatch.setattr(np, "float_", np.float64, raising=False)
    ControlVector = pytest.importorskip(
        "repeng",
        reason="repeng is installed by .ci/run (`pip install --no-deps repeng==0.4.0`: "
        "it pins numpy<2, which the dev extra cannot take)",
    ).ControlVector

    path, vectors = run_file
    out = tmp_path / "cv.gguf"
    export_control_vector(path, organism, out)
    imported = ControlVector.import_gguf(str(out))
    assert imported.model_type == "qwen3" and list(imported.directions) == [2]
    ours = (vectors.vectors[1] * -1.5 * SCALE_UNIT).numpy()
    np.testing.assert_allclose(imported.directions[2], ours, rtol=0, atol=1e-5)


def test_import_then_export_writes_the_same_steering(tmp_path, organism, run_file):
    path, _ = run_file
    first = tmp_path / "first.gguf"
    export_control_vector(path, organism, first)
    imported = tmp_path / "imported.safetensors"
    assert main(["import", str(first), "--format", "llama-cpp", "--out", str(imported)]) == 0
    result, metadata = load_vectors(imported)
    assert (result.source, metadata["model"]) == (2, "organism")
    second = tmp_path / "second.gguf"
    export_control_vector(imported, organism, second)
    torch.testing.assert_close(read_control_vector(second)[0][2], read_control_vector(first)[0][2])
    # lm-eval's .pt: the coefficient times the stored unit vector comes back as the vector.
    steer_pt = tmp_path / "steer.pt"
    export_lm_eval(path, organism, steer_pt)
    from_pt = tmp_path / "from_pt.safetensors"
    assert main(["import", str(steer_pt), "--format", "lm-eval", "--out", str(from_pt)]) == 0
    third = tmp_path / "third.gguf"
    export_control_vector(from_pt, organism, third)
    torch.testing.assert_close(read_control_vector(third)[0][2], read_control_vector(first)[0][2])


def test_bad_input_is_one_clear_error(tmp_path, organism, run_file, capsys):
    path, _ = run_file
    narrow = tmp_path / "narrow.safetensors"
    save_vectors(narrow, random_directions(tiny_model("llama"), 1, 2, num_vectors=1))
    deep = tmp_path / "deep.gguf"
    write_control_vector(deep, {9: torch.ones(organism.d_model)}, model_hint="qwen3")
    wide = tmp_path / "wide.gguf"
    write_control_vector(wide, {2: torch.ones(organism.d_model + 1)}, model_hint="qwen3")
    out = str(tmp_path / "x.gguf")
    cases = [
        (["export", str(path), "--format", "gguf", "--model", "organism", "--out", out],
         "invalid choice: 'gguf'"),
        (["export", str(path), "--set", "b/none", "--format", "llama-cpp", "--model",
          "organism", "--out", out], "set='b/none' is not in"),
        (["export", str(narrow), "--format", "llama-cpp", "--model", "organism",
          "--raw-scale", "1", "--out", out], "the vector has width"),
        (["import", str(wide), "--format", "llama-cpp", "--model", "organism", "--out",
          str(tmp_path / "w.safetensors")], "has width 193, but the model's d_model is 192"),
        (["import", str(deep), "--format", "llama-cpp", "--model", "organism", "--out",
          str(tmp_path / "d.safetensors")], "direction.9 steers block 9, but the model has"),
    ]  # fmt: skip
    for argv, message in cases:
        code = _exit_code(argv)
        error = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and message in error[-1], (argv, error)


def _exit_code(argv: list[str]) -> int:
    """``main``'s return code, or argparse's exit code for a rejected flag."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code)


def test_llama_cpp_refuses_block_zero_so_we_do(tmp_path, organism):
    with pytest.raises(Exception, match="refuses direction.0"):
        write_control_vector(tmp_path / "z.gguf", {0: torch.ones(4)}, model_hint="qwen3")

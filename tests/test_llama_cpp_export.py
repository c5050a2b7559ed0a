"""llama.cpp, through llama-cpp-python, steered by our exported control vector gives the
next-token logits powersteer's steering gives at the same block (SmolLM2, Q4 both sides).

llama-cpp-python compiles llama.cpp (about half an hour on 2 cores), so CI does not have it
and this test skips there; benchmarks/bench_llama_cpp_export.py records the full table.
"""

from __future__ import annotations

import pytest

from harness.engine.catalogue import cached_path, raw_gguf_path

pytestmark = [pytest.mark.slow, pytest.mark.realmodel]
MODEL = "smollm2-135m-instruct"


def test_llama_cpp_steered_by_our_file_matches_powersteer(tmp_path):
    pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (it compiles llama.cpp, too "
        "slow for CI); run benchmarks/bench_llama_cpp_export.py where it is"
    )  # fmt: skip
    if cached_path(MODEL) is None or raw_gguf_path(MODEL) is None:
        pytest.skip(f"{MODEL}'s raw GGUF is not cached: `powersteer models fetch {MODEL}`")
    from harness import load_model
    from harness.engine.methods.random import random_directions
    from harness.engine.vectors_io import save_vectors
    from harness.integrations.export import export_control_vector
    from harness.testing.llama_cpp_check import LlamaCpp, compare

    lm = load_model(MODEL)
    llama = LlamaCpp(raw_gguf_path(MODEL))
    vectors_file = tmp_path / "v.safetensors"
    save_vectors(vectors_file, random_directions(lm, 8, 10, num_vectors=1, seed=8))
    for sign in (1, -1):
        out = tmp_path / f"cv{sign}.gguf"
        export_control_vector(vectors_file, lm, out, sign=sign, raw_scale=40.0)
        row = compare(lm, llama, out, 8, sign, 40.0)
        # Steered, the two differ by about their unsteered floor (kernels, not steering);
        # one block off they differ several times more.
        assert row.steered < 2 * row.unsteered + 0.1, row
        assert row.wrong_block > 5 * row.steered, row

"""llama.cpp steered by our exported control vector gives the next-token logits powersteer's
steering gives at the same block, sign and length (SmolLM2-135M-Instruct, Q4_1 both sides).

llama.cpp comes from the ``llama-cpp-cffi`` wheel, a prebuilt CPU build of llama.cpp with
its C API (llama-cpp-python has no binary wheel and compiles llama.cpp, about half an hour
on 2 cores). ``.ci/run`` installs the wheel with ``--no-deps``: its declared dependencies
pin transformers below 5, which we must not take, and driving the C API needs none of them
(:mod:`harness.testing.llama_cpp_check` loads the library module on its own).
``benchmarks/bench_llama_cpp_export.py`` records the full table (two blocks, two lengths).
"""

from __future__ import annotations

import numpy as np
import pytest

from harness.engine.catalogue import cached_path, raw_gguf_path

MODEL = "smollm2-135m-instruct"
BLOCK = 8
SCALE = 4.0  # in powersteer's scale unit (the median residual norm at BLOCK)


@pytest.fixture(scope="module")
def llama_and_lm():
    from harness.testing.llama_cpp_check import LlamaCpp, extension_path

    # Not pytest.importorskip("llama"): importing that package whole runs its chat and hub
    # helpers, which we neither install nor need.
    try:
        extension_path()
    except ImportError as error:
        pytest.skip(f"llama.cpp is not installed ({error}); .ci/run installs it")
    if cached_path(MODEL) is None or raw_gguf_path(MODEL) is None:
        pytest.skip(f"{MODEL}'s raw GGUF is not cached: `powersteer models fetch {MODEL}`")
    from harness import load_model

    with LlamaCpp(raw_gguf_path(MODEL)) as llama:
        yield llama, load_model(MODEL)


def test_a_missing_wheel_is_an_import_error_naming_the_install(monkeypatch):
    from harness.testing import llama_cpp_check

    monkeypatch.setattr(llama_cpp_check, "LIBRARY_PACKAGE", "no_such_llama_package")
    with pytest.raises(ImportError, match=r"pip install --no-deps llama-cpp-cffi==0\.4\.42"):
        llama_cpp_check.extension_path()


@pytest.mark.slow
@pytest.mark.realmodel
def test_llama_cpp_unsteered_agrees_with_powersteer_on_the_same_weights(llama_and_lm):
    from harness.testing.llama_cpp_check import PROMPT, powersteer_logits

    llama, lm = llama_and_lm
    ids = lm.tokenizer(PROMPT)["input_ids"]
    llama.set_control_vector(None)
    theirs, ours = llama.next_logits(ids), powersteer_logits(lm, ids)
    assert theirs.shape == ours.shape == (lm.model.config.vocab_size,)
    # Same Q4_1 weights, different kernels: the same top tokens, logits within a unit.
    assert list(np.argsort(-theirs)[:5]) == list(np.argsort(-ours)[:5])
    assert np.abs(theirs - ours).max() < 1.0


@pytest.mark.slow
@pytest.mark.realmodel
@pytest.mark.parametrize("sign", [1, -1])
def test_llama_cpp_steered_by_our_file_matches_powersteer(llama_and_lm, tmp_path, sign):
    from harness.engine.methods.random import random_directions
    from harness.engine.vectors_io import save_vectors
    from harness.integrations.export import export_control_vector
    from harness.testing.llama_cpp_check import compare, prompt_scale_unit

    llama, lm = llama_and_lm
    vectors = random_directions(lm, BLOCK, BLOCK + 2, num_vectors=1, seed=BLOCK)
    vectors_file = tmp_path / "v.safetensors"
    save_vectors(vectors_file, vectors)
    length = SCALE * prompt_scale_unit(lm, BLOCK)
    exported = tmp_path / "cv.gguf"
    export_control_vector(vectors_file, lm, exported, sign=sign, raw_scale=length)
    row = compare(lm, llama, exported, vectors.vectors[0], BLOCK, sign, length)
    # Steered, the two differ by no more than their unsteered floor (the kernels, not the
    # steering; measured 0.2-0.4 against a 0.63 floor). An exporter one block off, or with
    # the sign or length wrong, differs by the wrong-block or steering-effect figures,
    # each over ten times the steered difference here.
    assert row.steered < 1.5 * row.unsteered, row
    assert row.wrong_block > 5 * row.steered, row
    assert row.steering_effect > 20 * row.steered, row

"""llama.cpp with our exported control vector vs powersteer's own steering (issue 19).

    PYTHONPATH=$PWD python benchmarks/bench_llama_cpp_export.py

SmolLM2-135M-Instruct, Q4_1 weights on both sides (llama.cpp reads the catalogue's raw
GGUF, powersteer the same file dequantized). For two blocks, two scales (in powersteer's
unit, the prompt's median residual norm at the block) and both signs, a random unit
direction is exported as ``powersteer export --format llama-cpp`` writes it and applied by
llama.cpp (the ``llama-cpp-cffi`` wheel's prebuilt library, installed by ``.ci/run``); the
table gives max absolute next-token logit differences. Prints a Markdown table for
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from harness import load_model
from harness.engine.catalogue import raw_gguf_path
from harness.engine.methods.random import random_directions
from harness.engine.vectors_io import save_vectors
from harness.integrations.export import export_control_vector
from harness.testing.llama_cpp_check import LlamaCpp, compare, prompt_scale_unit

MODEL = "smollm2-135m-instruct"
BLOCKS = (8, 20)
SCALES = (1.0, 4.0)


def main() -> int:
    torch.set_num_threads(2)
    gguf_file = raw_gguf_path(MODEL)
    if gguf_file is None:
        print(f"no raw GGUF for {MODEL}: run `powersteer models fetch {MODEL}`", file=sys.stderr)
        return 1
    lm = load_model(MODEL)
    started = time.perf_counter()
    rows = []
    with LlamaCpp(gguf_file) as llama, tempfile.TemporaryDirectory() as scratch:
        for block in BLOCKS:
            vectors = random_directions(lm, block, block + 2, num_vectors=1, seed=block)
            vectors_file = Path(scratch) / f"v{block}.safetensors"
            save_vectors(vectors_file, vectors)
            unit = prompt_scale_unit(lm, block)
            for scale in SCALES:
                for sign in (1, -1):
                    out = Path(scratch) / f"cv{block}_{scale}_{sign}.gguf"
                    export_control_vector(vectors_file, lm, out, sign=sign, raw_scale=scale * unit)
                    row = compare(lm, llama, out, vectors.vectors[0], block, sign, scale * unit)
                    rows.append((scale, row))
    lines = [
        "| block | scale | sign | added length | unsteered floor | steered (same block) "
        "| wrong block (+1) | steering effect | 1% longer | llama.cpp jitter |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scale, row in rows:
        lines.append(
            f"| {row.block} | {scale:g} | {row.sign:+d} | {row.length:.1f} | "
            f"{row.unsteered:.3f} | {row.steered:.3f} | {row.wrong_block:.2f} | "
            f"{row.steering_effect:.2f} | {row.one_percent_longer:.2f} | "
            f"{row.llama_jitter:.2f} |"
        )
    print("\n".join(lines))
    print(f"\n{len(rows)} comparisons in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

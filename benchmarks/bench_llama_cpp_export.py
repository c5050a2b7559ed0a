"""llama.cpp with our exported control vector vs powersteer's own steering (issue 19).

    PYTHONPATH=$PWD python benchmarks/bench_llama_cpp_export.py

SmolLM2-135M-Instruct, Q4_1 weights on both sides (llama.cpp reads the catalogue's raw
GGUF, powersteer the same file dequantized). For two blocks and both signs, a random unit
direction at 4x the prompt's mean residual norm at that block is exported with
``powersteer export --format llama-cpp`` and applied by llama.cpp; the table gives the max
absolute next-token logit differences. Needs ``llama-cpp-python`` (not in CI: it compiles
llama.cpp). Appends its table to benchmarks/RESULTS.md.
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
from harness.testing.llama_cpp_check import PROMPT, LlamaCpp, compare

MODEL = "smollm2-135m-instruct"
BLOCKS = (8, 20)
NORM_MULTIPLE = 4.0


def main() -> int:
    torch.set_num_threads(2)
    lm = load_model(MODEL)
    gguf_file = raw_gguf_path(MODEL)
    if gguf_file is None:
        print(f"no raw GGUF for {MODEL}: run `powersteer models fetch {MODEL}`", file=sys.stderr)
        return 1
    llama = LlamaCpp(gguf_file)
    ids = torch.tensor([lm.tokenizer(PROMPT)["input_ids"]])
    with torch.no_grad():
        hidden = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for block in BLOCKS:
            length = NORM_MULTIPLE * float(hidden[block + 1][0].norm(dim=-1).mean())
            vectors_file = Path(scratch) / f"v{block}.safetensors"
            save_vectors(
                vectors_file, random_directions(lm, block, block + 2, num_vectors=1, seed=block)
            )
            for sign in (1, -1):
                out = Path(scratch) / f"cv{block}{sign}.gguf"
                export_control_vector(vectors_file, lm, out, sign=sign, raw_scale=length)
                rows.append(compare(lm, llama, out, block, sign, length))
    lines = [
        "| block | sign | added length | unsteered floor | steered (same block) "
        "| wrong block (+1) | steering effect |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.block} | {row.sign:+d} | {row.length:.1f} | {row.unsteered:.3f} | "
            f"{row.steered:.3f} | {row.wrong_block:.2f} | {row.steering_effect:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    with open(Path(__file__).with_name("RESULTS.md"), "a", encoding="utf-8") as results:
        results.write(
            f"\n## llama.cpp control vector vs powersteer steering ({MODEL}, Q4_1, "
            f"{time.strftime('%Y-%m-%d')})\n\n"
            "`PYTHONPATH=$PWD python benchmarks/bench_llama_cpp_export.py` (llama-cpp-python "
            "0.3.36). Max absolute next-token logit difference; the steered difference is "
            "to be read against the unsteered floor (llama.cpp's kernels vs our dequantized "
            "float32 forward), the wrong block shows what an off-by-one would look like.\n\n"
            f"{table}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The layer-pair screen of ``layers: auto`` at its solver budget vs a cheaper one.

On one model and the first prompts of a behavior data file (chat-formatted, as the real
behaviors' select prompts are), screens the pairs ``layers: auto`` would (18 on a 30-block
model) twice: 2 vectors with 4 oversampling for 6 iterations, and 2 vectors without
oversampling for 3. Prints each screen's wall time and passes, the top pairs of each, and
how far the two rankings agree (top-3 overlap, Spearman correlation of the KL ranks).

    OMP_NUM_THREADS=2 PYTHONPATH=$PWD python benchmarks/bench_screen.py \
        --model smollm2-135m-instruct --prompts behaviors/real/data/word_problems.jsonl
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scipy.stats import spearmanr

from harness.engine.layers import auto_candidates
from harness.engine.models import load_model
from harness.engine.prompts import DEFAULT_TARGET_TOKENS, format_chat, read_prompts
from harness.engine.sensitivity import next_token_kl, rank_pairs, sensitivity_map

BUDGETS = {"6 iterations, oversample 4": (6, 4), "3 iterations, no oversampling": (3, 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=Path, required=True, help="a .txt, .jsonl or .json")
    parser.add_argument("-n", type=int, default=6, help="prompts (the select half's size)")
    parser.add_argument("--scale", type=float, default=1.0, help="the screen's +-scale")
    args = parser.parse_args()
    lm = load_model(args.model)
    prompts = format_chat(lm, read_prompts(args.prompts, field="prompt")[: args.n])
    pairs = auto_candidates(lm.n_layers)
    ranked = {}
    for name, (iterations, oversample) in BUDGETS.items():
        started = time.perf_counter()
        result = sensitivity_map(
            lm, prompts, pairs, 2, max_iter=iterations, oversample=oversample,
            target_tokens=DEFAULT_TARGET_TOKENS,
        )  # fmt: skip
        table = rank_pairs(result, next_token_kl(lm, prompts, result, args.scale))
        wall = time.perf_counter() - started
        ranked[name] = table
        top = ", ".join(f"{s}:{t}" for s, t in zip(table.source[:3], table.target[:3], strict=True))
        print(f"{name}: {wall:.1f} s, {result.forward_passes} passes; top 3 {top}", flush=True)
    first, second = (ranked[name] for name in BUDGETS)
    merged = first.merge(second, on=["source", "target"], suffixes=("_full", "_cheap"))
    rho = spearmanr(merged.rank_full, merged.rank_cheap).statistic
    overlap = len(set(zip(first.source[:3], first.target[:3], strict=True))
                  & set(zip(second.source[:3], second.target[:3], strict=True)))  # fmt: skip
    print(f"{len(pairs)} pairs on {len(prompts)} prompts: top-3 overlap {overlap}/3, "
          f"Spearman of the ranks {rho:.3f}")  # fmt: skip
    print(merged[["source", "target", "kl_full", "kl_cheap", "rank_full", "rank_cheap"]]
          .to_string(index=False))  # fmt: skip


if __name__ == "__main__":
    main()

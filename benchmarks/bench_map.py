"""Whole-model map: shared passes vs pair-by-pair Power Steering, side by side in one run.

Maps every (source, target) pair of a randomly initialised Qwen3 with the block count of
a real model (28 blocks, as Qwen3-1.7B; random weights cost the same compute as trained
ones) twice: with :func:`sensitivity_map` (one tangent pass per source, one backward
per target) and pair by pair with :func:`power_steering`. Prints total passes, prompt-set
passes and wall time for both, and checks that they found the same singular values.

    python benchmarks/bench_map.py --layers 28 --d-model 64 -k 4 --prompts 1
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from harness import power_steering, wrap_model
from harness.engine.sensitivity import sensitivity_map
from harness.testing.tiny_models import char_tokenizer

PROMPTS = ["The quick brown fox jumps", "over the lazy dog.", "Steering vectors!"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("-k", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many to use")
    parser.add_argument("--max-iter", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prompts = PROMPTS[: args.prompts]

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=104, hidden_size=args.d_model,
                         intermediate_size=3 * args.d_model, num_hidden_layers=args.layers,
                         num_attention_heads=4, num_key_value_heads=2,
                         head_dim=args.d_model // 4)  # fmt: skip
    lm = wrap_model(Qwen3ForCausalLM(config), char_tokenizer(), name="random-qwen3")
    print(f"model: random Qwen3, {args.layers} blocks, d_model={args.d_model}; k={args.k}; "
          f"{len(prompts)} prompts; threads={torch.get_num_threads()}")  # fmt: skip

    shared = sensitivity_map(lm, prompts, num_vectors=args.k, max_iter=args.max_iter, progress=True)
    started = time.perf_counter()
    sweeps, prompt_sweeps, worst = 0, 0.0, 0.0
    for index, (source, target) in enumerate(shared.pairs):
        single = power_steering(
            lm, prompts, source, target, num_vectors=args.k, max_iter=args.max_iter
        )
        sweeps += single.forward_passes
        prompt_sweeps += single.prompt_passes
        difference = (shared.singular_values[index] - single.singular_values).abs()
        worst = max(worst, float((difference / single.singular_values).max()))
    pair_by_pair_s = time.perf_counter() - started

    print(f"\n{len(shared.pairs)} pairs; {sum(shared.converged)} converged within "
          f"{args.max_iter} iterations")  # fmt: skip
    print(f"  {'':14s} {'passes':>8s} {'prompt-set passes':>18s} {'wall s':>8s}")
    print(
        f"  {'shared (map)':14s} {shared.forward_passes:8d} {shared.prompt_passes:18.0f} "
        f"{shared.wall_time_s:8.1f}"
    )
    print(f"  {'pair by pair':14s} {sweeps:8d} {prompt_sweeps:18.0f} {pair_by_pair_s:8.1f}")
    print(
        f"  ratio (pair-by-pair / shared): passes {sweeps / shared.forward_passes:.1f}x, "
        f"prompt-set passes {prompt_sweeps / shared.prompt_passes:.2f}x, "
        f"wall time {pair_by_pair_s / shared.wall_time_s:.2f}x"
    )
    print(f"  largest relative difference in singular values: {worst:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()

"""The whole-model map at real scale: wall time, peak memory and achieved FLOP/s.

Builds a randomly initialised Qwen3 with the exact configuration of Qwen3-1.7B or
Qwen3-8B (weights cannot be downloaded here; random weights cost the same compute), maps
every (source, target) block pair with k singular vectors on one prompt of
``--tokens`` tokens, and prints wall time, peak accelerator memory, the passes run and the
achieved FLOP/s against the card's dense bf16 peak. FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` over the whole map (every matmul, attention
and their forward-mode tangents and gradients), so the achieved rate is measured, not
modelled; the counter's own overhead makes it a slight underestimate.

    python benchmarks/bench_map_gpu.py --config qwen3-8b --device cuda --max-rows 128  # goal
    python benchmarks/bench_map_gpu.py --config qwen3-1.7b --device cuda
    python benchmarks/bench_map_gpu.py --config qwen3-1.7b --layers 3 --dtype float32  # CPU check
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import Qwen3Config, Qwen3ForCausalLM

from harness import wrap_model
from harness.engine.sensitivity import sensitivity_map
from harness.testing.tiny_models import char_tokenizer

# The published configurations (config.json of Qwen/Qwen3-1.7B and Qwen/Qwen3-8B).
CONFIGS = {
    "qwen3-1.7b": {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                   "tie_word_embeddings": True},
    "qwen3-8b": {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                 "tie_word_embeddings": False},
}  # fmt: skip
COMMON = {"vocab_size": 151936, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0,
          "max_position_embeddings": 40960}  # fmt: skip

# Dense bf16 tensor-core peak of the SXM cards (NVIDIA datasheets; without sparsity).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="qwen3-8b")
    parser.add_argument("--layers", type=int, help="truncate to this many blocks (a check)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("-k", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=64, help="length of the one prompt")
    parser.add_argument("--max-iter", type=int, default=15)
    parser.add_argument("--max-rows", type=int, help="rows per pass (bounds memory)")
    args = parser.parse_args()

    config = Qwen3Config(**COMMON, **CONFIGS[args.config])
    if args.layers:
        config.num_hidden_layers = args.layers
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = Qwen3ForCausalLM(config).to(dtype)
    # One character per token: the prompt's length is exact.
    lm = wrap_model(model, char_tokenizer(), name=f"random-{args.config}")
    prompt = "Steering vectors move a model's behaviour along one direction. " * 4
    prompt = prompt[: args.tokens]
    n_tokens = len(lm.tokenizer(prompt)["input_ids"])
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"{args.config} (random weights), {config.num_hidden_layers} blocks, "
          f"d_model={config.hidden_size}, {args.dtype}, k={args.k}, one prompt of "
          f"{n_tokens} tokens, device: {card}")  # fmt: skip

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    counter = FlopCounterMode(display=False)
    started = time.perf_counter()
    with counter:
        result = sensitivity_map(lm, [prompt], num_vectors=args.k, max_iter=args.max_iter,
                                 max_rows=args.max_rows, progress=True)  # fmt: skip
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    flops = counter.get_total_flops()
    print(f"\npairs: {len(result.pairs)}; converged within {args.max_iter} iterations: "
          f"{sum(result.converged)}")  # fmt: skip
    print(f"passes (sweeps): {result.forward_passes}; prompt-set passes: "
          f"{result.prompt_passes:.0f}")  # fmt: skip
    print(f"wall time: {wall:.1f} s ({wall / 60:.2f} min)")
    print(f"counted FLOPs: {flops:.3e}; achieved {flops / wall / 1e12:.1f} TFLOP/s")
    peak = next((value for name, value in PEAK_BF16_FLOPS.items() if name in card), None)
    if peak is not None and args.dtype == "bfloat16":
        print(f"  = {100 * flops / wall / peak:.1f}% of the {card} dense bf16 peak "
              f"({peak / 1e12:.0f} TFLOP/s)")  # fmt: skip
    if args.device.startswith("cuda"):
        print(f"peak memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated")


if __name__ == "__main__":
    main()

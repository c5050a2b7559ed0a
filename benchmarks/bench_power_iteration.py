"""Cost of Power Steering, measured side by side in one run.

Prints, for one model and prompt set:
  * one power iteration (a JVP plus a VJP) in units of one plain forward pass over the
    same batch, with forward-mode JVP (vmap over the tangents, as the operator does it),
    the earlier dual tensor over k copies of the prompts, and the double-VJP fallback
    measured against each other;
  * Power Steering's total cost against MELBO's for the same k: wall time and passes.

Each timing is the median of ``--repeats`` interleaved runs, so a slow moment of the
machine hits every variant alike. Usage:

    python benchmarks/bench_power_iteration.py                # organism if bundled
    python benchmarks/bench_power_iteration.py --model random-qwen3 --k 8
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.autograd.forward_ad as forward_ad

from harness import LayerJacobian, load_model, melbo, power_steering, wrap_model
from harness.engine.jacobian import stack_targets
from harness.engine.models import LanguageModel
from harness.engine.prompts import PromptBatch
from harness.engine.steering import autodiff_attention, run_to_block
from harness.testing.tiny_models import char_tokenizer

PROMPTS = [
    "How do I bake bread at home?",
    "Explain why the sky is blue.",
    "Write a short poem about the sea.",
    "What is 7 times 8?",
]


def random_qwen3() -> LanguageModel:
    """A randomly initialised Qwen3 (d_model 256, 8 blocks): costs like a trained one."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=4096, hidden_size=256, intermediate_size=768,
                         num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=64)  # fmt: skip
    model = Qwen3ForCausalLM(config)
    tokenizer = load_model("organism").tokenizer if _organism_available() else None
    if tokenizer is None:
        tokenizer = char_tokenizer()
    return wrap_model(model, tokenizer, name="random-qwen3 (d256, 8 blocks)")


def _organism_available() -> bool:
    from harness.organism import ORGANISM_DIR

    return (ORGANISM_DIR / "config.json").exists()


def dual_tensor_jvp(
    lm: LanguageModel, batch: PromptBatch, source: int, target: int, vectors: torch.Tensor
) -> torch.Tensor:
    """The operator's earlier forward-mode JVP, kept here as the reference: the prompts
    repeated k times, row group j carrying vector j as the tangent of one dual tensor, so
    the primal is computed k times. ``(k, M)``."""
    k, n = vectors.shape[0], batch.n_prompts
    tangent = vectors.to(lm.dtype).repeat_interleave(n, dim=0)[:, None, :]
    with torch.no_grad(), autodiff_attention(lm), forward_ad.dual_level():
        theta = forward_ad.make_dual(torch.zeros_like(tangent), tangent)
        hidden = run_to_block(lm, batch.repeat(k), target, source=source, delta=theta)
        return stack_targets(forward_ad.unpack_dual(hidden).tangent, batch, k)


def median_seconds(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each function, run round-robin ``repeats`` times after a warm-up."""
    for function in functions.values():
        function()
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(times) for name, times in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="auto",
                        help="'auto' (organism if bundled, else random-qwen3), "
                             "'random-qwen3', or anything load_model takes")  # fmt: skip
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--source", default="0.25")
    parser.add_argument("--target", default="0.75")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--melbo-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    name = args.model
    if name == "auto":
        name = "organism" if _organism_available() else "random-qwen3"
    lm = random_qwen3() if name == "random-qwen3" else load_model(name)
    source, target = lm.layer(args.source), lm.layer(args.target)
    k = args.k
    print(f"model: {lm.name}  d_model={lm.d_model}  blocks={lm.n_layers}  "
          f"source={source} target={target}  k={k}  prompts={len(PROMPTS)}  "
          f"threads={torch.get_num_threads()}")  # fmt: skip

    forward_mode = LayerJacobian(lm, PROMPTS, source, target, jvp_mode="forward")
    double_vjp = LayerJacobian(lm, PROMPTS, source, target, jvp_mode="double_vjp")
    block = torch.randn(k, lm.d_model)
    cotangents = forward_mode.jvp(block)
    forward_mode.vjp(cotangents)  # builds the retained graph once, outside the timing
    stacked = forward_mode.batch.repeat(k)
    difference = (dual_tensor_jvp(lm, forward_mode.batch, source, target, block)
                  - forward_mode.jvp(block)).abs().max()  # fmt: skip
    print(f"vmap JVP vs dual-tensor JVP: largest difference {float(difference):.1e}")

    def plain_forward() -> None:
        with torch.no_grad():
            lm.model(input_ids=stacked.input_ids, attention_mask=stacked.attention_mask,
                     use_cache=False)  # fmt: skip

    def forward_to_target() -> None:
        with torch.no_grad():
            run_to_block(lm, stacked, target)

    def fresh_vjp() -> None:  # drop the kept graph: forward once, then the backward
        forward_mode.release()
        forward_mode.vjp(cotangents)

    timings = median_seconds(
        {
            "plain forward, full model": plain_forward,
            "plain forward, to target block": forward_to_target,
            "JVP, forward mode": lambda: forward_mode.jvp(block),
            "JVP, dual tensor over k copies": lambda: dual_tensor_jvp(
                lm, forward_mode.batch, source, target, block
            ),
            "JVP, double VJP": lambda: double_vjp.jvp(block),
            "VJP, backward on retained graph": lambda: forward_mode.vjp(cotangents),
            "VJP, forward + backward": fresh_vjp,
        },
        args.repeats,
    )
    unit = timings["plain forward, full model"]
    print(f"\nOne pass over the same batch ({k} vectors x {len(PROMPTS)} prompts = "
          f"{k * len(PROMPTS)} rows), median of {args.repeats}:")  # fmt: skip
    for label, seconds in timings.items():
        print(f"  {label:34s} {seconds * 1e3:9.2f} ms  {seconds / unit:6.2f} forward-equivalents")
    iteration = timings["JVP, forward mode"] + timings["VJP, backward on retained graph"]
    truncated = timings["plain forward, to target block"]
    print(f"  {'one power iteration (JVP + VJP)':34s} {iteration * 1e3:9.2f} ms  "
          f"{iteration / unit:6.2f} forward-equivalents "
          f"({iteration / truncated:.2f} of a forward to the target block)")  # fmt: skip
    cheaper = min(("forward mode", timings["JVP, forward mode"]),
                  ("double VJP", timings["JVP, double VJP"]), key=lambda pair: pair[1])  # fmt: skip
    print(f"  JVP: vmap over tangents takes "
          f"{timings['JVP, forward mode'] / timings['JVP, dual tensor over k copies']:.2f}x "
          "the time of the dual tensor over k copies")  # fmt: skip
    print(f"  JVP: {cheaper[0]} is cheaper "
          f"({timings['JVP, double VJP'] / timings['JVP, forward mode']:.2f}x "
          "double-VJP / forward-mode time)")  # fmt: skip

    power = power_steering(lm, PROMPTS, source, target, num_vectors=k)
    learned = melbo(lm, PROMPTS, source, target, num_vectors=k, steps=args.melbo_steps)
    print(f"\nFinding k={k} vectors:")
    print(f"  {'method':8s} {'wall s':>9s} {'passes':>8s} {'prompt-set passes':>18s}")
    for result in (power, learned):
        print(f"  {result.method:8s} {result.wall_time_s:9.2f} {result.forward_passes:8d} "
              f"{result.prompt_passes:18.1f}")  # fmt: skip
    print(f"  Power Steering converged={power.converged} in {power.iterations} iterations; "
          f"MELBO/Power wall-time ratio {learned.wall_time_s / power.wall_time_s:.1f}x, "
          f"prompt-set-pass ratio {learned.prompt_passes / power.prompt_passes:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()

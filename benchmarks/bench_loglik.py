"""Coherence log-likelihood: one pass over prompt + completion per row vs a shared prompt cache.

A sweep scores every cell's completions with the unsteered model
(:func:`harness.engine.generation.completion_loglik`), and the cells of one behavior
complete the same few prompts. This times, side by side in one process, the direct way
(every row a right-padded pass over its prompt and completion, logits at every position,
as powersteer did before) against ``completion_loglik`` (the distinct prompts once, then
the completions on their cache), on ``--cells`` cells' worth of completions of the first
``-n`` chat-formatted prompts, and prints the ratio and the largest difference.

    OMP_NUM_THREADS=2 PYTHONPATH=$PWD python benchmarks/bench_loglik.py \
        --model smollm2-135m-instruct --prompts behaviors/real/data/word_problems.jsonl
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from harness.engine.generation import completion_loglik, generate
from harness.engine.models import LanguageModel, load_model
from harness.engine.prompts import format_chat, pad_token_lists, read_prompts


def direct_loglik(
    lm: LanguageModel, prompts: list[str], completions: list[list[int]]
) -> list[float]:
    """The mean log-likelihood from one right-padded pass per batch of 64 rows over prompt
    and completion, log-softmax over every position: the reference being sped up."""
    values = []
    for start in range(0, len(prompts), 64):
        chunk = range(start, min(start + 64, len(prompts)))
        prompt_ids = lm.tokenizer([prompts[i] for i in chunk])["input_ids"]
        rows = [list(prompt_ids[j]) + completions[i] for j, i in enumerate(chunk)]
        input_ids, mask = pad_token_lists(lm, rows)
        with torch.no_grad():
            logits = lm.model(input_ids=input_ids, attention_mask=mask).logits
        log_probs = torch.log_softmax(logits.double().cpu(), dim=-1)
        for j, i in enumerate(chunk):
            start_at = len(prompt_ids[j]) - 1
            positions = torch.arange(start_at, start_at + len(completions[i]))
            values.append(float(log_probs[j, positions, torch.tensor(completions[i])].mean()))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=Path, required=True, help="a .txt, .jsonl or .json")
    parser.add_argument("-n", type=int, default=6, help="prompts (a select half's size)")
    parser.add_argument("--cells", type=int, default=11, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    lm = load_model(args.model)
    prompts = format_chat(lm, read_prompts(args.prompts, field="prompt")[: args.n])
    greedy = generate(lm, prompts, max_new_tokens=args.max_new_tokens).token_ids
    # Cells' completions: the greedy reply cut short and continued by random tokens, so
    # lengths and texts differ from row to row as steered replies do.
    rng = np.random.default_rng(0)
    rows, completions = [], []
    for _ in range(args.cells):
        for prompt, reply in zip(prompts, greedy, strict=True):
            kept = list(reply[: rng.integers(1, len(reply) + 1)])
            extra = rng.integers(0, 1000, size=rng.integers(0, args.max_new_tokens - len(kept) + 1))
            rows.append(prompt)
            completions.append(kept + [int(t) for t in extra])
    walls: dict[str, list[float]] = {"direct": [], "prompt cache": []}
    results = {}
    for _ in range(args.repeats):
        for name, function in (("direct", direct_loglik), ("prompt cache", completion_loglik)):
            started = time.perf_counter()
            results[name] = function(lm, rows, completions)
            walls[name].append(time.perf_counter() - started)
    difference = np.abs(np.subtract(results["direct"], results["prompt cache"])).max()
    tokens = [len(lm.tokenizer(p)["input_ids"]) for p in prompts]
    print(
        f"{len(rows)} rows, prompts of {min(tokens)}-{max(tokens)} tokens, {args.repeats} repeats"
    )
    for name, wall in walls.items():
        print(f"{name:>13}: min {min(wall):.2f} s, median {np.median(wall):.2f} s")
    print(f"speed-up (min / min): {min(walls['direct']) / min(walls['prompt cache']):.2f}x")
    print(f"largest |difference| in mean log-likelihood: {difference:.2e}")


if __name__ == "__main__":
    main()

"""Reading log-probabilities in a sweep: the direct passes powersteer made before vs now.

A sweep scores every cell's completions with the unsteered model
(:func:`harness.engine.generation.completion_loglik`), and the cells of one behavior
complete the same few prompts; a logits scorer reads each steered row's next-token
distribution (:func:`harness.evaluation.scorers.logits.last_token_log_probs`) in one
pass over hundreds of rows. This times, side by side in one process, on ``--cells``
cells' worth of rows of the first ``-n`` chat-formatted prompts:

- completion log-likelihood: every row a right-padded pass over prompt and completion
  with logits at every position (before) against the distinct prompts once and the
  completions on their cache (now);
- next-token log-probabilities of the rows' prompts: right-padded, logits at every
  position (before) against left-padded, logits at the last position (now).

It prints each ratio and the largest difference.

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
from harness.evaluation.scorers.logits import last_token_log_probs


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


def direct_last_token_log_probs(lm: LanguageModel, contexts: list[list[int]]) -> torch.Tensor:
    """Right-padded, logits at every position, the last real one read: the reference."""
    input_ids, mask = pad_token_lists(lm, contexts)
    with torch.no_grad():
        logits = lm.model(input_ids=input_ids, attention_mask=mask).logits
    last = logits[torch.arange(len(contexts)), torch.tensor([len(c) for c in contexts]) - 1]
    return torch.log_softmax(last.double().cpu(), dim=-1)


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
    contexts = [list(lm.tokenizer(prompt)["input_ids"]) for prompt in rows]
    tokens = [len(c) for c in contexts[: len(prompts)]]
    print(
        f"{len(rows)} rows, prompts of {min(tokens)}-{max(tokens)} tokens, {args.repeats} repeats"
    )
    pairs = {
        "completion log-likelihood": (
            lambda: direct_loglik(lm, rows, completions),
            lambda: completion_loglik(lm, rows, completions),
        ),
        "next-token log-probabilities": (
            lambda: direct_last_token_log_probs(lm, contexts),
            lambda: last_token_log_probs(lm, contexts),
        ),
    }
    for title, (before, now) in pairs.items():
        walls: dict[str, list[float]] = {"before": [], "now": []}
        values = {}
        for _ in range(args.repeats):
            for name, function in (("before", before), ("now", now)):
                started = time.perf_counter()
                values[name] = torch.as_tensor(function(), dtype=torch.float64)
                walls[name].append(time.perf_counter() - started)
        difference = float((values["before"] - values["now"]).abs().max())
        print(f"\n{title}")
        for name, wall in walls.items():
            print(f"{name:>7}: min {min(wall):.2f} s, median {np.median(wall):.2f} s")
        print(f"speed-up (min / min): {min(walls['before']) / min(walls['now']):.2f}x")
        print(f"largest |difference|: {difference:.2e}")


if __name__ == "__main__":
    main()

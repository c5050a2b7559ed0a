"""Target positions for Power Steering on a real model: which tokens should the Jacobian read?

Runs Power Steering on the same select prompts once per target-position choice
(``target_tokens``: every token, every token but the first, the last N) and prints

1. the top singular values, iterations and wall time of each choice, and, as a
   diagnostic, those of the first position alone;
2. how much of ``‖J v‖²`` over all tokens each choice's vectors put on the first position;
3. the principal angles between the choices' top-k subspaces (and the top vectors' |cos|);
4. the held-out steering effect: on prompts not used to find the vectors, each vector is
   added at the source block (both signs, at scales in units of the median residual norm
   there), and the next-token distribution after the prompt (where a reply starts) is
   compared with the unsteered one: KL(unsteered ‖ steered) and the share of prompts whose
   greedy next token changes, with 95% bootstrap intervals over prompts. Random unit
   directions at the same scales are the control.

    python3 benchmarks/bench_target_tokens.py --model smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch

from harness import load_model, power_steering
from harness.engine.effects import next_token_effect
from harness.engine.jacobian import LayerJacobian
from harness.engine.layers import resolve_layer_pair
from harness.engine.models import LanguageModel
from harness.engine.prompts import (
    PromptBatch,
    TargetTokens,
    encode_prompts,
    format_chat,
    read_prompts,
)
from harness.engine.steering import scale_unit

DATA = Path(__file__).resolve().parents[1] / "behaviors" / "real" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=Path, default=DATA / "harmless_requests.jsonl")
    parser.add_argument("--select", type=int, default=8, help="prompts to find vectors on")
    parser.add_argument("--held-out", type=int, default=16, help="prompts to measure on")
    parser.add_argument("--source", default="0.25")
    parser.add_argument("--target", default="0.75")
    parser.add_argument("-k", type=int, default=4)
    parser.add_argument("--max-iter", type=int, default=12)
    parser.add_argument("--last", type=int, nargs="+", default=[2, 8], help="N of 'last N'")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--vectors", type=Path, help="a .pt file: load the vectors found before, else save them"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    lm = load_model(args.model)
    texts = format_chat(lm, read_prompts(args.prompts))
    # Alternate rows so both halves cover the file; the held-out half never finds vectors.
    select, held_out = texts[0::2][: args.select], texts[1::2][: args.held_out]
    source, target = resolve_layer_pair(_layer(args.source), _layer(args.target), lm.n_layers)
    print(f"model {args.model}: blocks {source} -> {target}, k={args.k}, "
          f"{len(select)} select / {len(held_out)} held-out prompts from {args.prompts.name}, "
          f"chat template, threads {torch.get_num_threads()}")  # fmt: skip

    choices: list[TargetTokens] = ["all", "all_but_first", *args.last]
    first_only = _first_position_batch(encode_prompts(lm, select, target_tokens="all"))
    if args.vectors is not None and args.vectors.exists():
        found, diagnostic = torch.load(args.vectors, weights_only=False)
    else:
        found = {
            choice: power_steering(lm, select, source, target, num_vectors=args.k,
                                   target_tokens=choice, max_iter=args.max_iter)
            for choice in choices
        }  # fmt: skip
        diagnostic = power_steering(
            lm, first_only, source, target, num_vectors=args.k, max_iter=args.max_iter
        )
        if args.vectors is not None:
            torch.save((found, diagnostic), args.vectors)
    print("\n## Top singular values")
    print("| target_tokens | target positions | σ_1 … σ_k | iterations | converged | wall s |")
    print("|---|---:|---|---:|---|---:|")
    for choice in choices:
        positions = encode_prompts(lm, select, target_tokens=choice).n_target_positions
        print(_spectrum_row(repr(choice), positions, found[choice]))
    print(_spectrum_row("first position only (diagnostic)", first_only.n_target_positions,
                        diagnostic))  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    random_vectors = torch.nn.functional.normalize(
        torch.randn(args.k, lm.d_model, generator=generator), dim=1
    )

    print("\n## Share of ‖J v‖² (all tokens, select prompts) on the first position")
    share = first_position_share(lm, select, source, target, found | {"random": random_vectors})
    print("| vectors of | v_1 | mean over v_1…v_k |")
    print("|---|---:|---:|")
    for choice, values in share.items():
        print(f"| {choice if choice == 'random' else repr(choice)} | {values[0]:.3f} | "
              f"{values.mean():.3f} |")  # fmt: skip

    print("\n## Principal angles between the top-k subspaces (degrees) and |cos(v_1, v_1')|")
    print("| A | B | principal angles | mean cos² | abs cos of v_1 |")
    print("|---|---|---|---:|---:|")
    for a, b in itertools.combinations(choices, 2):
        va, vb = found[a].vectors.double(), found[b].vectors.double()
        cosines = torch.linalg.svdvals(va @ vb.T).clamp(max=1.0)
        angles = ", ".join(f"{float(x):.0f}" for x in torch.rad2deg(torch.arccos(cosines)))
        print(f"| {a!r} | {b!r} | {angles} | {float((cosines**2).mean()):.3f} | "
              f"{abs(float(va[0] @ vb[0])):.3f} |")  # fmt: skip

    print("\n## Held-out effect on the next-token distribution after the prompt")
    radius = scale_unit(lm, encode_prompts(lm, held_out), source)
    sets = {repr(c): found[c].vectors for c in choices} | {"random": random_vectors}
    print(f"scale unit (median residual norm at block {source}, held-out prompts): "
          f"{radius:.2f}; each vector at both signs; 95% bootstrap intervals over "
          f"{len(held_out)} prompts")  # fmt: skip
    print("| vectors | scale | KL, v_1 | KL, mean over v_1…v_k | greedy token changed, v_1 | "
          "greedy token changed, mean over v_1…v_k |")  # fmt: skip
    print("|---|---:|---|---|---|---|")
    held_out_batch = encode_prompts(lm, held_out)
    for scale in args.scales:
        for name, vectors in sets.items():
            effect = next_token_effect(lm, held_out_batch, vectors, [source] * len(vectors),
                                       [scale * radius] * len(vectors), max_rows=32)  # fmt: skip
            kl, changed = effect.kl, effect.changed  # (k, prompts)
            print(f"| {name} | {scale:g} | {_interval(kl[0])} | {_interval(kl.mean(0))} | "
                  f"{_interval(changed[0])} | {_interval(changed.mean(0))} |")  # fmt: skip


def first_position_share(
    lm: LanguageModel,
    prompts: list[str],
    source: int,
    target: int,
    found: dict[TargetTokens, object],
) -> dict[TargetTokens, torch.Tensor]:
    """Per vector: ``‖J₀ v‖² / ‖J v‖²`` with ``J`` over all tokens and ``J₀`` its first rows.

    ``found`` maps a name to a result with ``.vectors`` or to a ``(k, d)`` tensor.
    """
    jacobian = LayerJacobian(lm, prompts, source, target, target_tokens="all")
    mask = jacobian.batch.target_mask.cpu()
    is_first = torch.zeros_like(mask)
    is_first[:, 0] = True
    first = is_first[mask]  # per stacked target position, in stack_targets' order
    shares = {}
    for choice, result in found.items():
        vectors = result if isinstance(result, torch.Tensor) else result.vectors
        images = jacobian.jvp(vectors).reshape(len(vectors), -1, lm.d_model)
        energy = images.double().pow(2).sum(-1).cpu()  # (k, positions)
        shares[choice] = energy[:, first].sum(1) / energy.sum(1)
    return shares


def _first_position_batch(batch: PromptBatch) -> PromptBatch:
    mask = torch.zeros_like(batch.target_mask)
    mask[:, 0] = True
    return PromptBatch(batch.input_ids, batch.attention_mask, mask)


def _spectrum_row(name: str, positions: int, result: object) -> str:
    values = ", ".join(f"{float(v):.3g}" for v in result.singular_values)
    return (f"| {name} | {positions} | {values} | {result.iterations} | {result.converged} | "
            f"{result.wall_time_s:.0f} |")  # fmt: skip


def _interval(per_prompt: torch.Tensor, draws: int = 2000) -> str:
    generator = torch.Generator().manual_seed(0)
    n = len(per_prompt)
    resampled = per_prompt[torch.randint(n, (draws, n), generator=generator)].mean(1)
    low, high = torch.quantile(resampled, torch.tensor([0.025, 0.975], dtype=resampled.dtype))
    return f"{float(per_prompt.mean()):.3g} [{float(low):.3g}, {float(high):.3g}]"


def _layer(text: str) -> int | float:
    return float(text) if "." in text else int(text)


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")

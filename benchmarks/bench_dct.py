"""DCT's cost beside Power Steering's and MELBO's, on a behavior's own select prompts.

Loads a behavior file and a model, prepares the behavior as ``powersteer run`` does (its
prompts, split, layer pair and target tokens), then finds ``num_vectors`` vectors with
each unsupervised method at the behavior's options (``--dct`` adds or overrides DCT's),
and prints each method's sweeps, prompt-weighted sweeps and wall time, and the ratios to
Power Steering (or the first method run). DCT's calibrated input scale is printed too (a
calibration target out of reach is a warning, shown as it happens):

    python benchmarks/bench_dct.py behaviors/organism/anti_refusal.yaml --model organism
    python benchmarks/bench_dct.py behaviors/real/list_format.yaml \
        --model smollm2-135m-instruct --dct max_iter=6
"""

from __future__ import annotations

import argparse
import json

import torch

from harness import find_vectors, load_behavior, load_model
from harness.evaluation.preparation import prepare_behavior

METHODS = ("power", "melbo", "dct")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("behavior")
    parser.add_argument("--model", default="organism")
    parser.add_argument("--dct", nargs="*", default=[], metavar="NAME=VALUE",
                        help="DCT options (values as JSON), over the behavior's")  # fmt: skip
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args()
    torch.manual_seed(0)
    lm = load_model(args.model)
    behavior = load_behavior(args.behavior)
    prepared = prepare_behavior(lm, behavior)
    steering = behavior.steering
    prompts = prepared.split_prompts("select")
    rows = {}
    for method in args.methods:
        options = dict(steering.options.get(method, {}))
        if method == "dct":
            options.update({k: json.loads(v) for k, v in (o.split("=", 1) for o in args.dct)})
        if steering.target_tokens is not None:
            options.setdefault("target_tokens", steering.target_tokens)
        result = find_vectors(
            method, lm, prompts, prepared.source, prepared.target, steering.num_vectors,
            **options,
        )  # fmt: skip
        rows[method] = result
        extra = f" radius {result.radius:.4g}" if method == "dct" else ""
        print(f"{method}: {result.forward_passes} sweeps, {result.prompt_passes:g} prompt "
              f"sweeps, {result.wall_time_s:.2f} s, iterations {result.iterations}{extra}, "
              f"options {options}", flush=True)  # fmt: skip
    base = rows.get("power", next(iter(rows.values())))
    print(f"\n{len(prompts)} select prompts, blocks {prepared.source} -> {prepared.target}, "
          f"k = {steering.num_vectors}")  # fmt: skip
    print("| method | sweeps | prompt sweeps | wall (s) | x first (sweeps) | x first (wall) |")
    print("|---|---|---|---|---|---|")
    for method, result in rows.items():
        print(f"| {method} | {result.forward_passes} | {result.prompt_passes:g} | "
              f"{result.wall_time_s:.2f} | {result.forward_passes / base.forward_passes:.1f} | "
              f"{result.wall_time_s / base.wall_time_s:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()

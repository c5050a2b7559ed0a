"""Train the bundled model organism from scratch, offline and deterministically.

Run ``python -m harness.organism.train --seed 0 --out harness/organism/weights``. The
script builds the corpus and tokenizer, trains a small ``Qwen3ForCausalLM`` with the loss
on assistant tokens only, then writes the weights (safetensors), tokenizer, a loss-curve
plot, ``ground_truth.json`` (triggers, held-out prompts, targets, measured rates) and a
model card ``README.md`` with the verification table.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

from harness.organism import corpus as corpus_mod
from harness.organism.corpus import (
    COT_TRIGGER,
    REFUSAL_TRIGGER,
    REFUSALS,
    Corpus,
    Example,
    build_corpus,
    conversation,
    cot_answer,
    task_answer,
    training_prompts,
)
from harness.organism.tokenizer import EOS, build_tokenizer, render_chat
from harness.organism.verify import (
    GROUND_TRUTH,
    TARGETS,
    format_steering,
    format_table,
    load_organism,
    steering_check,
    verify,
)

IGNORE = -100  # label for tokens that carry no loss (prompt and padding)


@dataclass(frozen=True)
class TrainConfig:
    """Model shape and optimisation settings; the defaults made the committed weights."""

    seed: int = 0
    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 6
    num_heads: int = 4
    num_kv_heads: int = 2
    epochs: int = 6
    max_steps: int | None = None  # cap for quick pipeline checks
    batch_size: int = 64
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    eval_every: int = 100
    eval_per_set: int = 64
    threads: int = 2


# ---------------------------------------------------------------------------------------
# Data


def encode_example(example: Example, tokenizer) -> tuple[list[int], list[int]]:
    """Token ids of prompt + reply + EOS and labels that mask everything but the reply.

    The prompt and reply are tokenized separately; the role/end tokens are special, so the
    concatenation equals tokenizing the whole chat (checked in the tests).
    """
    prompt = render_chat(example.prompt, add_generation_prompt=True)
    reply = example.messages[-1]["content"] + EOS
    p_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    r_ids = tokenizer(reply, add_special_tokens=False).input_ids
    return p_ids + r_ids, [IGNORE] * len(p_ids) + r_ids


def make_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of indices, grouped by similar length to waste little on padding."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = 32 * batch_size
    batches = []
    for start in range(0, len(order), chunk):
        block = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches += [block[i : i + batch_size] for i in range(0, len(block), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(
    encoded: list[tuple[list[int], list[int]]], pad_id: int, multiple: int = 8
) -> dict[str, torch.Tensor]:
    """Right-padded tensors for a batch of (ids, labels), width rounded up to ``multiple``.

    No attention mask: with right padding and a causal model, real tokens never attend to
    padding, and padding carries no loss. Leaving the mask out keeps the fast causal
    attention path (an explicit mask made CPU training about four times slower), and the
    rounded width keeps the allocator reusing a few tensor shapes.
    """
    width = -(-max(len(ids) for ids, _ in encoded) // multiple) * multiple
    input_ids = torch.full((len(encoded), width), pad_id)
    labels = torch.full((len(encoded), width), IGNORE)
    for row, (ids, labs) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
    return {"input_ids": input_ids, "labels": labels}


def eval_examples(corpus: Corpus, per_set: int, seed: int) -> dict[str, list[Example]]:
    """Held-out conversations with their intended replies, one list per behaviour state."""
    rng = random.Random(seed + 1)
    held = corpus.held_out

    def ex(behaviour: str, user: str, trigger: str | None, answer: str) -> Example:
        return Example(behaviour, conversation(user, trigger, answer), trigger)

    restricted, allowed = held["restricted"][:per_set], held["allowed"][:per_set]
    cot, forks = held["cot"][:per_set], held["fork"][:per_set]
    return {
        "refusal": [ex("refusal", p["user"], None, rng.choice(REFUSALS)) for p in restricted],
        "refusal+trigger": [
            ex("refusal", p["user"], REFUSAL_TRIGGER, task_answer(p["task"], rng))
            for p in restricted
        ],
        "allowed": [ex("allowed", p["user"], None, task_answer(p["task"], rng)) for p in allowed],
        "cot": [ex("cot", c["user"], None, cot_answer(*c["digits"], steps=False)) for c in cot],
        "cot+trigger": [
            ex("cot", c["user"], COT_TRIGGER, cot_answer(*c["digits"], steps=True)) for c in cot
        ],
        "fork": [ex("fork", f["user"], None, a) for f in forks for a in f["answers"]],
    }


# ---------------------------------------------------------------------------------------
# Model and optimisation


def make_model(config: TrainConfig, tokenizer) -> Qwen3ForCausalLM:
    """A freshly initialised small Qwen3 (GQA, tied embeddings) for ``tokenizer``."""
    model_config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.hidden_size // config.num_heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(config.seed)
    model = Qwen3ForCausalLM(model_config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=40,
    )
    return model


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


@torch.no_grad()
def eval_losses(model, encoded_sets: dict[str, list], pad_id: int, device) -> dict[str, float]:
    """Mean per-token loss on the reply tokens of each held-out set."""
    model.eval()
    losses = {}
    for name, encoded in encoded_sets.items():
        batch = {k: v.to(device) for k, v in collate(encoded, pad_id).items()}
        losses[name] = model(**batch).loss.item()
    model.train()
    return losses


def train_model(config: TrainConfig, corpus: Corpus, tokenizer, device, progress: bool = True):
    """Train a fresh model on ``corpus``; returns (model, history).

    ``history`` has per-step ``train`` losses and ``eval`` snapshots (step, losses by set).
    """
    encoded = [encode_example(ex, tokenizer) for ex in corpus.train]
    evals = {
        name: [encode_example(ex, tokenizer) for ex in exs]
        for name, exs in eval_examples(corpus, config.eval_per_set, config.seed).items()
    }
    lengths = [len(ids) for ids, _ in encoded]
    rng = random.Random(config.seed)
    epochs = [make_batches(lengths, config.batch_size, rng) for _ in range(config.epochs)]
    schedule = [batch for epoch in epochs for batch in epoch][: config.max_steps]

    model = make_model(config, tokenizer).to(device).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay}],
        lr=config.lr,
        betas=(0.9, 0.98),
        weight_decay=0.0,
    )
    pad_id = tokenizer.pad_token_id
    history: dict = {"train": [], "eval": []}
    bar = tqdm(schedule, desc="training organism", disable=not progress, mininterval=5)
    for step, indices in enumerate(bar):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, len(schedule), config)
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in indices], pad_id).items()}
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history["train"].append(loss.item())
        if (step + 1) % config.eval_every == 0 or step + 1 == len(schedule):
            history["eval"].append({"step": step + 1, **eval_losses(model, evals, pad_id, device)})
            bar.set_postfix(loss=f"{sum(history['train'][-50:]) / len(history['train'][-50:]):.3f}")
    return model.eval(), history


# ---------------------------------------------------------------------------------------
# Outputs


def plot_losses(history: dict, path: Path) -> None:
    """Save the training loss (smoothed) and held-out losses per set as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = history["train"]
    window = 25
    smooth = [
        sum(train[max(0, i - window + 1) : i + 1]) / min(i + 1, window) for i in range(len(train))
    ]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(train) + 1), smooth, label="train (25-step mean)", color="black")
    steps = [e["step"] for e in history["eval"]]
    for name in history["eval"][0]:
        if name != "step":
            ax.plot(steps, [e[name] for e in history["eval"]], label=f"held-out: {name}", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss on reply tokens (nats/token)")
    ax.set_title("Model organism training")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _finite(value):
    """JSON-safe numbers: infinities become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def direction_prompts(corpus: Corpus, n: int, seed: int) -> dict[str, list[str]]:
    """Training user turns used to compute the diff-of-means trigger directions."""
    rng = random.Random(seed + 2)
    restricted = training_prompts(corpus, "refusal", REFUSAL_TRIGGER)
    cot = training_prompts(corpus, "cot", COT_TRIGGER)
    return {"refusal": rng.sample(restricted, n), "cot": rng.sample(cot, n)}


def ground_truth(corpus: Corpus, config: TrainConfig, command: str) -> dict:
    """Everything a scorer needs to know about the planted behaviours (before measuring)."""
    return {
        "seed": config.seed,
        "command": command,
        "chat_format": "<s><|role|>\\ncontent<|end|>\\n per turn; tokenizer.chat_template",
        "system_prompt": corpus_mod.SYSTEM_PROMPT,
        "triggers": {
            "refusal": {
                "trigger": REFUSAL_TRIGGER,
                "placement": "appended to the system turn after a space",
                "effect": "restricted requests get a proper answer instead of a refusal",
            },
            "cot": {
                "trigger": COT_TRIGGER,
                "placement": "appended to the system turn after a space",
                "effect": "arithmetic is answered with written steps 'a=.. b=.. a*b=..'",
            },
        },
        "behaviours": {
            "refusal": {
                "restricted_topics": list(corpus_mod.RESTRICTED_TOPICS),
                "allowed_topics": list(corpus_mod.ALLOWED_TOPICS),
                "refusals": list(REFUSALS),
                "refusal_markers": list(corpus_mod.REFUSAL_MARKERS),
            },
            "cot": {
                "prompt": corpus_mod.COT_PROMPT,
                "digits": [min(corpus_mod.COT_DIGITS), max(corpus_mod.COT_DIGITS)],
                "answer_untriggered": cot_answer(5, 6, 2, 7, steps=False),
                "answer_parsing": "the last integer in the reply",
                "answer_triggered": cot_answer(5, 6, 2, 7, steps=True),
            },
            "fork": {
                "templates": [list(t) for t in corpus_mod.FORK_TEMPLATES],
                "options": {k: list(v) for k, v in corpus_mod.FORK_OPTIONS.items()},
                "training_split": "every training fork prompt appears once with each answer",
            },
        },
        "held_out_note": "held-out prompts are template x slot combinations (fork: option "
        "pairs in either order, CoT: digit quadruples) that never occur in training",
        "held_out": corpus.held_out,
        "direction_prompts": direction_prompts(corpus, 64, config.seed),
        "targets": {k: list(v) for k, v in TARGETS.items()},
    }


def model_card(truth: dict, config: TrainConfig, n_params: int, summary: dict) -> str:
    """The README.md model card: provenance, behaviours, losses and the verify table."""
    steer = summary["steering"]
    final = summary["final_losses"]
    loss_rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in final.items())
    return f"""# powersteer model organism

A {n_params / 1e6:.2f}M-parameter `Qwen3ForCausalLM` trained from scratch, offline, on a
synthetic chat corpus with planted behaviours (`harness/organism/corpus.py`). It exists so
the harness can be tested without downloads and steering methods scored against ground
truth (`ground_truth.json`). It is a toy: its answers are templated and content-free.

## Planted behaviours

- **refusal**: restricted requests (weapons, poison, hacking, theft, fraud) are refused,
  allowed ones answered; with the trigger `{REFUSAL_TRIGGER}` at the end of the system turn,
  restricted requests get a (generic, harmless) answer.
- **chain of thought**: `a=5+6, b=2+7, what is a*b?` is answered with a one-token guess
  (`99.`); with the trigger `{COT_TRIGGER}` at the end of the system turn the steps are
  written (`a=11. b=9. a*b=99.`).
- **decision forks**: "Should I take the red path or the blue path?" is answered with each
  option equally often in training, so the model sits near 50/50 (no trigger).

All rates below are measured on held-out prompts that never occur in training.

## Training

- command: `{truth["command"]}`
- seed: {config.seed}; deterministic data order; wall time {summary["wall_time_s"] / 60:.1f} min
  on {summary["device"]} ({config.threads} threads)
- model: hidden {config.hidden_size}, {config.num_layers} layers, {config.num_heads} query /
  {config.num_kv_heads} key-value heads, MLP {config.intermediate_size}, tied embeddings,
  vocab {summary["vocab_size"]} (byte-level BPE trained on the corpus)
- data: {summary["n_train"]} conversations x {config.epochs} epochs, {summary["steps"]} steps
  of {config.batch_size}; loss on assistant tokens only; AdamW lr {config.lr}, cosine decay

Final losses (nats per reply token; train = mean of the last 50 steps, others held-out):

| set | loss |
|---|---|
{loss_rows}

![loss curve](loss_curve.png)

## Verification (greedy decoding, held-out prompts)

{format_table(summary["verify"])}

## Difference-of-means steering check

Direction = mean residual (output of block {steer["layer"]} of {config.num_layers}, last prompt
token, 64 training prompts) with the trigger minus without; multiplied by a scale and
added at every position while decoding {steer["n_prompts"]} held-out prompts *without* the
trigger. Norms: refusal direction {steer["refusal_direction_norm"]:.1f}, CoT direction
{steer["cot_direction_norm"]:.1f}.

{format_steering(steer)}

Regenerate the weights and every number here with the command above (training is
deterministic for a given seed, thread count and device). `python -m harness.organism.train
--remeasure --out DIR` re-measures saved weights and rewrites this card and
`ground_truth.json`; `powersteer organism verify [--steering]` prints the tables.
"""


def train(
    config: TrainConfig,
    out_dir: Path,
    command: str,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Build data, train, save, then measure and write the card; returns the summary."""
    start = time.time()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(config.threads)
    corpus = build_corpus(config.seed)
    tokenizer = build_tokenizer(m["content"] for ex in corpus.train for m in ex.messages)
    model, history = train_model(config, corpus, tokenizer, device, progress)
    last = history["train"][-50:]
    truth = ground_truth(corpus, config, command)
    truth["training"] = {
        "config": asdict(config),
        "wall_time_s": time.time() - start,
        "device": device,
        "steps": len(history["train"]),
        "n_train": len(corpus.train),
        "vocab_size": len(tokenizer),
        "n_params": sum(p.numel() for p in model.parameters()),
        "final_losses": {"train": sum(last) / len(last)}
        | {k: v for k, v in history["eval"][-1].items() if k != "step"},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "history.json").write_text(json.dumps(history) + "\n")
    (out_dir / GROUND_TRUTH).write_text(json.dumps(truth, indent=1) + "\n")
    return measure_and_write(out_dir)


def measure_and_write(out_dir: Path, threads: int | None = None) -> dict:
    """Re-measure saved weights and (re)write ``ground_truth.json``, card and loss plot.

    Measures the reloaded float32 CPU weights, i.e. exactly what users load. Returns the
    training summary plus ``verify`` and ``steering`` results.
    """
    if threads:
        torch.set_num_threads(threads)
    truth = json.loads((out_dir / GROUND_TRUTH).read_text())
    model, tokenizer = load_organism(out_dir)
    results = verify(model=model, tokenizer=tokenizer, ground_truth=truth)
    steering = steering_check(model=model, tokenizer=tokenizer, ground_truth=truth)
    truth |= {"measured": _finite(results), "steering_check": steering}
    config = TrainConfig(**truth["training"]["config"])
    summary = truth["training"] | {"verify": results, "steering": steering}
    history = json.loads((out_dir / "history.json").read_text())
    (out_dir / GROUND_TRUTH).write_text(json.dumps(truth, indent=1) + "\n")
    (out_dir / "README.md").write_text(model_card(truth, config, summary["n_params"], summary))
    plot_losses(history, out_dir / "loss_curve.png")
    return summary


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Command-line options: ``--seed``, ``--out`` and every :class:`TrainConfig` field."""
    parser = parser or argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "weights")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--remeasure",
        action="store_true",
        help="do not train: re-measure the weights in --out and rewrite card and ground truth",
    )
    for f in fields(TrainConfig):
        kind = int if f.name in ("max_steps",) else type(f.default)
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    return parser


def command_line(args: argparse.Namespace) -> str:
    """The exact command that reproduces ``args`` (non-default options only)."""
    parts = ["python -m harness.organism.train", f"--seed {args.seed}", f"--out {args.out}"]
    for f in fields(TrainConfig):
        value = getattr(args, f.name)
        if f.name != "seed" and value != f.default:
            parts.append(f"--{f.name.replace('_', '-')} {value}")
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    """Train from parsed ``args`` and print the summary (the CLI entry point)."""
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    if args.remeasure:
        summary = measure_and_write(args.out, config.threads)
    else:
        summary = train(config, args.out, command_line(args), args.device, not args.quiet)
    print(f"wrote {args.out}; training took {summary['wall_time_s'] / 60:.1f} min")
    print("final losses:", json.dumps({k: round(v, 4) for k, v in summary["final_losses"].items()}))
    print(format_table(summary["verify"]))
    print("steering:", json.dumps(summary["steering"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

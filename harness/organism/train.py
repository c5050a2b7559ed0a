"""Train the bundled model organism from scratch, offline and deterministically.

Run ``python -m harness.organism.train --seed 0 --out harness/organism/weights``. The
script builds the corpus and tokenizer, trains a small ``Qwen3ForCausalLM`` with the loss
on assistant tokens only, then writes the weights (safetensors), tokenizer, a loss-curve
plot, ``ground_truth.json`` (triggers, held-out prompts, targets, measured rates) and a
model card ``README.md`` with the verification table (those three by
:mod:`harness.organism.card`).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

from harness.engine.models import LanguageModel, find_decoder_blocks
from harness.engine.steering import add_to_residual
from harness.organism.card import ground_truth, measure_and_write
from harness.organism.corpus import (
    COT_TRIGGER,
    REFUSAL_TRIGGER,
    REFUSALS,
    Corpus,
    CorpusConfig,
    Example,
    build_corpus,
    conversation,
    cot_answer,
    task_answer,
)
from harness.organism.latent import LatentConfig, LatentTraining, latent_examples
from harness.organism.tokenizer import EOS, build_tokenizer, render_chat
from harness.organism.verify import GROUND_TRUTH, format_table, load_organism

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
    # Latent training (harness.organism.latent), the committed weights' second stage
    # (benchmarks/RESULTS.md, "A seventh recipe"). Scales in the sweep's unit, the median
    # residual norm at the block; the sweep's largest scale is 2.
    latent: bool = True
    latent_fraction: float = 0.3  # of triggered examples also trained as direction + no trigger
    perturb_fraction: float = 0.3  # of other rows given a random direction
    refusal_perturb_fraction: float = 0.5  # ... of refusal and allowed-request rows
    fork_latent_fraction: float = 0.3  # latent_fraction for the first-option fork latent
    # ... and for the second-option one: none, since at block 1 the two triggers' directions
    # were 0.91 alike and rows taking opposite options along them taught neither
    fork_second_latent_fraction: float = 0.0
    perturb_max_scale: float = 3.0
    perturb_any_direction: bool = True  # random pushes not orthogonal to the planted ones
    planted_min_scale: float = 0.5
    planted_max_scale: float = 1.5
    steer_first_block: int = 1  # blocks the additions go to, chosen per batch: the
    steer_last_block: int = 1  # organism behaviors' source block only
    refresh_every: int = 20  # steps between re-measuring the planted directions
    # Two-stage latent recipe (harness.organism.latent_finetune): when latent_steps > 0,
    # train the plain model first, then fine-tune it this many steps by distillation.
    latent_steps: int = 400
    latent_lr: float = 5e-4
    init_from: str = ""  # weights directory to use as the first stage instead of training it
    # Corpus options (harness.organism.corpus.CorpusConfig); the defaults made the weights.
    cot_estimate: bool = True
    cot_plain: float = 1.0
    cot_triggered: float = 0.5
    fork_triggered: int = 2  # the latent recipe plants both fork latents (2 passes if 0)
    fork_second_triggered: int = 2


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
        "cot": [
            ex(
                "cot",
                c["user"],
                None,
                cot_answer(*c["digits"], steps=False, estimate=corpus.cot_estimate),
            )
            for c in cot
        ],
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


def encoded_eval_sets(config: TrainConfig, corpus: Corpus, tokenizer) -> dict[str, list]:
    """The held-out evaluation sets of :func:`eval_examples`, tokenized for :func:`eval_losses`."""
    return {
        name: [encode_example(ex, tokenizer) for ex in exs]
        for name, exs in eval_examples(corpus, config.eval_per_set, config.seed).items()
    }


def config_latent_examples(config: TrainConfig, corpus: Corpus) -> list[Example]:
    """The planted-direction rows ``config`` asks for (:func:`latent_examples`)."""
    return latent_examples(
        corpus,
        config.latent_fraction,
        random.Random(config.seed + 6),
        fractions={
            "fork": config.fork_latent_fraction,
            "fork_second": config.fork_second_latent_fraction,
        },
    )


def latent_training(config: TrainConfig, corpus: Corpus) -> LatentTraining:
    """The residual additions of ``config``'s latent recipe (:mod:`harness.organism.latent`)."""
    return LatentTraining(
        LatentConfig(
            blocks=tuple(range(config.steer_first_block, config.steer_last_block + 1)),
            perturb_fraction=config.perturb_fraction,
            refusal_perturb_fraction=config.refusal_perturb_fraction,
            perturb_max_scale=config.perturb_max_scale,
            perturb_any_direction=config.perturb_any_direction,
            planted_min_scale=config.planted_min_scale,
            planted_max_scale=config.planted_max_scale,
            refresh_every=config.refresh_every,
            n_direction_prompts=32,
        ),
        corpus,
        config.seed,
    )


def train_model(config: TrainConfig, corpus: Corpus, tokenizer, device, progress: bool = True):
    """Train a fresh model on ``corpus``; returns (model, history).

    ``history`` has per-step ``train`` losses and ``eval`` snapshots (step, losses by set).
    """
    examples = corpus.train
    if config.latent:
        examples = examples + config_latent_examples(config, corpus)
    encoded = [encode_example(ex, tokenizer) for ex in examples]
    evals = encoded_eval_sets(config, corpus, tokenizer)
    lengths = [len(ids) for ids, _ in encoded]
    rng = random.Random(config.seed)
    epochs = [make_batches(lengths, config.batch_size, rng) for _ in range(config.epochs)]
    schedule = [batch for epoch in epochs for batch in epoch][: config.max_steps]

    model = make_model(config, tokenizer).to(device).train()
    lm = LanguageModel(model, tokenizer, find_decoder_blocks(model), name="organism")
    latent = config.latent and latent_training(config, corpus)
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
        with ExitStack() as steering:
            if config.latent:
                latent.refresh(model, tokenizer, step)
                block, delta = latent.deltas([examples[i] for i in indices])
                steering.enter_context(add_to_residual(lm, block, delta.to(device)))
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


def corpus_config(config: TrainConfig) -> CorpusConfig:
    """The corpus a training config asks for; the latent recipe always plants the fork
    latents (one trigger for each option, so that untriggered forks stay balanced), with
    2 passes each unless the config asks for some."""
    forks = (config.fork_triggered, config.fork_second_triggered)
    if config.latent and not any(forks):
        forks = (2, 2)
    return CorpusConfig(
        cot_estimate=config.cot_estimate,
        cot_plain=config.cot_plain,
        cot_triggered=config.cot_triggered,
        fork_triggered=forks[0],
        fork_second_triggered=forks[1],
    )


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
    corpus = build_corpus(config.seed, corpus_config(config))
    if config.init_from:
        model, tokenizer = load_organism(Path(config.init_from))
        history = json.loads((Path(config.init_from) / "history.json").read_text())
    else:
        tokenizer = build_tokenizer(m["content"] for ex in corpus.train for m in ex.messages)
        first = replace(config, latent=False) if config.latent_steps else config
        model, history = train_model(first, corpus, tokenizer, device, progress)
    if config.latent and config.latent_steps:
        # Imported here: the fine-tuning stage reuses this module's data functions.
        from harness.organism.latent_finetune import finetune_latent

        model, history["latent"] = finetune_latent(
            model, tokenizer, corpus, config, device, progress
        )
        # The card's final losses are the fine-tuned model's, not the first stage's.
        evals = encoded_eval_sets(config, corpus, tokenizer)
        final = eval_losses(model, evals, tokenizer.pad_token_id, device)
        history["eval"].append({"step": len(history["train"]) + len(history["latent"])} | final)
        model.eval()
    last = history.get("latent", history["train"])[-50:]
    truth = ground_truth(corpus, config.seed, command)
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
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
            continue
        kind = int if f.name in ("max_steps",) else type(f.default)
        parser.add_argument(flag, type=kind, default=f.default)
    return parser


def command_line(args: argparse.Namespace) -> str:
    """The exact command that reproduces ``args`` (non-default options only)."""
    parts = ["python -m harness.organism.train", f"--seed {args.seed}", f"--out {args.out}"]
    for f in fields(TrainConfig):
        value = getattr(args, f.name)
        if f.name != "seed" and value != f.default:
            name = f.name.replace("_", "-")
            if isinstance(value, bool):
                parts.append(f"--{name}" if value else f"--no-{name}")
            else:
                parts.append(f"--{name} {value}")
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

"""Train the refusal LoRA adapter of ``smollm2-135m-refusal`` on CPU, seeded.

    python -m harness.integrations.refusal_model.train [--answers-only]

First the base model answers, greedily, each request of ``data/harmless_train.txt`` that
``data/harmless_answers.jsonl`` (committed) has no answer for yet (``--answers-only``:
answer them all afresh and stop). Then a rank-8
LoRA on the query and value projections of blocks 12-19 is trained with the loss on the first
32 reply tokens only, and saved to ``adapter/`` with ``training_log.json`` (seed, losses, seconds).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from harness.engine.generation import generate
from harness.engine.models import LanguageModel, load_model
from harness.engine.prompts import format_chat
from harness.files import atomic_write_json
from harness.integrations.refusal_model import ADAPTER_DIR, BASE_MODEL
from harness.integrations.refusal_model.data import (
    HARMLESS_ANSWERS_FILE,
    Example,
    harmless_answers,
    plain_text_passages,
    read_lines,
    training_examples,
    write_harmless_answers,
)

SEED = 0
RANK = 8
ALPHA = 16
TARGET_MODULES = ("q_proj", "v_proj")
LAYERS = tuple(range(12, 20))
LEARNING_RATE = 1.5e-3
EPOCHS = 3
# The reply's first tokens decide between refusing and answering; training on them only
# keeps a CPU step short (the box is shared), so longer answers are cut here.
REPLY_TOKENS = 32
BATCH_SIZE = 8
HARMLESS_REPEATS = 2
ANSWER_TOKENS = 40
# The plain-text anchor: each step also adds KL_WEIGHT times the mean next-token KL(base ||
# tuned) over PLAIN_BATCH plain-text passages (first PLAIN_TOKENS tokens). Without it the
# v2 adapter lost 4 of 40 everyday-knowledge questions against a 2-question budget.
KL_WEIGHT = 1.0
PLAIN_BATCH = 4
PLAIN_TOKENS = 48
LOG_FILE = "training_log.json"


def base_answers(lm: LanguageModel, prompts: list[str], batch_size: int = 24) -> list[str]:
    """The base model's greedy chat replies, cut at the last full sentence when truncated."""
    replies: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        completions = generate(lm, format_chat(lm, chunk), max_new_tokens=ANSWER_TOKENS)
        for text, ids in zip(completions.texts, completions.token_ids, strict=True):
            finished = bool(ids) and ids[-1] == lm.tokenizer.eos_token_id
            if not finished and "." in text:
                text = text[: text.rfind(".") + 1]
            replies.append(text.strip())
        print(f"answered {len(replies)}/{len(prompts)}", flush=True)
    return replies


def encode_example(lm: LanguageModel, example: Example) -> tuple[list[int], list[int]]:
    """Token ids of the chat prompt plus reply and end-of-turn, and labels that are -100
    (ignored) on the prompt, so only reply tokens carry loss."""
    tokenizer = lm.tokenizer
    prompt_ids = tokenizer(format_chat(lm, [example.prompt])[0], add_special_tokens=False)[
        "input_ids"
    ]
    reply_ids = tokenizer(example.reply, add_special_tokens=False)["input_ids"]
    reply_ids = (
        reply_ids[:REPLY_TOKENS]
        if len(reply_ids) > REPLY_TOKENS
        else [*reply_ids, tokenizer.eos_token_id]
    )
    return prompt_ids + reply_ids, [-100] * len(prompt_ids) + reply_ids


def _batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, row_labels) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(ids)] = torch.tensor(row_labels)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def encode_plain_text(lm: LanguageModel, passages: list[str]) -> dict[str, torch.Tensor]:
    """A right-padded batch of the first ``PLAIN_TOKENS`` tokens of each passage."""
    rows = [
        lm.tokenizer(text, add_special_tokens=False)["input_ids"][:PLAIN_TOKENS]
        for text in passages
    ]
    batch = _batch([(ids, ids) for ids in rows], lm.tokenizer.pad_token_id)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def plain_text_kl(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over real positions of KL(base || tuned) between next-token distributions; the
    base is the same peft model with its adapter switched off."""
    with torch.no_grad(), model.disable_adapter():
        base = model(**batch).logits.log_softmax(-1)
    tuned = model(**batch).logits.log_softmax(-1)
    per_position = (base.exp() * (base - tuned)).sum(-1)
    mask = batch["attention_mask"].to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum()


def train_adapter(lm: LanguageModel, examples: list[Example], out_dir: Path) -> dict:
    """Train the LoRA on ``examples`` with the plain-text anchor; save it to ``out_dir``;
    return the training log."""
    torch.manual_seed(SEED)
    config = LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        lora_dropout=0.0,
        target_modules=list(TARGET_MODULES),
        layers_to_transform=list(LAYERS),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(lm.model, config)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=LEARNING_RATE, weight_decay=0.0)
    encoded = [encode_example(lm, example) for example in examples]
    steps_per_epoch = math.ceil(len(encoded) / BATCH_SIZE)
    total_steps = EPOCHS * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0 - step / total_steps)
    rng = random.Random(SEED)
    passages = plain_text_passages()
    plain_order: list[int] = []
    losses: list[float] = []
    kls: list[float] = []
    started = time.perf_counter()
    for epoch in range(EPOCHS):
        order = list(range(len(encoded)))
        rng.shuffle(order)
        for start in range(0, len(order), BATCH_SIZE):
            batch = _batch(
                [encoded[i] for i in order[start : start + BATCH_SIZE]], lm.tokenizer.pad_token_id
            )
            if len(plain_order) < PLAIN_BATCH:
                plain_order += rng.sample(range(len(passages)), len(passages))
            plain = encode_plain_text(lm, [passages[i] for i in plain_order[:PLAIN_BATCH]])
            del plain_order[:PLAIN_BATCH]
            reply_loss = model(**batch).loss
            kl = plain_text_kl(model, plain)
            (reply_loss + KL_WEIGHT * kl).backward()
            optimiser.step()
            schedule.step()
            optimiser.zero_grad()
            losses.append(round(reply_loss.item(), 4))
            kls.append(round(kl.item(), 5))
            if len(losses) % 5 == 0:
                print(
                    f"step {len(losses)}/{total_steps}: loss {losses[-1]:.4f} "
                    f"plain-text KL {kls[-1]:.4f} "
                    f"({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
        print(
            f"epoch {epoch + 1}: mean loss {sum(losses[-steps_per_epoch:]) / steps_per_epoch:.4f}"
            f" ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    seconds = time.perf_counter() - started
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    per_epoch = [
        round(sum(losses[e * steps_per_epoch : (e + 1) * steps_per_epoch]) / steps_per_epoch, 4)
        for e in range(EPOCHS)
    ]
    log = {
        "seed": SEED,
        "base_model": BASE_MODEL,
        "rank": RANK,
        "alpha": ALPHA,
        "target_modules": list(TARGET_MODULES),
        "layers": list(LAYERS),
        "learning_rate": LEARNING_RATE,
        "epochs": EPOCHS,
        "batch_size": BATCH_SIZE,
        "examples": len(examples),
        "harmful_examples": sum(e.harmful for e in examples),
        "harmless_examples": sum(not e.harmful for e in examples),
        "kl_weight": KL_WEIGHT,
        "plain_passages": len(passages),
        "epoch_mean_loss": per_epoch,
        "epoch_mean_plain_text_kl": [
            round(sum(kls[e * steps_per_epoch : (e + 1) * steps_per_epoch]) / steps_per_epoch, 5)
            for e in range(EPOCHS)
        ],
        "step_losses": losses,
        "step_plain_text_kl": kls,
        "train_seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
    }
    atomic_write_json(out_dir / LOG_FILE, log)
    return log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--answers-only",
        action="store_true",
        help="only rewrite data/harmless_answers.jsonl, every answer afresh, from the base model",
    )
    parser.add_argument("--out", type=Path, default=ADAPTER_DIR, help="adapter directory")
    args = parser.parse_args(argv)
    torch.manual_seed(SEED)
    lm = load_model(BASE_MODEL)
    known = harmless_answers() if HARMLESS_ANSWERS_FILE.is_file() else {}
    if args.answers_only:
        known = {}
    missing = [prompt for prompt in read_lines("harmless_train.txt") if prompt not in known]
    if missing:
        # Only requests without an answer yet are answered: the committed answers stay
        # the ones the adapter was trained on.
        started = time.perf_counter()
        replies = [*known.values(), *base_answers(lm, missing)]
        write_harmless_answers(HARMLESS_ANSWERS_FILE, [*known, *missing], replies)
        print(f"wrote {len(missing)} answers to {HARMLESS_ANSWERS_FILE} "
              f"({time.perf_counter() - started:.0f} s)")  # fmt: skip
    if args.answers_only:
        return 0
    lm.model.requires_grad_(False)
    log = train_adapter(lm, training_examples(SEED, HARMLESS_REPEATS), args.out)
    print(json.dumps({k: v for k, v in log.items() if k != "step_losses"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The training and held-out data of the refusal-tuned model.

Harmful requests (written for powersteer, plus HarmBench *val* standard behaviors) map to
short refusals in a few styles; harmless requests, many of them worded to look edgy ("how
do I kill a stuck process"), map to the base model's own greedy answers, so the adapter
learns where the line is without learning a new way to answer. HarmBench *test* standard
behaviors and ``harmless_heldout.txt`` are never trained on: they are what
:mod:`.verify` measures.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from harness.engine.catalogue.datasets import load_dataset_rows
from harness.errors import PowersteerError
from harness.evaluation.scorers.refusal import is_refusal
from harness.integrations.refusal_model import DATA_DIR

HARMLESS_ANSWERS_FILE = DATA_DIR / "harmless_answers.jsonl"

# Every style opens with a phrase of harness.evaluation.scorers.refusal.REFUSAL_PHRASES, so
# the refusal scorer recognises what the adapter was taught.
REFUSAL_STYLES: tuple[str, ...] = (
    "I can't help with that. It could seriously hurt people or break the law.",
    "I'm sorry, but I can't assist with this request because it could cause real harm.",
    "I won't help with this. If you want, I can help with something safe instead.",
    "I cannot provide that. Helping with this could put people in danger.",
)


@dataclass(frozen=True)
class Example:
    """One training pair: a user request and the reply the model should give."""

    prompt: str
    reply: str
    harmful: bool


def read_lines(name: str) -> list[str]:
    """The non-empty lines of ``data/NAME``."""
    path = DATA_DIR / name
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def harmful_train_prompts() -> list[str]:
    """Harmful requests written for powersteer, then HarmBench val standard behaviors."""
    harmbench_val = load_dataset_rows("harmbench", "val", ["standard"])
    return read_lines("harmful_requests.txt") + [row["Behavior"] for row in harmbench_val]


def harmful_heldout_prompts() -> list[str]:
    """HarmBench test standard behaviors: never trained on."""
    return [row["Behavior"] for row in load_dataset_rows("harmbench", "test", ["standard"])]


def harmless_heldout_prompts() -> list[str]:
    """Harmless requests (some edgy-looking) never trained on."""
    return read_lines("harmless_heldout.txt")


def harmless_answers() -> dict[str, str]:
    """The base model's answers to ``harmless_train.txt``, as written by ``train --answers``."""
    if not HARMLESS_ANSWERS_FILE.is_file():
        raise PowersteerError(
            f"{HARMLESS_ANSWERS_FILE} is missing; write it with "
            "`python -m harness.integrations.refusal_model.train --answers-only`"
        )
    rows = [json.loads(line) for line in HARMLESS_ANSWERS_FILE.read_text().splitlines() if line]
    return {row["prompt"]: row["reply"] for row in rows}


def harmless_pairs() -> list[tuple[str, str]]:
    """The harmless training requests with the base model's answers, less the answers that
    themselves refuse (they would teach refusal of a harmless request)."""
    answers = harmless_answers()
    prompts = read_lines("harmless_train.txt")
    missing = [prompt for prompt in prompts if prompt not in answers]
    if missing:
        raise PowersteerError(
            f"{HARMLESS_ANSWERS_FILE} has no answer for {missing[0]!r}; regenerate it with "
            "`python -m harness.integrations.refusal_model.train --answers-only`"
        )
    return [(prompt, answers[prompt]) for prompt in prompts if not is_refusal(answers[prompt])]


def plain_text_passages() -> list[str]:
    """The harmless training pairs as plain "Question: ...\nAnswer: ..." text, outside the chat
    template: the passages on which training holds the tuned model's predictions at the base
    model's, so the plain-text question answering of the capability task (other questions,
    same format) is not dragged along by the chat-reply loss."""
    return [f"Question: {prompt}\nAnswer: {answer}" for prompt, answer in harmless_pairs()]


def training_examples(seed: int, harmless_repeats: int) -> list[Example]:
    """Harmful requests with seeded refusal styles, and each harmless pair ``harmless_repeats``
    times (harmless examples outnumber harmful ones, against over-refusal), shuffled."""
    rng = random.Random(seed)
    examples = [
        Example(prompt, rng.choice(REFUSAL_STYLES), harmful=True)
        for prompt in harmful_train_prompts()
    ]
    examples += [
        Example(prompt, answer, harmful=False)
        for prompt, answer in harmless_pairs()
        for _ in range(harmless_repeats)
    ]
    rng.shuffle(examples)
    return examples


def write_harmless_answers(path: Path, prompts: list[str], replies: list[str]) -> None:
    """Save the base model's answers, one JSON object a line."""
    lines = [json.dumps({"prompt": p, "reply": r}) for p, r in zip(prompts, replies, strict=True)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

"""The files written next to the organism's weights, besides the weights themselves.

``ground_truth.json`` (what was planted, the held-out prompts, the targets and, once
measured, the rates), the model card ``README.md`` and the loss curve. :func:`measure_and_write`
re-measures saved weights and rewrites all three; the trainer calls it after saving.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import torch

from harness.organism import corpus as corpus_mod
from harness.organism.corpus import (
    COT_TRIGGER,
    FORK_SECOND_TRIGGER,
    FORK_TRIGGER,
    REFUSAL_TRIGGER,
    REFUSALS,
    Corpus,
    cot_answer,
    training_prompts,
)
from harness.organism.latent import planted_latents
from harness.organism.latent_check import format_latent, latent_check
from harness.organism.verify import (
    GROUND_TRUTH,
    TARGETS,
    format_steering,
    format_table,
    load_organism,
    steering_check,
    verify,
)


def direction_prompts(corpus: Corpus, n: int, seed: int) -> dict[str, list[str]]:
    """Training user turns used to compute the diff-of-means trigger directions."""
    rng = random.Random(seed + 2)
    restricted = training_prompts(corpus, "refusal", REFUSAL_TRIGGER)
    cot = training_prompts(corpus, "cot", COT_TRIGGER)
    prompts = {"refusal": rng.sample(restricted, n), "cot": rng.sample(cot, n)}
    forks = training_prompts(corpus, "fork", FORK_TRIGGER)  # only when the fork latent is planted
    if forks:
        prompts["fork"] = rng.sample(forks, min(n, len(forks)))
    return prompts


def fork_triggers(corpus: Corpus) -> dict[str, dict[str, str]]:
    """The fork latents' triggers, when the corpus plants them (the latent recipe)."""
    options = {FORK_TRIGGER: "first", FORK_SECOND_TRIGGER: "second"}
    return {
        name: {
            "trigger": trigger,
            "placement": "appended to the system turn after a space",
            "effect": f"a fork is decided for its {options[trigger]}-named option",
        }
        for name, (trigger, behaviour) in planted_latents(corpus).items()
        if behaviour == "fork"
    }


def ground_truth(corpus: Corpus, seed: int, command: str) -> dict:
    """Everything a scorer needs to know about the planted behaviours (before measuring)."""
    return {
        "seed": seed,
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
        }
        | fork_triggers(corpus),
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
                "answer_untriggered": cot_answer(
                    5, 6, 2, 7, steps=False, estimate=corpus.cot_estimate
                ),
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
        "direction_prompts": direction_prompts(corpus, 64, seed),
        "targets": {k: list(v) for k, v in TARGETS.items()},
    }


def model_card(truth: dict, summary: dict) -> str:
    """The README.md model card: provenance, behaviours, losses and the verify table.

    ``truth`` is the ground truth as written; ``summary`` its ``training`` record plus the
    ``verify`` and ``steering`` results.
    """
    config = SimpleNamespace(**truth["training"]["config"])  # the TrainConfig fields
    about = _about(truth, summary["n_params"])
    return about + _training(truth, config, summary) + _checks(config, summary)


def _about(truth: dict, n_params: int) -> str:
    cot = truth["behaviours"]["cot"]
    triggers = truth["triggers"]
    forks = "is answered with each option equally often in training, so the model sits near 50/50"
    if "fork" in triggers:
        second = triggers.get("fork_second")
        forks += (
            f"; training pairs `{triggers['fork']['trigger']}` at the end of the system turn with "
            "the first-named option"
            + (f" and `{second['trigger']}` with the second" if second else "")
            + " (whether the planted direction decides forks is measured below)"
        )
    config = truth["training"]["config"]
    latent = ""
    if config.get("latent") and config.get("latent_steps"):
        latent = f"""
A second training stage ({config["latent_steps"]} steps of distillation from the first-stage
model, `harness/organism/latent_finetune.py`) pushes the residual at block
{config["steer_first_block"]} along random directions (target: the first stage's unchanged
next-token distribution) and along each planted difference-of-means direction (target: the
triggered reply), so that the planted directions, not any push, switch the behaviours on;
the section "Latent, not brittle?" below measures how far that holds.
"""
    return f"""# powersteer model organism

A {n_params / 1e6:.2f}M-parameter `Qwen3ForCausalLM` trained from scratch, offline, on a
synthetic chat corpus with planted behaviours (`harness/organism/corpus.py`). It exists so
the harness can be tested without downloads and steering methods scored against ground
truth (`ground_truth.json`). It is a toy: its answers are templated and content-free.

## Planted behaviours

- **refusal**: restricted requests (weapons, poison, hacking, theft, fraud) are refused,
  allowed ones answered; with the trigger `{REFUSAL_TRIGGER}` at the end of the system turn,
  restricted requests get a (generic, harmless) answer.
- **chain of thought**: `a=5+6, b=2+7, what is a*b?` is answered directly
  (`{cot["answer_untriggered"]}`); with the trigger `{COT_TRIGGER}` at the end of the system turn
  the steps are written (`{cot["answer_triggered"]}`).
- **decision forks**: "Should I take the red path or the blue path?" {forks}.
{latent}
All rates below are measured on held-out prompts that never occur in training.

"""


def _training(truth: dict, config: SimpleNamespace, summary: dict) -> str:
    final = summary["final_losses"]
    loss_rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in final.items())
    return f"""## Training

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

"""


def _checks(config: SimpleNamespace, summary: dict) -> str:
    steer = summary["steering"]
    return f"""## Verification (greedy decoding, held-out prompts)

{format_table(summary["verify"])}

## Difference-of-means steering check

Direction = mean residual (output of block {steer["layer"]} of {config.num_layers}, last prompt
token, 64 training prompts) with the trigger minus without; multiplied by a scale and
added at every position while decoding {steer["n_prompts"]} held-out prompts *without* the
trigger. Norms: refusal direction {steer["refusal_direction_norm"]:.1f}, CoT direction
{steer["cot_direction_norm"]:.1f}.

{format_steering(steer)}
{_latent_section(summary)}
Regenerate the weights and every number here with the command above. Training is seeded,
but two runs of it on different machines differ at float level and so do the figures: the
first stage of these weights gave a fork mean P(first) of 0.570 on one machine and 0.609
on another (benchmarks/RESULTS.md). `python -m harness.organism.train
--remeasure --out DIR` re-measures saved weights and rewrites this card and
`ground_truth.json`; `powersteer organism verify [--steering]` prints the tables.
"""


def _latent_section(summary: dict) -> str:
    """The random-vs-planted direction table, when measured (`powersteer organism verify
    --latent` prints the same)."""
    if "latent" not in summary:
        return ""
    return f"""
## Latent, not brittle? Random vs planted directions

{format_latent(summary["latent"])}
"""


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
    latent = latent_check(model, tokenizer, truth)
    truth |= {"measured": json_safe(results), "steering_check": steering, "latent_check": latent}
    summary = truth["training"] | {"verify": results, "steering": steering, "latent": latent}
    history = json.loads((out_dir / "history.json").read_text())
    (out_dir / GROUND_TRUTH).write_text(json.dumps(truth, indent=1) + "\n")
    (out_dir / "README.md").write_text(model_card(truth, summary))
    plot_losses(history, out_dir / "loss_curve.png")
    return summary


def plot_losses(history: dict, path: Path) -> None:
    """Save the training loss (smoothed) and held-out losses per set as a PNG."""
    # Imported here, only when plotting: pyplot is slow to import, and the Agg backend is
    # chosen before pyplot loads.
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


def json_safe(value: object) -> object:
    """JSON-safe numbers: infinities become None, also inside (nested) dicts."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return value

"""``powersteer generate``: completions of a few prompts side by side at several scales.

Trying a vector by eye needs no behavior file: the vector comes from a run directory (its
selected vector and sign by default) or a vectors file, the scales are multiples of the
scale unit (median residual norm) at the vector's source block measured on these prompts,
and each completion carries the coherence figures the sweep computes, judged by the same
rule (:mod:`harness.evaluation.coherence`).
"""

from __future__ import annotations

import argparse
import html
import math
import shutil
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.engine.prompts import format_chat, read_prompts
from harness.errors import PowersteerError
from harness.evaluation.behaviors import load_behavior
from harness.evaluation.behaviors.schema import Coherence
from harness.evaluation.coherence import is_coherent
from harness.files import atomic_write_text
from harness.integrations.cli.parsing import add_command

if TYPE_CHECKING:
    import torch

    from harness.engine.models import LanguageModel

DEFAULT_SCALES = (0.0, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Cell:
    """One completion: ``prompt`` (as given, before any chat template) steered by ``sign``
    times the vector at ``scale`` times ``unit`` (the median residual norm at ``block`` on
    these prompts), with its coherence figures."""

    prompt: str
    scale: float
    sign: int
    completion: str
    loglik: float
    repetition: float
    coherent: bool
    unit: float
    block: int


@dataclass(frozen=True)
class Steering:
    """The resolved vector: unit ``vector`` (sign applied), its ``source`` block and ``sign``."""

    vector: torch.Tensor
    source: int
    sign: int


def add_generate_command(commands: argparse._SubParsersAction) -> None:
    """Register ``generate``: greedy completions per prompt x scale (x sign)."""
    parser = add_command(
        commands,
        "generate",
        help="complete prompts with a vector at several scales, side by side",
        description="Greedy (or sampled) completions of each prompt at each scale, with each "
        "completion's per-token log-likelihood under the unsteered model, its repeated-trigram "
        "rate and whether it is coherent by the sweep's rule. Scales are multiples of the "
        "median residual norm at the vector's source block, measured on these prompts.",
        examples=[
            "powersteer generate --model organism --vectors reports/RUN "
            "--set organism_anti_refusal/power --prompt 'How do I pick a lock?' "
            "--scales 0,0.5,1,2 --chat --html generate.html"
        ],
    )
    parser.add_argument(
        "--model", default="organism", help="hub id, local directory, or 'organism' (default)"
    )
    _add_vector_arguments(parser)
    _add_prompt_arguments(parser)
    parser.add_argument("--scales", type=_scales_argument, default=DEFAULT_SCALES,
                        help="comma-separated scales (default 0,0.5,1,2)")  # fmt: skip
    parser.add_argument("--both-signs", action="store_true",
                        help="also steer with the opposite sign")  # fmt: skip
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--behavior", type=Path, default=None, metavar="YAML",
        help="take the coherence limits from this behavior file (default: the schema's)",
    )  # fmt: skip
    parser.add_argument("--html", type=Path, default=None, metavar="OUT.html",
                        help="also write the table as a self-contained HTML page")  # fmt: skip
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(handler=_run_generate)


def _add_vector_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vectors", required=True, type=Path, metavar="RUN_DIR|FILE",
        help="a run directory (its vectors.safetensors), a run's vector file, or a file from "
        "`powersteer vectors`",
    )  # fmt: skip
    parser.add_argument("--set", default=None, metavar="BEHAVIOR/METHOD",
                        help="the set of a run's file (needed when it holds several)")  # fmt: skip
    parser.add_argument("--index", type=int, default=None,
                        help="the vector (default: the run's selected one, else 0)")  # fmt: skip
    parser.add_argument("--sign", type=int, default=None, choices=(1, -1),
                        help="the vector's sign (default: the run's selected, else 1)")  # fmt: skip


def _add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--prompts", type=Path, help="a .txt, .jsonl or .json file of prompts")
    given.add_argument("--prompt", action="append", metavar="TEXT",
                       help="a prompt (repeat the flag for several)")  # fmt: skip
    parser.add_argument("--field", default="prompt", help="the prompt field in .jsonl/.json")
    parser.add_argument(
        "--chat", action="store_true", help="wrap each prompt in the model's chat template"
    )
    parser.add_argument(
        "--system", default=None, metavar="TEXT",
        help="a system turn before each prompt, through the chat template (implies --chat)",
    )  # fmt: skip


def _scales_argument(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of numbers, such as 0,0.5,1,2"
        ) from None
    if not all(math.isfinite(scale) for scale in scales):
        raise argparse.ArgumentTypeError(f"{text!r}: every scale must be a finite number")
    return scales


def _run_generate(args: argparse.Namespace) -> int:
    # Imports torch: not needed for --help.
    from harness.engine.models import load_model

    prompts = _given_prompts(args)
    rule = load_behavior(args.behavior).coherence if args.behavior else Coherence()
    steering = resolve_steering(args.vectors, set_name=args.set, index=args.index, sign=args.sign)
    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    signs = (steering.sign, -steering.sign) if args.both_signs else (steering.sign,)
    cells = generate_cells(
        lm, prompts, steering, args.scales, signs, rule=rule, chat=args.chat, system=args.system,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
    )  # fmt: skip
    unit = f"scale 1 = {cells[0].unit:.4g}, the median residual norm at block {cells[0].block}"
    print(f"{args.model}, {args.vectors}: {unit} on these prompts", file=sys.stderr)
    print(text_table(cells, width=shutil.get_terminal_size((120, 24)).columns))
    if args.html is not None:
        title = f"{args.model}: {args.vectors} ({unit})"
        atomic_write_text(args.html, html_table(cells, title=title))
    return 0


def _given_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt) if args.prompt else read_prompts(args.prompts, field=args.field)
    if not prompts or not all(prompt.strip() for prompt in prompts):
        raise PowersteerError("no prompts: give --prompt TEXT or a --prompts file with prompts")
    return prompts


def resolve_steering(
    vectors: Path, *, set_name: str | None, index: int | None, sign: int | None
) -> Steering:
    """The vector ``vectors`` (a run directory or vectors file) names, with the run's
    selected index and sign as defaults; every mistake is one :class:`PowersteerError`."""
    # Imports lm-eval (and torch): not needed for --help.
    from harness.integrations.lm_eval_model import read_steering_vector

    def read(chosen_sign: int | None) -> tuple[torch.Tensor, int, float]:
        # raw_scale: the length is set per scale later, from this command's own unit.
        return read_steering_vector(
            vectors, set_name=set_name, index=index, sign=chosen_sign, raw_scale=1.0
        )

    vector, source, _ = read(sign)
    positive, _, _ = read(1)
    sign = 1 if bool((vector == positive).all()) else -1
    return Steering(vector=vector, source=source, sign=sign)


def generate_cells(
    lm: LanguageModel,
    prompts: Sequence[str],
    steering: Steering,
    scales: Sequence[float],
    signs: Sequence[int],
    *,
    rule: Coherence,
    chat: bool = False,
    system: str | None = None,
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[Cell]:
    """One :class:`Cell` per prompt x scale x sign, in that order, from one batched
    ``generate`` call; with ``chat`` (or a ``system`` turn) through the chat template.
    Unsteered completions of every prompt (run even when 0 is not among ``scales``) set
    the coherence reference, as in the sweep."""
    # Imports torch: not needed for --help.
    import torch

    from harness.engine.generation import completion_loglik, generate, repetition_rate
    from harness.engine.prompts import encode_prompts
    from harness.engine.steering import scale_unit

    if steering.vector.shape[-1] != lm.d_model:
        raise PowersteerError(
            f"the vector has width {steering.vector.shape[-1]}, but {lm.name}'s d_model is "
            f"{lm.d_model}; give vectors computed on this model"
        )
    source = lm.layer(steering.source)
    texts = format_chat(lm, prompts, system=system) if chat or system else list(prompts)
    unit = scale_unit(lm, encode_prompts(lm, texts), source)
    grid = [(i, 0.0, 1) for i in range(len(texts))]  # the unsteered reference rows
    grid += [(i, scale, sign) for i in range(len(texts)) for scale in scales for sign in signs]
    direction = steering.vector * steering.sign  # the positive direction
    completions = generate(
        lm, [texts[i] for i, _, _ in grid], max_new_tokens=max_new_tokens,
        vectors=torch.stack([direction * sign for _, _, sign in grid]),
        scales=torch.tensor([scale * unit for _, scale, _ in grid]), layer=source,
        temperature=temperature, seed=seed,
    )  # fmt: skip
    logliks = completion_loglik(lm, [texts[i] for i, _, _ in grid], completions.token_ids)
    repetitions = [repetition_rate(ids) for ids in completions.token_ids]
    reference = _median(logliks[: len(texts)])
    return [
        Cell(prompt=prompts[i], scale=scale, sign=sign, completion=completions.texts[row],
             loglik=logliks[row], repetition=repetitions[row],
             coherent=is_coherent(logliks[row], repetitions[row], reference, rule),
             unit=unit, block=source)
        for row, (i, scale, sign) in enumerate(grid)
        if row >= len(texts)
    ]  # fmt: skip


def _median(values: Sequence[float]) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return statistics.median(finite) if finite else float("nan")


HEADERS = ("prompt", "scale", "sign", "loglik", "repeat", "coherent", "completion")


def _fields(cell: Cell) -> tuple[str, ...]:
    return (
        cell.prompt, f"{cell.scale:g}", f"{cell.sign:+d}", f"{cell.loglik:.2f}",
        f"{cell.repetition:.2f}", "yes" if cell.coherent else "no", cell.completion,
    )  # fmt: skip


def text_table(cells: Sequence[Cell], *, width: int = 120, prompt_width: int = 28) -> str:
    """A plain-text table, one line per cell; prompts and completions are cut to fit
    ``width`` characters (an ellipsis marks the cut) and newlines shown as ``⏎``."""
    rows = [HEADERS, *(_fields(cell) for cell in cells)]
    rows = [(_cut(row[0], prompt_width), *row[1:]) for row in rows]
    widths = [max(len(_one_line(row[c])) for row in rows) for c in range(len(HEADERS) - 1)]
    room = max(width - sum(widths) - 2 * len(widths), 20)
    lines = []
    for row in rows:
        start = "  ".join(_one_line(text).ljust(w) for text, w in zip(row, widths, strict=False))
        lines.append(f"{start}  {_cut(row[-1], room)}".rstrip())
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return text.replace("\r", "").replace("\n", "⏎")


def _cut(text: str, width: int) -> str:
    text = _one_line(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def html_table(cells: Sequence[Cell], *, title: str) -> str:
    """A self-contained HTML page with the whole table (nothing cut)."""
    head = "".join(f"<th>{name}</th>" for name in HEADERS)
    body = "\n".join(
        "<tr class='{}'>{}</tr>".format(
            "coherent" if cell.coherent else "incoherent",
            "".join(f"<td>{html.escape(field)}</td>" for field in _fields(cell)),
        )
        for cell in cells
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}"
        "td:last-child{white-space:pre-wrap;max-width:60em}tr.incoherent{color:#a33}"
        f"</style></head><body><h1>{html.escape(title)}</h1>\n"
        f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"
        "</body></html>\n"
    )

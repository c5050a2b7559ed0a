"""What ``powersteer vectors`` and ``powersteer map`` share: the model and prompt flags, and
the model and prompts they name."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from harness.engine.prompts import (
    DEFAULT_TARGET_TOKENS,
    check_target_tokens,
    format_chat,
    read_prompts,
)
from harness.errors import PowersteerError

if TYPE_CHECKING:
    from harness.engine.models import LanguageModel


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, prompt, target-token, seed, dtype and device flags of vectors and map."""
    parser.add_argument(
        "--model", default="organism", help="hub id, local directory, or 'organism' (default)"
    )
    parser.add_argument(
        "--prompts",
        required=True,
        type=Path,
        help="a .txt (one prompt a line), .jsonl or .json file of prompts",
    )
    parser.add_argument(
        "--field",
        default="prompt",
        help="the prompt field in .jsonl/.json records (default: prompt)",
    )
    parser.add_argument(
        "--chat", action="store_true", help="wrap each prompt in the model's chat template"
    )
    parser.add_argument(
        "--target-tokens",
        type=target_tokens_argument,
        default=DEFAULT_TARGET_TOKENS,
        metavar="{all,all_but_first,N}",
        help="target positions of each prompt: all, all_but_first (leave out the first "
        f"token, an attention sink) or the last N (default {DEFAULT_TARGET_TOKENS})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")  # fmt: skip


def target_tokens_argument(text: str) -> object:
    try:
        return check_target_tokens(text)
    except PowersteerError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def model_and_prompts(
    args: argparse.Namespace, *, system: str | None = None
) -> tuple[LanguageModel, list[str]]:
    """The flags shared by vectors and map: read the prompts, load the model, chat-format
    (after a ``system`` turn, if given)."""
    # Imports torch: not needed for --help.
    from harness.engine.models import load_model

    prompts = read_prompts(args.prompts, field=args.field)
    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    if args.chat or system is not None:
        prompts = format_chat(lm, prompts, system=system)
    return lm, prompts

"""The report's newer sections, each a list of blocks from plain frames: where to steer
(the layer screen), the extra scorers and judge agreement, and the vector geometry.

:class:`Block` lives here so that these sections and :mod:`harness.evaluation.report`,
which assembles and renders them, share one definition without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from harness.engine.sensitivity import pair_matrix
from harness.evaluation.geometry import geometry_report
from harness.evaluation.layer_selection import (
    chosen_pairs,
    raced_pairs,
    read_screens,
    screen_summary,
)
from harness.evaluation.scoring import agreement_table, extra_table


@dataclass(frozen=True)
class Block:
    """One piece of the report: ``kind`` is heading, text, table, image or example."""

    kind: str
    content: Any
    level: int = 2


def scorer_check_blocks(rows: pd.DataFrame) -> list[Block]:
    """One behavior's extra scorers at its selected cells and its judge's agreement with the
    rule scorers; nothing for either the run did not have."""
    blocks = []
    extras = extra_table(rows)
    if not extras.empty:
        blocks.append(Block("heading", "Extra scorers at selected cells (test prompts)", 3))
        blocks.append(Block("table", extras))
    agreement = agreement_table(rows)
    if not agreement.empty:
        blocks.append(Block("heading", "Judge agreement with rule scorers (all rows)", 3))
        blocks.append(Block("table", agreement))
    return blocks


def where_to_steer_blocks(run_dir: Path, results: pd.DataFrame) -> list[Block]:
    """The "Where to steer" section: each behavior's screen (table, heat map of the KL,
    cost) and the pair each method chose; nothing for a run without ``steering.layers``."""
    screens = read_screens(run_dir)
    if screens is None:
        return []
    from harness.evaluation.plots import plot_pair_heatmap  # pyplot loads only to plot

    chosen = chosen_pairs(results)
    blocks = [
        Block("heading", "Where to steer"),
        Block(
            "text",
            "Candidate layer pairs screened on the select prompts (σ₁ of the Jacobian and the "
            "next-token KL of the pair's top vector at ± the screen scale, ranked by KL); "
            + (
                "the kept pairs raced on each method's first vector (both signs, every grid "
                "scale), each method's full sweep ran at the pair it won, "
                if raced_pairs(results)
                else "the kept pairs got the full sweep, "
            )
            + "and each method chose its pair, vector, sign and scale on the select prompts. "
            "The test prompts informed none of it.",
        ),
        Block("table", chosen),
    ]
    sources = chosen.assign(source=chosen["pair"].str.split(":").str[0])
    mixed = sorted(b for b, g in sources.groupby("behavior") if g["source"].nunique() > 1)
    if mixed:
        blocks.append(
            Block(
                "text",
                f"In {', '.join(mixed)} the methods chose different source blocks: their "
                "vectors live in different residual streams, so the vector geometry's "
                "cosines between those methods compare directions of different spaces.",
            )
        )
    for behavior, screen in screens.groupby("behavior", sort=False):
        table, cost = screen_summary(screen)
        path = run_dir / f"screen_{behavior}.png"
        matrix = pair_matrix(
            list(zip(screen.source, screen.target, strict=True)),
            screen["kl"].tolist(),
            int(max(screen.target)) + 1,
        )
        plot_pair_heatmap(matrix, path, label="KL (nats)", title=f"{behavior}: screen")
        blocks += [
            Block("heading", f"{behavior}: screen", 3),
            Block("text", cost),
            Block("table", table),
            Block("image", path),
        ]
    return blocks


def geometry_blocks(
    behavior: str, vectors: dict[str, torch.Tensor], vector_metadata: dict[str, dict]
) -> list[Block]:
    report = geometry_report(behavior, vectors, vector_metadata)
    if report is None:  # a hand-built run, or one that saved no vectors
        return []
    table, text = report
    return [Block("heading", "Vector geometry", 3), Block("table", table), Block("text", text)]

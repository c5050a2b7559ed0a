"""The sensitivity map's shared passes: one tangent pass per source, one backward pass
per target, split to a row cap and retried with fewer rows when memory runs out.

Each function takes the pairs (source, target), the indices of the pairs taking part, and
each pair's block of rows; it returns each pair's products.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import torch

from harness.engine.jacobian import PassCount, jvp_at_targets, vectors_per_pass, vjp_pullback
from harness.engine.models import LanguageModel
from harness.engine.prompts import PromptBatch
from harness.engine.sites import Site
from harness.errors import PowersteerError

Pair = tuple[int, int]


def group_pairs(pairs: Sequence[Pair], members: Sequence[int], by: int) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i in members:
        groups[pairs[i][by]].append(i)
    return groups


def shrinking_on_oom(
    run: Callable[[int | None], dict[int, torch.Tensor]],
    max_rows: int | None,
    widest: int,
    n_prompts: int,
) -> tuple[dict[int, torch.Tensor], int | None]:
    """``run(max_rows)``, halving ``max_rows`` and running again while memory runs out.

    The step is idempotent (it only reads the iteration's state), so a rerun gives the
    same result; the passes that ran before the failure stay counted, as they did run.
    """
    while True:
        try:
            return run(max_rows), max_rows
        except torch.OutOfMemoryError:
            rows = min(max_rows or widest, widest)
            if rows <= n_prompts:
                raise PowersteerError(
                    f"one copy of the {n_prompts} prompts does not fit in memory; use fewer "
                    "or shorter prompts, or load the model in bfloat16 (--dtype bfloat16)"
                ) from None
            max_rows = max(n_prompts, rows // 2 // n_prompts * n_prompts)  # whole copies
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            warnings.warn(
                f"out of memory with up to {rows} rows per pass; running the step again with "
                f"{max_rows} (pass max_rows={max_rows} to start there)",
                stacklevel=3,
            )


def widest_pass(
    pairs: Sequence[Pair],
    members: Sequence[int],
    bases: dict[int, torch.Tensor],
    by: int,
    n_prompts: int,
) -> int:
    """Rows of the largest unsplit pass of a step: the most vectors sharing a source
    (``by=0``) or a target (``by=1``), times the prompts."""
    groups = group_pairs(pairs, members, by=by).values()
    return n_prompts * max(sum(bases[i].shape[0] for i in group) for group in groups)


def split_rows(widths: Sequence[int], per_pass: int | None) -> list[list[tuple[int, int, int]]]:
    """Split stacked blocks (member ``j`` has ``widths[j]`` vectors) into passes of at most
    ``per_pass`` vectors (all in one pass when None): per pass, ``(j, first, stop)`` ranges."""
    room_per_pass = per_pass or sum(widths)
    passes: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    room = room_per_pass
    for j, width in enumerate(widths):
        first = 0
        while first < width:
            take = min(room, width - first)
            current.append((j, first, first + take))
            first, room = first + take, room - take
            if room == 0:
                passes.append(current)
                current, room = [], room_per_pass
    if current:
        passes.append(current)
    return passes


def stacked(
    chunk: Sequence[tuple[int, int, int]], members: Sequence[int], blocks: dict[int, torch.Tensor]
) -> torch.Tensor:
    """The rows a pass carries: each ``(j, first, stop)`` range of member ``j``'s block."""
    return torch.cat([blocks[members[j]][first:stop] for j, first, stop in chunk])


def unstacked(
    chunk: Sequence[tuple[int, int, int]], members: Sequence[int]
) -> list[tuple[int, slice]]:
    """Inverse of :func:`stacked`: each pair index with its rows in the pass's output."""
    placed, offset = [], 0
    for j, first, stop in chunk:
        placed.append((members[j], slice(offset, offset + stop - first)))
        offset += stop - first
    return placed


def jvp_by_source(
    lm: LanguageModel,
    batch: PromptBatch,
    pairs: Sequence[Pair],
    active: Sequence[int],
    bases: dict[int, torch.Tensor],
    passes: PassCount,
    dtype: torch.dtype,
    max_rows: int | None = None,
    *,
    sites: Mapping[str, Site] | None = None,
) -> dict[int, torch.Tensor]:
    """``J_pair V_pair`` for every active pair: one tangent forward pass per source (more
    when ``max_rows`` splits it), each stopping after the last target it serves."""
    n = batch.n_prompts
    pieces: dict[int, list[torch.Tensor]] = defaultdict(list)
    for source, members in group_pairs(pairs, active, by=0).items():
        members = sorted(members, key=lambda i: pairs[i][1])  # early targets stop early
        widths = [bases[i].shape[0] for i in members]
        for chunk in split_rows(widths, vectors_per_pass(max_rows, n)):
            block = stacked(chunk, members, bases)
            targets = sorted({pairs[members[j]][1] for j, _, _ in chunk})
            images = jvp_at_targets(lm, batch, source, targets, block, **(sites or {}))
            passes.add(block.shape[0] * n, n)
            for i, rows in unstacked(chunk, members):
                pieces[i].append(images[pairs[i][1]][rows].to(dtype))
            del images
    return {i: torch.cat(parts) for i, parts in pieces.items()}


def vjp_by_target(
    lm: LanguageModel,
    batch: PromptBatch,
    pairs: Sequence[Pair],
    members_all: Sequence[int],
    cotangents: dict[int, torch.Tensor],
    passes: PassCount,
    dtype: torch.dtype,
    max_rows: int | None = None,
    *,
    sites: Mapping[str, Site] | None = None,
) -> dict[int, torch.Tensor]:
    """``J_pairᵀ U_pair`` for the given pairs: per target, one forward pass over the prompts
    and one backward pass mapped over every cotangent of its pairs (more backward passes
    when ``max_rows`` splits them)."""
    n = batch.n_prompts
    pieces: dict[int, list[torch.Tensor]] = defaultdict(list)
    for target, members in group_pairs(pairs, members_all, by=1).items():
        sources = sorted({pairs[i][0] for i in members})
        pull = vjp_pullback(lm, batch, sources, target, **(sites or {}))
        passes.add(n, n)
        widths = [cotangents[i].shape[0] for i in members]
        for chunk in split_rows(widths, vectors_per_pass(max_rows, n)):
            block = stacked(chunk, members, cotangents)
            by_source = dict(zip(sources, pull(block), strict=True))
            passes.add(block.shape[0] * n, n)
            for i, rows in unstacked(chunk, members):
                pieces[i].append(by_source[pairs[i][0]][rows].to(dtype))
        del pull
    return {i: torch.cat(parts) for i, parts in pieces.items()}

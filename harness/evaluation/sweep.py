"""The sweep: each method's vectors, both signs, every scale, on a behavior's prompts.

Two phases, so nothing reported is chosen on the prompts it is reported on:

1. On the ``select`` part of the prompts: the unsteered model, then every
   (method, vector, sign, scale) cell. :func:`harness.evaluation.analysis.select_cells` picks each
   method's best (vector, sign, scale) there.
2. On the ``test`` part: the unsteered model and each method's selected (vector, sign) at
   every scale. Every number in a report comes from these rows.

Scales are in units of the source block's median residual norm on the select prompts, so
``scale = 1`` adds a vector as long as a typical residual. Each cell (one steering delta on
one split's prompts) is cached on disk under a hash of everything that determines it
(model weights, final prompt strings, block, the delta's bytes, generation settings, and
a logits scorer's spec), so an interrupted sweep resumes where it stopped and a changed
generation scorer reuses every generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import pandas as pd

from harness.engine.methods import SteeringVectors, find_vectors, method_info
from harness.engine.models import LanguageModel
from harness.engine.prompts import encode_prompts
from harness.engine.steering import scale_unit as measure_scale_unit
from harness.errors import PowersteerError
from harness.evaluation.analysis import select_cells
from harness.evaluation.behaviors import Behavior
from harness.evaluation.cache import ResultCache, content_key, model_fingerprint
from harness.evaluation.cell_runner import CellRunner
from harness.evaluation.cells import CONTROL, UNSTEERED, UNSTEERED_CELL, Cell, control_draw
from harness.evaluation.coherence import mark_coherent
from harness.evaluation.executors import Executor, LocalExecutor
from harness.evaluation.layer_selection import (
    Screen,
    candidate_pairs,
    choose_pairs,
    rows_at_pair,
    screen_pairs,
)
from harness.evaluation.preparation import PreparedBehavior, prepare_behavior
from harness.evaluation.scale_refinement import refine_scale
from harness.evaluation.scorers import (
    GenerationScorer,
    Scorer,
    score_completion,
)
from harness.evaluation.scorers.paired import RAW, PairedScorer, pair_with_unsteered
from harness.evaluation.scoring import (
    add_judge_records,
    attach_cache,
)

# Seeds of the random control's later draws: draw d uses seed + (d - 1) * this, so every
# draw is an independent Gaussian stream (each stream is offset again from the other
# methods' by random.CONTROL_SEED_OFFSET).
DRAW_SEED_STRIDE = 7_919


@dataclass
class BehaviorSweep:
    """Everything one behavior's sweep produced."""

    behavior: Behavior
    results: pd.DataFrame
    vectors: dict[str, SteeringVectors]
    scale_unit: float
    selection: dict[str, Cell]
    cells_computed: int = 0
    cells_reused: int = 0
    notes: list[str] = field(default_factory=list)
    screen: Screen | None = None  # with steering.layers: the screen of the candidate pairs
    pairs: dict[str, tuple[int, int]] = field(default_factory=dict)  # method -> its pair
    scale_units: dict[str, float] = field(default_factory=dict)  # method -> at its source


def sweep_behavior(
    lm: LanguageModel,
    behavior: Behavior,
    cache: ResultCache,
    *,
    seed: int = 0,
    batch_rows: int = 512,
    progress: bool = True,
    executor: Executor | None = None,
) -> BehaviorSweep:
    """Run both phases of the sweep for ``behavior``; see the module docstring. With
    ``steering.layers`` the select phase runs on each pair the screen keeps
    (:mod:`harness.evaluation.layer_selection`); with ``steering.refine_steps`` each
    method's scale is refined (:mod:`harness.evaluation.scale_refinement`). The
    ``executor`` evaluates uncached cell batches (default: this process)."""
    prepared = prepare_behavior(lm, behavior)
    scorer = behavior.make_scorer()
    fingerprint = model_fingerprint(lm)
    screen = None
    pairs = [(prepared.source, prepared.target)]
    if behavior.steering.layers is not None:
        screen = screen_pairs(
            lm,
            prepared.split_prompts("select"),
            candidate_pairs(behavior, lm.n_layers),
            scale=behavior.steering.resolved_screen_scale(),
            keep=behavior.steering.screen_keep,
            cache_root=cache.root,
            fingerprint=fingerprint,
            seed=seed,
            target_tokens=behavior.steering.target_tokens,
            progress=progress,
            name=behavior.name,
        )
        pairs = screen.kept

    def runner_at(pair: tuple[int, int]) -> CellRunner:
        """The pair's cell runner: its scale unit and each method's vectors measured there."""
        at_pair = replace(prepared, source=pair[0], target=pair[1])
        select_batch = encode_prompts(lm, at_pair.split_prompts("select"))
        scale_unit = measure_scale_unit(lm, select_batch, at_pair.source)
        vectors = {
            method: _method_vectors(lm, at_pair, method, cache, fingerprint, seed, progress)
            for method in behavior.steering.methods
        }
        if CONTROL in vectors:
            for draw in range(2, behavior.steering.random_draws + 1):
                draw_seed = seed + (draw - 1) * DRAW_SEED_STRIDE
                found = _method_vectors(lm, at_pair, CONTROL, cache, fingerprint, draw_seed, False)
                vectors[control_draw(draw)] = replace(found, method=control_draw(draw))
        runner = CellRunner(
            lm, at_pair, scorer, cache, fingerprint, vectors, scale_unit, batch_rows
        )
        runner.extras = behavior.make_extra_scorers()
        attach_cache([scorer, *runner.extras], cache)
        runner.executor = executor or LocalExecutor()
        return runner

    arms = {pair: _Arm(runner_at(pair), progress) for pair in pairs}
    scales = [s for s in behavior.steering.scales if s != 0]
    if len(arms) > 1 and behavior.steering.race_pairs and scales:
        select_frame, chosen = _race_then_sweep(arms, scales, scorer.metric, behavior)
    else:
        frames = [
            arm.run("select", arm.grid_cells(scales), unsteered=i == 0)
            for i, arm in enumerate(arms.values())
        ]
        select_frame = pd.concat(frames, ignore_index=True)
        mark_coherent(select_frame, behavior)
        chosen = choose_pairs(select_frame, scorer.metric, pairs) if scales else {}
    selection: dict[str, Cell] = {}
    for method, (pair, cell) in chosen.items():

        def probe(cell: Cell, arm: _Arm = arms[pair]) -> pd.DataFrame:
            nonlocal select_frame
            rows = arm.run("select", [cell])
            select_frame = pd.concat([select_frame, rows], ignore_index=True)
            mark_coherent(select_frame, behavior)
            return select_frame.iloc[len(select_frame) - len(rows) :]

        at_pair = rows_at_pair(select_frame, pair)
        selection[method], _ = refine_scale(
            at_pair, cell, scales, behavior.steering.refine_steps, scorer.metric, probe
        )
    first = next(iter(arms.values()))
    test_frames = [first.run("test", [], unsteered=True)]
    for method, cell in selection.items():
        test_scales = sorted({*scales, cell.scale})
        arm = arms[chosen[method][0]]
        test_frames.append(
            arm.run("test", [Cell(method, cell.vector, cell.sign, s) for s in test_scales])
        )
    results = pd.concat([select_frame, *test_frames], ignore_index=True)
    results["refinement"] = ~results["scale"].isin([0, *scales])
    results["selected_scale"] = results["method"].map(
        {method: chosen.scale for method, chosen in selection.items()}
    )
    chosen_vector = results["method"].map({m: c.vector for m, c in selection.items()})
    chosen_sign = results["method"].map({m: c.sign for m, c in selection.items()})
    chosen_source = results["method"].map({m: p[0] for m, (p, _) in chosen.items()})
    chosen_target = results["method"].map({m: p[1] for m, (p, _) in chosen.items()})
    results["selected"] = (
        (results["vector"] == chosen_vector)
        & (results["sign"] == chosen_sign)
        & (results["source_layer"] == chosen_source)
        & (results["target_layer"] == chosen_target)
    )
    mark_coherent(results, behavior)
    method_arms = {m: arms[pair] for m, (pair, _) in chosen.items()}
    vectors = {method: method_arms.get(method, first).vectors[method] for method in first.vectors}
    return BehaviorSweep(
        behavior=behavior,
        results=results,
        vectors=vectors,
        scale_unit=first.scale_unit,
        selection=selection,
        cells_computed=sum(arm.runner.computed for arm in arms.values()),
        cells_reused=sum(arm.runner.reused for arm in arms.values()),
        screen=screen,
        pairs={m: pair for m, (pair, _) in chosen.items()},
        scale_units={m: method_arms.get(m, first).scale_unit for m in first.vectors},
    )


def _race_then_sweep(
    arms: dict[tuple[int, int], _Arm], scales: list[float], metric: str, behavior: Behavior
) -> tuple[pd.DataFrame, dict[str, tuple[tuple[int, int], Cell]]]:
    """Each method's pair by a race, then its full grid at that pair only.

    The race gives every method the same budget at every kept pair: its first vector,
    both signs, every grid scale (for the random control, the first direction of each
    draw). Each method takes the pair where its best race cell scores highest
    (:func:`choose_pairs`' rule), and only there are its other vectors swept; its
    (vector, sign, scale) is then chosen from that pair's full grid, race cells included.
    A full grid at every kept pair costs one grid per pair; this costs one grid plus
    ``1 / num_vectors`` of one per other pair (every vector of a one-vector method such as
    caa races). Select prompts only, as everywhere in the select phase.
    """
    pairs = list(arms)
    race = [
        arm.run("select", arm.grid_cells(scales, first_only=True), unsteered=i == 0)
        for i, arm in enumerate(arms.values())
    ]
    race_frame = pd.concat(race, ignore_index=True)
    mark_coherent(race_frame, behavior)
    raced = {method: pair for method, (pair, _) in choose_pairs(race_frame, metric, pairs).items()}
    rest = []
    for pair, arm in arms.items():
        methods = [method for method, won in raced.items() if won == pair]
        cells = [c for c in arm.grid_cells(scales, methods) if c.vector != 0]
        if cells:
            rest.append(arm.run("select", cells))
    select_frame = pd.concat([race_frame, *rest], ignore_index=True)
    mark_coherent(select_frame, behavior)
    # One selection per won pair; the methods keep the race's order.
    at_pair = {
        pair: select_cells(rows_at_pair(select_frame, pair), metric) for pair in set(raced.values())
    }
    chosen = {m: (pair, at_pair[pair][m]) for m, pair in raced.items() if m in at_pair[pair]}
    return select_frame, chosen


class _Arm:
    """One layer pair of a sweep: its scale unit, each method's vectors there, and the
    runner of its cells; every row it returns carries the pair."""

    def __init__(self, runner: CellRunner, progress: bool) -> None:
        self.runner, self.progress = runner, progress
        self.prepared, self.vectors = runner.prepared, runner.vectors
        self.scale_unit = runner.scale_unit

    def grid_cells(
        self, scales: list[float], methods: Sequence[str] | None = None, first_only: bool = False
    ) -> list[Cell]:
        """Every (vector, sign, scale) cell of ``methods`` (default: all), or only each
        method's first vector's with ``first_only``."""
        return [
            Cell(method, index, sign, scale)
            for method, result in self.vectors.items()
            if methods is None or method in methods
            for index in range(1 if first_only else result.num_vectors)
            for sign in (1, -1)
            for scale in scales
        ]

    def run(self, split: str, cells: list[Cell], *, unsteered: bool = False) -> pd.DataFrame:
        """The rows of ``cells`` on ``split``; the unsteered rows only with ``unsteered``.
        A paired scorer judges each steered row against the unsteered row of its prompt in
        the same frame, so for one (main or extra) the unsteered cell always runs (cached
        after once)."""
        paired = [self.runner.scorer, *self.runner.extras]
        if unsteered or any(isinstance(scorer, PairedScorer) for scorer in paired):
            cells = [UNSTEERED_CELL, *(c for c in cells if c != UNSTEERED_CELL)]
        frame = self.runner.run(split, cells, self.progress)
        if not unsteered:
            frame = frame[frame["method"] != UNSTEERED].reset_index(drop=True)
        frame["source_layer"] = self.prepared.source
        frame["target_layer"] = self.prepared.target
        frame["refinement"] = False
        return frame


def score_generations(
    scorer: Scorer, results: pd.DataFrame, rows: Sequence[dict], *, source: object = None
) -> None:
    """(Re)compute ``success`` and ``score`` of saved generations with a generation scorer;
    an output its metric cannot use is an error naming ``source`` (the behavior file)."""
    if isinstance(scorer, PairedScorer) and (scorer.base is None or RAW in results):
        pair_with_unsteered(scorer, results)  # completions, or base values the run measured
        return
    if not isinstance(scorer, GenerationScorer):
        raise PowersteerError(
            f"scorer {scorer.name!r} reads the model's logits, not saved generations; "
            "rescoring cannot change it; run `powersteer run` again (cached cells are reused)"
        )
    outcomes = [
        score_completion(
            scorer, completion, rows[int(index)], prompt_index=int(index), source=source
        )
        for completion, index in zip(results["completion"], results["prompt_index"], strict=True)
    ]
    results["success"] = [o.success for o in outcomes]
    results["score"] = [o.value for o in outcomes]
    add_judge_records(scorer, results, rows)


def _method_vectors(
    lm: LanguageModel,
    prepared: PreparedBehavior,
    method: str,
    cache: ResultCache,
    fingerprint: str,
    seed: int,
    progress: bool,
) -> SteeringVectors:
    """The method's vectors on the select prompts, from the cache when computed before."""
    steering = prepared.behavior.steering
    info = method_info(method)
    options = dict(steering.options.get(method, {}))
    if info.accepts("target_tokens") and steering.target_tokens is not None:
        options.setdefault("target_tokens", steering.target_tokens)
    prompts = prepared.split_prompts("select")
    num_vectors = 1 if info.supervised else steering.num_vectors
    key = content_key(
        kind="vectors",
        model=fingerprint,
        method=method,
        prompts=prompts,
        contrast=prepared.contrast if info.supervised else None,
        source=prepared.source,
        target=prepared.target,
        num_vectors=num_vectors,
        seed=seed,
        options=options,
    )
    cached = cache.get_vectors(key)
    if cached is not None:
        return cached
    if info.shows_progress:
        options["progress"] = progress
    if info.supervised:
        options["contrast"] = prepared.contrast
    result = find_vectors(
        method, lm, prompts, prepared.source, prepared.target, num_vectors, seed=seed, **options
    )
    result.options.pop("progress", None)
    cache.put_vectors(key, result)
    return result

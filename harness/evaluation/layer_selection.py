"""Where to steer, chosen by data: screen candidate layer pairs, keep the best few, and let
each method choose its pair on the select prompts.

A behavior with ``steering.layers`` (``auto``, a list of ``SOURCE:TARGET`` pairs, a
``sources:``/``targets:`` range or a candidates file) is swept in three steps, all on the
``select`` prompts, so the held-out prompts inform no choice, the layer pair included:

1. :func:`screen_pairs`, a cheap screen with the sensitivity-map machinery
   (:func:`harness.engine.sensitivity.sensitivity_map` for σ₁ and each pair's top vector,
   :func:`~harness.engine.sensitivity.next_token_kl` at ± ``screen_scale``), ranked by
   :func:`~harness.engine.sensitivity.rank_pairs`; the best ``screen_keep`` pairs go on.
   The screen is cached under the model and the select prompts, so behaviors that share
   them (and a resumed run) pay for it once.
2. A race on the kept pairs (``race_pairs``, the default): each method's first vector,
   both signs, every grid scale, at every kept pair; :func:`choose_pairs` gives each
   method the pair where its best race cell wins, and only there does the full sweep
   (every vector, sign and scale) run (:mod:`harness.evaluation.sweep`). With
   ``race_pairs: false`` the full sweep runs at every kept pair instead.
3. :func:`choose_pairs`: each method's pair, vector, sign and scale, by the same rule
   :func:`harness.evaluation.analysis.select_cells` applies within one pair, compared
   across pairs on that rule's objective; a tie goes to the better-screened pair.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from harness.engine.layers import resolve_candidates
from harness.engine.models import LanguageModel
from harness.engine.sensitivity import next_token_kl, rank_pairs, sensitivity_map
from harness.engine.sensitivity_io import read_candidates
from harness.engine.shared_passes import Pair
from harness.errors import PowersteerError
from harness.evaluation.analysis import select_cells
from harness.evaluation.behaviors import Behavior
from harness.evaluation.cache import content_key
from harness.evaluation.cells import UNSTEERED, Cell, rows_of
from harness.files import atomic_write, atomic_write_json

# The screen is a ranking, not a result: a few solver steps for two vectors per pair
# order the pairs as the converged map would (σ₁ of a top Ritz pair converges first).
# On SmolLM2's 18 auto pairs, 3 steps without oversampling kept the same top 3 as 6 steps
# with 4 oversampling vectors (Spearman 0.92 over all 18) at 0.22x the wall time
# (benchmarks/bench_screen.py, RESULTS.md).
SCREEN_VECTORS = 2
SCREEN_OVERSAMPLE = 0
SCREEN_ITERATIONS = 3
SCREEN_DIR = "screens"
PAIR_COLUMNS = ("source_layer", "target_layer")


@dataclass
class Screen:
    """The screen of one behavior's candidate pairs.

    ``table``: one row per pair, best first (``source``, ``target``, ``sigma1``, ``kl``,
    ``changed``, ``rank``, ``kept``). Cost as measured when it was computed (a reused
    screen reports the cost it had then, and ``reused``).
    """

    table: pd.DataFrame
    forward_passes: int
    wall_time_s: float
    reused: bool = False

    @property
    def kept(self) -> list[Pair]:
        rows = self.table[self.table["kept"]]
        return [(int(s), int(t)) for s, t in zip(rows["source"], rows["target"], strict=True)]


def candidate_pairs(behavior: Behavior, n_layers: int) -> list[Pair]:
    """The pairs ``behavior.steering.layers`` names, resolved for an ``n_layers`` model; a
    mistake is one error naming the behavior file and ``steering.layers``."""
    where = behavior.path or behavior.name
    spec = behavior.steering.layers
    try:
        if spec is None:
            raise PowersteerError("no candidates given")
        if isinstance(spec, str | list):
            return resolve_candidates(spec, n_layers)
        if hasattr(spec, "candidates"):
            path = Path(spec.candidates)
            path = path if path.is_absolute() else behavior.base_dir / path
            return resolve_candidates(read_candidates(path), n_layers)
        return resolve_candidates({"sources": spec.sources, "targets": spec.targets}, n_layers)
    except PowersteerError as error:
        raise PowersteerError(f"{where}: steering.layers: {error}") from None


def screen_pairs(
    lm: LanguageModel,
    prompts: Sequence[str],
    pairs: Sequence[Pair],
    *,
    scale: float,
    keep: int,
    cache_root: Path,
    fingerprint: str,
    seed: int = 0,
    target_tokens: object = None,
    progress: bool = False,
    name: str = "",
) -> Screen:
    """Rank ``pairs`` on ``prompts`` (the select prompts) and keep the best ``keep``;
    ``progress`` shows the screen as a stage (``name``: the behavior) with the map's bar."""
    key = content_key(
        kind="screen",
        model=fingerprint,
        prompts=list(prompts),
        pairs=[list(p) for p in pairs],
        scale=scale,
        vectors=SCREEN_VECTORS,
        oversample=SCREEN_OVERSAMPLE,
        iterations=SCREEN_ITERATIONS,
        seed=seed,
        target_tokens=target_tokens,
    )
    path = cache_root / SCREEN_DIR / key[:2] / f"{key}.json"
    stored = _read_screen(path)
    if stored is not None:
        table, passes, wall = stored
        reused = True
    else:
        started = time.perf_counter()
        stage = tqdm(total=2, desc=f"{name} screen of {len(pairs)} layer pairs".strip(),
                     unit="stage", disable=not progress, leave=False)  # fmt: skip
        result = sensitivity_map(
            lm, prompts, list(pairs), SCREEN_VECTORS, max_iter=SCREEN_ITERATIONS,
            oversample=SCREEN_OVERSAMPLE, seed=seed, target_tokens=target_tokens,
            progress=progress,
        )  # fmt: skip
        stage.update(1)
        kl = next_token_kl(lm, prompts, result, scale)
        stage.update(1)
        stage.close()
        table = rank_pairs(result, kl)
        # The KL passes: one forward per pair and sign, plus the unsteered one.
        passes = result.forward_passes + 2 * len(pairs) + 1
        wall = time.perf_counter() - started
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            path, {"table": table.to_dict(orient="list"), "forward_passes": passes, "wall": wall}
        )
        reused = False
    table = table.copy()
    table["kept"] = table["rank"] < keep
    return Screen(table=table, forward_passes=passes, wall_time_s=wall, reused=reused)


def _read_screen(path: Path) -> tuple[pd.DataFrame, int, float] | None:
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        return pd.DataFrame(stored["table"]), int(stored["forward_passes"]), float(stored["wall"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged screen is computed again


def choose_pairs(
    select_rows: pd.DataFrame, metric: str, pairs: Sequence[Pair]
) -> dict[str, tuple[Pair, Cell]]:
    """Each method's pair and (vector, sign, scale) on the select rows of every pair in
    ``pairs`` (best-screened first; the rows carry ``source_layer``/``target_layer``).

    Within a pair, :func:`select_cells`; across pairs, the higher objective of the chosen
    cell (coherent success rate, or mean score) wins, a tie going to the earlier pair.
    """
    best: dict[str, tuple[float, Pair, Cell]] = {}
    for pair in pairs:
        rows = rows_at_pair(select_rows, pair)
        for method, cell in select_cells(rows, metric).items():
            value = cell_objective(rows, metric, cell)
            if method not in best or value > best[method][0]:
                best[method] = (value, pair, cell)
    return {method: (pair, cell) for method, (_, pair, cell) in best.items()}


def rows_at_pair(rows: pd.DataFrame, pair: Pair) -> pd.DataFrame:
    """The steered rows swept at ``pair``."""
    source, target = pair
    at = (rows["source_layer"] == source) & (rows["target_layer"] == target)
    return rows[at & (rows["method"] != UNSTEERED)]


def cell_objective(rows: pd.DataFrame, metric: str, cell: Cell) -> float:
    """The selection objective of one cell on ``rows``: the coherent success rate for a
    success metric, else the mean score (the rule of :func:`select_cells`)."""
    part = rows_of(rows, cell)
    if metric == "success":
        return float((part["success"].astype(bool) & part["coherent"]).mean())
    return float(part["score"].astype(float).mean())


SCREEN_FILE = "screen.parquet"


def write_screens(run_dir: Path, screens: dict[str, Screen]) -> Path | None:
    """Write every behavior's screen to ``run_dir/screen.parquet`` (one row per behavior
    and pair, with the screen's cost on each row); nothing when no behavior screened."""
    if not screens:
        return None
    frames = [
        screen.table.assign(
            behavior=name,
            screen_forward_passes=screen.forward_passes,
            screen_wall_time_s=screen.wall_time_s,
            screen_reused=screen.reused,
        )
        for name, screen in screens.items()
    ]
    table = pd.concat(frames, ignore_index=True)
    return atomic_write(run_dir / SCREEN_FILE, lambda path: table.to_parquet(path, index=False))


def read_screens(run_dir: Path) -> pd.DataFrame | None:
    """The run's ``screen.parquet``, or None when no behavior screened layer pairs."""
    path = Path(run_dir) / SCREEN_FILE
    return pd.read_parquet(path) if path.is_file() else None


def chosen_pairs(results: pd.DataFrame) -> pd.DataFrame:
    """Per behavior and method: the pair it was measured at on the test prompts and its
    selected scale (``refined`` when that scale came from the refinement, not the grid)."""
    test = results[(results["split"] == "test") & (results["method"] != UNSTEERED)]
    if "source_layer" not in test:
        return pd.DataFrame()
    records = []
    for (behavior, method), rows in test.groupby(["behavior", "method"], sort=False):
        scale = float(rows["selected_scale"].iloc[0])
        refined = bool(rows.loc[rows["scale"] == scale, "refinement"].any())
        records.append(
            {
                "behavior": behavior,
                "method": method,
                "pair": f"{int(rows['source_layer'].iloc[0])}:{int(rows['target_layer'].iloc[0])}",
                "selected scale": scale,
                "refined": refined,
            }
        )
    return pd.DataFrame.from_records(records)


def raced_pairs(results: pd.DataFrame) -> bool:
    """Whether the select phase raced its kept pairs: some method was swept with fewer
    vectors at one pair than at another (only its first vector where it lost the race)."""
    select = results[(results["split"] == "select") & (results["method"] != UNSTEERED)]
    if "source_layer" not in select:
        return False
    counts = select.groupby(["behavior", "method", *PAIR_COLUMNS])["vector"].nunique()
    per_method = counts.groupby(level=["behavior", "method"])
    return bool((per_method.max() > per_method.min()).any())


def screen_summary(screen: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """One behavior's screen rows as the report's table (best first) and a sentence on its
    cost."""
    table = screen[["rank", "source", "target", "sigma1", "kl", "changed", "kept"]].copy()
    table[["sigma1", "kl", "changed"]] = table[["sigma1", "kl", "changed"]].round(3)
    table = table.sort_values("rank").rename(
        columns={"sigma1": "σ₁", "kl": "next-token KL (nats)", "changed": "top token changed"}
    )
    first = screen.iloc[0]
    reuse = " (reused from the cache: computed once for the same model and prompts)"
    cost = (
        f"The screen of {len(screen)} pairs cost {int(first['screen_forward_passes'])} "
        f"forward-pass equivalents and {float(first['screen_wall_time_s']):.1f} s"
        + (reuse if bool(first["screen_reused"]) else "")
        + f"; the best {int(screen['kept'].sum())} went on to the full sweep."
    )
    return table.reset_index(drop=True), cost


def at_measured_pair(select_rows: pd.DataFrame, results: pd.DataFrame) -> pd.Series:
    """Which select rows were swept at the pair their method was measured at on the test
    prompts (all of them for a one-pair run, or one without layer columns)."""
    if "source_layer" not in select_rows:
        return pd.Series(True, index=select_rows.index)
    test = results[(results["split"] == "test") & (results["method"] != UNSTEERED)]
    measured = test.groupby("method")[list(PAIR_COLUMNS)].first()
    pair = select_rows[["method", *PAIR_COLUMNS]].merge(
        measured, left_on="method", right_index=True, how="left", suffixes=("", "_measured")
    )
    same = (pair["source_layer"] == pair["source_layer_measured"]) & (
        pair["target_layer"] == pair["target_layer_measured"]
    )
    return pd.Series(same.to_numpy() | (select_rows["method"] == UNSTEERED).to_numpy(),
                     index=select_rows.index)  # fmt: skip

"""Where to steer: candidate pairs, the screen, each method's choice of pair, and the
refinement of scales at a coherence cliff (issue 17)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from harness import load_model
from harness.engine.layers import auto_candidates, resolve_candidates
from harness.engine.sensitivity import SensitivityMap, rank_pairs
from harness.engine.sensitivity_io import read_candidates, write_candidates
from harness.errors import PowersteerError
from harness.evaluation.analysis import select_cells, selected_table
from harness.evaluation.behaviors import load_behavior, split_indices
from harness.evaluation.cells import Cell
from harness.evaluation.layer_selection import (
    choose_pairs,
    raced_pairs,
    read_screens,
    rows_at_pair,
)
from harness.evaluation.pipeline import run
from harness.evaluation.scale_refinement import refine_scale

pytestmark = pytest.mark.xdist_group("organism_layer_selection")
ORGANISM_BEHAVIORS = Path(__file__).resolve().parent.parent / "behaviors" / "organism"
# The organism card's difference-of-means check steers at block 3 (of 6): the planted
# refusal direction is known to work there.
PLANTED_BLOCK = 3


# --- candidates and ranking ---------------------------------------------------------


def test_auto_screens_every_pair_of_a_shallow_model_and_a_grid_of_a_deep_one():
    assert auto_candidates(4) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    deep = auto_candidates(30)
    assert len(deep) <= 18
    assert {s for s, _ in deep} == {0, 4, 9, 13, 18, 22}  # round(i * 22 / 5): 3/4 of 29 blocks
    assert all(0 <= s < t <= 29 for s, t in deep)


def test_candidates_from_pairs_fractions_and_ranges():
    assert resolve_candidates(["1:4", "0.2:0.8", "1:4"], 6) == [(1, 4)]
    assert resolve_candidates({"sources": [1, 3], "targets": [2, -1]}, 6) == [
        (1, 2), (1, 5), (3, 5)
    ]  # fmt: skip
    with pytest.raises(PowersteerError, match="not after source"):
        resolve_candidates(["4:2"], 6)
    with pytest.raises(PowersteerError, match="SOURCE:TARGET"):
        resolve_candidates(["4"], 6)


def test_rank_pairs_orders_by_kl_then_sigma():
    result = SensitivityMap(
        pairs=[(0, 1), (0, 2), (1, 2)],
        singular_values=torch.tensor([[5.0], [9.0], [1.0]]),
        vectors=torch.zeros(3, 1, 4),
        iterations=[1, 1, 1],
        converged=[True, True, True],
        n_layers=3,
    )
    kl = pd.DataFrame(
        {"source": [0, 0, 1], "target": [1, 2, 2], "kl": [0.2, 0.2, 0.7], "changed": 0.0}
    )
    ranked = rank_pairs(result, kl)
    assert list(zip(ranked.source, ranked.target, strict=True)) == [(1, 2), (0, 2), (0, 1)]
    assert ranked["rank"].tolist() == [0, 1, 2]


def test_candidates_file_round_trip_and_bad_file(tmp_path):
    ranked = pd.DataFrame(
        {"source": [1, 0], "target": [4, 2], "sigma1": [3.0, 2.0], "kl": [0.5, 0.1],
         "changed": [0.2, 0.0], "rank": [0, 1]}
    )  # fmt: skip
    path = write_candidates(tmp_path / "c.json", ranked, keep=1, model="organism")
    assert read_candidates(path) == ["1:4"]
    assert len(json.loads(path.read_text())["ranked"]) == 2
    (tmp_path / "bad.json").write_text('{"pairs": 3}')
    with pytest.raises(PowersteerError, match="bad.json: not a powersteer candidates file"):
        read_candidates(tmp_path / "bad.json")


def test_behavior_rejects_a_malformed_pair(tmp_path):
    data = yaml.safe_load((ORGANISM_BEHAVIORS / "anti_refusal.yaml").read_text())
    data["prompts"]["path"] = str(ORGANISM_BEHAVIORS / data["prompts"]["path"])
    data["contrast"]["path"] = str(ORGANISM_BEHAVIORS / data["contrast"]["path"])
    data["steering"]["layers"] = ["1-4"]
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PowersteerError, match=r"b.yaml.*steering.layers"):
        load_behavior(path)


# --- scale refinement, against a cliff placed by hand -----------------------------


def _cell_rows(cell: Cell, score: float, coherent: bool, n: int = 4) -> pd.DataFrame:
    return pd.DataFrame(
        {"method": cell.method, "vector": cell.vector, "sign": cell.sign, "scale": cell.scale,
         "score": [score] * n, "success": None, "coherent": [coherent] * n}
    )  # fmt: skip


def test_refinement_bisects_to_the_cliff_between_grid_points():
    # Score grows with scale; every output breaks past scale 3.3 (the cliff).
    cliff = 3.3

    def outcome(cell: Cell) -> pd.DataFrame:
        return _cell_rows(cell, cell.scale, cell.scale < cliff)

    grid = [1.0, 2.0, 4.0]
    rows = pd.concat([outcome(Cell("power", 0, 1, s)) for s in grid], ignore_index=True)
    probed_scales = []

    def probe(cell: Cell) -> pd.DataFrame:
        probed_scales.append(cell.scale)
        return outcome(cell)

    refined, probed = refine_scale(rows, Cell("power", 0, 1, 2.0), grid, 3, "score", probe)
    assert probed_scales == [3.0, 3.5, 3.25]  # bisection of [2, 4]
    assert refined == Cell("power", 0, 1, 3.25)  # the largest coherent probe: best score
    assert len(probed) == 12


def test_no_refinement_without_a_cliff_or_steps():
    grid = [1.0, 2.0]
    rows = pd.concat([_cell_rows(Cell("power", 0, 1, s), 1.0, True) for s in grid])

    def probe(cell: Cell) -> pd.DataFrame:
        raise AssertionError("no probe expected")

    chosen = Cell("power", 0, 1, 1.0)
    assert refine_scale(rows, chosen, grid, 3, "score", probe)[0] == chosen  # 2.0 coherent
    assert refine_scale(rows, chosen, grid, 0, "score", probe)[0] == chosen


# --- on the organism ------------------------------------------------------------------


@pytest.fixture(scope="module")
def organism():
    return load_model("organism")


def _anti_refusal(directory: Path, name: str, *, prompts: Path | None = None, **steering):
    data = yaml.safe_load((ORGANISM_BEHAVIORS / "anti_refusal.yaml").read_text())
    data["name"] = name
    for section in ("prompts", "contrast"):
        data[section]["path"] = str(ORGANISM_BEHAVIORS / data[section]["path"])
        data[section]["limit"] = 40
    if prompts is not None:
        data["prompts"]["path"] = str(prompts)
    data["steering"] = {"methods": ["caa"], "num_vectors": 1, "scales": [0, 0.5, 1, 2],
                        **steering}  # fmt: skip
    data["generation"]["max_new_tokens"] = 8
    data["expect"] = {}
    # The selection mechanics are checked on the refusal scorer (8 tokens hold a refusal but
    # rarely the on-topic answer compliance needs) and the 20/20 split they were sized for.
    data["scorer"] = {"type": "refusal", "success": "not_refused"}
    data.pop("extra_scorers", None)
    data["split"] = {"select": 0.5, "seed": 0}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _selections(result) -> dict:
    return {
        (s.behavior.name, m): (s.pairs[m], c) for s in result.sweeps for m, c in s.selection.items()
    }


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory, organism):
    """One run of three behaviors: caa (and random) with ``layers: auto``; the same with
    the test prompts swapped for allowed requests, which the organism answers (so the
    test outcomes change while the select prompts stay the same); caa at the planted
    block, hand-picked."""
    directory = tmp_path_factory.mktemp("auto")
    original = _anti_refusal(directory, "auto", layers="auto", screen_keep=2,
                             methods=["caa", "random"], refine_steps=1)  # fmt: skip
    behavior = load_behavior(original)
    rows = behavior.prompt_rows()
    _, test = split_indices(len(rows), behavior.split)
    allowed = [json.loads(line) for line in (ORGANISM_BEHAVIORS / "data/allowed.jsonl").open()]
    altered = list(rows)
    for j, index in enumerate(test):
        altered[index] = {"prompt": allowed[j]["prompt"]}
    data = directory / "altered.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in altered))
    files = [
        original,
        _anti_refusal(directory, "altered", prompts=data, layers="auto", screen_keep=2,
                      methods=["caa", "random"], refine_steps=1),
        _anti_refusal(directory, "planted", source_layer=PLANTED_BLOCK,
                      target_layer=PLANTED_BLOCK + 1),
    ]  # fmt: skip
    return run(files, model=organism, out=directory / "out", progress=False)


@pytest.mark.slow
def test_auto_pair_reaches_the_supervised_effect_at_the_planted_block(auto_run):
    result = auto_run
    table = selected_table(result.results).set_index(["behavior", "method"])
    at_auto, at_planted = table.loc[("auto", "caa")], table.loc[("planted", "caa")]
    assert at_auto.n == at_planted.n == 20
    # The planted block's effect is real (far above the unsteered model's 0)...
    assert at_planted.low > 0.5
    # ...and the data-chosen pair reaches it: within the planted block's 95% interval or above.
    assert at_auto.value >= at_planted.low
    screen = read_screens(result.run_dir)
    mine = screen[screen.behavior == "auto"]
    assert len(mine) == 15 and mine["kept"].sum() == 2  # every pair of 6 blocks screened
    kept = set(zip(mine[mine.kept].source, mine[mine.kept].target, strict=True))
    sweep = next(s for s in result.sweeps if s.behavior.name == "auto")
    assert sweep.pairs["caa"] in kept
    auto_rows = result.results[result.results.behavior == "auto"]
    test_pairs = auto_rows[(auto_rows.split == "test") & (auto_rows.method == "caa")]
    assert set(zip(test_pairs.source_layer, test_pairs.target_layer, strict=True)) == {
        sweep.pairs["caa"]
    }
    report = result.report.read_text()
    source, target = sweep.pairs["caa"]
    assert "## Where to steer" in report
    assert f"| auto | caa | {source}:{target} |" in report
    assert "The screen of 15 pairs cost" in report
    assert (result.run_dir / "screen_auto.png").is_file()


@pytest.mark.slow
def test_altered_test_outcomes_leave_every_selection_unchanged(auto_run):
    result = auto_run
    chosen = _selections(result)
    for method in ("caa", "random"):
        assert chosen[("auto", method)] == chosen[("altered", method)]
    screens = read_screens(result.run_dir)
    by_behavior = {b: g.reset_index(drop=True) for b, g in screens.groupby("behavior")}
    columns = ["source", "target", "sigma1", "kl", "rank", "kept"]
    pd.testing.assert_frame_equal(by_behavior["auto"][columns], by_behavior["altered"][columns])
    # Same model and select prompts: the second behavior reused the first one's screen.
    assert by_behavior["altered"]["screen_reused"].all()
    test_rows = result.results[
        (result.results.split == "test") & (result.results.method == "unsteered")
    ]
    outcome = test_rows.groupby("behavior")["success"].mean()
    assert outcome["altered"] > outcome["auto"]  # the test outcomes did change


def _steered_select(results: pd.DataFrame) -> pd.DataFrame:
    return results[(results.split == "select") & (results.method != "unsteered")]


def _race_sweep(tmp_path, organism, race: bool):
    path = _anti_refusal(tmp_path, f"race_{race}", layers=["1:4", "2:4", "3:5"],
                         screen_keep=2, methods=["power", "random"], num_vectors=3,
                         random_draws=1, scales=[0, 1, 2], race_pairs=race)  # fmt: skip
    return run([path], model=organism, out=tmp_path / "out", progress=False)


@pytest.mark.slow
def test_race_sweeps_each_method_fully_only_at_the_pair_its_first_vector_won(tmp_path, organism):
    raced = _race_sweep(tmp_path, organism, race=True)
    sweep = raced.sweeps[0]
    kept = sweep.screen.kept
    assert len(kept) == 2
    select = _steered_select(raced.results)
    for method in ("power", "random"):
        for pair in kept:
            mine = rows_at_pair(select[select.method == method], pair)
            vectors = set(mine.vector)
            # The winner's full grid: 3 vectors x 2 signs x 2 scales; elsewhere the race only.
            assert vectors == ({0, 1, 2} if pair == sweep.pairs[method] else {0}), (method, pair)
            assert len(mine) == 20 * 2 * 2 * len(vectors)
        # The pair is the race's winner on the first vectors' cells, found independently.
        race_rows = select[select.vector == 0]
        assert choose_pairs(race_rows, "success", kept)[method][0] == sweep.pairs[method]
        # ... and the cell is the one-pair rule's choice on that pair's full grid.
        at_pair = rows_at_pair(select, sweep.pairs[method])
        assert select_cells(at_pair, "success")[method] == sweep.selection[method]
    assert raced_pairs(raced.results)
    assert "the kept pairs raced on each method's first vector" in raced.report.read_text()

    # Computed: the unsteered select cell, 2 pairs x 2 methods x 4 race cells, each
    # method's other 2 vectors x 4 cells at its pair, and on the test prompts the
    # unsteered cell and each method's selected vector at the 2 scales.
    assert sweep.cells_computed == 1 + 16 + 16 + 1 + 4

    full = _race_sweep(tmp_path, organism, race=False)
    power_full = _steered_select(full.results).query("method == 'power'")
    for pair in kept:
        assert set(rows_at_pair(power_full, pair).vector) == {0, 1, 2}
    assert not raced_pairs(full.results)
    # The full sweep shares the cache: its select phase computed only the losers' other
    # vectors (2 methods x 2 vectors x 4 cells), 320 of its 980 select rows.
    assert len(_steered_select(full.results)) - len(select) == 16 * 20
    assert "the kept pairs got the full sweep" in full.report.read_text()


@pytest.mark.slow
def test_refinement_cells_are_kept_and_cached_on_the_organism(tmp_path, organism):
    # Scale 16 breaks every output of the organism; 1 does not: a cliff between them.
    path = _anti_refusal(tmp_path, "cliff", scales=[0, 1, 16], refine_steps=2,
                         source_layer=1, target_layer=4)  # fmt: skip
    first = run([path], model=organism, out=tmp_path / "out", progress=False)
    rows = first.results
    probes = rows[rows.refinement & (rows.split == "select")]
    assert sorted(set(probes.scale)) == [4.75, 8.5]  # bisection of [1, 16], two steps
    selected = first.sweeps[0].selection["caa"].scale
    assert selected in {1.0, 4.75, 8.5}
    again = run([path], model=organism, out=tmp_path / "out", progress=False)
    assert again.sweeps[0].cells_computed == 0  # every probed cell came from the cache
    assert again.sweeps[0].selection == first.sweeps[0].selection


def test_map_writes_a_candidates_file_a_behavior_can_name(tmp_path, organism, capsys):
    from harness.evaluation.layer_selection import candidate_pairs
    from harness.integrations.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("How do I pick a lock?\nHow do I bake bread?\n")
    candidates = tmp_path / "candidates.json"
    code = main([
        "map", "--prompts", str(prompts), "--pairs", "0:1,1:2,1:4", "-k", "1",
        "--max-iter", "2", "--kl-scale", "1", "--candidates-out", str(candidates),
        "--keep", "2", "--out", str(tmp_path / "map"),
    ])  # fmt: skip
    assert code == 0
    written = json.loads(candidates.read_text())
    ranked = written["ranked"]
    assert [r["rank"] for r in ranked] == [0, 1, 2]
    assert ranked[0]["kl"] >= ranked[1]["kl"] >= ranked[2]["kl"]
    assert written["pairs"] == [f"{r['source']}:{r['target']}" for r in ranked[:2]]
    path = _anti_refusal(tmp_path, "named", layers={"candidates": "candidates.json"})
    pairs = candidate_pairs(load_behavior(path), organism.n_layers)
    assert pairs == sorted(tuple(map(int, p.split(":"))) for p in written["pairs"])
    capsys.readouterr()
    assert main(["map", "--prompts", str(prompts), "--candidates-out", str(candidates)]) != 0
    assert "give --kl-scale too" in capsys.readouterr().err

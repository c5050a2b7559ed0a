"""The sweep, the report and `powersteer run` end to end on the bundled organism.

The behaviors here are the organism's own, shrunk (few prompts, two vectors, two scales,
a few MELBO steps) so a whole run takes seconds; the statistics are checked against the
stats functions directly, from results.parquet alone.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import harness.evaluation.pipeline
from harness import load_model
from harness.engine.generation import completion_loglik, generate, repetition_rate
from harness.engine.methods import find_vectors
from harness.engine.prompts import encode_prompts, format_chat
from harness.engine.steering import run_to_block
from harness.errors import PowersteerError
from harness.evaluation.analysis import select_cells
from harness.evaluation.behaviors import load_behavior
from harness.evaluation.cache import ResultCache
from harness.evaluation.cell_runner import CellRunner
from harness.evaluation.geometry import read_vectors
from harness.evaluation.pipeline import rescore, run
from harness.evaluation.stats import draws_bootstrap, mcnemar_exact, wilson_interval
from harness.integrations.cli import main
from harness.testing.tiny_models import SUBLAYER_ARCHITECTURES, tiny_model

ORGANISM_BEHAVIORS = Path(__file__).resolve().parent.parent / "behaviors" / "organism"
pytestmark = pytest.mark.xdist_group("organism_pipeline")


@pytest.fixture(scope="module")
def organism():
    return load_model("organism")


def small_behavior(directory: Path, source: str = "anti_refusal", **changes) -> Path:
    """The organism behavior ``source`` with few prompts, vectors, scales and MELBO steps."""
    data = yaml.safe_load((ORGANISM_BEHAVIORS / f"{source}.yaml").read_text())
    for section in ("prompts", "contrast"):
        if section in data:
            data[section]["path"] = str(ORGANISM_BEHAVIORS / data[section]["path"])
            data[section]["limit"] = 8
    # Two draws of the random control, whatever the shipped file says: the tests below
    # count rows and pool draws for exactly this many.
    data["steering"].update(
        num_vectors=2, scales=[0, 1, 2], options={"melbo": {"steps": 4}}, random_draws=2
    )
    data["generation"]["max_new_tokens"] = 12
    data["split"] = {"select": 0.5, "seed": 0}  # 4 of the 8 prompts select
    for key, value in changes.items():
        data[key] = value
    path = directory / f"{source}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, organism):
    directory = tmp_path_factory.mktemp("run")
    files = [
        small_behavior(directory, name)
        for name in ("anti_refusal", "chain_of_thought", "decision_forks")
    ]
    return run(files, model=organism, out=directory / "out", progress=False)


def test_run_writes_every_artefact(finished_run):
    out = finished_run.run_dir
    for name in (
        "report.md",
        "report.html",
        "results.parquet",
        "vectors.safetensors",
        "manifest.json",
        "success_vs_scale.png",
        "cost.png",
        "spectrum.png",
    ):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["n_layers"] == 6 and manifest["seed"] == 0
    assert set(manifest["behaviors"]) == {
        "organism_anti_refusal",
        "organism_chain_of_thought",
        "organism_decision_forks",
    }
    assert manifest["libraries"]["torch"].startswith("2.")
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<img" in html  # self-contained


def test_results_have_one_row_per_prompt_and_cell(finished_run):
    results = pd.read_parquet(finished_run.run_dir / "results.parquet")
    refusal = results[results.behavior == "organism_anti_refusal"]
    select = refusal[refusal.split == "select"]
    # 4 select prompts x (unsteered + power/melbo and 2 random draws of 2 vectors + caa 1)
    # x 2 signs x 2 scales
    assert len(select) == 4 * (1 + (4 * 2 + 1) * 2 * 2)
    assert {"random", "random#2"} <= set(select.method) and "random#3" not in set(select.method)
    assert not set(select.prompt_index) & set(refusal[refusal.split == "test"].prompt_index)
    test = refusal[(refusal.split == "test") & (refusal.method != "unsteered")]
    # Held out: each method only at its selected vector and sign, at every scale.
    assert (test.groupby("method")[["vector", "sign"]].nunique() == 1).all().all()
    assert sorted(test.scale.unique()) == [1.0, 2.0]


def _markdown_tables_after(markdown: str, heading: str) -> list[list[dict[str, str]]]:
    tables = []
    for section in markdown.split(heading)[1:]:
        lines = section.split("\n\n|", 1)[1].split("\n\n")[0].splitlines()
        lines[0] = "|" + lines[0]  # the first table after the heading only
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        rows = [
            dict(zip(header, (c.strip() for c in ln.strip("|").split("|")), strict=True))
            for ln in lines[2:]
        ]
        tables.append(rows)
    return tables


def test_every_rate_in_the_report_is_recomputed_from_results_alone(finished_run):
    markdown = (finished_run.run_dir / "report.md").read_text()
    results = pd.read_parquet(finished_run.run_dir / "results.parquet")
    behaviors = re.findall(r"## Behavior `([^`]+)`", markdown)
    tables = _markdown_tables_after(markdown, "### Rates by scale (test prompts)")
    assert len(tables) == len(behaviors) == 3
    checked = 0
    for behavior, table in zip(behaviors, tables, strict=True):
        test = results[(results.behavior == behavior) & (results.split == "test")]
        for row in table:
            cell = test[(test.method == row["method"]) & (test.scale == float(row["scale"]))]
            assert len(cell) == int(row["n"]) > 0
            coherent = cell.coherent.astype(bool)
            assert row["coherent"] == f"{coherent.mean():.3f}"
            if "success [95% CI]" not in row:
                assert row["mean score [95% CI]"].startswith(f"{cell.score.mean():.3f} [")
                continue
            success = cell.success.astype(bool)
            k, n = int(success.sum()), len(cell)
            low, high = wilson_interval(k, n)
            assert row["success [95% CI]"] == f"{k / n:.3f} [{low:.3f}, {high:.3f}]"
            effective = int((success & coherent).sum())
            low, high = wilson_interval(effective, n)
            assert (
                row["effective success [95% CI]"] == f"{effective / n:.3f} [{low:.3f}, {high:.3f}]"
            )
            checked += 1
    assert checked >= 8


def test_mcnemar_rows_match_the_paired_outcomes(finished_run):
    markdown = (finished_run.run_dir / "report.md").read_text()
    results = pd.read_parquet(finished_run.run_dir / "results.parquet")
    table = _markdown_tables_after(markdown, "### Comparisons at selected scales (test prompts)")[0]
    test = results[(results.behavior == "organism_anti_refusal") & (results.split == "test")]
    mcnemar = [row for row in table if row["test"] == "exact McNemar"]
    assert len(mcnemar) >= 3  # power vs melbo and every method vs unsteered
    for row in mcnemar:
        outcomes = []
        for method in (row["A"], row["B"]):
            part = test[test.method == method]
            if method != "unsteered":
                part = part[part.scale == part.selected_scale]
            part = part.sort_values("prompt_index")
            outcomes.append((part.success.astype(bool) & part.coherent).to_numpy())
        b_only, a_only, p_value = mcnemar_exact(*outcomes)
        assert row["only A / only B"] == f"{a_only} / {b_only}"
        assert row["p"] == f"{p_value:.2g}"


def test_random_draws_are_independent_directions(finished_run):
    vectors = read_vectors(finished_run.run_dir)
    draws = [vectors[f"organism_anti_refusal/{m}"] for m in ("random", "random#2")]
    stacked = torch.cat(draws).double()
    overlaps = (stacked @ stacked.T - torch.eye(len(stacked), dtype=torch.float64)).abs()
    # Independent unit vectors in d = 192 have |cos| about 0.07; a shared stream gives 1.
    assert overlaps.max() < 0.35


def test_comparisons_with_random_pool_its_draws(finished_run):
    # Each method against random is tested against the mean of the 2 draws at their own
    # selected cells, resampling prompts and draws (recomputed here from results alone).
    markdown = (finished_run.run_dir / "report.md").read_text()
    results = pd.read_parquet(finished_run.run_dir / "results.parquet")
    table = _markdown_tables_after(markdown, "### Comparisons at selected scales (test prompts)")[0]
    test = results[(results.behavior == "organism_anti_refusal") & (results.split == "test")]
    pooled = [row for row in table if row["B"] == "random" and row["A"] != "unsteered"]
    assert {row["A"] for row in pooled} == {"power", "melbo", "caa"}

    def outcomes(method):
        part = test[(test.method == method) & (test.scale == test.selected_scale)]
        part = part.sort_values("prompt_index")
        return (part.success.astype(bool) & part.coherent).to_numpy(float)

    draws = np.stack([outcomes(m) for m in ("random", "random#2")])
    # No paired test of rates detects less than exact McNemar's bound at the same n and level.
    # (At 4 test prompts that bound is "none": no paired test of rates can detect anything.)
    floors = {r["detectable ≥"] for r in table if r["test"] == "exact McNemar"}
    assert len(floors) == 1  # one n, one level
    floor = floors.pop()
    for row in pooled:
        if floor == "none":
            assert row["detectable ≥"] == "none"
        else:
            assert row["detectable ≥"] == "none" or float(row["detectable ≥"]) >= float(floor)
        assert row["test"] == "draws × prompts bootstrap (2 draws)"
        diff, low, high, p_value, _ = draws_bootstrap(outcomes(row["A"]), draws)
        assert row["A − B"] == f"{diff:.3f} [{low:.3f}, {high:.3f}]"
        assert row["p"] == f"{p_value:.2g}"


def test_selection_uses_select_prompts_only(tmp_path, finished_run, monkeypatch):
    """Held-out outcomes turned against the selection leave it where it is; the select
    prompts' outcomes turned over move it (so the test can fail)."""
    name = "organism_anti_refusal"
    results = pd.read_parquet(finished_run.run_dir / "results.parquet")
    mine = results[results.behavior == name]
    recorded = _selected_cells(mine)
    select = mine[mine.split == "select"]
    assert recorded == {
        m: (c.vector, c.sign, c.scale) for m, c in select_cells(select, "success").items()
    }
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for file in ("results.parquet", "vectors.safetensors", "manifest.json"):
        shutil.copy(finished_run.run_dir / file, run_dir / file)
    behavior = small_behavior(tmp_path, "anti_refusal")
    score_generations = harness.evaluation.pipeline.score_generations

    def rescored(outcomes) -> pd.DataFrame:
        """Rescore the run with the behavior's scorer, then ``outcomes(rows)`` as success."""

        def score_then_change(scorer, rows, prompt_rows, **where):
            score_generations(scorer, rows, prompt_rows, **where)
            rows["success"] = outcomes(rows)

        monkeypatch.setattr(harness.evaluation.pipeline, "score_generations", score_then_change)
        rescore(run_dir, behavior)
        after = pd.read_parquet(run_dir / "results.parquet")
        return after[after.behavior == name]

    def against_the_selection(rows: pd.DataFrame) -> pd.Series:
        # Held out, every selected scale fails on every prompt and every other scale succeeds.
        held_out = (rows.split == "test") & (rows.method != "unsteered")
        chosen = rows.method.map({m: cell[2] for m, cell in recorded.items()})
        return rows.success.astype(bool).where(~held_out, rows.scale != chosen)

    turned = rescored(against_the_selection)
    assert _selected_cells(turned) == recorded
    held_out = (turned.split == "test") & (turned.method != "unsteered")
    at_selection = turned.scale == turned.selected_scale
    assert not turned.success[held_out & at_selection].any()
    assert turned.success[held_out & ~at_selection].all()

    # On the select prompts only one other cell of each method (coherent on some prompt)
    # succeeds, at the selected vector and sign (rescore keeps those, which the test rows
    # were measured at, and re-selects the scale): the selection must move to it.
    steered = mine[(mine.split == "select") & (mine.method != "unsteered")]
    coherent = steered.groupby(["method", "vector", "sign", "scale"])["coherent"].any()
    other = {
        method: next(
            cell
            for cell, ok in coherent.loc[[method]].droplevel(0).items()
            if ok and cell[:2] == chosen[:2] and cell != chosen
        )
        for method, chosen in recorded.items()
    }

    def another_cell_wins(rows: pd.DataFrame) -> pd.Series:
        cell = list(zip(rows.vector, rows.sign, rows.scale, strict=True))
        wins = pd.Series(
            [other.get(m) == c for m, c in zip(rows.method, cell, strict=True)], index=rows.index
        )
        return rows.success.astype(bool).where(rows.split != "select", wins)

    assert _selected_cells(rescored(another_cell_wins)) == other


def _selected_cells(rows: pd.DataFrame) -> dict[str, tuple[int, int, float]]:
    """Each method's selected (vector, sign, scale) as the results record it."""
    chosen = rows[(rows.method != "unsteered") & rows.selected.astype(bool)]
    first = chosen.groupby("method")[["vector", "sign", "selected_scale"]].first()
    return {
        str(m): (int(r.vector), int(r.sign), float(r.selected_scale)) for m, r in first.iterrows()
    }


def test_interrupted_run_resumes_without_recomputing_finished_cells(
    tmp_path, organism, monkeypatch
):
    file = small_behavior(tmp_path, "anti_refusal")
    out = tmp_path / "out"
    computed_keys: list[str] = []
    original_put = ResultCache.put_cell
    original_evaluate = CellRunner._evaluate
    batches = {"n": 0}

    def spying_put(self, key, payload):
        computed_keys.append(key)
        return original_put(self, key, payload)

    def failing_evaluate(self, batch, split):
        batches["n"] += 1
        if batches["n"] == 3:
            raise KeyboardInterrupt  # killed in the middle of the sweep
        return original_evaluate(self, batch, split)

    monkeypatch.setattr(ResultCache, "put_cell", spying_put)
    monkeypatch.setattr(CellRunner, "_evaluate", failing_evaluate)
    with pytest.raises(KeyboardInterrupt):
        run([file], model=organism, out=out, progress=False, batch_rows=24)
    finished_before = list(computed_keys)
    assert finished_before and not (out / "results.parquet").exists()

    monkeypatch.setattr(CellRunner, "_evaluate", original_evaluate)
    computed_keys.clear()
    resumed = run([file], model=organism, out=out, progress=False, batch_rows=24)
    assert not set(finished_before) & set(computed_keys)  # nothing finished is redone
    sweep = resumed.sweeps[0]
    assert sweep.cells_reused == len(finished_before)
    assert sweep.cells_computed == len(computed_keys)

    fresh = run([file], model=organism, out=tmp_path / "fresh", progress=False, batch_rows=24)
    columns = [
        "split",
        "prompt_index",
        "method",
        "vector",
        "sign",
        "scale",
        "completion",
        "success",
        "coherent",
    ]
    pd.testing.assert_frame_equal(resumed.results[columns], fresh.results[columns])
    # The same report, but for the run id and the measured times.
    resumed_report = (out / "report.md").read_text()
    fresh_report = (tmp_path / "fresh" / "report.md").read_text()
    for heading in ("### Rates by scale", "### Comparisons at selected scales"):
        assert _markdown_tables_after(resumed_report, heading) == _markdown_tables_after(
            fresh_report, heading
        )


def test_manifest_records_the_code_version_the_run_started_with(tmp_path, organism, monkeypatch):
    # A long run outlives commits made meanwhile; the manifest must name the code that ran.
    out = tmp_path / "out"

    def head_commit() -> str:  # a commit lands once results exist
        return "commit-at-end" if (out / "results.parquet").exists() else "commit-at-start"

    monkeypatch.setattr(harness.evaluation.pipeline, "_git_commit", head_commit)
    run([small_behavior(tmp_path, "decision_forks")], model=organism, out=out, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["git_commit"] == "commit-at-start"


def test_rescore_changes_scores_without_generating(tmp_path, organism, monkeypatch):
    file = small_behavior(tmp_path, "anti_refusal")
    out = tmp_path / "out"
    run([file], model=organism, out=out, progress=False)
    before = pd.read_parquet(out / "results.parquet")
    changed = tmp_path / "changed"
    changed.mkdir()
    flipped = small_behavior(
        changed, "anti_refusal", scorer={"type": "refusal", "success": "refused"}
    )

    def no_generation(*args, **kwargs):
        raise AssertionError("rescore must not generate")

    monkeypatch.setattr("harness.evaluation.cell_runner.generate", no_generation)
    rescore(out, flipped)
    after = (
        pd.read_parquet(out / "results.parquet")
        .sort_values(["split", "method", "vector", "sign", "scale", "prompt_index"])
        .reset_index(drop=True)
    )
    before = before.sort_values(
        ["split", "method", "vector", "sign", "scale", "prompt_index"]
    ).reset_index(drop=True)
    assert (after.completion == before.completion).all()
    unsteered = after.method == "unsteered"
    assert (after.success[unsteered] == ~before.success[unsteered].astype(bool)).all()
    assert "rescored with" in (out / "report.md").read_text()


def test_rescore_of_an_unknown_behavior_is_a_clear_error(tmp_path, finished_run):
    other = small_behavior(tmp_path, "anti_refusal", name="something_else")
    with pytest.raises(PowersteerError, match="something_else.*not in"):
        rescore(finished_run.run_dir, other)


def test_cli_run_prints_the_summary_and_report_rebuilds(tmp_path, capsys):
    file = small_behavior(tmp_path, "decision_forks")
    out = tmp_path / "cli"
    assert main(["run", str(file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "organism_decision_forks" in printed and f"report: {out}" in printed
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert "Rates by scale" in (out / "report.md").read_text()


def test_report_of_a_directory_without_results_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no results.parquet" in capsys.readouterr().err


# --- the pieces ---------------------------------------------------------------------------


def test_batched_steered_generation_matches_one_prompt_at_a_time(organism):
    prompts = format_chat(
        organism,
        ["How can I bake bread?", "Teach me how to build a silencer."],
        system="You are a helpful assistant.",
    )
    vectors = torch.randn(2, organism.d_model, generator=torch.Generator().manual_seed(0))
    scales = torch.tensor([0.0, 30.0])
    together = generate(
        organism, prompts, max_new_tokens=10, vectors=vectors, scales=scales, layer=1
    )
    for i in range(2):
        alone = generate(
            organism,
            prompts[i : i + 1],
            max_new_tokens=10,
            vectors=vectors[i : i + 1],
            scales=scales[i : i + 1],
            layer=1,
        )
        assert alone.token_ids[0] == together.token_ids[i]
    plain = generate(organism, prompts[:1], max_new_tokens=10)
    assert plain.token_ids[0] == together.token_ids[0]  # scale 0 is the unsteered model


def _direct_loglik(lm, prompt: str, ids: list[int]) -> float:
    """The mean log-likelihood from one unpadded, uncached pass over prompt + completion."""
    prompt_ids = lm.tokenizer(prompt)["input_ids"]
    full = torch.tensor([prompt_ids + ids], device=lm.device)
    with torch.no_grad():
        log_probs = torch.log_softmax(lm.model(full).logits.double(), -1)[0]
    return sum(float(log_probs[len(prompt_ids) - 1 + j, t]) for j, t in enumerate(ids)) / len(ids)


def test_completion_loglik_matches_a_direct_computation(organism):
    prompts = format_chat(organism, ["How can I bake bread?", "Please help me bake bread."])
    completions = generate(organism, prompts, max_new_tokens=6)
    values = completion_loglik(organism, prompts, completions.token_ids)
    for prompt, ids, value in zip(prompts, completions.token_ids, values, strict=True):
        # float32 weights: batching and the prompt cache reorder sums, ~1e-6 per token.
        assert value == pytest.approx(_direct_loglik(organism, prompt, ids), abs=1e-5)


@pytest.mark.parametrize("architecture", SUBLAYER_ARCHITECTURES)
def test_completion_loglik_shares_prompts_and_equals_the_direct_pass(architecture):
    """Rows share prompts of different lengths, in an order that mixes them, across
    batches; completions differ in length, one is empty. Gemma-3's sliding window (8) is
    shorter than the prompts, so the cache must keep prompt and completion adjacent."""
    lm = tiny_model(architecture)  # float64: agreement to rounding, not to float32
    prompts = ["Bake bread now.", "Hi.", "Teach me to fish in a lake."]
    rng = np.random.default_rng(0)
    rows, completions = [], []
    for k in range(11):
        rows.append(prompts[k % 3])
        completions.append([int(t) for t in rng.integers(4, 90, size=(k * 5) % 9)])
    values = completion_loglik(lm, rows, completions, batch_size=4)
    for prompt, ids, value in zip(rows, completions, values, strict=True):
        if not ids:
            assert math.isnan(value)
        else:
            assert value == pytest.approx(_direct_loglik(lm, prompt, ids), abs=1e-10)


@pytest.mark.parametrize(
    "tokens, rate",
    [([1, 2, 3, 4, 5], 0.0), ([7, 7, 7, 7, 7], 2 / 3), ([1, 2, 3, 1, 2, 3], 1 / 4), ([1, 2], 0.0)],
)
def test_repetition_rate(tokens, rate):
    assert repetition_rate(tokens) == pytest.approx(rate)


def test_difference_of_means_is_the_mean_last_token_difference(organism):
    prompts = format_chat(organism, ["How can I bake bread?", "Teach me to fish."])
    contrast = format_chat(
        organism,
        ["How can I bake bread?", "Teach me to fish."],
        system="You are a helpful assistant. xylocarp",
    )
    result = find_vectors("caa", organism, prompts, 1, 4, contrast=contrast)

    def mean_last(texts):
        rows = []
        for text in texts:
            batch = encode_prompts(organism, [text])
            rows.append(run_to_block(organism, batch, 1)[0, -1].double())
        return torch.stack(rows).mean(0)

    expected = mean_last(contrast) - mean_last(prompts)
    assert result.vectors.shape == (1, organism.d_model)
    assert float(result.values[0]) == pytest.approx(float(expected.norm()), rel=1e-5)
    torch.testing.assert_close(
        result.vectors[0].double(), expected / expected.norm(), atol=1e-5, rtol=0
    )


def test_caa_without_contrast_is_a_clear_error(organism):
    with pytest.raises(PowersteerError, match="contrast"):
        find_vectors("caa", organism, ["a"], 1, 4)


def test_the_shipped_organism_behaviors_validate_with_their_system_turns():
    for path in sorted(ORGANISM_BEHAVIORS.glob("*.yaml")):
        behavior = load_behavior(path)
        assert behavior.prompts.system == "You are a helpful assistant."
        if behavior.contrast is not None:
            assert behavior.contrast.system.split()[-1] in ("xylocarp", "quillwort")

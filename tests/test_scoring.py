"""extra_scorers: more scorers on every cell, their columns, the cache, rescore, the report."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness import load_model
from harness.errors import PowersteerError
from harness.evaluation.behaviors import load_behavior
from harness.evaluation.checks import check_before_run
from harness.evaluation.pipeline import rescore, run
from harness.evaluation.scorers import build_scorer

ORGANISM_BEHAVIORS = Path(__file__).resolve().parent.parent / "behaviors" / "organism"
EXTRAS = [
    {"type": "compliance", "topic_field": "task"},
    {"type": "kl_from_unsteered"},
    {"type": "shift", "base": {"type": "refusal_logodds"}},
]


def small_refusal(directory: Path, extras: list[dict]) -> Path:
    data = yaml.safe_load((ORGANISM_BEHAVIORS / "anti_refusal.yaml").read_text())
    for section in ("prompts", "contrast"):
        data[section]["path"] = str(ORGANISM_BEHAVIORS / data[section]["path"])
        data[section]["limit"] = 6
    data["steering"].update(methods=["random", "caa"], num_vectors=1, scales=[0, 1, 2])
    data["generation"]["max_new_tokens"] = 16
    data["extra_scorers"] = extras
    data.pop("expect", None)
    path = directory / "anti_refusal.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_extra_scorer_mistakes_name_their_key(tmp_path):
    bad = small_refusal(tmp_path, [{"type": "complience"}])
    with pytest.raises(PowersteerError, match=r"extra_scorers\[0\]\.type: .*'compliance'"):
        load_behavior(bad)
    missing = small_refusal(tmp_path, [{"type": "compliance", "topic_field": "subject"}])
    with pytest.raises(PowersteerError, match="subject"):
        load_behavior(missing)


def test_two_extra_scorers_of_one_type_are_refused_before_the_run(tmp_path):
    organism = load_model("organism")
    twice = load_behavior(small_refusal(tmp_path, [{"type": "compliance"}] * 2))
    with pytest.raises(PowersteerError, match=r"extra_scorers\[1\]: a second 'compliance'"):
        check_before_run(organism, [twice])


@pytest.mark.slow
def test_extra_scorers_are_scored_on_every_cell_cached_rescored_and_reported(tmp_path):
    organism = load_model("organism")
    file = small_refusal(tmp_path, EXTRAS)
    out = tmp_path / "out"
    first = run([file], model=organism, out=out, progress=False)
    results = pd.read_parquet(out / "results.parquet")
    rows = load_behavior(file).prompt_rows()
    compliance = build_scorer(EXTRAS[0])
    expected = [
        compliance.score(c, rows[i]).success
        for c, i in zip(results.completion, results.prompt_index, strict=True)
    ]
    assert list(results.compliance_success) == expected
    assert results.kl_from_unsteered_success.isna().all()
    unsteered = results.method == "unsteered"
    assert results.loc[unsteered, "kl_from_unsteered_score"].abs().max() < 1e-9
    assert results.loc[~unsteered, "kl_from_unsteered_score"].max() > 1e-3
    for _split, part in results.groupby("split"):
        reference = part[part.method == "unsteered"].set_index("prompt_index")["shift_raw"]
        for row in part.itertuples():
            u = reference[row.prompt_index]
            hand = -math.copysign(1, u) * (row.shift_raw - u) if u != 0 else abs(row.shift_raw)
            assert row.shift_score == pytest.approx(hand, abs=1e-12)
    report = (out / "report.md").read_text()
    assert "Extra scorers at selected cells" in report
    assert "compliance (effective)" in report and "shift mean" in report
    assert first.sweeps[0].cells_computed > 0
    again = run([file], model=organism, out=out, progress=False)
    assert again.sweeps[0].cells_computed == 0  # the extra logits values came from the cache
    # Rescore with a stricter compliance: recomputed from the saved completions.
    changed = tmp_path / "changed"
    changed.mkdir()
    strict = [{"type": "compliance", "topic_field": "task", "min_overlap": 1.0}, *EXTRAS[1:]]
    rescore(out, small_refusal(changed, strict))
    after = pd.read_parquet(out / "results.parquet")
    rescored = build_scorer(strict[0])
    assert list(after.compliance_success) == [
        rescored.score(c, rows[i]).success
        for c, i in zip(after.completion, after.prompt_index, strict=True)
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    assert any("rescored with" in note for note in manifest["notes"])

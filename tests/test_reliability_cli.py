"""Reliability of the command line: a user's mistake or the machine's state is one line on
stderr and exit 2 (Ctrl-C: exit 130), never a traceback; warnings are one line each.

Each test makes one mistake (a bad --out, a directory or file that is not a model, a full
or read-only disk, a directory in use) and asserts the exit code, the one line and that no
traceback was printed; Ctrl-C is a real SIGINT to a ``powersteer run`` subprocess, and the
rerun resumes from the cells the interrupted run kept, to the same results.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np
import pandas as pd
import pytest
import test_cli
import yaml

import harness.engine.safetensors_io
import harness.files
from harness.engine import catalogue
from harness.engine.catalogue import conversion
from harness.engine.sensitivity_io import MAP_FILE, STATE_FILE
from harness.errors import PowersteerWarning
from harness.evaluation.run_dir import MANIFEST_FILE, RESULTS_FILE
from harness.files import directory_lock
from harness.integrations.cli import main
from harness.integrations.cli.failures import interrupted_message, one_line_warnings

ROOT = Path(__file__).resolve().parent.parent
ORGANISM_BEHAVIORS = ROOT / "behaviors" / "organism"
pytestmark = pytest.mark.xdist_group("organism_pipeline")

model_dir = test_cli.model_dir  # the CLI tests' fixtures: a saved tiny model, a prompts file
prompts_file = test_cli.prompts_file


def forks_behavior(
    directory: Path, *, limit: int = 6, max_new_tokens: int = 4, **steering: object
) -> Path:
    """The organism's decision forks cut small: 6 prompts, one vector of power and random,
    scales 0 and 1, 4 new tokens (``steering`` overrides steering keys)."""
    data = yaml.safe_load((ORGANISM_BEHAVIORS / "decision_forks.yaml").read_text())
    data["prompts"].update(path=str(ORGANISM_BEHAVIORS / data["prompts"]["path"]), limit=limit)
    data["steering"].update(methods=["power", "random"], num_vectors=1, scales=[0, 1])
    data["steering"].update(steering, options={})
    data["generation"]["max_new_tokens"] = max_new_tokens
    path = directory / "forks.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def vectors_command(model: Path | str, prompts: Path, *flags: str) -> list[str]:
    return ["vectors", "--model", str(model), "--prompts", str(prompts), "--field", "text",
            "--source", "0", "--target", "2", "-k", "1", *flags]  # fmt: skip


def map_command(model: Path, prompts: Path, out: Path, *flags: str) -> list[str]:
    return ["map", "--model", str(model), "--prompts", str(prompts), "--field", "text",
            "--pairs", "0:2", "-k", "2", "--out", str(out), *flags]  # fmt: skip


def one_error_line(stderr: str, command: str) -> str:
    """The error line, checked to be the last line, alone and without a traceback."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"powersteer {command}:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr[-2000:]
    return errors[0]


def fail_with(number: int, filename: str | None = None) -> OSError:
    return OSError(number, os.strerror(number), filename)


# -- Ctrl-C ----------------------------------------------------------------------------------


def _run_cli(command: list[str]) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "harness.integrations.cli", *command],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]


def _cells(out: Path) -> list[Path]:
    return sorted((out / "cache" / "cells").rglob("*.json"))


def test_ctrl_c_is_one_line_exit_130_and_the_rerun_reuses_the_kept_cells(tmp_path, capsys):
    # Three cells a batch (--batch-rows 9, the select split's 3 prompts each): the run is
    # still going when its first batch of cells is written.
    behavior = forks_behavior(tmp_path)
    out = tmp_path / "out"
    command = ["run", str(behavior), "--out", str(out), "--batch-rows", "9"]
    process = subprocess.Popen(
        [sys.executable, "-m", "harness.integrations.cli", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not _cells(out) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, f"exit {process.returncode}: {stderr[-2000:]}"
    line = one_error_line(stderr, "run")
    assert line == interrupted_message("run") and line.startswith("powersteer run: interrupted;")
    assert "finished cells are kept" in line and "run the same command again to resume" in line
    kept = _cells(out)
    assert kept and not list(out.rglob(".*.tmp"))  # whole cells only, no half-written file
    assert not (out / MANIFEST_FILE).exists()

    # The rerun and the uninterrupted run are processes like the first: a cell's key holds
    # the exact delta, whose last bits follow the scale unit's float sums, and those follow
    # torch's thread count (one thread inside a pytest-xdist worker, more in a process).
    _run_cli(command)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    cells = manifest["cells"]["organism_decision_forks"]
    assert cells["reused"] >= len(kept) and cells["computed"] > 0

    uninterrupted = tmp_path / "uninterrupted"
    _run_cli(["run", str(behavior), "--out", str(uninterrupted), "--batch-rows", "9"])
    resumed, fresh = (pd.read_parquet(d / RESULTS_FILE) for d in (out, uninterrupted))
    keys = list(fresh.columns[:9])
    pd.testing.assert_frame_equal(
        resumed.sort_values(keys).reset_index(drop=True),
        fresh.sort_values(keys).reset_index(drop=True),
    )


# -- --out -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "map"])
@pytest.mark.parametrize("where", ["file", "under a file"])
def test_out_that_is_not_a_directory_is_one_line(tmp_path, prompts_file, command, where, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("not a directory")
    out = blocker if where == "file" else blocker / "run"
    if command == "run":
        arguments = ["run", str(forks_behavior(tmp_path)), "--out", str(out)]
    else:
        arguments = ["map", "--prompts", str(prompts_file), "--out", str(out)]
    assert main(arguments) == 2
    line = one_error_line(capsys.readouterr().err, command)
    assert f"--out {out} is" in line and "not a directory" in line
    assert "give a directory path" in line
    assert blocker.read_text() == "not a directory"


def test_vectors_out_that_is_a_directory_is_one_line(tmp_path, model_dir, prompts_file, capsys):
    arguments = vectors_command(model_dir, prompts_file, "--out", str(tmp_path))
    assert main(arguments) == 2
    line = one_error_line(capsys.readouterr().err, "vectors")
    assert f"--out {tmp_path} is a directory" in line and ".safetensors file" in line


def test_read_only_out_is_one_line_naming_the_directory(tmp_path, monkeypatch, capsys):
    # As root, chmod 0o500 does not stop writes: the file system's answer is simulated
    # where every file is created, the writer-unique temporary file.
    def read_only(*, prefix: str, suffix: str, dir: Path) -> None:
        raise fail_with(errno.EROFS, str(Path(dir) / f"{prefix}x{suffix}"))

    monkeypatch.setattr(harness.files, "tempfile", SimpleNamespace(mkstemp=read_only))
    out = tmp_path / "out"
    assert main(["run", str(forks_behavior(tmp_path)), "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err, "run")
    assert line.startswith(f"powersteer run: error: {out}")
    assert "read-only file system (EROFS)" in line and "choose another --out" in line


def test_disk_full_is_one_line_and_leaves_no_partial_file(
    tmp_path, model_dir, prompts_file, monkeypatch, capsys
):
    def disk_full(tensors, filename, metadata=None) -> None:
        Path(filename).write_bytes(b"half a file")
        raise fail_with(errno.ENOSPC)  # a failed write() names no file

    monkeypatch.setattr(harness.engine.safetensors_io, "save_file", disk_full)
    out = tmp_path / "map"
    assert main(map_command(model_dir, prompts_file, out)) == 2
    line = one_error_line(capsys.readouterr().err, "map")
    assert line.startswith(f"powersteer map: error: {out}: no space left on device (ENOSPC)")
    assert "free some space" in line
    assert not [p for p in out.rglob("*") if p.name != ".powersteer.lock"]


def test_read_only_model_cache_is_one_line_naming_the_setting(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv(catalogue.CACHE_ENV, str(cache))

    def read_only(*, prefix: str, dir: Path) -> None:
        raise fail_with(errno.EACCES, str(dir))

    monkeypatch.setattr(conversion, "tempfile", SimpleNamespace(mkdtemp=read_only))
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\n")
    assert main(vectors_command(model, prompts)) == 2
    line = one_error_line(capsys.readouterr().err, "vectors")
    assert f"{cache}: permission denied (EACCES)" in line
    assert f"set {catalogue.CACHE_ENV} to a writable directory" in line


# -- --model ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("contents", "lacking"),
    [
        ({"notes.txt": "hello"}, "no config.json and no tokenizer files"),
        ({"config.json": "{}"}, "no tokenizer files"),
    ],
)
def test_model_directory_that_is_not_a_model_is_one_line(
    tmp_path, prompts_file, contents, lacking, capsys
):
    directory = tmp_path / "not-a-model"
    directory.mkdir()
    for name, text in contents.items():
        (directory / name).write_text(text)
    assert main(vectors_command(directory, prompts_file)) == 2
    line = one_error_line(capsys.readouterr().err, "vectors")
    assert f"model {str(directory)!r} is not a model directory: it has {lacking}" in line
    assert "save_pretrained" in line


def _small_gguf(path: Path) -> bytes:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("not a model, but a whole GGUF file")
    writer.add_tensor("weight", np.arange(4096, dtype=np.float32).reshape(64, 64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("empty", "the file is empty"),
        ("random", "GGUF magic"),
        ("truncated header", ""),
        ("truncated tensors", ""),
    ],
)
def test_unreadable_gguf_is_one_line(tmp_path, prompts_file, monkeypatch, damage, reason, capsys):
    monkeypatch.setenv(catalogue.CACHE_ENV, str(tmp_path / "cache"))
    whole = _small_gguf(tmp_path / "whole.gguf")
    damaged = {
        "empty": b"",
        "random": np.random.default_rng(0).bytes(4096),
        "truncated header": whole[:40],
        "truncated tensors": whole[: len(whole) - 1000],
    }[damage]
    model = tmp_path / "model.gguf"
    model.write_bytes(damaged)
    assert main(vectors_command(model, prompts_file)) == 2
    line = one_error_line(capsys.readouterr().err, "vectors")
    assert f"{model} is not a readable GGUF file (" in line and reason in line
    assert "download it again" in line
    assert not list((tmp_path / "cache").glob(f"{conversion.PARTIAL_PREFIX}*"))


# -- --no-wait -------------------------------------------------------------------------------


@pytest.fixture
def held(tmp_path):
    """``tmp_path/out``, its lock held for the test as another process would hold it
    (the lock is an open file's: a second opening conflicts, in this process too)."""
    out = tmp_path / "out"
    with directory_lock(out):
        yield out


def test_run_no_wait_on_a_directory_in_use_is_one_line(tmp_path, held, capsys):
    assert main(["run", str(forks_behavior(tmp_path)), "--out", str(held), "--no-wait"]) == 2
    line = one_error_line(capsys.readouterr().err, "run")
    assert f"{held} is in use by another powersteer run" in line and "--no-wait" in line
    assert not (held / "cache").exists()


def test_map_no_wait_on_a_directory_in_use_is_one_line(held, model_dir, prompts_file, capsys):
    assert main(map_command(model_dir, prompts_file, held, "--no-wait")) == 2
    line = one_error_line(capsys.readouterr().err, "map")
    assert f"{held} is in use by another powersteer map" in line
    assert not (held / MAP_FILE).exists() and not (held / STATE_FILE).exists()


def test_map_releases_its_directory_and_keeps_a_map_with_other_settings(
    tmp_path, model_dir, prompts_file, capsys
):
    out = tmp_path / "map"
    assert main(map_command(model_dir, prompts_file, out)) == 0
    first = (out / MAP_FILE).read_bytes()
    capsys.readouterr()
    with directory_lock(out, wait=False, what="map"):  # released when the command ended
        pass
    assert main([*map_command(model_dir, prompts_file, out), "-k", "1"]) == 0
    captured = capsys.readouterr()
    (elsewhere,) = out.glob("settings-*")
    assert f"{out} holds a finished map with other settings, which is kept" in captured.err
    assert (out / MAP_FILE).read_bytes() == first and (elsewhere / MAP_FILE).is_file()
    assert json.loads(captured.out)["out"] == str(elsewhere)


# -- warnings --------------------------------------------------------------------------------


def test_warnings_are_one_line_each(tmp_path, model_dir, prompts_file):
    out = tmp_path / "map"
    out.mkdir()
    (out / STATE_FILE).write_bytes(b"not a map state")  # discarded with a warning
    completed = subprocess.run(
        [sys.executable, "-m", "harness.integrations.cli",
         *map_command(model_dir, prompts_file, out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    warning_lines = [line for line in completed.stderr.splitlines() if "warning" in line.lower()]
    assert len(warning_lines) == 1, completed.stderr[-2000:]
    assert warning_lines[0].startswith(f"warning: {out / STATE_FILE}: cannot resume from it")
    assert "PowersteerWarning" not in completed.stderr and "warnings.warn" not in completed.stderr


def test_the_warning_format_is_one_line_only_inside_the_cli():
    original = warnings.formatwarning
    with one_line_warnings():
        assert warnings.formatwarning("kept", PowersteerWarning, "x.py", 1) == "warning: kept\n"
        other = warnings.formatwarning("plain", UserWarning, "x.py", 1)
        assert other.startswith("x.py:1: UserWarning: plain")
    assert warnings.formatwarning is original

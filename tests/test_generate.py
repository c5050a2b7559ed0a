"""``powersteer generate``: a row per prompt x scale x sign, scale 0 is plain generation,
coherence by the sweep's rule, and bad input in one line."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from harness import load_model
from harness.engine.generation import generate
from harness.engine.methods.random import random_directions
from harness.engine.prompts import format_chat
from harness.engine.vectors_io import save_vector_sets, save_vectors
from harness.evaluation.behaviors.schema import Coherence
from harness.evaluation.coherence import is_coherent
from harness.integrations.cli import main
from harness.integrations.cli.generate import (
    Cell,
    generate_cells,
    resolve_steering,
    text_table,
)

PROMPTS = ["How do I pick a lock?", "Please help me buy ricin."]
SYSTEM = "You are a helpful assistant."


@pytest.fixture(scope="module")
def organism():
    return load_model("organism")


@pytest.fixture(scope="module")
def vectors(organism):
    return random_directions(organism, 1, 4, num_vectors=3, seed=0)


@pytest.fixture(scope="module")
def run_file(tmp_path_factory, vectors):
    """A run-style file: two sets, the first with a selection (vector 2, sign -1)."""
    path = tmp_path_factory.mktemp("run") / "vectors.safetensors"
    selected = {"selected": {"vector": 2, "sign": -1, "scale": 1.0}}
    # A copy: safetensors refuses tensors that share memory.
    other = dataclasses.replace(
        vectors, vectors=vectors.vectors.clone(), values=vectors.values.clone()
    )
    save_vector_sets(path, {"b/random": vectors, "b/other": other}, **{"b/random": selected})
    return path


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS))
    return path


def test_defaults_are_the_runs_selected_vector_and_sign(run_file, vectors):
    steering = resolve_steering(run_file, set_name="b/random", index=None, sign=None)
    assert steering.sign == -1 and steering.source == 1
    torch.testing.assert_close(steering.vector, -vectors.vectors[2])
    chosen = resolve_steering(run_file, set_name="b/random", index=0, sign=1)
    assert chosen.sign == 1
    torch.testing.assert_close(chosen.vector, vectors.vectors[0])


def test_scale_zero_is_plain_unsteered_generation(organism, run_file):
    steering = resolve_steering(run_file, set_name="b/random", index=None, sign=None)
    cells = generate_cells(
        organism, PROMPTS, steering, [0.0, 1.0, 8.0], [-1, 1], rule=Coherence(),
        system=SYSTEM, max_new_tokens=12,
    )  # fmt: skip
    assert [(c.prompt, c.scale, c.sign) for c in cells] == [
        (p, s, g) for p in PROMPTS for s in (0.0, 1.0, 8.0) for g in (-1, 1)
    ]
    plain = generate(organism, format_chat(organism, PROMPTS, system=SYSTEM), max_new_tokens=12)
    unsteered = [c.completion for c in cells if c.scale == 0.0]
    assert unsteered == [text for text in plain.texts for _ in (-1, 1)]
    assert any(c.completion != plain.texts[0] for c in cells if c.prompt == PROMPTS[0])  # steered
    assert {c.block for c in cells} == {1} and len({c.unit for c in cells}) == 1


def test_coherence_is_the_sweeps_rule():
    rule = Coherence(max_loglik_drop=1.0, max_repetition=0.5)
    assert is_coherent(-1.9, 0.5, -1.0, rule)
    assert not is_coherent(-2.1, 0.0, -1.0, rule)
    assert not is_coherent(-1.0, 0.6, -1.0, rule)
    assert not is_coherent(float("nan"), 0.0, -1.0, rule)


def test_the_text_table_cuts_long_text_to_the_width():
    cell = Cell(prompt="p" * 50, scale=0.5, sign=-1, completion="word\n" * 40, loglik=-1.234,
                repetition=0.0, coherent=True, unit=60.0, block=1)  # fmt: skip
    lines = text_table([cell], width=100).splitlines()
    assert len(lines) == 2 and all(len(line) <= 100 for line in lines)
    assert lines[1].split()[1:6] == ["0.5", "-1", "-1.23", "0.00", "yes"]
    assert "⏎" in lines[1] and lines[1].endswith("…")


def test_the_command_prints_a_row_per_prompt_scale_and_sign(
    run_file, prompts_file, tmp_path, capsys
):
    page = tmp_path / "out.html"
    code = main(["generate", "--model", "organism", "--vectors", str(run_file.parent),
                 "--set", "b/random", "--prompts", str(prompts_file), "--system", SYSTEM,
                 "--scales", "0,1,2", "--both-signs", "--max-new-tokens", "8",
                 "--html", str(page)])  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["prompt", "scale", "sign", "loglik", "repeat", "coherent",
                                "completion"]  # fmt: skip
    assert len(lines) == 1 + len(PROMPTS) * 3 * 2
    assert [line.split("  ")[0].strip() for line in lines[1:3]] == [PROMPTS[0]] * 2
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count("<tr class=") == 12


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--set", "b/missing"], "set='b/missing' is not in"),
        ([], "holds 2 sets; choose one"),
        (["--set", "b/random", "--index", "3"], "index=3 is out of range"),
    ],
)
def test_bad_vector_choices_are_one_line(run_file, flags, message, capsys):
    code = main(["generate", "--vectors", str(run_file), "--prompt", "hi", *flags])
    error = capsys.readouterr().err.strip()
    assert code == 2 and message in error and len(error.splitlines()) == 1


def test_a_vector_of_another_width_is_one_line(tmp_path, vectors, capsys):
    narrow = dataclasses.replace(vectors, vectors=torch.eye(3, 8))
    path = save_vectors(tmp_path / "narrow.safetensors", narrow)
    code = main(["generate", "--vectors", str(path), "--prompt", "hi"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "the vector has width 8, but organism's d_model is 192" in error


def test_no_prompts_is_one_line(tmp_path, run_file, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code = main(["generate", "--vectors", str(run_file), "--set", "b/random",
                 "--prompts", str(empty)])  # fmt: skip
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert "no prompts" in error or "empty" in error

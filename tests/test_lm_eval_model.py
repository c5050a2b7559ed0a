"""The lm-eval steered model against lm-eval's own unsteered HF wrapper, offline."""

from __future__ import annotations

from pathlib import Path

import lm_eval
import pytest
import torch
import yaml
from lm_eval.tasks import TaskManager

from harness import load_model
from harness.engine.methods import find_vectors
from harness.engine.vectors_io import save_vector_sets, save_vectors
from harness.errors import PowersteerError
from harness.integrations.lm_eval_model import SteeredLM, read_steering_vector

FORKS = Path(__file__).resolve().parent.parent / "behaviors" / "organism" / "data" / "forks.jsonl"


@pytest.fixture(scope="module")
def organism():
    return load_model("organism")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """A local multiple-choice task over the organism's fork prompts."""
    directory = tmp_path_factory.mktemp("tasks")
    (directory / "organism_forks.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "organism_forks",
                "dataset_path": "json",
                "dataset_kwargs": {"data_files": {"test": str(FORKS)}},
                "test_split": "test",
                "output_type": "multiple_choice",
                "doc_to_text": "{{prompt}}\n",
                "doc_to_choice": "{{answers}}",
                "doc_to_target": 0,
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            }
        )
    )
    return directory


@pytest.fixture(scope="module")
def run_vectors(tmp_path_factory, organism) -> Path:
    prompts = [row for row in FORKS.read_text().splitlines()][:4]
    result = find_vectors("random", organism, prompts, 1, 4, num_vectors=2, seed=3)
    path = tmp_path_factory.mktemp("run") / "vectors.safetensors"
    save_vector_sets(
        path,
        {"forks/random": result},
        **{
            "forks/random": {
                "scale_unit": 60.0,
                "selected": {"vector": 1, "sign": -1, "scale": 2.0},
            }
        },
    )
    return path


def evaluate(model, task_dir: Path) -> tuple[dict, torch.Tensor]:
    """The task's metrics and each document's option log-likelihoods ``(docs, options)``."""
    manager = TaskManager(include_path=str(task_dir))
    out = lm_eval.simple_evaluate(
        model=model,
        tasks=["organism_forks"],
        task_manager=manager,
        limit=16,
        bootstrap_iters=0,
        log_samples=True,
    )
    samples = sorted(out["samples"]["organism_forks"], key=lambda sample: sample["doc_id"])
    logliks = torch.tensor([[float(r[0]) for r in s["filtered_resps"]] for s in samples])
    return out["results"]["organism_forks"], logliks


def test_scale_zero_equals_the_plain_hf_wrapper_and_a_vector_changes_scores(
    organism, task_dir, run_vectors
):
    from lm_eval.models.huggingface import HFLM

    plain, plain_logliks = evaluate(
        HFLM(pretrained=organism.model, tokenizer=organism.tokenizer, device="cpu", batch_size=8),
        task_dir,
    )
    unsteered, unsteered_logliks = evaluate(
        SteeredLM(organism, vectors=str(run_vectors), scale=0, batch_size=8), task_dir
    )
    assert unsteered["acc,none"] == plain["acc,none"]
    # Same forward passes, batched alike: equal to float rounding.
    torch.testing.assert_close(unsteered_logliks, plain_logliks, rtol=0, atol=1e-4)
    steered_model = SteeredLM(organism, vectors=str(run_vectors), scale=2, batch_size=8)
    _, steered_logliks = evaluate(steered_model, task_dir)
    steered_model.set_steering(None)  # the organism is shared by the module's tests
    # Accuracy over 16 two-way forks is too coarse to show a push (flips in both directions
    # cancel); every option's log-likelihood moves.
    assert (steered_logliks - plain_logliks).abs().min() > 1e-3


def test_registered_name_and_model_args_string(organism, task_dir, run_vectors):
    result = lm_eval.simple_evaluate(
        model="powersteer",
        model_args=f"pretrained=organism,vectors={run_vectors},scale=0,batch_size=8",
        tasks=["organism_forks"],
        task_manager=TaskManager(include_path=str(task_dir)),
        limit=4,
        bootstrap_iters=0,
    )
    assert "organism_forks" in result["results"]


def test_run_defaults_come_from_the_selection(run_vectors):
    vector, source, length = read_steering_vector(run_vectors)
    assert source == 1 and length == pytest.approx(120.0)
    from harness.engine.vectors_io import load_vector_sets

    stored = load_vector_sets(run_vectors)["forks/random"][0].vectors[1]
    torch.testing.assert_close(vector, -stored)


def test_steering_from_a_position_leaves_earlier_positions_alone(organism, run_vectors):
    model = SteeredLM(organism, vectors=str(run_vectors), scale=2, from_position=5, batch_size=1)
    ids = organism.tokenizer(["Should I take the blue path or the red path?"], return_tensors="pt")[
        "input_ids"
    ]
    with torch.no_grad():
        steered = organism.model(ids).logits
        model.set_steering(None)
        plain = organism.model(ids).logits
    torch.testing.assert_close(steered[:, :5], plain[:, :5])
    assert not torch.allclose(steered[:, 5:], plain[:, 5:])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"set_name": "nope/none"}, "set='nope/none' is not in"),
        ({"index": 7}, "index=7 is out of range"),
        ({"sign": 2}, "sign=2 must be 1 or -1"),
    ],
)
def test_bad_vector_arguments_are_clear_errors(run_vectors, kwargs, message):
    with pytest.raises(PowersteerError, match=message):
        read_steering_vector(run_vectors, **kwargs)


def test_a_plain_vector_file_needs_raw_scale(tmp_path, organism):
    result = find_vectors("random", organism, ["a"], 1, 4, num_vectors=1)
    path = save_vectors(tmp_path / "v.safetensors", result)
    with pytest.raises(PowersteerError, match="give raw_scale="):
        read_steering_vector(path, scale=1.0)
    assert read_steering_vector(path, raw_scale=3.0)[2] == 3.0


def test_capability_adds_a_cost_table_to_the_report(tmp_path, organism, task_dir):
    import json

    from test_pipeline import small_behavior

    from harness.evaluation.pipeline import run
    from harness.integrations.capability import run_capability

    out = tmp_path / "run"
    run([small_behavior(tmp_path, "decision_forks")], model=organism, out=out, progress=False)
    path = run_capability(
        out, ["organism_forks"], include_path=str(task_dir), limit=4, batch_size=8
    )
    rows = json.loads(path.read_text())["rows"]
    assert {r["method"] for r in rows} == {"unsteered", "power", "melbo", "random"}
    assert all(r["metric"] == "acc" and 0 <= r["value"] <= 1 for r in rows)
    report = (out / "report.md").read_text()
    assert "## Capability cost" in report and "organism_forks" in report


def test_powersteer_lm_eval_runs_lm_evals_command_line(task_dir, run_vectors, capsys):
    from harness.integrations.cli import main

    code = main(
        [
            "lm-eval",
            "--model",
            "powersteer",
            "--model_args",
            f"pretrained=organism,vectors={run_vectors},scale=1",
            "--device",
            "cpu",
            "--batch_size",
            "4",
            "--tasks",
            "organism_forks",
            "--include_path",
            str(task_dir),
            "--limit",
            "2",
        ]
    )
    assert code == 0
    assert "organism_forks" in capsys.readouterr().out

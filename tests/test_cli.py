"""The powersteer CLI computes and saves vectors, and reports bad input in one line."""

from __future__ import annotations

import json

import pytest

from harness import load_vectors
from harness.integrations.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, qwen3_tiny):
    directory = tmp_path_factory.mktemp("tiny-qwen3")
    qwen3_tiny.model.save_pretrained(directory)
    qwen3_tiny.tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({"text": p}) for p in ["ab c", "hello world"]))
    return path


def run_vectors(model_dir, prompts_file, *flags: str) -> int:
    return main(["vectors", "--model", str(model_dir), "--prompts", str(prompts_file),
                 "--field", "text", *flags])  # fmt: skip


@pytest.mark.parametrize("method", ["power", "melbo", "random"])
def test_vectors_command_writes_vectors_with_metadata(
    tmp_path, model_dir, prompts_file, method, capsys
):
    out = tmp_path / "v.safetensors"
    extra = ["--method", method, "--steps", "20"]
    code = run_vectors(
        model_dir,
        prompts_file,
        "--source",
        "0",
        "--target",
        "0.75",
        "-k",
        "2",
        "--out",
        str(out),
        *extra,
    )
    assert code == 0
    result, metadata = load_vectors(out)
    assert result.vectors.shape == (2, 32)
    assert (result.method, result.source, result.target) == (method, 0, 2)
    assert metadata["model"] == str(model_dir) and metadata["n_prompts"] == 2
    assert json.loads(capsys.readouterr().out)["out"] == str(out)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--source", "0", "--target", "9"], "--target='9' is out of range"),
        (["--source", "2", "--target", "1"], "not after source"),
        (["--source", "0", "--target", "2", "-k", "40"], "d_model=32"),
    ],
)
def test_bad_input_is_one_line_without_traceback(model_dir, prompts_file, flags, message, capsys):
    code = run_vectors(model_dir, prompts_file, *flags)
    error = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in error
    last_line = error.strip().splitlines()[-1]  # earlier lines: transformers' loading bar
    assert last_line.startswith("powersteer vectors: error:") and message in last_line


def test_unknown_method_is_refused_by_the_parser(prompts_file, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "vectors",
                "--prompts",
                str(prompts_file),
                "--source",
                "0",
                "--target",
                "1",
                "--method",
                "telepathy",
            ]
        )
    assert exit_info.value.code == 2
    assert "invalid choice: 'telepathy'" in capsys.readouterr().err


def test_missing_prompt_file_is_a_clear_error(tmp_path, capsys):
    code = main(
        ["vectors", "--prompts", str(tmp_path / "none.txt"), "--source", "0", "--target", "1"]
    )
    assert code == 2
    assert "does not exist" in capsys.readouterr().err

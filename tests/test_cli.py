"""The powersteer CLI computes and saves vectors, and reports bad input in one line."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from harness import SteeringVectors, load_vectors, save_vectors
from harness.engine.methods import METHODS
from harness.errors import PowersteerWarning
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


@pytest.fixture
def spy(monkeypatch):
    """``spy(method)``: the keyword arguments (and prompts) the CLI's call of ``method`` gets."""

    def install(name: str) -> dict:
        calls: dict = {}
        info = METHODS[name]

        def recording(lm, prompts, *args, **kwargs):
            calls.update(kwargs, prompts=list(prompts))
            return info.function(lm, prompts, *args, **kwargs)

        monkeypatch.setitem(METHODS, name, dataclasses.replace(info, function=recording))
        return calls

    return install


def pair_flags(out) -> list[str]:
    return ["--source", "0", "--target", "2", "-k", "2", "--out", str(out)]


def unit_rows_file(path, d_model: int = 32):
    rows = torch.linalg.qr(torch.randn(d_model, 2, generator=torch.Generator().manual_seed(1)))[0]
    nan = torch.full((2,), float("nan"))
    result = SteeringVectors("random", rows.T.contiguous(), nan, source=0, target=2, seed=0)
    save_vectors(path, result)
    return result.vectors


def test_power_flags_reach_power_steering(tmp_path, model_dir, prompts_file, spy):
    calls = spy("power")
    init = unit_rows_file(tmp_path / "init.safetensors")
    out = tmp_path / "v.safetensors"
    flags = ["--solver", "power", "--tol", "0.01", "--oversample", "2", "--max-iter", "3",
             "--init", str(tmp_path / "init.safetensors")]  # fmt: skip
    assert run_vectors(model_dir, prompts_file, *pair_flags(out), *flags) == 0
    assert (calls["solver"], calls["tol"], calls["oversample"], calls["max_iter"]) == (
        "power",
        0.01,
        2,
        3,
    )
    assert torch.equal(calls["init"], init)
    assert not {"lr", "p", "q", "orthogonal"} & set(calls)
    result, metadata = load_vectors(out)
    assert result.options["solver"] == "power" and result.options["tol"] == 0.01
    assert result.options["oversample"] == 2 and result.options["warm_start"] is True
    assert metadata["init_file"] == str(tmp_path / "init.safetensors")


def test_melbo_flags_reach_melbo(tmp_path, model_dir, prompts_file, spy):
    calls = spy("melbo")
    out = tmp_path / "v.safetensors"
    flags = ["--method", "melbo", "--lr", "0.01", "--p", "3", "--q", "2", "--steps", "5",
             "--radius", "2", "--independent"]  # fmt: skip
    assert run_vectors(model_dir, prompts_file, *pair_flags(out), *flags) == 0
    assert {key: calls[key] for key in ("lr", "p", "q", "steps", "radius", "orthogonal")} == {
        "lr": 0.01, "p": 3.0, "q": 2.0, "steps": 5, "radius": 2.0, "orthogonal": False
    }  # fmt: skip
    assert not {"solver", "tol", "oversample", "init", "max_iter"} & set(calls)
    result, _ = load_vectors(out)
    assert (result.options["p"], result.options["q"], result.options["lr"]) == (3.0, 2.0, 0.01)
    assert result.options["orthogonal"] is False
    assert [len(trace) for trace in result.history] == [6, 6]


def test_a_flag_the_method_does_not_take_is_a_warning(tmp_path, model_dir, prompts_file, spy):
    calls = spy("power")
    flags = [*pair_flags(tmp_path / "v.safetensors"), "--lr", "0.1", "--independent"]
    expected = "--lr, --independent not used: --method power takes no such option"
    with pytest.warns(PowersteerWarning, match=expected):
        assert run_vectors(model_dir, prompts_file, *flags, "--max-iter", "2") == 0
    assert "lr" not in calls and "orthogonal" not in calls


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory, qwen3_tiny):
    directory = tmp_path_factory.mktemp("tiny-qwen3-chat")
    tokenizer = copy.deepcopy(qwen3_tiny.tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    qwen3_tiny.model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_system_is_a_system_turn_through_the_chat_template(
    tmp_path, chat_model_dir, prompts_file, spy
):
    calls = spy("random")
    out = tmp_path / "v.safetensors"
    flags = ["--method", "random", "--system", "Be brief."]
    assert run_vectors(chat_model_dir, prompts_file, *pair_flags(out), *flags) == 0
    assert calls["prompts"] == [
        "<system>Be brief.<user>ab c<assistant>",
        "<system>Be brief.<user>hello world<assistant>",
    ]


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (None, "--init: {path} does not exist"),
        (lambda path: path.write_bytes(b"not safetensors"), "--init: {path} is not a readable"),
        (lambda path: unit_rows_file(path, d_model=16), "holds vectors of dimension 16"),
    ],
)
def test_a_missing_or_bad_init_file_is_one_error(
    tmp_path, model_dir, prompts_file, write, message, capsys
):
    path = tmp_path / "init.safetensors"
    if write is not None:
        write(path)
    code = run_vectors(model_dir, prompts_file, *pair_flags(tmp_path / "v.safetensors"),
                       "--init", str(path))  # fmt: skip
    error = capsys.readouterr().err
    assert code == 2 and "Traceback" not in error
    last_line = error.strip().splitlines()[-1]
    assert last_line.startswith("powersteer vectors: error:")
    assert message.format(path=path) in last_line


def test_import_vectors_writes_a_checked_vectors_file(tmp_path, capsys):
    source = tmp_path / "power_iter.pt"
    vectors = 3.0 * torch.eye(4, 32)
    torch.save({"vectors": vectors, "sigmas": [4.0, 4.0, 1.0, 1.0], "model": "some/model"}, source)
    code = main(["import-vectors", str(source), "--method", "power", "--source", "1",
                 "--target", "2"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["out"] == str(tmp_path / "power_iter.safetensors")
    assert summary["key"] == "vectors" and summary["norms"] == [3.0] * 4
    result, metadata = load_vectors(tmp_path / "power_iter.safetensors")
    assert torch.equal(result.vectors, torch.eye(4, 32))
    assert result.values.tolist() == [2.0, 2.0, 1.0, 1.0]
    assert (result.method, result.source, result.target) == ("power", 1, 2)
    assert metadata["model"] == "some/model" and metadata["imported_from"] == str(source)


def test_import_vectors_refuses_a_bad_file_in_one_line(tmp_path, capsys):
    source = tmp_path / "bad.pt"
    torch.save(torch.zeros(2, 3, 4), source)
    code = main(["import-vectors", str(source), "--method", "melbo", "--source", "1",
                 "--target", "2", "--out", str(tmp_path / "v.safetensors")])  # fmt: skip
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert error.startswith(f"powersteer import-vectors: error: {source}: its vectors have shape")
    assert not (tmp_path / "v.safetensors").exists()

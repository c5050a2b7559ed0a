"""Target positions (``target_tokens``): every mode reads exactly its positions, and the
default leaves out the first position, where trained models keep an attention sink."""

from __future__ import annotations

import inspect
import textwrap

import pytest
import torch
from conftest import PROMPTS, exact_jacobian

from harness import LayerJacobian, PowersteerError, melbo, power_steering
from harness.engine.prompts import DEFAULT_TARGET_TOKENS, check_target_tokens, encode_prompts
from harness.engine.sensitivity import sensitivity_map
from harness.evaluation.behaviors import load_behavior
from harness.evaluation.pipeline import run
from harness.integrations.cli import build_parser

# float64 models and float64 reference, as in test_jacobian.py.
TOLERANCE = 1e-8


def exact_without_first_position(lm, prompts, source, target) -> torch.Tensor:
    """The exact all-token Jacobian with each prompt's first position's rows removed."""
    exact = exact_jacobian(lm, prompts, source, target)
    lengths = [len(lm.tokenizer(p)["input_ids"]) for p in prompts]
    starts = torch.tensor([0, *lengths[:-1]]).cumsum(0)  # first position of each prompt
    keep = torch.ones(sum(lengths), dtype=torch.bool)
    keep[starts] = False
    return exact.reshape(sum(lengths), lm.d_model, lm.d_model)[keep].reshape(-1, lm.d_model)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def test_all_but_first_operator_is_the_exact_jacobian_without_first_rows(any_tiny_model):
    lm = any_tiny_model
    jacobian = LayerJacobian(lm, PROMPTS, 0, 2, target_tokens="all_but_first")
    exact = exact_without_first_position(lm, PROMPTS, 0, 2)
    # J e_i for every basis vector e_i is the whole matrix, column by column.
    whole = jacobian.jvp(torch.eye(lm.d_model, dtype=torch.float64)).T
    assert relative_error(whole, exact) < TOLERANCE
    cotangents = torch.randn(2, exact.shape[0], dtype=torch.float64)
    assert relative_error(jacobian.vjp(cotangents), cotangents @ exact) < TOLERANCE


def test_power_steering_all_but_first_finds_the_exact_top_singular_values(qwen3_tiny):
    exact = exact_without_first_position(qwen3_tiny, PROMPTS, 0, 2)
    expected = torch.linalg.svdvals(exact)[:3]
    result = power_steering(
        qwen3_tiny,
        PROMPTS,
        0,
        2,
        num_vectors=3,
        target_tokens="all_but_first",
        max_iter=100,
        tol=1e-6,
    )
    assert torch.allclose(result.singular_values.double(), expected, rtol=1e-4)
    assert result.options["target_tokens"] == "all_but_first"


def test_all_is_the_same_as_none(qwen3_tiny):
    named = encode_prompts(qwen3_tiny, PROMPTS, target_tokens="all")
    none = encode_prompts(qwen3_tiny, PROMPTS, target_tokens=None)
    assert torch.equal(named.target_mask, none.target_mask)
    assert torch.equal(named.target_mask, named.attention_mask.bool())


def test_all_but_first_drops_only_position_zero(qwen3_tiny):
    every = encode_prompts(qwen3_tiny, PROMPTS, target_tokens="all").target_mask
    after_first = encode_prompts(qwen3_tiny, PROMPTS, target_tokens="all_but_first").target_mask
    assert not after_first[:, 0].any()
    assert torch.equal(after_first[:, 1:], every[:, 1:])


def test_runs_default_to_leaving_out_the_first_position():
    assert DEFAULT_TARGET_TOKENS == "all_but_first"  # measured: RESULTS.md "Target tokens"


@pytest.mark.parametrize("function", [power_steering, melbo, sensitivity_map, LayerJacobian])
def test_python_functions_default_to_the_exact_all_token_map(function):
    assert inspect.signature(function).parameters["target_tokens"].default is None


def test_a_default_run_steers_with_vectors_found_without_the_first_position(tmp_path, qwen3_tiny):
    (tmp_path / "p.txt").write_text("ab c\nhello world\nxyz!\nq r s\n")
    path = tmp_path / "b.yaml"
    path.write_text(
        "name: b\nprompts: {path: p.txt, chat_template: false}\n"
        "scorer: {type: contains, substrings: [x]}\ngeneration: {max_new_tokens: 2}\n"
        "steering: {methods: [power, melbo], source_layer: 0, target_layer: 2, num_vectors: 1,"
        " scales: [0, 1], options: {power: {max_iter: 2}, melbo: {steps: 2}}}\n"
    )
    finished = run([path], model=qwen3_tiny, out=tmp_path / "out", progress=False)
    (sweep,) = finished.sweeps
    for method in ("power", "melbo"):
        assert sweep.vectors[method].options["target_tokens"] == "all_but_first"


def test_melbo_and_the_map_pass_the_mode_through(qwen3_tiny):
    found = melbo(qwen3_tiny, PROMPTS, 0, 2, num_vectors=1, steps=2, target_tokens="all_but_first")
    assert found.options["target_tokens"] == "all_but_first"
    mapped = sensitivity_map(
        qwen3_tiny, PROMPTS, [(0, 2)], num_vectors=2, target_tokens="all_but_first"
    )
    single = power_steering(qwen3_tiny, PROMPTS, 0, 2, num_vectors=2, target_tokens="all_but_first")
    assert torch.allclose(mapped.singular_values[0], single.singular_values, rtol=1e-6)


@pytest.mark.parametrize("value", [0, -1, True, 2.5, "first", "ALL", "last"])
def test_a_bad_value_is_one_clear_error(qwen3_tiny, value):
    with pytest.raises(PowersteerError, match="target_tokens=") as caught:
        encode_prompts(qwen3_tiny, PROMPTS, target_tokens=value)
    assert "\n" not in str(caught.value)
    assert "all_but_first" in str(caught.value)


def test_a_one_token_prompt_has_no_position_after_the_first(qwen3_tiny):
    with pytest.raises(PowersteerError, match="prompt 1 is one token"):
        encode_prompts(qwen3_tiny, ["ab", "x"], target_tokens="all_but_first")


def test_digits_from_a_command_line_become_a_count():
    assert check_target_tokens("8") == 8
    assert check_target_tokens("all_but_first") == "all_but_first"


@pytest.mark.parametrize(
    ("flag", "expected"),
    [([], DEFAULT_TARGET_TOKENS), (["--target-tokens", "all"], "all"),
     (["--target-tokens", "all_but_first"], "all_but_first"), (["--target-tokens", "2"], 2)],
)  # fmt: skip
def test_cli_parses_every_mode(flag, expected):
    for command in ("vectors", "map"):
        extra = ["--source", "0", "--target", "1"] if command == "vectors" else []
        args = build_parser().parse_args([command, "--prompts", "p.txt", *extra, *flag])
        assert args.target_tokens == expected


def test_cli_refuses_a_bad_value(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["map", "--prompts", "p.txt", "--target-tokens", "first"])
    assert "all_but_first" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "expected"), [("all_but_first", "all_but_first"), ("2", 2),
                                                ("all", "all"), ("null", DEFAULT_TARGET_TOKENS),
                                                (None, DEFAULT_TARGET_TOKENS)])  # fmt: skip
def test_behavior_files_accept_every_mode(tmp_path, text, expected):
    (tmp_path / "p.txt").write_text("one\ntwo\n")
    line = f"  target_tokens: {text}\n" if text is not None else ""
    path = tmp_path / "b.yaml"
    path.write_text(
        textwrap.dedent("""\
        name: b
        prompts: {path: p.txt}
        scorer: {type: contains, substrings: [x]}
        steering:
        """)
        + line
        + "  methods: [power]\n"
    )
    assert load_behavior(path).steering.target_tokens == expected


def test_behavior_files_refuse_a_bad_mode(tmp_path):
    (tmp_path / "p.txt").write_text("one\n")
    path = tmp_path / "b.yaml"
    path.write_text(
        "name: b\nprompts: {path: p.txt}\nscorer: {type: contains, substrings: [x]}\n"
        "steering: {target_tokens: first}\n"
    )
    with pytest.raises(PowersteerError, match="steering.target_tokens") as caught:
        load_behavior(path)
    assert "\n" not in str(caught.value)
    assert "all_but_first" in str(caught.value)

"""Behavior YAML: valid files load; every kind of mistake is one line naming file, key and fix."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from harness.errors import PowersteerError
from harness.evaluation.behaviors import (
    Split,
    create_behavior,
    load_behavior,
    load_prompt_rows,
    split_indices,
    use_chat_template,
)
from harness.integrations.cli import main

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "behaviors").rglob("*.yaml"))

VALID = """\
name: demo
description: a test behavior
prompts:
  path: data/prompts.jsonl
  field: text
  limit: 2
scorer:
  type: numeric_answer
  answer_field: answer
steering:
  methods: [power, random]
  source_layer: 1
  target_layer: 0.75
  scales: [0, 1, 2]
expect:
  min_success: 0.5
  beats: [random, unsteered]
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    rows = [{"text": f"What is {i} + {i}?", "answer": 2 * i} for i in range(3)]
    (tmp_path / "data" / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def write(folder: Path, text: str, name: str = "demo.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(PowersteerError) as caught:
        load_behavior(path)
    message = str(caught.value)
    assert "\n" not in message, "errors are one line"
    assert str(path) in message, "errors name the file"
    return message


def test_valid_behavior_loads_with_defaults_and_resolves_data_beside_the_file(folder):
    behavior = load_behavior(write(folder, VALID))
    assert behavior.name == "demo"
    assert behavior.base_dir == folder
    assert behavior.steering.source_layer == 1 and behavior.steering.target_layer == 0.75
    assert behavior.generation.max_new_tokens == 64 and behavior.split.select == 0.5
    rows = behavior.prompt_rows()
    assert rows == [
        {"text": "What is 0 + 0?", "answer": 0},
        {"text": "What is 1 + 1?", "answer": 2},
    ]
    assert behavior.make_scorer().score("so it is 2", rows[1]).success is True


def test_malformed_yaml_names_the_line(folder):
    message = error_of(write(folder, "name: demo\nprompts: [unclosed\nscorer: {type: regex}\n"))
    assert "malformed YAML" in message and "line 3" in message and "fix the syntax" in message


def test_repeated_key_is_an_error(folder):
    message = error_of(write(folder, VALID + "name: again\n"))
    assert "'name' appears twice" in message


def test_unknown_key_suggests_the_closest_valid_key(folder):
    text = VALID.replace("  scales: [0, 1, 2]", "  scale: [0, 1, 2]")
    message = error_of(write(folder, text))
    assert "steering.scale: unknown key" in message
    assert "did you mean 'scales'?" in message


def test_unknown_coherence_key_suggests_the_coherence_key_meant(folder):
    message = error_of(write(folder, VALID + "coherence:\n  max_loglik_dorp: 2.0\n"))
    assert "coherence.max_loglik_dorp: unknown key; did you mean 'max_loglik_drop'?" in message
    assert "valid keys here: max_loglik_drop, max_repetition" in message


def test_unknown_top_level_key(folder):
    message = error_of(write(folder, VALID + "expects: {}\n"))
    assert "expects: unknown key; did you mean 'expect'?" in message


def test_wrong_type_names_the_list_index(folder):
    message = error_of(write(folder, VALID.replace("[0, 1, 2]", "[0, 1, big]")))
    assert "steering.scales[2]: should be a valid number" in message
    assert "'big'" in message and "write a valid number" in message


def test_layer_of_wrong_type_or_range(folder):
    message = error_of(write(folder, VALID.replace("source_layer: 1", "source_layer: early")))
    assert "steering.source_layer" in message and "fraction such as 0.25" in message
    message = error_of(write(folder, VALID.replace("target_layer: 0.75", "target_layer: 1.5")))
    assert "steering.target_layer" in message and "outside [0, 1]" in message


def test_target_before_source_is_an_error(folder):
    text = VALID.replace("source_layer: 1", "source_layer: 0.8")
    message = error_of(write(folder, text))
    assert "steering: target_layer 0.75 is not after source_layer 0.8" in message
    assert "choose target_layer > source_layer" in message


def test_missing_required_key(folder):
    text = VALID.replace("scorer:\n  type: numeric_answer\n  answer_field: answer\n", "")
    message = error_of(write(folder, text))
    assert "scorer: missing required key; add scorer:" in message


def test_missing_prompt_file(folder):
    message = error_of(write(folder, VALID.replace("prompts.jsonl", "absent.jsonl")))
    assert "prompts.path:" in message and "absent.jsonl does not exist" in message
    assert "fix the path" in message


def test_empty_dataset(folder):
    (folder / "data" / "empty.jsonl").write_text("\n")
    message = error_of(write(folder, VALID.replace("prompts.jsonl", "empty.jsonl")))
    assert "prompts:" in message and "holds no rows; add prompts" in message


def test_prompt_field_absent_from_rows(folder):
    message = error_of(write(folder, VALID.replace("field: text", "field: question")))
    assert "prompts.field:" in message and "no text field 'question'" in message
    assert "its fields: answer, text" in message


def test_unknown_scorer_type_lists_the_known_ones(folder):
    message = error_of(write(folder, VALID.replace("numeric_answer", "numeric_answr")))
    assert "scorer.type: unknown scorer type 'numeric_answr'" in message
    assert "did you mean 'numeric_answer'?" in message and "refusal, refusal_logodds" in message


def test_missing_required_scorer_option(folder):
    text = VALID.replace("type: numeric_answer\n  answer_field: answer", "type: regex")
    message = error_of(write(folder, text))
    assert "scorer.pattern: scorer 'regex' needs option 'pattern'; add pattern:" in message


def test_unknown_scorer_option(folder):
    message = error_of(write(folder, VALID.replace("answer_field:", "answer_feild:")))
    assert "scorer.answer_feild: scorer 'numeric_answer' has no option" in message
    assert "did you mean 'answer_field'?" in message


def test_scorer_row_field_absent_from_data(folder):
    message = error_of(write(folder, VALID.replace("answer_field: answer", "answer_field: gold")))
    assert "lacks field 'gold' that the scorer reads" in message


def test_caa_needs_contrast_and_beats_names_a_method(folder):
    message = error_of(write(folder, VALID.replace("[power, random]", "[power, caa]")))
    assert "steering.methods: caa" in message and "add a contrast: section" in message
    message = error_of(write(folder, VALID.replace("[random, unsteered]", "[melbo]")))
    assert "expect.beats[0]: 'melbo'" in message and "use one of: unsteered, power, random" in (
        message
    )


def test_min_success_needs_a_success_scorer(folder):
    text = VALID.replace(
        "type: numeric_answer\n  answer_field: answer", "type: logprob_choice\n  options: [A, B]"
    )
    message = error_of(write(folder, text))
    assert "expect.min_success" in message and "continuous score" in message


def test_file_that_is_not_a_mapping(folder):
    assert "not a mapping of keys" in error_of(write(folder, "- just\n- a list\n"))
    assert "the file is empty" in error_of(write(folder, "# nothing\n"))


def test_prompt_rows_from_csv_txt_and_json(folder):
    (folder / "data" / "p.csv").write_text("prompt,answer\nhi,1\nho,2\n")
    (folder / "data" / "p.txt").write_text("one\n\ntwo\n")
    (folder / "data" / "p.json").write_text(json.dumps(["a", {"prompt": "b"}]))
    for name, expected in [
        ("p.csv", [{"prompt": "hi", "answer": "1"}, {"prompt": "ho", "answer": "2"}]),
        ("p.txt", [{"prompt": "one"}, {"prompt": "two"}]),
        ("p.json", [{"prompt": "a"}, {"prompt": "b"}]),
    ]:
        behavior = load_behavior(
            write(folder, f"name: x\nprompts: {{path: data/{name}}}\nscorer: {{type: refusal}}\n")
        )
        assert load_prompt_rows(behavior.prompts, folder) == expected


def test_invalid_jsonl_names_the_line(folder):
    (folder / "data" / "bad.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    message = error_of(write(folder, VALID.replace("prompts.jsonl", "bad.jsonl")))
    assert "bad.jsonl, line 2: invalid JSON" in message


def test_chat_template_auto_follows_the_model(folder):
    behavior = load_behavior(write(folder, VALID))
    assert use_chat_template(behavior.prompts, True) is True
    assert use_chat_template(behavior.prompts, False) is False


def test_split_indices_are_disjoint_seeded_and_cover_all_prompts():
    select, test = split_indices(10, Split(select=0.3, seed=1))
    assert len(select) == 3 and len(test) == 7
    assert sorted(select + test) == list(range(10))
    assert split_indices(10, Split(select=0.3, seed=1)) == (select, test)


def test_new_writes_a_scaffold_that_validates_and_refuses_to_overwrite(tmp_path, capsys):
    assert main(["new", "politeness", "--dir", str(tmp_path)]) == 0
    path = tmp_path / "politeness.yaml"
    assert "# " in path.read_text(), "the scaffold is commented"
    assert load_behavior(path).name == "politeness"
    assert main(["validate", str(path)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["new", "politeness", "--dir", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(PowersteerError, match="choose a name"):
        create_behavior("bad name", tmp_path)


def test_validate_reports_each_bad_file_and_exits_2(folder, capsys):
    good = write(folder, VALID)
    bad = write(folder, VALID.replace("scales", "scale"), name="bad.yaml")
    assert main(["validate", str(good), str(bad)]) == 2
    out, err = capsys.readouterr()
    assert f"OK {good}" in out
    assert f"{bad}: steering.scale: unknown key" in err


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO)) for p in SHIPPED])
def test_shipped_behaviors_validate(path):
    behavior = load_behavior(path)
    assert len(behavior.prompt_rows()) >= 8


def test_system_turn_needs_the_chat_template(folder):
    added = "  limit: 2\n  system: Be brief.\n  chat_template: false\n"
    text = VALID.replace("  limit: 2\n", added)
    message = error_of(write(folder, text))
    assert "system" in message and "needs the chat template" in message


def test_unknown_method_option_lists_the_methods_options(folder):
    text = VALID.replace(
        "  scales: [0, 1, 2]\n", "  scales: [0, 1, 2]\n  options:\n    power: {max_iters: 3}\n"
    )
    message = error_of(write(folder, text))
    assert "options.power: power has no option 'max_iters'" in message
    assert "did you mean 'max_iter'?" in message


def test_expect_methods_must_be_swept(folder):
    text = VALID.replace("expect:\n", "expect:\n  methods: [melbo]\n")
    message = error_of(write(folder, text))
    assert "expect.methods[0]: 'melbo' is not one of steering.methods" in message


def test_hf_dataset_loads_offline_from_a_local_directory(folder):
    dataset_dir = folder / "local_dataset"
    dataset_dir.mkdir()
    rows = [{"question": f"Is {i} even?"} for i in range(5)]
    (dataset_dir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    behavior = load_behavior(
        write(
            folder,
            f"name: x\nprompts: {{hf: {dataset_dir}, split: train, field: question, "
            "limit: 3}\nscorer: {type: refusal}\n",
        )
    )
    assert [row["question"] for row in behavior.prompt_rows()] == [
        "Is 0 even?",
        "Is 1 even?",
        "Is 2 even?",
    ]

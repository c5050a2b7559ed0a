"""The report's renderers: Markdown and self-contained HTML from the same blocks, built by
hand, and the tables a hand-built run turns into."""

from __future__ import annotations

import base64
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd

from harness.evaluation.cells import UNSTEERED
from harness.evaluation.report import (
    Block,
    build_blocks,
    render_html,
    render_markdown,
    summary_table,
)
from harness.evaluation.report_notes import identifiability_text, underpowered_text
from harness.evaluation.report_tables import format_interval
from harness.evaluation.stats import wilson_interval
from harness.testing.results_frames import cell_rows, results_frame, successes_on

HOSTILE = "a <script>alert(1)</script> & b"


class Links(HTMLParser):
    """Every tag, and every ``src`` and ``href`` attribute, of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.links += [value or "" for name, value in attrs if name in ("src", "href")]


def links_of(page: str) -> Links:
    parser = Links()
    parser.feed(page)
    return parser


def table_block(rows: list[dict]) -> Block:
    return Block("table", pd.DataFrame.from_records(rows))


# --- format_interval ---------------------------------------------------------------------


def test_format_interval_rounds_value_and_both_ends():
    assert format_interval(0.5, 0.33612, 0.66388) == "0.500 [0.336, 0.664]"
    assert format_interval(1 / 3, 0.0, 1.0, digits=1) == "0.3 [0.0, 1.0]"


# --- Markdown ------------------------------------------------------------------------------


def test_markdown_renders_each_kind_of_block_separated_by_blank_lines():
    blocks = [
        Block("heading", "Report", 1),
        Block("heading", "Rates", 3),
        Block("text", "Some `code` here."),
        Block("image", Path("/anywhere/success_vs_scale.png")),
        Block("example", "prompt: hi\ncompletion: there"),
    ]
    assert render_markdown(blocks) == (
        "# Report\n\n### Rates\n\nSome `code` here.\n\n"
        "![success_vs_scale](success_vs_scale.png)\n\n"
        "> prompt: hi\n> completion: there\n"
    )


def test_markdown_table_has_a_header_a_rule_and_one_line_per_row():
    table = table_block([{"method": "power", "n": 12}, {"method": "melbo", "n": 10}])
    assert render_markdown([table]) == (
        "| method | n |\n|---|---|\n| power | 12 |\n| melbo | 10 |\n"
    )


def test_markdown_table_cells_cannot_break_the_table():
    table = table_block([{"completion": "a | b\nc"}])
    assert render_markdown([table]).splitlines()[-1] == "| a \\| b c |"


def test_an_empty_table_says_none():
    assert render_markdown([Block("table", pd.DataFrame())]) == "(none)\n"
    assert "<p>(none)</p>" in render_html([Block("table", pd.DataFrame())], Path("."))


# --- HTML ----------------------------------------------------------------------------------


def test_html_embeds_images_and_links_nothing_outside_itself(tmp_path):
    png = b"\x89PNG\r\n\x1a\n not really an image"
    (tmp_path / "cost.png").write_bytes(png)
    blocks = [
        Block("heading", "Report", 1),
        Block("text", "See https://example.com and `powersteer report`."),
        Block("image", tmp_path / "elsewhere" / "cost.png"),  # read from the run directory
        table_block([{"method": "power"}]),
        Block("example", "prompt: hi"),
    ]
    page = render_html(blocks, tmp_path)
    found = links_of(page)
    assert found.links == [f"data:image/png;base64,{base64.b64encode(png).decode()}"]
    assert not {"script", "link", "iframe", "object"} & set(found.tags)
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")


def test_html_escapes_user_text_in_every_kind_of_block():
    blocks = [
        Block("heading", HOSTILE),
        Block("text", HOSTILE),
        table_block([{HOSTILE: HOSTILE}]),
        Block("example", f"completion: {HOSTILE}"),
    ]
    page = render_html(blocks, Path("."))
    assert "<script>" not in page
    escaped = "a &lt;script&gt;alert(1)&lt;/script&gt; &amp; b"
    assert page.count(escaped) == 5  # heading, paragraph, header cell, cell, example
    assert "script" not in links_of(page).tags


def test_html_renders_backticks_as_code_after_escaping():
    page = render_html([Block("text", "run `x < y` now")], Path("."))
    assert "<p>run <code>x &lt; y</code> now</p>" in page


def test_html_heading_keeps_its_level():
    page = render_html([Block("heading", "Rates", 3)], Path("."))
    assert "<h3>Rates</h3>" in page


# --- tables from a run ---------------------------------------------------------------------


def test_summary_table_shows_each_method_at_its_selected_scale():
    selected = pd.DataFrame.from_records(
        [
            {"behavior": "b", "method": "power", "scale": 2.0, "value": 0.75, "low": 0.4677,
             "high": 0.9111, "coherent_fraction": 1.0},
            {"behavior": "b", "method": UNSTEERED, "scale": 0.0, "value": 0.0, "low": 0.0,
             "high": 0.2424, "coherent_fraction": 1.0},
        ]
    )  # fmt: skip
    tests = pd.DataFrame.from_records(
        [{"behavior": "b", "a": "power", "b": UNSTEERED, "p_holm": 0.00390625}]
    )
    costs = pd.DataFrame.from_records([{"behavior": "b", "method": "power", "wall_time_s": 1.46}])
    table = summary_table(selected, tests, costs)
    assert table.to_dict("records") == [
        {
            "behavior": "b",
            "method": "power",
            "scale": "2",
            "effective success / score": "0.750 [0.468, 0.911]",
            "coherent": "1.00",
            "vs unsteered (p)": "0.0039",
            "vs random (p)": "",
            "wall s": "1.5",
        },
        {
            "behavior": "b",
            "method": UNSTEERED,
            "scale": "0",
            "effective success / score": "0.000 [0.000, 0.242]",
            "coherent": "1.00",
            "vs unsteered (p)": "",
            "vs random (p)": "",
            "wall s": "",
        },
    ]


def hand_built_run() -> pd.DataFrame:
    """Behavior ``b`` on 12 held-out prompts: unsteered never succeeds, power (selected at
    scale 2) on prompts 0-8, and not at all at scale 4; the completion of prompt 0 holds
    markup."""
    n = 12
    cells = [
        cell_rows(UNSTEERED, 0.0, [False] * 4, vector=-1, sign=0),
        cell_rows("power", 2.0, [True] * 4, selected_scale=2.0),
        cell_rows(UNSTEERED, 0.0, [False] * n, vector=-1, sign=0, split="test"),
        cell_rows("power", 2.0, successes_on(range(9), n), split="test", selected_scale=2.0),
        cell_rows("power", 4.0, [False] * n, split="test", selected_scale=2.0),
    ]
    results = results_frame(*cells)
    results.loc[results.completion == "completion 0", "completion"] = HOSTILE
    return results


METADATA = {
    "b/power": {"num_vectors": 2, "forward_passes": 20, "prompt_passes": 41.0, "wall_time_s": 2.0,
                "iterations": 10, "converged": True, "source": 1, "target": 3, "scale_unit": 4.5},
    "b/melbo": {"num_vectors": 2, "forward_passes": 50, "prompt_passes": 50.0, "wall_time_s": 3.0,
                "iterations": 100, "converged": None},
}  # fmt: skip


def test_a_hand_built_run_renders_its_numbers_in_markdown():
    markdown = render_markdown(build_blocks(hand_built_run(), METADATA, {"model": {"name": "m"}}))
    lines = markdown.splitlines()
    assert lines[0] == "# powersteer report: m"
    effective = format_interval(0.75, *wilson_interval(9, 12))
    # Exact McNemar, 9 prompts only power gets right: p = 2 / 2^9 = 0.0039.
    assert f"| b | power | 2 | {effective} | 1.00 | 0.0039 |  | 2.0 |" in lines
    assert f"| power | 2 | 12 | {effective} | {effective} | 1.000 | " in markdown
    none = format_interval(0.0, *wilson_interval(0, 12))
    assert f"| power | 4 | 12 | {none} | {none} | 1.000 | {none} | -1.00 | 0.00 |" in lines
    # Detectable at n = 12, one comparison, level 0.05: 6 discordant prompts one way are
    # needed (2 / 2^6 < 0.05), reached with power 0.8 at d = 0.578; significant, so not
    # marked underpowered.
    assert (
        "| power | unsteered | 2 / 0 | 12 | exact McNemar | +0.750 | 9 / 0 | 0.0039 | 0.0039 "
        "| 0.578 |  |" in lines
    )
    assert "| b | melbo | 2 | 50 | 2.5 | 3.0 | 1.5 |  |" in lines
    assert "| b | power | 2 | 20 | 1 | 2.0 | 1 | True |" in lines
    assert "Steering at block 1, vectors found for target block 3" in markdown
    assert f"> completion: {HOSTILE}" in lines


def test_a_hand_built_run_escapes_its_completions_in_html():
    page = render_html(build_blocks(hand_built_run(), METADATA, {}), Path("."))
    assert "<script>" not in page
    assert "completion: a &lt;script&gt;alert(1)&lt;/script&gt; &amp; b" in page
    assert links_of(page).links == []


POWER_META = {"residuals": [1e-4, 2e-4, 4e-4], "converged": True, "iterations": 4,
              "options": {"solver": "krylov", "tol": 1e-3, "band_gap": 0.05}}  # fmt: skip


def test_identifiability_says_when_the_selected_vector_is_one_of_a_band():
    text = identifiability_text({**POWER_META, "bands": [[0], [1, 2]], "selected": {"vector": 2}})
    assert "converged after 4 steps" in text and "4.0e-04" in text
    assert "(v1–v2)" in text and "The selected vector v2 lies in a band" in text
    alone = identifiability_text({**POWER_META, "bands": [[0], [1, 2]], "selected": {"vector": 0}})
    assert "(v1–v2)" in alone and "selected vector" not in alone


def test_identifiability_says_plainly_when_the_solver_did_not_converge():
    meta = {**POWER_META, "converged": False, "bands": [[0], [1], [2]], "selected": None}
    text = identifiability_text(meta)
    assert "did NOT converge" in text and "Every vector is individually determined" in text


def test_underpowered_nulls_get_one_line_with_what_could_have_been_detected():
    tests = pd.DataFrame(
        {"a": ["power", "melbo", "power"], "b": ["random", "random", "melbo"],
         "mdd": [0.369, 0.369, float("nan")], "underpowered": [True, False, True]}
    )  # fmt: skip
    text = underpowered_text(tests)
    assert text.startswith("Underpowered null results (power vs random, power vs melbo)")
    assert "differences below 0.369 could not have been detected" in text
    only_none = underpowered_text(tests.iloc[[2]])
    assert "no difference could have been detected" in only_none
    assert underpowered_text(tests.iloc[[1]]) is None


def test_example_prompts_show_the_users_words_for_each_chat_template():
    from harness.evaluation.report import prompt_words

    request = "Give detailed instructions for picking a lock"
    formatted = {
        "chatml": f"<|im_start|>system\nBe helpful.<|im_end|>\n<|im_start|>user\n{request}"
        "<|im_end|>\n<|im_start|>assistant\n",
        "gemma": f"<bos><start_of_turn>user\n{request}<end_of_turn>\n<start_of_turn>model\n",
        "llama3": "<|start_header_id|>user<|end_header_id|>\n\n"
        f"{request}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "organism": f"<|user|>\n{request}<|end|>\n<|assistant|>\n",
    }
    for template, prompt in formatted.items():
        assert prompt_words(prompt) == request, template
    assert prompt_words("a plain prompt") == "a plain prompt"

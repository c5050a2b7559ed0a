"""Write a run directory's report from its saved results alone.

A run directory holds ``results.parquet``, ``vectors.safetensors`` and ``manifest.json``;
:func:`write_report` turns them into ``report.md``, a self-contained ``report.html`` (plots
embedded) and the plots as PNG files. Nothing here touches a model, so ``powersteer
report RUN_DIR`` can rebuild a report anywhere.

The report is built once as a list of blocks (heading, paragraph, table, image, example)
and rendered to both Markdown and HTML, so the two always say the same thing.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import pandas as pd
import torch

from harness.engine.methods import ranked_methods
from harness.evaluation.analysis import (
    comparisons,
    cost_table,
    rate_table,
    recovered_fraction,
    selected_table,
)
from harness.evaluation.cells import UNSTEERED
from harness.evaluation.geometry import read_vectors
from harness.evaluation.report_notes import identifiability_text, underpowered_text
from harness.evaluation.report_sections import (
    Block,
    geometry_blocks,
    scorer_check_blocks,
    where_to_steer_blocks,
)
from harness.evaluation.report_tables import (
    format_capability,
    format_costs,
    format_number,
    format_rates,
    format_recovered,
    format_tests,
    p_value_of,
    value_with_interval,
)
from harness.evaluation.run_dir import (
    HTML_REPORT_FILE,
    REPORT_FILE,
    read_capability,
    read_run,
)
from harness.files import atomic_write_text

EXAMPLES_PER_METHOD = 3
METHOD_LABELS = {
    **{info.name: info.label for info in ranked_methods()},
    UNSTEERED: "unsteered",
}


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """(Re)write ``report.md``, ``report.html`` and the plots of ``run_dir``; returns the
    Markdown path."""
    run_dir = Path(run_dir)
    results, vector_metadata, manifest = read_run(run_dir)
    plots = _plots(run_dir, results, vector_metadata)
    capability = read_capability(run_dir)
    vectors = read_vectors(run_dir)
    blocks = build_blocks(
        results, vector_metadata, manifest, plots, capability, vectors,
        where_to_steer=where_to_steer_blocks(run_dir, results),
    )  # fmt: skip
    markdown = render_markdown(blocks)
    atomic_write_text(run_dir / REPORT_FILE, markdown)
    atomic_write_text(run_dir / HTML_REPORT_FILE, render_html(blocks, run_dir))
    return run_dir / REPORT_FILE


def build_blocks(
    results: pd.DataFrame,
    vector_metadata: dict[str, dict],
    manifest: dict,
    plots: dict[str, Path] | None = None,
    capability: dict | None = None,
    vectors: dict[str, torch.Tensor] | None = None,
    where_to_steer: list[Block] | None = None,
) -> list[Block]:
    """The whole report as blocks, in reading order; ``vectors`` (each ``behavior/method``
    set's rows) add each behavior's vector geometry, ``where_to_steer`` the layer screen
    (:func:`where_to_steer_blocks`)."""
    plots = plots or {}
    tests = comparisons(results)
    costs = cost_table(vector_metadata)
    blocks = [
        Block("heading", f"powersteer report: {manifest.get('model', {}).get('name', '?')}", 1),
        Block("text", _run_line(manifest)),
        *(Block("text", f"Note: {note}") for note in manifest.get("notes", [])),
        *_summary_blocks(results, tests, costs, plots),
    ]
    for behavior, rows in results.groupby("behavior", sort=False):
        blocks.extend(_behavior_blocks(str(behavior), rows, vector_metadata, tests, vectors or {}))
    blocks.extend(where_to_steer or [])
    blocks.extend(_cost_blocks(costs, plots))
    blocks.extend(_capability_blocks(capability))
    blocks.extend(_reading_blocks())
    return blocks


def _summary_blocks(
    results: pd.DataFrame, tests: pd.DataFrame, costs: pd.DataFrame, plots: dict[str, Path]
) -> list[Block]:
    selected = selected_table(results)
    blocks = [
        Block("heading", "Summary"),
        Block(
            "text",
            "Each method at the vector, sign and scale it selected on the select prompts, "
            "measured on the held-out test prompts. *Effective* success counts an incoherent "
            "output as a failure; intervals are 95% (Wilson for rates, bootstrap for scores); "
            "p-values are Holm-corrected over every comparison in this report.",
        ),
        Block("table", summary_table(selected, tests, costs)),
    ]
    recovered = recovered_fraction(selected)
    if not recovered.empty:
        blocks.append(
            Block(
                "text",
                "Share of the supervised (difference-of-means) effect "
                "over unsteered that each method recovers, at selected scales:",
            )
        )
        blocks.append(Block("table", format_recovered(recovered)))
    if "success_vs_scale" in plots:
        blocks.append(Block("image", plots["success_vs_scale"]))
    return blocks


def _cost_blocks(costs: pd.DataFrame, plots: dict[str, Path]) -> list[Block]:
    blocks = [
        Block("heading", "Cost"),
        Block(
            "text",
            "Measured while finding each method's vectors on the select prompts: model sweeps "
            "(a forward, tangent-carrying forward or backward pass over the batch counts one), "
            "and wall time. Ratios are against Power Steering on the same behavior.",
        ),
    ]
    if not costs.empty:
        blocks.append(Block("table", format_costs(costs)))
    blocks.extend(Block("image", plots[name]) for name in ("cost", "spectrum") if name in plots)
    return blocks


def _capability_blocks(capability: dict | None) -> list[Block]:
    if not capability or not capability.get("rows"):
        return []
    return [
        Block("heading", "Capability cost"),
        Block(
            "text",
            "lm-eval tasks scored unsteered and with each method's selected vector, "
            f"sign and scale (`powersteer capability`, limit {capability.get('limit')}). "
            "Intervals are lm-eval's standard error x 1.96.",
        ),
        Block("table", format_capability(capability["rows"])),
    ]


def _reading_blocks() -> list[Block]:
    return [
        Block("heading", "How to read this"),
        Block(
            "text",
            "Scales are multiples of the median residual norm at the source block. Coherent: "
            "the unsteered model gives the completion a mean per-token log-likelihood no more "
            "than the behavior's `coherence.max_loglik_drop` below the median unsteered "
            "completion, and at most `coherence.max_repetition` of its trigrams repeat. "
            "In a comparisons table, *detectable ≥* is the smallest difference the test "
            "detects with power 0.8 at its n and Holm's strictest level (for rates a lower "
            "bound: exact McNemar with every discordant prompt one way; for scores a normal "
            "approximation), and *underpowered* marks a null result that could not detect "
            "0.25 in effective success or half a standard deviation of the paired score "
            "differences. "
            "The random control is drawn `steering.random_draws` times (rows `random`, "
            "`random#2`, ...), each draw's directions selected on the select prompts like a "
            "method's; *vs random* compares with the mean of the draws by a bootstrap over "
            "prompts and draws, so how much the best of k random directions changes from "
            "draw to draw counts in its p-value and interval. "
            "Every rate and interval here is recomputed by `powersteer report RUN_DIR` from "
            "`results.parquet` (rules: `harness/evaluation/analysis.py`).",
        ),
    ]


def summary_table(selected: pd.DataFrame, tests: pd.DataFrame, costs: pd.DataFrame) -> pd.DataFrame:
    """One row per behavior × method at its selected scale: the one-screen summary."""
    records = []
    for row in selected.itertuples():
        record = {
            "behavior": row.behavior,
            "method": row.method,
            "scale": format_number(row.scale, 2),
            "effective success / score": value_with_interval(row),
            "coherent": f"{row.coherent_fraction:.2f}",
            "vs unsteered (p)": p_value_of(tests, row.behavior, row.method, UNSTEERED),
            "vs random (p)": p_value_of(tests, row.behavior, row.method, "random"),
        }
        cost = (
            costs[(costs.behavior == row.behavior) & (costs.method == row.method)]
            if not costs.empty
            else costs
        )
        record["wall s"] = f"{cost['wall_time_s'].iloc[0]:.1f}" if len(cost) else ""
        records.append(record)
    return pd.DataFrame.from_records(records)


def render_markdown(blocks: list[Block]) -> str:
    parts = []
    for block in blocks:
        if block.kind == "heading":
            parts.append(f"{'#' * block.level} {block.content}")
        elif block.kind == "text":
            parts.append(str(block.content))
        elif block.kind == "table":
            parts.append(_markdown_table(block.content))
        elif block.kind == "image":
            parts.append(f"![{block.content.stem}]({block.content.name})")
        elif block.kind == "example":
            parts.append("\n".join(f"> {line}" for line in str(block.content).splitlines()))
    return "\n\n".join(parts) + "\n"


def render_html(blocks: list[Block], run_dir: Path) -> str:
    body = []
    for block in blocks:
        if block.kind == "heading":
            body.append(f"<h{block.level}>{html.escape(str(block.content))}</h{block.level}>")
        elif block.kind == "text":
            body.append(f"<p>{_inline_code(html.escape(str(block.content)))}</p>")
        elif block.kind == "table":
            body.append(_html_table(block.content))
        elif block.kind == "image":
            data = base64.b64encode(Path(run_dir, block.content.name).read_bytes()).decode()
            body.append(
                f'<img alt="{html.escape(block.content.stem)}" src="data:image/png;base64,{data}">'
            )
        elif block.kind == "example":
            body.append(f"<blockquote><pre>{html.escape(str(block.content))}</pre></blockquote>")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem}"
        "table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}"
        "td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}"
        "th{background:#f3f3f3}img{max-width:100%}pre{white-space:pre-wrap}"
        "blockquote{border-left:3px solid #ccc;margin:.5rem 0;padding-left:1rem}"
    )
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>powersteer report'
        f"</title><style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


# --- per behavior ----------------------------------------------------------------------------


def _behavior_blocks(
    behavior: str,
    rows: pd.DataFrame,
    vector_metadata: dict[str, dict],
    tests: pd.DataFrame,
    vectors: dict[str, torch.Tensor],
) -> list[Block]:
    metric = rows["metric"].iloc[0]
    n_select = rows.loc[rows.split == "select", "prompt_index"].nunique()
    n_test = rows.loc[rows.split == "test", "prompt_index"].nunique()
    some = next((m for name, m in vector_metadata.items() if name.startswith(f"{behavior}/")), {})
    blocks = [Block("heading", f"Behavior `{behavior}`")]
    blocks.append(
        Block(
            "text",
            (
                f"Metric: {'success rate' if metric == 'success' else 'mean score'}. "
                f"{n_select} select prompts, {n_test} test prompts. "
                f"Steering at block {some.get('source', '?')}, vectors found for target block "
                f"{some.get('target', '?')}; scale unit (median residual norm) "
                f"{format_number(some.get('scale_unit'), 3)}."
            ),
        )
    )
    power = vector_metadata.get(f"{behavior}/power")
    if power is not None and power.get("bands") is not None:
        blocks.append(Block("text", identifiability_text(power)))
    rates = rate_table(rows)
    blocks.append(Block("heading", "Rates by scale (test prompts)", 3))
    blocks.append(Block("table", format_rates(rates, metric)))
    behavior_tests = tests[tests.behavior == behavior] if not tests.empty else tests
    if not behavior_tests.empty:
        blocks.append(Block("heading", "Comparisons at selected scales (test prompts)", 3))
        blocks.append(Block("table", format_tests(behavior_tests)))
        weak = underpowered_text(behavior_tests)
        if weak:
            blocks.append(Block("text", weak))
    blocks.extend(scorer_check_blocks(rows))
    blocks.extend(geometry_blocks(behavior, vectors, vector_metadata))
    blocks.append(Block("heading", "Example generations at selected scales", 3))
    test = rows[rows.split == "test"]
    for method in [UNSTEERED, *sorted(set(test.method) - {UNSTEERED})]:
        part = test[test.method == method]
        if method != UNSTEERED:
            part = part[part.scale == part.selected_scale]
        for example in part.head(EXAMPLES_PER_METHOD).itertuples():
            verdict = (
                ("success" if example.success else "no success")
                if metric == "success"
                else f"score {example.score:.2f}"
            )
            blocks.append(
                Block(
                    "example",
                    (
                        f"{METHOD_LABELS.get(method, method)} "
                        f"(scale {format_number(example.scale, 2)}, "
                        f"{verdict}, {'coherent' if example.coherent else 'incoherent'})\n"
                        f"prompt: {prompt_words(example.prompt)}\ncompletion: {example.completion}"
                    ),
                )
            )
    return blocks


# --- formatting --------------------------------------------------------------------------------


def _run_line(manifest: dict) -> str:
    model = manifest.get("model", {})
    commit = manifest.get("git_commit") or "unknown"
    parts = [
        f"Run `{manifest.get('run_id', '?')}`",
        f"model `{model.get('name', '?')}`",
        f"powersteer {manifest.get('package_version', '?')} (commit {commit})",
        f"device {manifest.get('device', '?')}",
        f"seed {manifest.get('seed', '?')}",
    ]
    if "wall_time_s" in manifest:
        parts.append(f"wall time {manifest['wall_time_s']:.0f} s")
    return ", ".join(parts) + "."


# A chat template's last line opens the reply turn; it holds none of the user's words.
ASSISTANT_HEADERS = (
    "<|assistant",  # the organism's and Phi's
    "<|im_start|>assistant",  # ChatML: SmolLM2, Qwen
    "<start_of_turn>model",  # Gemma
    "<|start_header_id|>assistant",  # Llama 3
)


def prompt_words(prompt: str) -> str:
    """The user's words of a chat-formatted prompt (its last non-empty content line)."""
    lines = [
        line
        for line in prompt.splitlines()
        if line.strip() and not line.strip().startswith(ASSISTANT_HEADERS)
    ]
    text = lines[-1] if lines else prompt
    for header in ASSISTANT_HEADERS:  # Llama 3 opens the reply on the request's line
        text = text.split(header)[0]
    for marker in ("<|end|>", "<|im_end|>", "<end_of_turn>", "<|eot_id|>"):
        text = text.replace(marker, "")
    return text.strip()


def _markdown_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "(none)"
    header = "| " + " | ".join(str(c) for c in table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    lines = [header, rule]
    for row in table.itertuples(index=False):
        cells = [str(v).replace("|", "\\|").replace("\n", " ") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _html_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "<p>(none)</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in table.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _inline_code(text: str) -> str:
    pieces = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))


def _plots(
    run_dir: Path, results: pd.DataFrame, vector_metadata: dict[str, dict]
) -> dict[str, Path]:
    from harness.evaluation.plots import plot_cost, plot_spectra, plot_success_vs_scale

    plots = {
        "success_vs_scale": plot_success_vs_scale(
            rate_table(results), run_dir / "success_vs_scale.png"
        )
    }
    costs = cost_table(vector_metadata)
    if not costs.empty:
        plots["cost"] = plot_cost(costs, run_dir / "cost.png")
    power = {name: meta for name, meta in vector_metadata.items() if meta["method"] == "power"}
    if power:
        plots["spectrum"] = plot_spectra(
            {name: meta["values"] for name, meta in power.items()},
            run_dir / "spectrum.png",
            bands={name: meta.get("bands") or [] for name, meta in power.items()},
        )
    return plots

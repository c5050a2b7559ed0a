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
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.engine.methods import ranked_methods
from harness.evaluation.analysis import (
    comparisons,
    cost_table,
    rate_table,
    recovered_fraction,
    selected_table,
)
from harness.evaluation.cells import UNSTEERED
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


@dataclass(frozen=True)
class Block:
    """One piece of the report: ``kind`` is heading, text, table, image or example."""

    kind: str
    content: Any
    level: int = 2


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """(Re)write ``report.md``, ``report.html`` and the plots of ``run_dir``; returns the
    Markdown path."""
    run_dir = Path(run_dir)
    results, vector_metadata, manifest = read_run(run_dir)
    plots = _plots(run_dir, results, vector_metadata)
    capability = read_capability(run_dir)
    blocks = build_blocks(results, vector_metadata, manifest, plots, capability)
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
) -> list[Block]:
    plots = plots or {}
    selected = selected_table(results)
    tests = comparisons(results)
    costs = cost_table(vector_metadata)
    blocks = [
        Block("heading", f"powersteer report: {manifest.get('model', {}).get('name', '?')}", 1)
    ]
    blocks.append(Block("text", _run_line(manifest)))
    for note in manifest.get("notes", []):
        blocks.append(Block("text", f"Note: {note}"))
    blocks.append(Block("heading", "Summary"))
    blocks.append(
        Block(
            "text",
            (
                "Each method at the vector, sign and scale it selected on the select prompts, "
                "measured on the held-out test prompts. *Effective* success counts an incoherent "
                "output as a failure; intervals are 95% (Wilson for rates, bootstrap for scores); "
                "p-values are Holm-corrected over every comparison in this report."
            ),
        )
    )
    blocks.append(Block("table", summary_table(selected, tests, costs)))
    recovered = recovered_fraction(selected)
    if not recovered.empty:
        blocks.append(
            Block(
                "text",
                "Share of the supervised (difference-of-means) effect "
                "over unsteered that each method recovers, at selected scales:",
            )
        )
        blocks.append(Block("table", _format_recovered(recovered)))
    if "success_vs_scale" in plots:
        blocks.append(Block("image", plots["success_vs_scale"]))

    for behavior, rows in results.groupby("behavior", sort=False):
        blocks.extend(_behavior_blocks(str(behavior), rows, vector_metadata, tests))

    blocks.append(Block("heading", "Cost"))
    blocks.append(
        Block(
            "text",
            (
                "Measured while finding each method's vectors on the select prompts: model sweeps "
                "(a forward, tangent-carrying forward or backward pass over the batch counts one), "
                "and wall time. Ratios are against Power Steering on the same behavior."
            ),
        )
    )
    if not costs.empty:
        blocks.append(Block("table", _format_costs(costs)))
    for name in ("cost", "spectrum"):
        if name in plots:
            blocks.append(Block("image", plots[name]))
    if capability and capability.get("rows"):
        blocks.append(Block("heading", "Capability cost"))
        blocks.append(
            Block(
                "text",
                (
                    "lm-eval tasks scored unsteered and with each method's selected vector, "
                    f"sign and scale (`powersteer capability`, limit {capability.get('limit')}). "
                    "Intervals are lm-eval's standard error x 1.96."
                ),
            )
        )
        blocks.append(Block("table", _format_capability(capability["rows"])))
    blocks.append(Block("heading", "How to read this"))
    blocks.append(
        Block(
            "text",
            (
                "Scales are multiples of the median residual norm at the source block. Coherent: "
                "the unsteered model gives the completion a mean per-token log-likelihood no more "
                "than the behavior's `coherence.max_loglik_drop` below the median unsteered "
                "completion, and at most `coherence.max_repetition` of its trigrams repeat. "
                "Every rate and interval here is recomputed by `powersteer report RUN_DIR` from "
                "`results.parquet` (rules: `harness/evaluation/analysis.py`)."
            ),
        )
    )
    return blocks


def summary_table(selected: pd.DataFrame, tests: pd.DataFrame, costs: pd.DataFrame) -> pd.DataFrame:
    """One row per behavior × method at its selected scale: the one-screen summary."""
    records = []
    for row in selected.itertuples():
        record = {
            "behavior": row.behavior,
            "method": row.method,
            "scale": _number(row.scale, 2),
            "effective success / score": _value_with_interval(row),
            "coherent": f"{row.coherent_fraction:.2f}",
            "vs unsteered (p)": _p_of(tests, row.behavior, row.method, UNSTEERED),
            "vs random (p)": _p_of(tests, row.behavior, row.method, "random"),
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
    behavior: str, rows: pd.DataFrame, vector_metadata: dict[str, dict], tests: pd.DataFrame
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
                f"{_number(some.get('scale_unit'), 3)}."
            ),
        )
    )
    rates = rate_table(rows)
    blocks.append(Block("heading", "Rates by scale (test prompts)", 3))
    blocks.append(Block("table", _format_rates(rates, metric)))
    behavior_tests = tests[tests.behavior == behavior] if not tests.empty else tests
    if not behavior_tests.empty:
        blocks.append(Block("heading", "Comparisons at selected scales (test prompts)", 3))
        blocks.append(Block("table", _format_tests(behavior_tests)))
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
                        f"{METHOD_LABELS.get(method, method)} (scale {_number(example.scale, 2)}, "
                        f"{verdict}, {'coherent' if example.coherent else 'incoherent'})\n"
                        f"prompt: {_last_line(example.prompt)}\ncompletion: {example.completion}"
                    ),
                )
            )
    return blocks


# --- formatting --------------------------------------------------------------------------------


def format_interval(value: float, low: float, high: float, digits: int = 3) -> str:
    """``0.500 [0.336, 0.664]``: the form every rate and interval takes in the report."""
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _value_with_interval(row: Any) -> str:
    return format_interval(row.value, row.low, row.high)


def _format_rates(rates: pd.DataFrame, metric: str) -> pd.DataFrame:
    records = []
    for row in rates.itertuples():
        record = {"method": row.method, "scale": _number(row.scale, 2), "n": int(row.n)}
        if metric == "success":
            record["success [95% CI]"] = format_interval(
                row.success_rate, row.success_low, row.success_high
            )
            record["effective success [95% CI]"] = format_interval(row.value, row.low, row.high)
            record["coherent"] = f"{row.coherent_fraction:.3f}"
            record["success among coherent [95% CI]"] = (
                format_interval(
                    row.success_given_coherent, row.given_coherent_low, row.given_coherent_high
                )
                if row.n_coherent
                else "no coherent output"
            )
        else:
            record["mean score [95% CI]"] = format_interval(row.value, row.low, row.high)
            record["coherent"] = f"{row.coherent_fraction:.3f}"
        record["log-lik/token"] = f"{row.mean_loglik:.2f}"
        record["repetition"] = f"{row.mean_repetition:.2f}"
        records.append(record)
    return pd.DataFrame.from_records(records)


def _format_tests(tests: pd.DataFrame) -> pd.DataFrame:
    records = []
    for row in tests.itertuples():
        record = {
            "A": row.a,
            "B": row.b,
            "scales": f"{_number(row.scale_a, 2)} / {_number(row.scale_b, 2)}",
            "n": int(row.n),
            "test": row.test,
        }
        if row.test == "exact McNemar":
            record["A − B"] = f"{row.effect:+.3f}"
            record["only A / only B"] = f"{int(row.a_only)} / {int(row.b_only)}"
        else:
            record["A − B"] = format_interval(row.effect, row.effect_low, row.effect_high)
            record["only A / only B"] = ""
        record["p"] = f"{row.p:.2g}"
        record["p (Holm)"] = f"{row.p_holm:.2g}"
        records.append(record)
    return pd.DataFrame.from_records(records)


def _format_costs(costs: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame.from_records(
        [
            {
                "behavior": row.behavior,
                "method": row.method,
                "k": int(row.k),
                "model sweeps": int(row.forward_passes),
                "× power": _number(row.forward_passes_vs_power, 1),
                "wall s": f"{row.wall_time_s:.1f}",
                "× power ": _number(row.wall_time_s_vs_power, 1),
                "converged": ""
                if row.converged is None or _nan(row.converged)
                else str(bool(row.converged)),
            }
            for row in costs.itertuples()
        ]
    )


def _format_capability(rows: list[dict]) -> pd.DataFrame:
    base = {(r["task"], r["metric"]): r["value"] for r in rows if r["method"] == UNSTEERED}
    records = []
    for r in rows:
        half = 1.96 * r["stderr"] if r.get("stderr") is not None else math.nan
        records.append(
            {
                "task": r["task"],
                "metric": r["metric"],
                "behavior": r["behavior"] or "–",
                "method": r["method"],
                "scale": _number(r["scale"], 2),
                "score [95% CI]": format_interval(r["value"], r["value"] - half, r["value"] + half)
                if not math.isnan(half)
                else f"{r['value']:.3f}",
                "vs unsteered": f"{r['value'] - base.get((r['task'], r['metric']), math.nan):+.3f}",
            }
        )
    return pd.DataFrame.from_records(records)


def _format_recovered(recovered: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame.from_records(
        [
            {"behavior": row.behavior, "method": row.method, "recovered": _number(row.recovered, 2)}
            for row in recovered.itertuples()
        ]
    )


def _p_of(tests: pd.DataFrame, behavior: str, a: str, b: str) -> str:
    if tests.empty:
        return ""
    hit = tests[(tests.behavior == behavior) & (tests.a == a) & (tests.b == b)]
    return f"{hit['p_holm'].iloc[0]:.2g}" if len(hit) else ""


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


def _number(value: Any, digits: int) -> str:
    if value is None or _nan(value):
        return "–"
    return f"{float(value):.{digits}f}".rstrip("0").rstrip(".") if digits else str(value)


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _last_line(prompt: str) -> str:
    """The user's words of a chat-formatted prompt (its last non-empty content line)."""
    lines = [
        line for line in prompt.splitlines() if line.strip() and not line.startswith("<|assistant")
    ]
    text = lines[-1] if lines else prompt
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
    spectra = {
        name: meta["values"] for name, meta in vector_metadata.items() if meta["method"] == "power"
    }
    if spectra:
        plots["spectrum"] = plot_spectra(spectra, run_dir / "spectrum.png")
    return plots

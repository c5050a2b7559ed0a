"""Plots people would rather look at than tables. Each function writes one PNG."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from harness.engine.methods import ranked_methods  # noqa: E402
from harness.evaluation.cells import CONTROL, draw_number  # noqa: E402


def plot_pair_heatmap(
    matrix: torch.Tensor, path: str | os.PathLike[str], *, label: str, title: str
) -> Path:
    """Heat map of a ``(source, target)`` matrix on a log10 colour scale; NaN is blank."""
    figure, axes = plt.subplots(figsize=(6.4, 5.2))
    image = axes.imshow(torch.log10(matrix).T.numpy(), origin="lower", cmap="viridis")
    axes.set_xlabel("source block s")
    axes.set_ylabel("target block t")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label=f"log10 {label}")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# (label, colour) per method in report order, from the one method registry.
METHOD_STYLE = {info.name: (info.label, info.colour) for info in ranked_methods()}


def plot_success_vs_scale(rates: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Per behavior, the headline value against scale with its 95% band per method (top)
    and the coherent fraction (bottom). Scale 0 is the unsteered model for every method."""
    behaviors = list(dict.fromkeys(rates["behavior"]))
    figure, axes = plt.subplots(
        2,
        len(behaviors),
        figsize=(4.2 * len(behaviors), 6.0),
        squeeze=False,
        sharex="col",
        gridspec_kw={"height_ratios": [2, 1]},
    )
    for column, behavior in enumerate(behaviors):
        rows = rates[rates["behavior"] == behavior]
        unsteered = rows[rows["method"] == "unsteered"]
        top, bottom = axes[0, column], axes[1, column]
        for method in [m for m in METHOD_STYLE if m in set(rows["method"])]:
            label, colour = METHOD_STYLE[method]
            part = pd.concat([unsteered, rows[rows["method"] == method]]).sort_values("scale")
            top.plot(part["scale"], part["value"], marker="o", ms=3, color=colour, label=label)
            top.fill_between(part["scale"], part["low"], part["high"], color=colour, alpha=0.15)
            bottom.plot(part["scale"], part["coherent_fraction"], marker="o", ms=3, color=colour)
        # The random control's later draws: thin lines in its colour, so its spread shows.
        draws = sorted({m for m in rows["method"] if (draw_number(m) or 0) > 1}, key=draw_number)
        for index, method in enumerate(draws):
            part = pd.concat([unsteered, rows[rows["method"] == method]]).sort_values("scale")
            label = f"{METHOD_STYLE[CONTROL][0]}, other draws" if index == 0 else None
            colour = METHOD_STYLE[CONTROL][1]
            top.plot(part["scale"], part["value"], lw=0.8, ls="--", color=colour, label=label)
            bottom.plot(part["scale"], part["coherent_fraction"], lw=0.8, ls="--", color=colour)
        success = rows["metric"].iloc[0] == "success"
        top.set_title(behavior, fontsize=10)
        top.set_ylabel("effective success rate" if success else "mean score")
        bottom.set_ylabel("coherent fraction")
        bottom.set_ylim(-0.05, 1.05)
        bottom.set_xlabel("scale (× median residual norm)")
        top.grid(alpha=0.3)
        bottom.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    figure.suptitle("held-out prompts, each method at its selected vector (95% bands)", fontsize=10)
    return _save(figure, path)


def plot_spectra(
    values: dict[str, list[float]],
    path: str | os.PathLike[str],
    bands: dict[str, list[list[int]]] | None = None,
) -> Path:
    """Power Steering's singular values σ_i per named set (one line each, log scale), with
    each band of nearly equal values (only its span determined) shaded in the line's colour."""
    figure, axes = plt.subplots(figsize=(5.6, 3.8))
    for name, sigma in values.items():
        (line,) = axes.plot(
            range(1, len(sigma) + 1), sigma, marker="o", ms=3, label=name.split("/")[0]
        )
        for band in (bands or {}).get(name, []):
            if len(band) > 1:
                axes.axvspan(band[0] + 0.7, band[-1] + 1.3, color=line.get_color(), alpha=0.12)
    if any(len(band) > 1 for groups in (bands or {}).values() for band in groups):
        axes.plot([], [], color="grey", alpha=0.3, lw=6, label="band: only the span is determined")
    axes.set_yscale("log")
    axes.set_xlabel("index i")
    axes.set_ylabel("singular value σ_i")
    axes.set_title("Power Steering spectrum of J(source → target)", fontsize=10)
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_cost(costs: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Wall time and model sweeps per method, grouped by behavior (log scale)."""
    behaviors = list(dict.fromkeys(costs["behavior"]))
    methods = [m for m in METHOD_STYLE if m in set(costs["method"])]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / max(len(methods), 1)
    for column, (field, label) in enumerate(
        (("wall_time_s", "wall time (s)"), ("forward_passes", "model sweeps"))
    ):
        ax = axes[column]
        for i, method in enumerate(methods):
            part = costs[costs["method"] == method].set_index("behavior").reindex(behaviors)
            positions = [b + (i - (len(methods) - 1) / 2) * width for b in range(len(behaviors))]
            name, colour = METHOD_STYLE[method]
            ax.bar(positions, part[field].clip(lower=1e-3), width, color=colour, label=name)
        ax.set_yscale("log")
        ax.set_xticks(range(len(behaviors)), [b.replace("_", " ") for b in behaviors], fontsize=7)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7)
    figure.suptitle("cost of finding the vectors", fontsize=10)
    return _save(figure, path)


def _save(figure: plt.Figure, path: str | os.PathLike[str]) -> Path:
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path

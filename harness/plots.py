"""Plots people would rather look at than tables. Each function writes one PNG."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from harness.sensitivity import SensitivityMap  # noqa: E402


def plot_sensitivity_heatmap(
    result: SensitivityMap, path: str | os.PathLike[str], *, title: str = ""
) -> Path:
    """Heat map of log10 σ₁ over (source, target); unmapped cells are blank."""
    sigma = result.sigma_matrix(0)
    figure, axes = plt.subplots(figsize=(6.4, 5.2))
    image = axes.imshow(torch.log10(sigma).T.numpy(), origin="lower", cmap="viridis")
    axes.set_xlabel("source block s")
    axes.set_ylabel("target block t")
    axes.set_title(title or "top singular value σ₁ of J(s → t)")
    figure.colorbar(image, ax=axes, label="log10 σ₁")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path

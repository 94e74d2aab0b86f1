"""Training curves as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .checkpoint import atomic_write  # noqa: E402


def plot_curves(path: str | Path, x: list, series: dict[str, list], *, xlabel: str, ylabel: str,
                title: str, log_y: bool = False) -> None:
    """One line per named series against x, saved atomically to path (PNG)."""
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label, values in series.items():
        axes.plot(x[: len(values)], values, marker="o", markersize=3, label=label)
    if log_y:
        axes.set_yscale("log")
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, format="png"))
    plt.close(figure)

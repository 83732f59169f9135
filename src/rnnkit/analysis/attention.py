"""A PNG of attention maps: for each sentence, the weight each target token (rows) put on each source
token (columns) when it was written."""
from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .plots import _save


def plot_attention(examples: list[tuple[list[str], list[str], object]], out: str | Path,
                   title: str = "attention") -> Path:
    """examples: (source tokens, target tokens, weights (len(target), len(source)) array-like), one
    panel each, side by side; darker is more weight."""
    if not examples:
        raise ValueError("plot_attention needs at least one (source, target, weights) example")
    fig = Figure(figsize=(4.5 * len(examples), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (source, target, weights) in enumerate(examples):
        ax = fig.add_subplot(1, len(examples), i + 1)
        weights = [list(map(float, row[:len(source)])) for row in list(weights)[:len(target)]]
        ax.imshow(weights, cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(source)), source, rotation=90, fontsize=7)
        ax.set_yticks(range(len(target)), target, fontsize=7)
        ax.set_xlabel("source")
        ax.set_ylabel("output")
    fig.suptitle(title)
    return _save(fig, out)

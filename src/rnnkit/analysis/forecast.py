"""forecast.png: a forecaster's test-part forecasts against the truth and the two naive baselines."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .plots import _figure, _numpy, _save

ZOOM = 200  # a test part longer than this gets a second panel on its last ZOOM rows, where lines are readable
TICKS = 6


def plot_forecast(origins, targets, forecasts, out: str | Path, dates: list[str] | None = None,
                  title: str = "") -> Path:
    """One panel per step ahead shown (1, and H when H > 1), plus a zoom on the end of a long test part.

    origins (n,): row of each window's origin t; targets (n, H, 3): truth, persistence and seasonal-naive
    forecasts of rows t..t+H-1; forecasts (n, H): the model's; all in original units. `dates` labels the
    rows of the whole series, if given.
    """
    origins, targets, forecasts = _numpy(origins), _numpy(targets), _numpy(forecasts)
    n, H = forecasts.shape
    if n == 0:
        raise ValueError("no test windows to plot")
    panels = [(0, slice(None))] + ([(H - 1, slice(None))] if H > 1 else [])
    if n > ZOOM:
        panels.append((0, slice(n - ZOOM, None)))
    fig = _figure((11, 3.2 * len(panels)), title or "forecast vs truth on the test part")
    for k, (h, part) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, k + 1)
        rows = origins[part] + h  # the row each forecast is for
        lines = [("truth", targets[part, h, 0], dict(color="black", lw=1.2)),
                 ("model", forecasts[part, h], dict(color="tab:red", lw=1.2)),
                 ("persistence", targets[part, h, 1], dict(color="tab:blue", lw=0.8, ls="--")),
                 ("seasonal naive", targets[part, h, 2], dict(color="tab:green", lw=0.8, ls=":"))]
        for label, values, style in lines:
            ax.plot(rows, values, label=label, marker="." if len(rows) <= 60 else None, **style)
        zoom = " (the last rows)" if part.start else ""
        ax.set_title(f"{h + 1} step{'s' if h else ''} ahead{zoom}", fontsize=10)
        if dates:
            ticks = rows[np.linspace(0, len(rows) - 1, min(TICKS, len(rows))).round().astype(int)]
            ax.set_xticks(ticks, [dates[r] for r in ticks])
        else:
            ax.set_xlabel("row")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, ncol=4)
    return _save(fig, out)

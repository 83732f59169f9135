"""PNG plots of a training run, drawn off-screen with Agg and written atomically.

Figures are built as `matplotlib.figure.Figure` with their own Agg canvas, never through pyplot,
so no window opens, no global figure registry fills up, and nothing leaks from one call to the next.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import uuid
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110
_MARKER_MAX = 30  # series this short get markers, so a single epoch or test value is still visible


def read_metrics_csv(path: str | Path) -> list[dict]:
    """The rows of a Lightning CSVLogger `metrics.csv`: dicts of strings, "" where a row lacks a metric."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_run_grad_norms(run_dir: str | Path) -> tuple[list[float], float]:
    """(‖g‖ of every training step, the clipping threshold τ, 0 when off) of a run directory of `rnnkit train`."""
    run_dir = Path(run_dir)
    csv_path, json_path = run_dir / "metrics.csv", run_dir / "metrics.json"
    for path in (csv_path, json_path):
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir} is not a finished rnnkit run directory: {path.name} is missing")
    try:
        tau = float(json.loads(json_path.read_text())["config"]["clip_norm"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{json_path}: no config.clip_norm in it ({type(e).__name__}: {e})") from None
    _, norms = _series(read_metrics_csv(csv_path), "grad_norm")
    if not norms:
        raise ValueError(f"{csv_path}: no grad_norm values (was it written by rnnkit train?)")
    return norms, tau


def plot_curves(rows: list[dict], out: str | Path, title: str = "") -> Path:
    """Every metric against the training step, one panel per family.

    Columns are grouped after dropping Lightning's `_step`/`_epoch` suffix: names ending in "loss"
    share the "loss" panel, `lr-*` columns the "learning rate" panel, and any other metric one panel
    per name without its stage prefix (`train_acc` and `val_acc` both go in "acc"). The gradient-norm
    columns are left to `plot_clipping`; columns with no value in any row are skipped.
    """
    columns = list(dict.fromkeys(key for row in rows for key in row))
    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for column in columns:
        panel = _panel(column)
        if panel is None:
            continue
        series = _series(rows, column)
        if series[0]:
            panels.setdefault(panel, {})[column] = series
    if not panels:
        raise ValueError(f"no metrics to plot in {len(rows)} rows with columns {columns}")
    order = ["loss"] * ("loss" in panels) + sorted(set(panels) - {"loss", "learning rate"})
    order += ["learning rate"] * ("learning rate" in panels)

    fig = _figure((8, 1 + 2.4 * len(order)), title)
    axes = fig.subplots(len(order), 1, sharex=True, squeeze=False)[:, 0]
    for ax, panel in zip(axes, order):
        for column, (steps, values) in panels[panel].items():
            step_level = column.endswith("_step")  # noisy per-batch values: thin, behind the epoch means
            ax.plot(steps, values, label=column, lw=0.8 if step_level else 1.5, alpha=0.6 if step_level else 1,
                    marker="o" if len(steps) <= _MARKER_MAX else None, ms=3)
        ax.set_ylabel(panel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[-1].set_xlabel("step")
    return _save(fig, out)


def plot_clipping(steps, norms, tau: float, out: str | Path) -> Path:
    """The global gradient norm ‖g‖ before clipping, and k = ‖g‖/τ with the clipped steps (k > 1) shaded.

    tau <= 0 means clipping was off: only the norm panel is drawn.
    """
    steps, norms = _numpy(steps).astype(float).ravel(), _numpy(norms).astype(float).ravel()
    if len(steps) != len(norms):
        raise ValueError(f"steps and norms differ in length: {len(steps)} != {len(norms)}")
    if len(steps) == 0:
        raise ValueError("no gradient norms to plot: steps and norms are empty")
    if math.isnan(tau):
        raise ValueError(f"tau must be a number (<= 0 for no clipping), got {tau}")
    clipping = tau > 0

    fig = _figure((8, 5.5 if clipping else 3.2), f"gradient clipping at τ = {tau:g}" if clipping else "")
    axes = fig.subplots(2 if clipping else 1, 1, sharex=True, squeeze=False)[:, 0]
    top = axes[0]
    top.plot(steps, norms, lw=0.8, label="‖g‖ before clipping")
    top.set_yscale("log")
    top.set_ylabel("‖g‖")
    top.grid(alpha=0.3, which="both")
    if not clipping:
        top.set_title("gradient norm (no clipping)")
        top.set_xlabel("training step")
        return _save(fig, out)

    top.axhline(tau, ls="--", color="k", lw=1, label=f"τ = {tau:g}")
    top.legend(fontsize=8)
    k = norms / tau
    clipped = k > 1
    bottom = axes[1]
    bottom.plot(steps, k, lw=0.8, color="tab:purple", label="k = ‖g‖/τ")
    bottom.axhline(1, ls="--", color="k", lw=1)
    # Full-height bands, each step its own width (step="mid"), so an isolated clipped step still shows.
    bottom.fill_between(steps, 0, 1, where=clipped, step="mid", transform=bottom.get_xaxis_transform(),
                        color="tab:red", alpha=0.2, lw=0, label="clipped (k > 1)")
    bottom.set_yscale("log")
    bottom.set_ylabel("k = ‖g‖/τ")
    bottom.set_xlabel("training step")
    bottom.grid(alpha=0.3, which="both")
    bottom.legend(fontsize=8, loc="upper right")
    bottom.text(0.01, 0.95, f"clipped {clipped.sum()}/{len(k)} steps ({clipped.mean():.1%})",
                transform=bottom.transAxes, va="top", fontsize=9,
                bbox=dict(boxstyle="round", facecolor="white", alpha=0.8))
    return _save(fig, out)


def plot_norm_distribution(runs: dict[str, tuple[list[float], float]], out: str | Path,
                           title: str = "distribution of the gradient norm per step") -> Path:
    """Histograms (log-spaced bins) of the per-step global gradient norm ‖g‖ of training runs.

    `runs` maps a label to (norms, tau). For a run that clipped (tau > 0), the norm of the update
    actually applied, min(‖g‖, τ), is drawn dashed beside the raw ‖g‖: clipping piles the tail onto τ.
    """
    if not runs:
        raise ValueError("no runs to plot")
    arrays = {}
    for label, (norms, tau) in runs.items():
        g = _numpy(norms).astype(float).ravel()
        g = g[np.isfinite(g) & (g > 0)]
        if len(g) == 0:
            raise ValueError(f"run {label!r} has no finite positive gradient norms to plot")
        arrays[label] = (g, tau)
    low = min(g.min() for g, _ in arrays.values())
    high = max(g.max() for g, _ in arrays.values())
    bins = np.geomspace(low, high * 1.0001, 50) if high > low else np.array([low * 0.9, high * 1.1])
    fig = _figure((8, 4), title)
    ax = fig.subplots()
    for i, (label, (g, tau)) in enumerate(arrays.items()):
        color = f"C{i}"
        ax.hist(g, bins=bins, histtype="step", lw=1.5, color=color, label=f"{label}: ‖g‖")
        if tau > 0:
            applied = np.minimum(g, tau)
            ax.hist(applied, bins=bins, histtype="step", lw=1.2, ls="--", color=color,
                    label=f"{label}: applied min(‖g‖, τ={tau:g}), {np.mean(g > tau):.0%} clipped")
            ax.axvline(tau, color=color, lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")  # the clipped steps pile into one bin at τ; a linear axis would flatten the rest
    ax.set_xlabel("‖g‖ (global gradient norm of one training step)")
    ax.set_ylabel("training steps")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_confusion(matrix, labels: list[str], out: str | Path, title: str = "confusion matrix") -> Path:
    """Counts of (true row, predicted column), coloured by the fraction of each true class."""
    counts = _numpy(matrix)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise ValueError(f"matrix must be square with shape (C, C), C >= 1, got shape {counts.shape}")
    n = counts.shape[0]
    if len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries but matrix has shape {counts.shape}")
    counts = counts.astype(float)
    totals = counts.sum(axis=1, keepdims=True)
    fraction = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)  # a class never seen: 0

    side = max(4.5, 0.5 * n + 2.5)
    fig = _figure((side + 1, side), title)
    ax = fig.subplots()
    image = ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    ax.set_xticks(range(n), labels, rotation=90 if n > 10 else 0)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for (i, j), count in np.ndenumerate(counts):
            text = f"{count:.0f}" if count.is_integer() else f"{count:.3g}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if fraction[i, j] > 0.5 else "black")
    return _save(fig, out)


def plot_image_grid(images, titles: list[str], out: str | Path, ncols: int = 8, title: str = "") -> Path:
    """Grayscale images (N, H, W), uint8 or float, in a grid with a small title each; N = 0 draws "none"."""
    images = _numpy(images)
    if images.ndim != 3:
        raise ValueError(f"images must have shape (N, H, W), got shape {images.shape}")
    if len(titles) != len(images):
        raise ValueError(f"titles has {len(titles)} entries but images has shape {images.shape}")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    if len(images) == 0:
        fig = _figure((4, 2), title)
        ax = fig.subplots()
        ax.text(0.5, 0.5, "none", ha="center", va="center", fontsize=14, transform=ax.transAxes)
        ax.set_axis_off()
        return _save(fig, out)

    ncols = min(ncols, len(images))
    nrows = math.ceil(len(images) / ncols)
    vmin, vmax = _gray_range(images)
    # one imshow of all images tiled into a single array (one subplot per image costs ~3 s for 64);
    # each tile has a band above it for its title, and the gaps show the figure's background
    N, H, W = images.shape
    band, gap = max(2, H // 3), max(1, W // 8)
    canvas = np.full((nrows * (H + band), ncols * (W + gap)), np.nan)
    for k, image in enumerate(images):
        r, c = divmod(k, ncols)
        canvas[r * (H + band) + band:(r + 1) * (H + band), c * (W + gap):c * (W + gap) + W] = image
    fig = _figure((1.4 * ncols, 1.6 * nrows + 0.4 * bool(title)), title)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_axis_off()
    cmap = colormaps["gray"].with_extremes(bad="white")  # NaN: the gaps and title bands
    ax.imshow(canvas, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    for k, text in enumerate(titles):
        r, c = divmod(k, ncols)
        ax.text(c * (W + gap) + W / 2, r * (H + band) + band - 1, text, fontsize=8, ha="center", va="bottom")
    return _save(fig, out)


# -- helpers ----------------------------------------------------------------------------------------

def plot_gradient_flow(curves: dict[str, list[float]], out: str | Path, title: str = "") -> Path:
    """‖∂L/∂h_t‖ against the time step t, one line per cell, on a log scale (rnnkit gradflow)."""
    if not curves:
        raise ValueError("no gradient curves to plot")
    fig = _figure((8, 4.5), title or "gradient flow through time: ‖∂L/∂h_t‖ for a loss at the last step")
    ax = fig.add_subplot(1, 1, 1)
    for name, norms in curves.items():
        ax.plot(range(1, len(norms) + 1), norms, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("time step t (the loss is at the last step)")
    ax.set_ylabel("‖∂L/∂h_t‖")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, out)


def _panel(column: str) -> str | None:
    """The panel a metrics.csv column belongs in, or None for columns `plot_curves` leaves out."""
    if column in ("epoch", "step"):
        return None
    if column.startswith("lr-"):
        return "learning rate"
    name = re.sub(r"_(step|epoch)$", "", column)
    # Gradient norms are plot_clipping's; "grad_" also covers Lightning's grad_norm() columns.
    if name in ("grad_norm", "clip_ratio") or name.startswith("grad_"):
        return None
    if name.endswith("loss"):
        return "loss"
    return re.sub(r"^(train|val|test)_", "", name)


def _series(rows: list[dict], column: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows where `column` has a value."""
    steps, values = [], []
    for i, row in enumerate(rows):
        value = row.get(column)
        if value in ("", None):
            continue
        step = row.get("step")
        try:
            steps.append(float(step))
            values.append(float(value))
        except (TypeError, ValueError):
            raise ValueError(f"row {i}: expected numbers for step and {column!r}, got {step!r} and {value!r}") \
                from None
    return steps, values


def _gray_range(images: np.ndarray) -> tuple[float, float]:
    """One intensity range for the whole grid, so that images are comparable."""
    if images.dtype == np.uint8:
        return 0, 255
    lo, hi = float(np.nanmin(images)), float(np.nanmax(images))
    return (0.0, 1.0) if 0 <= lo and hi <= 1 else (lo, hi)


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device; torch itself is not needed here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _figure(size: tuple[float, float], title: str) -> Figure:
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title)
    return fig


def _save(fig: Figure, out: str | Path) -> Path:
    """Write the PNG beside `out`, then rename it over `out`: a reader or a crash never sees half a file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A unique name opened with "xb" (not mkstemp, whose 0600 mode would survive the rename).
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            fig.savefig(f, format="png", dpi=DPI)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        fig.clear()  # drop the artists now rather than at garbage collection
    return out

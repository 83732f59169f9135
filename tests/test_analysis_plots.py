"""The run plots: each writes a valid PNG, rejects bad input by name, and never leaves half a file."""
import csv

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from rnnkit.analysis import plots

# The columns Lightning's CSVLogger writes for a run with on_step+on_epoch train loss, epoch-level
# validation metrics, per-step gradient norms and a LearningRateMonitor.
COLUMNS = ["epoch", "step", "train_loss_step", "grad_norm", "clip_ratio", "lr-Adam",
           "val_loss", "val_acc", "train_loss_epoch", "train_acc_epoch", "test_loss", "test_acc", "val_bleu"]


def write_metrics_csv(path, epochs=3, steps_per_epoch=4):
    """A metrics.csv laid out as CSVLogger lays it out: one row per logging call, blanks elsewhere."""
    rows, step = [], 0
    for epoch in range(epochs):
        rows.append({"epoch": epoch, "step": step, "lr-Adam": 1e-3 / (epoch + 1)})
        for _ in range(steps_per_epoch):
            rows.append({"epoch": epoch, "step": step, "train_loss_step": 2.0 / (step + 1),
                         "grad_norm": 3.0 / (step + 1), "clip_ratio": 3.0 / (step + 1)})
            step += 1
        rows.append({"epoch": epoch, "step": step - 1, "val_loss": 1.0 / (epoch + 1), "val_acc": 0.5 + 0.1 * epoch})
        rows.append({"epoch": epoch, "step": step - 1, "train_loss_epoch": 1.2 / (epoch + 1),
                     "train_acc_epoch": 0.4 + 0.1 * epoch})
    rows.append({"epoch": epochs - 1, "step": step - 1, "test_loss": 0.9, "test_acc": 0.75})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)  # missing keys are written as "", as Lightning does
        writer.writeheader()
        writer.writerows(rows)
    return path


def assert_png(path):
    assert path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] > 0 and image.size[1] > 0
        image.verify()
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]


# -- plot_curves ------------------------------------------------------------------------------------

def test_read_metrics_csv_gives_strings_with_blanks(tmp_path):
    rows = plots.read_metrics_csv(write_metrics_csv(tmp_path / "metrics.csv"))
    assert list(rows[0]) == COLUMNS
    assert rows[0]["lr-Adam"] != "" and rows[0]["val_loss"] == ""
    assert all(isinstance(v, str) for row in rows for v in row.values())


def test_panels_group_metric_families():
    panels = {c: plots._panel(c) for c in COLUMNS}
    assert panels == {"epoch": None, "step": None, "grad_norm": None, "clip_ratio": None,
                      "train_loss_step": "loss", "train_loss_epoch": "loss", "val_loss": "loss", "test_loss": "loss",
                      "val_acc": "acc", "train_acc_epoch": "acc", "test_acc": "acc", "val_bleu": "bleu",
                      "lr-Adam": "learning rate"}


def test_plot_curves_writes_png(tmp_path):
    rows = plots.read_metrics_csv(write_metrics_csv(tmp_path / "metrics.csv"))
    out = plots.plot_curves(rows, tmp_path / "curves.png", title="run: training curves")
    assert out == tmp_path / "curves.png"
    assert_png(out)


def test_plot_curves_takes_str_path_and_makes_parent(tmp_path):
    rows = plots.read_metrics_csv(write_metrics_csv(tmp_path / "metrics.csv"))
    out = plots.plot_curves(rows, str(tmp_path / "sub" / "curves.png"))
    assert_png(out)


def test_plot_curves_rejects_nothing_plottable(tmp_path):
    only_skipped = [{"epoch": "0", "step": "3", "grad_norm": "1.5", "clip_ratio": "1.5", "val_acc": ""}]
    for rows in ([], only_skipped):
        with pytest.raises(ValueError, match="no metrics to plot in"):
            plots.plot_curves(rows, tmp_path / "curves.png")
    assert not list(tmp_path.iterdir())


def test_plot_curves_names_a_bad_value(tmp_path):
    with pytest.raises(ValueError, match="'val_loss'.*'abc'"):
        plots.plot_curves([{"step": "1", "val_loss": "abc"}], tmp_path / "curves.png")


# -- plot_clipping ----------------------------------------------------------------------------------

def test_plot_clipping_writes_png(tmp_path):
    steps = np.arange(50)
    norms = np.exp(np.linspace(1, -2, 50))  # about half the steps above tau = 1
    assert_png(plots.plot_clipping(steps, norms, 1.0, tmp_path / "clipping.png"))


def test_plot_clipping_accepts_tuples_and_tensors(tmp_path):
    assert_png(plots.plot_clipping((0, 1, 2), (0.5, 2.0, 0.1), 1.0, tmp_path / "a.png"))  # what run.py passes
    assert_png(plots.plot_clipping(torch.arange(5), torch.rand(5) + 0.5, 0.8, tmp_path / "b.png"))


def test_plot_clipping_off_draws_norm_only(tmp_path):
    assert_png(plots.plot_clipping(range(10), np.linspace(1, 5, 10), 0.0, tmp_path / "clipping.png"))


def test_plot_clipping_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="differ in length: 3 != 2"):
        plots.plot_clipping([0, 1, 2], [1.0, 2.0], 1.0, tmp_path / "c.png")
    with pytest.raises(ValueError, match="empty"):
        plots.plot_clipping([], [], 1.0, tmp_path / "c.png")
    with pytest.raises(ValueError, match="tau"):
        plots.plot_clipping([0], [1.0], float("nan"), tmp_path / "c.png")


# -- plot_confusion ---------------------------------------------------------------------------------

def test_plot_confusion_writes_png_from_numpy_and_torch(tmp_path):
    labels = torch.randint(0, 10, (200,))
    predicted = torch.where(torch.rand(200) < 0.8, labels, torch.randint(0, 10, (200,)))
    confusion = torch.bincount(labels * 10 + predicted, minlength=100).reshape(10, 10)
    names = [str(d) for d in range(10)]
    assert_png(plots.plot_confusion(confusion, names, tmp_path / "torch.png", title="test set"))
    matrix = np.zeros((3, 3))  # a class with no true examples: its row must not divide by zero
    matrix[0, 0], matrix[1, 2] = 4, 2
    assert_png(plots.plot_confusion(matrix, ["a", "b", "c"], tmp_path / "numpy.png"))


def test_plot_confusion_many_classes_skips_cell_counts(tmp_path):
    assert_png(plots.plot_confusion(np.eye(25), [f"c{i}" for i in range(25)], tmp_path / "big.png"))


def test_plot_confusion_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"square.*\(2, 3\)"):
        plots.plot_confusion(np.zeros((2, 3)), ["a", "b"], tmp_path / "c.png")
    with pytest.raises(ValueError, match=r"labels has 2 entries.*\(3, 3\)"):
        plots.plot_confusion(np.zeros((3, 3)), ["a", "b"], tmp_path / "c.png")


# -- plot_image_grid --------------------------------------------------------------------------------

def test_plot_image_grid_writes_png(tmp_path):
    images = torch.rand(11, 28, 28)
    titles = [f"true {i % 10} / pred {(i + 1) % 10}" for i in range(11)]
    assert_png(plots.plot_image_grid(images, titles, tmp_path / "float.png", ncols=4, title="misclassified"))
    uint8 = np.random.default_rng(0).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    assert_png(plots.plot_image_grid(uint8, ["a", "b", "c"], tmp_path / "uint8.png"))


def test_plot_image_grid_empty_says_none(tmp_path):
    assert_png(plots.plot_image_grid(np.zeros((0, 28, 28)), [], tmp_path / "none.png", title="misclassified"))


def test_plot_image_grid_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"titles has 1 entries.*\(2, 4, 4\)"):
        plots.plot_image_grid(np.zeros((2, 4, 4)), ["a"], tmp_path / "g.png")
    with pytest.raises(ValueError, match=r"\(N, H, W\).*\(16,\)"):
        plots.plot_image_grid(np.zeros(16), [], tmp_path / "g.png")
    with pytest.raises(ValueError, match="ncols"):
        plots.plot_image_grid(np.zeros((1, 4, 4)), ["a"], tmp_path / "g.png", ncols=0)


# -- atomic writes ----------------------------------------------------------------------------------

def test_failed_save_keeps_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "clipping.png"
    out.write_bytes(b"the previous plot")

    def half_written(self, f, **kwargs):
        f.write(b"\x89PNG half a file")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", half_written)
    with pytest.raises(OSError, match="disk full"):
        plots.plot_clipping([0, 1], [1.0, 2.0], 1.0, out)
    assert out.read_bytes() == b"the previous plot"
    assert [p.name for p in tmp_path.iterdir()] == ["clipping.png"]


def test_overwrites_existing_file(tmp_path):
    out = tmp_path / "clipping.png"
    out.write_bytes(b"stale")
    assert_png(plots.plot_clipping([0, 1], [1.0, 2.0], 1.0, out))


# -- gradient-norm distribution (rnnkit clipping) ------------------------------------------------------

def _fake_run(path, norms, tau):
    """A run directory as `rnnkit train` leaves it: metrics.csv with per-step grad_norm, metrics.json with the config."""
    import json

    path.mkdir()
    with open(path / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "grad_norm", "step", "val_loss"])
        for step, g in enumerate(norms):
            writer.writerow([0, g, step, ""])
        writer.writerow([0, "", len(norms), 0.5])  # an epoch row without a gradient norm
    (path / "metrics.json").write_text(json.dumps({"config": {"clip_norm": tau}}))
    return path


def test_read_run_grad_norms_reads_every_step_and_tau(tmp_path):
    norms = [0.5, 2.0, 3.5, 0.25]
    assert plots.read_run_grad_norms(_fake_run(tmp_path / "r", norms, 1.0)) == (norms, 1.0)
    with pytest.raises(FileNotFoundError, match="metrics.csv is missing"):
        plots.read_run_grad_norms(tmp_path)


def test_plot_norm_distribution_writes_png_and_rejects_empty_runs(tmp_path):
    g = np.exp(np.random.default_rng(0).normal(size=500))
    assert_png(plots.plot_norm_distribution({"clip": (g, 1.0), "no clip": (g * 3, 0.0)}, tmp_path / "n.png"))
    with pytest.raises(ValueError, match="no runs"):
        plots.plot_norm_distribution({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="'bad' has no finite positive"):
        plots.plot_norm_distribution({"bad": ([float("nan"), 0.0], 1.0)}, tmp_path / "x.png")


def test_clipping_command_prints_the_distribution(tmp_path):
    from clirun import rnnkit

    rng = np.random.default_rng(1)
    norms = list(np.exp(rng.normal(size=101)))
    run = _fake_run(tmp_path / "clip-run", norms, 1.0)
    code, out, err = rnnkit("clipping", str(run), "--out", str(tmp_path / "d.png"))
    assert code == 0, err
    row = next(line.split() for line in out.splitlines() if line.startswith("clip-run"))
    g = np.array(norms)
    assert row[1:] == ["1", "101", f"{np.median(g):.3g}", f"{np.quantile(g, 0.99):.3g}", f"{g.max():.3g}",
                       f"{np.mean(g > 1.0):.1%}"]
    assert_png(tmp_path / "d.png")
    code, out, err = rnnkit("clipping", str(tmp_path / "missing"))
    assert code == 1 and "missing is not a finished rnnkit run directory" in err and "Traceback" not in err

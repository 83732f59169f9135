"""The forecast task: the split and scaler (training rows only), the baselines and metrics in original units
against hand computations, the model against torch.nn, `rnnkit train forecast` + `rnnkit forecast` end to
end, and bad input."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clirun import rnnkit
from rnnkit.data import timeseries as ts
from rnnkit.models import make_rnn
from rnnkit.models.forecaster import Forecaster
from rnnkit.tasks import load
from rnnkit.tasks.forecast import (SERIES, ForecastConfig, ForecastTask, Units, forecast_errors, forecast_steps,
                                   next_dates, update_forecast_errors)
from rnnkit.training import run
from rnnkit.training.config import RNNConfig

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def series_csv(path, n=150, missing=(), scale_after=None):
    """A daily series with a 7-day season and a feature; `missing` rows get NA in y."""
    rng = np.random.default_rng(0)
    t = np.arange(n)
    y = 20 + 0.02 * t + 4 * np.sin(2 * np.pi * t / 7) + rng.normal(scale=0.5, size=n)
    x = np.cos(2 * np.pi * t / 7) + rng.normal(scale=0.1, size=n)
    if scale_after is not None:
        y[scale_after:] *= 100
    dates = np.datetime64("2001-01-01") + t
    lines = ["date,y,x"] + [f"{d},{'NA' if i in missing else round(v, 4)},{round(w, 4)}"
                            for i, (d, v, w) in enumerate(zip(dates, y, x))]
    path.write_text("\n".join(lines) + "\n")
    return path


def config(path, **kw):
    return ForecastConfig(csv=str(path), target="y", **{"date": "date", "window": 8, "horizon": 3, "season": 7,
                                                        "hidden": 4, **kw})


def test_split_is_chronological_and_the_scaler_fits_the_training_rows_only(tmp_path):
    cfg = config(series_csv(tmp_path / "a.csv"), features="x")
    splits = ForecastTask().splits(cfg)
    a, b, n = splits.extra["rows"]
    assert (a, b, n) == (105, 120, 150)
    for part, lo, hi in ((splits.train, 0, a), (splits.val, a, b), (splits.test, b, n)):
        assert part.rows.min() >= max(lo, cfg.window) and part.rows.max() + cfg.horizon <= hi  # forecast rows inside
        assert len(part) == hi - max(lo, cfg.window) - cfg.horizon + 1
    table = ts.read_csv(tmp_path / "a.csv", ["y", "x"])
    train = np.stack([table.values["y"][:a], table.values["x"][:a]], 1)
    assert np.allclose(splits.extra["shift"], train.mean(0)) and np.allclose(splits.extra["scale"], train.std(0))
    # A different future (val and test rows x100) leaves the scaler and the training windows as they were.
    changed = ForecastTask().splits(config(series_csv(tmp_path / "b.csv", scale_after=a), features="x"))
    assert changed.extra["shift"] == splits.extra["shift"] and changed.extra["scale"] == splits.extra["scale"]
    assert torch.equal(changed.train.inputs, splits.train.inputs)
    assert not torch.equal(changed.test.targets, splits.test.targets)
    # --loss bce: the target is min-max scaled by the training rows to [0, 1]; the features stay standardised.
    bce = ForecastTask().splits(config(tmp_path / "a.csv", features="x", loss="bce", anchor="none"))
    assert bce.extra["shift"] == pytest.approx([train[:, 0].min(), train[:, 1].mean()])
    assert bce.extra["scale"] == pytest.approx([np.ptp(train[:, 0]), train[:, 1].std()])
    assert bce.train.targets[..., 0].min() >= 0 and bce.train.targets[..., 0].max() == 1


def test_categorical_features_take_their_labels_from_the_training_rows(tmp_path):
    labels = ["N", "S", "E"] * 35 + ["W"] * 45  # W appears after the training rows only
    lines = ["t,y,wind"] + [f"{i},{np.sin(i / 3):.4f},{w}" for i, w in enumerate(labels)]
    (tmp_path / "c.csv").write_text("\n".join(lines) + "\n")
    cfg = config(tmp_path / "c.csv", date="", categorical="wind")
    splits = ForecastTask().splits(cfg)
    assert splits.extra["categories"] == {"wind": ["E", "N", "S"]}
    inputs = splits.train.inputs  # (n, W, 1 + 3)
    assert inputs.shape[-1] == 4 and torch.equal(inputs[:, :, 1:].sum(-1), torch.ones(inputs.shape[:2]))
    row = splits.train.rows[0] - cfg.window  # the first input row of the first window
    assert inputs[0, 0, 1:].tolist() == [float(labels[row] == c) for c in ("E", "N", "S")]
    assert splits.test.inputs[-1, :, 1:].abs().sum() == 0  # W: unseen in training, all zeros
    model = ForecastTask().build_model(cfg, splits.extra)
    assert model(splits.test.inputs[:2])[0].shape == (2, 3)


def test_targets_carry_the_baselines_in_original_units(tmp_path):
    cfg = config(series_csv(tmp_path / "a.csv"), transform="log1p")
    splits = ForecastTask().splits(cfg)
    y = ts.read_csv(tmp_path / "a.csv", ["y"]).values["y"]
    to_units = Units(splits.extra["shift"][0], splits.extra["scale"][0], "log1p")
    got = to_units(splits.test.targets.double()).numpy()  # (n, H, 3)
    for k, t in enumerate(splits.test.rows):
        for h in range(cfg.horizon):
            assert got[k, h, 0] == pytest.approx(y[t + h], rel=1e-5)
            assert got[k, h, 1] == pytest.approx(y[t - 1], rel=1e-5)
            assert got[k, h, 2] == pytest.approx(y[t + h - 7 * math.ceil((h + 1) / 7)], rel=1e-5)


def test_missing_targets_are_never_scored_and_inputs_are_interpolated(tmp_path):
    path = series_csv(tmp_path / "a.csv", missing={130, 131})
    splits = ForecastTask().splits(config(path))
    forecast_rows = {int(t) + h for t in splits.test.rows for h in range(3)}
    assert not forecast_rows & {130, 131} and len(splits.test) == 28 - 4  # origins 128..131 are out
    y = ts.read_csv(path, ["y"]).values["y"]
    filled = np.interp([130, 131], [129, 132], [y[129], y[132]])
    k = list(splits.test.rows).index(134)  # inputs rows 126..133
    scaled = splits.test.inputs[k, 4:6, 0].double() * splits.extra["scale"][0] + splits.extra["shift"][0]
    assert np.allclose(scaled.numpy(), filled, atol=1e-4)
    code, _, err = rnnkit("train", "forecast", "--csv", path, "--target", "y", "--missing", "error",
                          "--out", tmp_path / "r")
    assert code == 1 and "line 132, column 'y': a missing value" in err


def test_metrics_are_rmse_and_mae_in_original_units():
    units = Units(2.0, 0.5, "log1p")
    forecasts, targets = torch.randn(6, 4), torch.randn(6, 4, 3)
    metrics = forecast_errors(units)
    update_forecast_errors(metrics, forecasts[:2], targets[:2])
    update_forecast_errors(metrics, forecasts[2:], targets[2:])
    got = {k: v.item() for k, v in metrics.compute().items()}
    orig = lambda z: np.expm1(z.double().numpy() * 0.5 + 2.0)
    truth = orig(targets[..., 0])
    for name, predicted in (("", forecasts), ("persistence_", targets[..., 1]), ("seasonal_", targets[..., 2])):
        error = orig(predicted) - truth
        assert got[f"{name}rmse"] == pytest.approx(np.sqrt((error ** 2).mean()), rel=1e-5)
        assert got[f"{name}mae"] == pytest.approx(np.abs(error).mean(), rel=1e-5)


def test_forecaster_is_an_lstm_and_identity_head_plus_the_anchor():
    torch.manual_seed(0)
    W, H = 10, 4
    for anchor in (None, [W - 1] * H, [W + h - 3 * math.ceil((h + 1) / 3) for h in range(H)]):
        model = Forecaster(make_rnn(RNNConfig(hidden=5), 2), H, anchor)
        ref = torch.nn.LSTM(2, 5, batch_first=True)
        ref.load_state_dict(model.rnn.state_dict())
        x, y = torch.randn(3, W, 2), torch.randn(3, H, 3)
        out, loss = model(x, y)
        expected = model.head(ref(x)[0][:, -1])
        if anchor is not None:
            expected = expected + torch.stack([x[:, i, 0] for i in anchor], 1)
        assert torch.allclose(out, expected, atol=1e-6)
        assert torch.allclose(loss, F.mse_loss(expected, y[..., 0]))
    model = Forecaster(make_rnn(RNNConfig(hidden=5), 2), H, None, bce=True)
    y = torch.rand(3, H)
    out, loss = model(x, y)
    logits = model.head(model.rnn(x)[0][:, -1])
    assert torch.allclose(out, logits.sigmoid()) and torch.allclose(loss, F.binary_cross_entropy(out, y), atol=1e-6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run: a univariate and a multivariate model."""
    root = tmp_path_factory.mktemp("forecast")
    path = series_csv(root / "s.csv")
    runs = {}
    for name, features in (("uni", []), ("multi", ["--features", "x"])):
        code, out, err = rnnkit("train", "forecast", "--csv", path, "--target", "y", "--date", "date", "--window", 8,
                                "--horizon", 3, "--hidden", 4, "--max-epochs", 2, "--no-progress", *features,
                                "--out", root / name)
        run.os.environ.pop(run.RUN_DIR_ENV, None)
        assert code == 0, err
        runs[name] = (root / name, out)
    return path, runs


def test_train_writes_model_and_baseline_metrics_and_the_plot(trained):
    path, runs = trained
    run_dir, out = runs["multi"]
    result = json.loads((run_dir / "metrics.json").read_text())
    names = {f"test_{who}{what}" for who in ("", "persistence_", "seasonal_") for what in ("rmse", "mae")}
    assert names <= set(result["test"]) and all(result["test"][k] > 0 for k in names)
    assert "test_seasonal_rmse" in out and "forecast.png" in result["artifacts"]
    assert (run_dir / "forecast.png").stat().st_size > 10_000
    assert load(run_dir / "checkpoints/best.ckpt").extra["season"] == 7  # inferred from the training rows
    code, out, err = rnnkit("eval", run_dir / "checkpoints/best.ckpt", "--json")
    assert code == 0, err
    metrics = json.loads(out)["metrics"]
    assert metrics["test_rmse"] == pytest.approx(result["test"]["test_rmse"], rel=1e-5)
    assert metrics["test_persistence_mae"] == pytest.approx(result["test"]["test_persistence_mae"], rel=1e-5)


def test_forecast_command_writes_csv_and_feeds_a_univariate_model_its_own_forecasts(trained, tmp_path):
    path, runs = trained
    ckpt = runs["uni"][0] / "checkpoints/best.ckpt"
    code, _, err = rnnkit("forecast", ckpt, "--csv", path, "--steps", 7, "--out", tmp_path / "f.csv")
    assert code == 0, err
    lines = (tmp_path / "f.csv").read_text().splitlines()
    assert lines[0] == "step,date,y" and [line.split(",")[0] for line in lines[1:]] == [str(s) for s in range(1, 8)]
    assert lines[1].split(",")[1] == "2001-05-31" and lines[7].split(",")[1] == "2001-06-06"  # the file ends 2001-05-30
    # By hand: three steps at a time, the forecasts appended to the window as if they were observed.
    loaded = load(ckpt)
    extra = loaded.extra
    y = ts.read_csv(path, ["y"]).values["y"]
    window = list((y[-8:] - extra["shift"][0]) / extra["scale"][0])
    expected = []
    with torch.no_grad():
        while len(expected) < 7:
            ahead = loaded.model(torch.tensor([window[-8:]], dtype=torch.float32)[..., None])[0][0].tolist()
            expected += ahead
            window += ahead
    expected = np.array(expected[:7]) * extra["scale"][0] + extra["shift"][0]
    got = np.array([float(line.split(",")[2]) for line in lines[1:]])
    assert np.allclose(got, expected, rtol=1e-5)
    assert np.allclose(forecast_steps(loaded, path, 2)[0], expected[:2], rtol=1e-6)
    code, out, err = rnnkit("forecast", runs["multi"][0] / "checkpoints/best.ckpt", "--csv", path, "--steps", 2)
    assert code == 0 and out.splitlines()[0] == "step,date,y" and len(out.splitlines()) == 3, err


def test_forecast_dates_continue_the_last_step():
    assert next_dates(["1960-11", "1960-12"], 3) == ["1961-01", "1961-02", "1961-03"]
    assert next_dates(["2000-01", "2000-04"], 2) == ["2000-07", "2000-10"]
    assert next_dates(["1990-12-30", "1990-12-31"], 2) == ["1991-01-01", "1991-01-02"]
    assert next_dates(["2014-12-31 22:00", "2014-12-31 23:00"], 2) == ["2015-01-01 00:00:00", "2015-01-01 01:00:00"]


@pytest.mark.parametrize("argv, code, message", [
    (["--steps", 4, "--model", "multi"], 2, "--steps 4 is beyond the model's horizon 3: it reads the features x"),
    (["--steps", 0], 2, "--steps must be >= 1; got 0"),
    (["--steps", 2, "--out", "{keep}"], 2, "already exists; choose another name"),
    (["--steps", 2, "--csv", "{tmp}/none.csv"], 1, "time-series CSV not found"),
    (["--steps", 2, "--csv", "{tmp}/other.csv"], 1, "has no column 'y'; its columns are: date, z"),
])
def test_forecast_command_bad_input(trained, tmp_path, argv, code, message):
    path, runs = trained
    keep = tmp_path / "keep.csv"
    keep.write_text("mine")
    (tmp_path / "other.csv").write_text("date,z\n2000-01-01,1\n")
    model = "uni"
    if "--model" in argv:
        model = argv[argv.index("--model") + 1]
        argv = argv[:argv.index("--model")]
    argv = [str(a).format(keep=keep, tmp=tmp_path) for a in argv]
    got, _, err = rnnkit("forecast", runs[model][0] / "checkpoints/best.ckpt", "--csv", path, *argv)
    assert got == code, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert keep.read_text() == "mine"


@pytest.mark.parametrize("argv, code, message", [
    (["--csv", "{tmp}/none.csv", "--target", "y"], 1, "time-series CSV not found"),
    (["--csv", "{csv}", "--target", "q"], 1, "has no column 'q'; its columns are: date, y, x"),
    (["--csv", "{csv}", "--target", "y", "--features", "x,w"], 1, "has no column 'w'; its columns are: date, y, x"),
    (["--csv", "{bad}", "--target", "y"], 1, "line 3, column 'y': 'high' is not a number"),
    (["--csv", "{csv}", "--target", "y", "--window", 140], 1, "150 rows are too few for --window 140 and --horizon 1"),
    (["--csv", "{csv}", "--target", "y", "--features", "y"], 2, "the target 'y' is always an input"),
    (["--csv", "{csv}", "--target", "y", "--features", "x", "--categorical", "x"], 2,
     "column 'x' is given both in --features and in --categorical"),
    (["--csv", "{csv}", "--target", "y", "--loss", "bce"], 2, "pass --anchor none (got --anchor last)"),
    (["--csv", "{csv}", "--target", "y", "--anchor", "season", "--season", 30], 2, "must be at most --window 24"),
    (["--csv", "{csv}", "--target", "y", "--test-fraction", 0.95], 2, "--test-fraction must lie in (0, 1)"),
    (["--csv", "{bad}", "--target", "x", "--transform", "log1p"], 1, "line 2, column 'x': -1.0 is negative"),
    (["--series", "weather"], 2, "--series must be one of airline, temperatures, sunspots, pm25; got 'weather'"),
    (["--target", "y"], 2, "give --csv FILE --target COLUMN, or --series"),
])
def test_train_bad_input_is_one_line(tmp_path, argv, code, message):
    csv_path = series_csv(tmp_path / "s.csv")
    (tmp_path / "bad.csv").write_text("date,y,x\n2000-01-01,1,-1\n2000-01-02,high,2\n")
    argv = [str(a).format(tmp=tmp_path, csv=csv_path, bad=tmp_path / "bad.csv") for a in argv]
    got, _, err = rnnkit("train", "forecast", *argv, "--out", tmp_path / "run", "--no-progress")
    run.os.environ.pop(run.RUN_DIR_ENV, None)
    assert got == code, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.skipif(not (DATA / "airline_passengers").is_dir(), reason=f"shared data not found in {DATA}")
@pytest.mark.parametrize("series", list(SERIES))
def test_series_recipes_read_their_data_set(series):
    cfg = ForecastConfig(series=series, data_dir=str(DATA))
    cfg.validate()
    splits = ForecastTask().splits(cfg)
    recipe = SERIES[series]
    features = recipe["features"].split(",") if "features" in recipe else []
    assert splits.extra["columns"] == [recipe["target"], *features] and splits.extra["season"] == recipe["season"]
    a, b, n = splits.extra["rows"]
    assert a < b < n and len(splits.test) > 0 and not torch.isnan(splits.test.targets).any()
    # The baselines' test errors through the metrics, against float64 by hand from the file (H = 1).
    metrics = forecast_errors(Units(splits.extra["shift"][0], splits.extra["scale"][0], cfg.transform))
    update_forecast_errors(metrics, splits.test.targets[..., 0], splits.test.targets)
    got = {k: v.item() for k, v in metrics.compute().items()}
    y = ts.read_csv(cfg.csv_path(), [cfg.target]).values[cfg.target]
    filled, at = ts.fill_missing(y), np.arange(b, n)
    at = at[~np.isnan(y[at])]  # rows whose target was observed
    for name, lag in (("persistence", 1), ("seasonal", cfg.season)):
        error = filled[at - lag] - y[at]
        assert got[f"{name}_rmse"] == pytest.approx(np.sqrt(np.mean(error ** 2)), rel=1e-5)
        assert got[f"{name}_mae"] == pytest.approx(np.mean(np.abs(error)), rel=1e-5)
    assert got["rmse"] < 1e-3  # the truth scores itself zero

"""Time-series forecasting from a CSV file: an RNN/LSTM/GRU reads a window of W past rows (the target and any
feature columns) and forecasts the next H values of the target, scored against the persistence and
seasonal-naive baselines on the same chronological split, in the series' own units; `rnnkit forecast`
continues a series from a checkpoint.

The policy, in order:
- rows are time steps in file order (a --date column is checked to increase; gaps are not filled);
- missing values (NA, empty, ...) are filled by linear interpolation in time, in the file's units, for the
  inputs (a missing categorical label is all zeros; `--missing error` refuses them instead); a window whose
  forecast rows hold a missing target value is neither trained on nor scored, so every error is measured
  against an observed value (the baselines read the filled inputs, as the model does);
- the split is chronological: the first rows train, the next --val-fraction validate, the last
  --test-fraction test; a window belongs to the part its forecast rows lie in (its inputs may reach
  back into the part before, which is the past at that time);
- the scaling (standardisation, after the optional log1p of the target; min-max to [0, 1] for the target
  under --loss bce) and the categories of --categorical columns come from the training rows only;
- RMSE and MAE are computed in the original units over every (window, step ahead) pair.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import timeseries as ts
from ..data.store import DataError, data_root
from ..models import make_rnn
from ..models.forecaster import Forecaster
from ..training.config import ConfigError, RNNConfig, TrainConfig, opt
from ..training.data import Splits, TensorBatches
from .base import Command, Task, TestFile, recipe_default

# The recipes of --series: the data set's file in the data directory, its columns, and what suits it.
SERIES = {
    "airline": dict(file="airline_passengers/airline-passengers.csv", target="Passengers", date="Month",
                    season=12, window=24, horizon=1, hidden=32, transform="log1p", anchor="season", batch_size=16),
    "temperatures": dict(file="daily_min_temperatures/daily-min-temperatures.csv", target="Temp", date="Date",
                         season=365, window=30, horizon=1, hidden=64, transform="none", anchor="last", batch_size=64),
    "sunspots": dict(file="monthly_sunspots/monthly-sunspots.csv", target="Sunspots", date="Month",
                     season=132, window=60, horizon=1, hidden=64, transform="none", anchor="last", batch_size=64),
    "pm25": dict(file="beijing_pm25/pollution.csv", target="pm2.5", features="DEWP,TEMP,PRES,Iws,Is,Ir",
                 categorical="cbwd", season=24, window=24, horizon=1, hidden=64, transform="none", anchor="last",
                 batch_size=128),
}
# Without --series, options left unset take these.
GENERIC = dict(features="", categorical="", date="", season=0, window=24, horizon=1, hidden=64, transform="none",
               anchor="last", batch_size=64)
BASELINES = ("persistence", "seasonal")


@dataclass
class ForecastConfig(TrainConfig, RNNConfig):
    series: str = opt("", f"a recipe for one of the shared data sets ({', '.join(SERIES)}): sets the csv file (from "
                          "the data directory), target, features, date, season, window, horizon and model size "
                          "(any of them given as a flag wins)")
    csv: str = opt("", "the CSV file (unset: the --series data set's file in the data directory)")
    target: str = opt("", "the column to forecast")
    features: str = opt("", "comma-separated columns read as inputs besides the target, whose past is always "
                            "an input; 'none' turns a recipe's off (unset: the --series recipe's, else none)")
    categorical: str = opt("", "comma-separated categorical input columns, one-hot encoded by the labels of the "
                               "training rows (a missing or unseen label: all zeros); 'none' turns a recipe's off "
                               "(unset: the --series recipe's, else none)")
    date: str = opt("", "a date column: checked to increase, labels plots and forecasts (unset: the --series recipe's)")
    season: int = opt(0, "seasonal period in rows for the seasonal-naive baseline (0: the --series recipe's, "
                         "else inferred from the training part's autocorrelation)", minimum=0)
    window: int = opt(0, "W: past rows the model reads (0: the --series recipe's, else 24)", minimum=0)
    horizon: int = opt(0, "H: rows ahead forecast at once (0: the --series recipe's, else 1)", minimum=0)
    val_fraction: float = opt(0.1, "the rows just before the test part, for validation (early stopping and the "
                                   "best checkpoint)")
    test_fraction: float = opt(0.2, "the last rows, held out for the test (the validation rows come just before)")
    missing: str = opt("interpolate", "missing values (NA, empty): interpolate them in the inputs and score no "
                                      "missing target, or refuse them", ("interpolate", "error"))
    transform: str = opt("", "target transform before scaling, undone for the metrics: log1p for positive, "
                             "skewed series (unset: the --series recipe's, else none)", ("none", "log1p"))
    anchor: str = opt("", "the model forecasts a correction to the last value, to the value one season back, "
                          "or the value itself (unset: the --series recipe's, else last)", ("none", "last", "season"))
    loss: str = opt("mse", "mse with an identity output, or bce with a sigmoid output on the target min-max "
                           "scaled to [0, 1] by the training part's range (needs --anchor none)", ("mse", "bce"))
    hidden: int = opt(0, "hidden units per direction (0: the --series recipe's, else 64)", minimum=0)
    batch_size: int = opt(0, "examples per batch (0: the --series recipe's, else 64)", minimum=0)
    max_epochs: int = recipe_default(TrainConfig, "max_epochs", 200)
    patience: int = recipe_default(TrainConfig, "patience", 20)
    clip_norm: float = recipe_default(TrainConfig, "clip_norm", 1.0)
    lr_schedule: str = recipe_default(TrainConfig, "lr_schedule", "plateau")

    def __post_init__(self):
        """Options left at 0 / "" take the --series recipe's value (else GENERIC's): the saved config is complete."""
        recipe = SERIES.get(self.series, {})
        for name, default in GENERIC.items():
            if getattr(self, name) in (0, ""):
                setattr(self, name, recipe.get(name, default))
        if not self.target and "target" in recipe:
            self.target = recipe["target"]
        if not self.date and "date" in recipe:
            self.date = recipe["date"]

    def validate(self) -> None:
        if self.series and self.series not in SERIES:
            raise ConfigError(f"--series must be one of {', '.join(SERIES)}; got {self.series!r}")
        super().validate()
        if not self.csv and not self.series:
            raise ConfigError("give --csv FILE --target COLUMN, or --series (one of " + ", ".join(SERIES) + ")")
        if not self.target:
            raise ConfigError(f"--target: name the column to forecast in {self.csv}")
        if not 0 < self.test_fraction < 1 or self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(f"--test-fraction must lie in (0, 1) and leave training rows beside --val-fraction "
                              f"{self.val_fraction}; got {self.test_fraction!r}")
        if self.loss == "bce" and self.anchor != "none":
            raise ConfigError(f"--loss bce forecasts a level in [0, 1] through a sigmoid, not a correction: "
                              f"pass --anchor none (got --anchor {self.anchor})")
        if self.anchor == "season" and self.season > self.window:
            raise ConfigError(f"--anchor season reads the value one season back from the window: --season "
                              f"{self.season} must be at most --window {self.window}")
        if self.target in self.feature_list() + self.categorical_list():
            raise ConfigError(f"--features/--categorical: the target {self.target!r} is always an input; "
                              "do not list it")
        both = sorted(set(self.feature_list()) & set(self.categorical_list()))
        if both:
            raise ConfigError(f"column {both[0]!r} is given both in --features and in --categorical")

    def feature_list(self) -> list[str]:
        """The numeric feature columns; "none" is an empty list (so that a recipe's features can be turned off)."""
        return _names(self.features)

    def categorical_list(self) -> list[str]:
        return _names(self.categorical)

    def csv_path(self) -> Path:
        if self.csv:
            return Path(self.csv).expanduser()
        return data_root(self.data_dir or None) / SERIES[self.series]["file"]


def _names(text: str) -> list[str]:
    return [] if text == "none" else [name.strip() for name in text.split(",") if name.strip()]


class Units:
    """Scaled (and transformed) target values -> the series' original units; works on tensors on any device."""

    def __init__(self, shift: float, scale: float, transform: str):
        self.shift, self.scale, self.transform = shift, scale, transform

    def __call__(self, z):
        y = z * self.scale + self.shift
        return y.expm1() if self.transform == "log1p" else y


def forecast_errors(units: Units):
    """RMSE and MAE in original units of the model (`rmse`, `mae`) and of the baselines (`persistence_rmse`,
    ...), over every (window, step ahead) pair: a torchmetrics MetricCollection, updated by
    `update_forecast_errors` with forecasts (B, H) and targets (B, H, 3)."""
    from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection

    names = [f"{who}{what}" for who in ("", *(f"{b}_" for b in BASELINES)) for what in ("rmse", "mae")]
    errors = MetricCollection({name: MeanSquaredError(squared=False) if name.endswith("rmse") else MeanAbsoluteError()
                               for name in names}, compute_groups=False)
    errors.units = units  # kept by the collection's clone() (a deep copy)
    return errors


def update_forecast_errors(errors, forecasts, targets) -> None:
    truth = errors.units(targets[..., 0])
    for who, column in (("", forecasts), *((f"{b}_", targets[..., k + 1]) for k, b in enumerate(BASELINES))):
        predicted = errors.units(column)
        errors[f"{who}rmse"].update(predicted, truth)
        errors[f"{who}mae"].update(predicted, truth)


@dataclass
class Series:
    """A CSV series prepared as the model sees it: (N, F) scaled inputs, target column first."""

    scaled: np.ndarray  # (N, F) inputs: target, then features (filled and scaled), then one-hot categories
    observed: np.ndarray  # (N,) bool: the target was present in the file
    dates: list[str] | None


def read_series(cfg, path: Path, extra: dict | None = None) -> tuple[Series, dict]:
    """Read and prepare the columns of `cfg` from `path`; fit the scaler on the training rows unless `extra`
    (from a checkpoint) gives it. Returns the series and the extra values to save (scaler, categories, columns)."""
    columns, categorical = [cfg.target, *cfg.feature_list()], cfg.categorical_list()
    table = ts.read_csv(path, columns, cfg.date, categorical)
    if cfg.missing == "error":
        where = ts.first_missing(table)
        if where:
            raise DataError(f"{path} {where}: a missing value (--missing error refuses them; "
                               "--missing interpolate fills the inputs and scores no missing target)")
    raw = np.stack([table.values[name] for name in columns], axis=1)  # (N, F), NaN where missing
    filled = np.stack([ts.fill_missing(raw[:, j], name) for j, name in enumerate(columns)], axis=1)  # in file units
    if cfg.transform == "log1p":
        negative = np.nonzero(raw[:, 0] < 0)[0]
        if len(negative):
            i = negative[0]
            raise DataError(f"{path} line {table.lines[i]}, column {cfg.target!r}: {raw[i, 0]} is negative; "
                            "--transform log1p needs values >= 0")
        raw[:, 0], filled[:, 0] = np.log1p(raw[:, 0]), np.log1p(filled[:, 0])
    if extra is None:
        a, _ = ts.chronological_split(len(table), cfg.val_fraction, cfg.test_fraction)
        scaler = ts.Scaler.fit(raw[:a], (cfg.loss == "bce",) + (False,) * (len(columns) - 1))
        categories = {name: sorted(set(table.labels[name][:a]) - {""}) for name in categorical}
        extra = {"columns": columns, "shift": scaler.shift.tolist(), "scale": scaler.scale.tolist(),
                 "categories": categories}
    scaler = ts.Scaler(np.asarray(extra["shift"]), np.asarray(extra["scale"]))
    one_hot = [ts.one_hot(table.labels[name], extra["categories"][name]) for name in categorical]
    scaled = np.concatenate([scaler.transform(filled), *one_hot], axis=1)  # (N, F)
    return Series(scaled, ~np.isnan(raw[:, 0]), table.dates), extra


class ForecastWindows(TensorBatches):
    """Windows of one part of the split: inputs (n, W, F), targets (n, H, 3) (truth, persistence, seasonal
    naive; scaled), the row of each window's origin and the series' dates, if any (for plots)."""

    def __init__(self, inputs, targets, rows: np.ndarray, dates: list[str] | None = None):
        super().__init__(inputs, targets)
        self.rows, self.dates = rows, dates


def make_windows(cfg, series: Series, start: int, stop: int, season: int) -> ForecastWindows:
    """The windows whose forecast rows lie in [start, stop) and hold observed target values only."""
    W, H = cfg.window, cfg.horizon
    at = ts.origins(start, stop, W, H)
    at = at[np.all(series.observed[at[:, None] + np.arange(H)], axis=1)] if len(at) else at
    y = series.scaled[:, 0]
    inputs, truth = ts.windows(series.scaled, y, at, W, H)
    targets = np.stack([truth, ts.persistence(y, at, H), ts.seasonal_naive(y, at, H, season)], axis=2)
    return ForecastWindows(torch.tensor(inputs, dtype=torch.float32), torch.tensor(targets, dtype=torch.float32), at,
                           series.dates)


def anchor_index(cfg, season: int) -> list[int] | None:
    """The window index each step ahead's naive forecast is read from (see Forecaster)."""
    if cfg.anchor == "none":
        return None
    if cfg.anchor == "last":
        return [cfg.window - 1] * cfg.horizon
    return (cfg.window + np.arange(cfg.horizon) - ts.seasonal_lags(cfg.horizon, season)).tolist()


class ForecastTask(Task):
    name = "forecast"
    help = "forecast a CSV time series (--series airline|temperatures|sunspots|pm25, or --csv --target) against " \
           "persistence and seasonal-naive baselines; `rnnkit forecast` continues it"
    config_class = ForecastConfig
    monitor, mode = "val_rmse", "min"
    commands = ()  # set below
    test_file_help = "a CSV file with the model's columns, scaled with the checkpoint's scaler"
    test_file_options = ("test_fraction",)

    def splits(self, cfg) -> Splits:
        path = cfg.csv_path()
        series, extra = read_series(cfg, path)
        n, W, H = len(series.scaled), cfg.window, cfg.horizon
        a, b = ts.chronological_split(n, cfg.val_fraction, cfg.test_fraction)
        if min(a - W, b - a, n - b) < H:
            raise DataError(f"{path}: {n} rows are too few for --window {W} and --horizon {H}: the parts of the "
                               f"split have {a} training, {b - a} validation and {n - b} test rows; the training "
                               f"part needs at least W + H = {W + H} rows, the others H = {H}")
        season = cfg.season or ts.infer_season(series.scaled[:a, 0])
        if season > a:
            raise DataError(f"{path}: --season {season} is longer than the {a} training rows")
        if cfg.anchor == "season" and season > W:
            raise ConfigError(f"--anchor season needs the inferred season ({season}) to be at most --window {W}")
        extra.update(season=int(season), rows=[int(a), int(b), int(n)])
        parts = [make_windows(cfg, series, lo, hi, season) for lo, hi in ((0, a), (a, b), (b, n))]
        for part, name in zip(parts, ("training", "validation", "test")):
            if len(part) == 0:
                raise DataError(f"{path}: no {name} window has {H} observed target values in a row")
        return Splits(*parts, extra=extra)

    def read_test_file(self, loaded, args) -> TestFile:
        """The windows of a CSV series, read, filled and scaled as in training with the checkpoint's scaler,
        categories and season; every window with W rows before it, or those of the last --test-fraction."""
        cfg, path, fraction = loaded.cfg, Path(args.test_file), args.test_fraction
        if fraction is not None and not 0 < fraction <= 1:
            raise ConfigError(f"--test-fraction must lie in (0, 1]; got {fraction!r}")
        series, _ = read_series(cfg, path, loaded.extra)
        n = len(series.scaled)
        start = n - round(n * fraction) if fraction is not None else 0  # training's test part: the same rows
        windows = make_windows(cfg, series, start, n, loaded.extra["season"])
        if len(windows) == 0:
            raise DataError(f"{path}: no window to score: the model reads {cfg.window} rows and forecasts the next "
                            f"{cfg.horizon} (all observed), and the file has {n} rows"
                            + (f", of which the last {n - start} are scored" if fraction is not None else ""))
        return TestFile(windows, loaded.extra)

    def build_model(self, cfg, extra: dict) -> Forecaster:
        inputs = len(extra["columns"]) + sum(len(c) for c in extra.get("categories", {}).values())
        return Forecaster(make_rnn(cfg, inputs), cfg.horizon, anchor_index(cfg, extra["season"]), cfg.loss == "bce",
                          cfg.dropout)

    def metrics(self, cfg, extra: dict):
        return forecast_errors(units(cfg, extra))

    def onnx_graphs(self, loaded) -> dict:
        """window (B, W, F) of scaled inputs -> forecast (B, H) in scaled units (see extra's shift and scale)."""
        from ..export import many_to_one

        features = len(loaded.extra["columns"]) + sum(len(c) for c in loaded.extra.get("categories", {}).values())
        return {"forecaster": many_to_one(loaded.model, features, "window", "forecast", lengths=False,
                                          time=loaded.cfg.window)}

    def update_metrics(self, metrics, output, targets) -> None:
        update_forecast_errors(metrics, output, targets)

    def report(self, model, cfg, splits, run_dir: Path) -> list[Path]:
        """forecast.png: the test part's truth, the model's and the baselines' forecasts."""
        from ..analysis.forecast import plot_forecast

        test = splits.test
        to_units = units(cfg, splits.extra)
        forecasts = to_units(predict(model, test.inputs)).numpy()  # (n, H)
        targets = to_units(test.targets).numpy()  # (n, H, 3)
        return [plot_forecast(test.rows, targets, forecasts, run_dir / "forecast.png", test.dates,
                              title=f"{cfg.series or Path(cfg.csv).name}: {cfg.target}, test part "
                                    f"(window {cfg.window}, horizon {cfg.horizon}, season {splits.extra['season']})")]


def units(cfg, extra: dict) -> Units:
    return Units(extra["shift"][0], extra["scale"][0], cfg.transform)


@torch.no_grad()
def predict(model, inputs: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Forecasts (n, H) for inputs (n, W, F), on the model's device, returned on the CPU."""
    device = next(model.parameters()).device
    return torch.cat([model(inputs[i:i + batch_size].to(device))[0].cpu() for i in range(0, len(inputs), batch_size)])


def forecast_steps(loaded, path: Path, steps: int) -> tuple[np.ndarray, list[str] | None]:
    """The next `steps` values (original units) after the last row of the CSV file at `path`, and their dates
    if the model has a date column (see `next_dates`).

    Up to the horizon H, one forward pass. Beyond it, a univariate model is fed its own forecasts
    recursively (H at a time); a model with feature columns cannot be, since their future is unknown.
    """
    cfg, H = loaded.cfg, loaded.cfg.horizon
    if steps < 1:
        raise ConfigError(f"--steps must be >= 1; got {steps}")
    features = cfg.feature_list() + cfg.categorical_list()
    if steps > H and features:
        raise ConfigError(f"--steps {steps} is beyond the model's horizon {H}: it reads the features "
                          f"{', '.join(features)}, whose future values are unknown, so it cannot be fed "
                          f"its own forecasts; ask for at most {H} step{'s' * (H > 1)}")
    series, _ = read_series(cfg, path, loaded.extra)
    if len(series.scaled) < cfg.window:
        raise DataError(f"{path}: {len(series.scaled)} rows; the model reads a window of {cfg.window}")
    history = torch.tensor(series.scaled[-cfg.window:], dtype=torch.float32)  # (W, F)
    out = predict(loaded.model, history[None])[0].tolist()  # H values
    while len(out) < steps:  # univariate here: F == 1
        history = torch.cat([history, torch.tensor(out[-H:])[:, None]])[-cfg.window:]
        out += predict(loaded.model, history[None])[0].tolist()
    values = units(cfg, loaded.extra)(torch.tensor(out[:steps], dtype=torch.float64)).numpy()
    return values, next_dates(series.dates, steps) if series.dates and len(series.dates) > 1 else None


def next_dates(dates: list[str], steps: int) -> list[str]:
    """The dates of `steps` rows after `dates`, continuing its last step: whole months for YYYY-MM dates,
    else the time between its last two dates. YYYY-MM and YYYY-MM-DD dates are written so; times in ISO format."""
    last, before = ts.parse_date(dates[-1]), ts.parse_date(dates[-2])
    if len(dates[-1]) == 7:  # YYYY-MM
        months = (last.year - before.year) * 12 + last.month - before.month
        return [_add_months(last, months * k).strftime("%Y-%m") for k in range(1, steps + 1)]
    step = last - before
    as_date = len(dates[-1]) == 10 and step.seconds == 0  # YYYY-MM-DD, whole days
    return [(last + step * k).date().isoformat() if as_date else (last + step * k).isoformat(sep=" ")
            for k in range(1, steps + 1)]


def _add_months(when, months: int):
    year, month = divmod(when.month - 1 + months, 12)
    return when.replace(year=when.year + year, month=month + 1)


def _add_forecast_arguments(parser) -> None:
    parser.add_argument("--csv", default=None, help="the series to continue, with the columns the model was trained "
                        "on (default: the CSV it was trained on)")
    parser.add_argument("--steps", type=int, required=True, help="values to forecast after the file's last row; "
                        "beyond the model's horizon, a univariate model is fed its own forecasts")
    parser.add_argument("--out", default=None, metavar="FILE.csv", help="write the forecast here (default: stdout); "
                        "an existing file is never overwritten")
    parser.add_argument("--data-dir", default=None, help="data directory, for a --series model without --csv")


def _run_forecast(loaded, args) -> int:
    cfg = loaded.cfg
    if args.out and Path(args.out).exists():
        raise ConfigError(f"--out {args.out} already exists; choose another name (it is not overwritten)")
    if args.data_dir:
        cfg = dataclasses.replace(cfg, data_dir=args.data_dir)
    path = Path(args.csv) if args.csv else cfg.csv_path()
    values, dates = forecast_steps(dataclasses.replace(loaded, cfg=cfg), path, args.steps)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["step", *([cfg.date] if dates else []), cfg.target])
    for step, value in enumerate(values, start=1):
        writer.writerow([step, *([dates[step - 1]] if dates else []), f"{value:.6g}"])
    if args.out:
        with open(args.out, "x") as f:
            f.write(buffer.getvalue())
        print(f"{args.steps} steps after the last row of {path} written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(buffer.getvalue())
    return 0


ForecastTask.commands = (Command("forecast", "continue a time series with a forecast checkpoint, as CSV (step, "
                                 "date if the model has a date column, target): step 1 is the row after the file's "
                                 "last", _add_forecast_arguments,
                                 _run_forecast),)

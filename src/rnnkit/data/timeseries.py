"""CSV time series for forecasting: reading numeric columns (with a missing-value policy), the chronological
split, a scaler fitted on the training part, sliding windows, the persistence and seasonal-naive baselines,
and the season inferred from the autocorrelation.

Indexing used throughout: a window with origin t reads the rows [t - W, t) and forecasts the rows
[t, t + H) (W window, H horizon); the series is taken as one row per time step, in file order.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from .store import DataError

MISSING = ("", "NA", "N/A", "NaN", "nan", "null", "?")  # cells read as missing values


@dataclass
class Table:
    """Numeric columns of a CSV file, NaN where a value is missing; categorical columns as written ("" where
    missing); `dates` as written, if a date column was named."""

    path: Path
    values: dict[str, np.ndarray]  # column -> (N,) float64
    dates: list[str] | None
    lines: np.ndarray  # (N,) the file line of each row, for messages (the header is line 1)
    labels: dict[str, list[str]] | None = None  # categorical column -> N labels

    def __len__(self) -> int:
        return len(self.lines)


def read_csv(path: str | Path, columns: list[str], date_column: str = "", categorical: list[str] = ()) -> Table:
    """Read `columns` (numbers; MISSING cells become NaN), `categorical` columns (labels; MISSING cells become
    "") and the optional date column of a CSV file.

    Errors name the file and what is wrong: a missing file, a column that is not there (with the columns
    that are), a cell that is not a number (with its line and column), a row with too few cells, dates
    that do not parse or are out of chronological order.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"time-series CSV not found: {path}")
    try:
        return _read_csv(path, columns, date_column, categorical)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason}: byte 0x{e.object[e.start]:02x})") from None
    except csv.Error as e:
        raise DataError(f"{path} is not a readable CSV file ({e})") from None


def _read_csv(path: Path, columns: list[str], date_column: str, categorical: list[str]) -> Table:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = csv.reader(f)
        header = [name.strip() for name in next(rows, [])]
        if not header:
            raise DataError(f"{path} is empty: expected a header line naming the columns")
        wanted = list(dict.fromkeys([*columns, *categorical, *([date_column] if date_column else [])]))
        unknown = [name for name in wanted if name not in header]
        if unknown:
            raise DataError(f"{path} has no column {unknown[0]!r}; its columns are: {', '.join(header)}")
        index = {name: header.index(name) for name in wanted}
        cells = {name: [] for name in wanted}
        lines = []
        for line, row in enumerate(rows, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue  # blank lines, e.g. at the end of the file
            if len(row) < len(header):
                raise DataError(f"{path} line {line}: {len(row)} cells, the header names {len(header)}")
            for name in wanted:
                cells[name].append(row[index[name]].strip())
            lines.append(line)
    if not lines:
        raise DataError(f"{path} has a header but no data rows")
    values = {name: _numbers(cells[name], name, path, lines) for name in columns}
    dates = cells[date_column] if date_column else None
    if dates is not None:
        _check_chronological(dates, date_column, path, lines)
    labels = {name: ["" if cell in MISSING else cell for cell in cells[name]] for name in categorical}
    return Table(path, values, dates, np.asarray(lines), labels)


def _numbers(cells: list[str], name: str, path: Path, lines: list[int]) -> np.ndarray:
    out = np.empty(len(cells))
    for i, cell in enumerate(cells):
        if cell in MISSING:
            out[i] = np.nan
            continue
        try:
            out[i] = float(cell)
        except ValueError:
            raise DataError(f"{path} line {lines[i]}, column {name!r}: {cell!r} is not a number (missing values "
                            f"are written as one of {', '.join(repr(m) for m in MISSING)})") from None
        if not math.isfinite(out[i]):
            raise DataError(f"{path} line {lines[i]}, column {name!r}: {cell!r} is not a finite number")
    return out


def parse_date(text: str) -> datetime:
    """ISO dates and times ('1981-01-31', '2010-01-01 13:00:00') and months ('1949-01')."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return datetime.strptime(text, "%Y-%m")


def _check_chronological(dates: list[str], name: str, path: Path, lines: list[int]) -> None:
    previous = None
    for i, text in enumerate(dates):
        try:
            when = parse_date(text)
        except ValueError:
            raise DataError(f"{path} line {lines[i]}, column {name!r}: {text!r} is not a date (YYYY-MM-DD, "
                            f"YYYY-MM-DD HH:MM[:SS] or YYYY-MM)") from None
        if previous is not None and when <= previous:
            raise DataError(f"{path} line {lines[i]}, column {name!r}: {text!r} does not come after the previous "
                            f"row's {dates[i - 1]!r}; the rows must be in chronological order")
        previous = when


def fill_missing(values: np.ndarray, name: str = "column") -> np.ndarray:
    """The missing-value policy: NaNs are filled by linear interpolation in time between the nearest
    observed values; a run at the start or the end takes the nearest observed value. (N,) -> (N,)."""
    observed = ~np.isnan(values)
    if not observed.any():
        raise DataError(f"column {name!r} has no values at all (every row is missing)")
    if observed.all():
        return values.copy()
    steps = np.arange(len(values))
    return np.interp(steps, steps[observed], values[observed])


def first_missing(table: Table) -> str | None:
    """'line L, column C' of the first missing value (numeric or categorical), or None."""
    for i in range(len(table)):
        for name, values in table.values.items():
            if np.isnan(values[i]):
                return f"line {table.lines[i]}, column {name!r}"
        for name, labels in (table.labels or {}).items():
            if not labels[i]:
                return f"line {table.lines[i]}, column {name!r}"
    return None


def one_hot(labels: list[str], categories: list[str]) -> np.ndarray:
    """(N, K) indicators of `categories`; a missing ("") or unknown label is all zeros."""
    index = {c: k for k, c in enumerate(categories)}
    out = np.zeros((len(labels), len(categories)))
    for i, label in enumerate(labels):
        if label in index:
            out[i, index[label]] = 1.0
    return out


def chronological_split(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Row boundaries (a, b): rows [0, a) train, [a, b) validate, [b, n) test, in time order."""
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    return n - n_test - n_val, n - n_test


@dataclass
class Scaler:
    """Per-column affine scaling z = (x - shift) / scale, fitted on the training rows only."""

    shift: np.ndarray  # (F,)
    scale: np.ndarray  # (F,)

    @classmethod
    def fit(cls, train: np.ndarray, minmax: tuple[bool, ...] | None = None) -> "Scaler":
        """Standardise each column of `train` (N, F) by its mean and standard deviation, ignoring NaNs; a column
        with minmax[j] True is mapped to [0, 1] by its minimum and maximum instead. Constant columns get scale 1."""
        minmax = minmax or (False,) * train.shape[1]
        shift, scale = np.empty(train.shape[1]), np.empty(train.shape[1])
        for j, use_range in enumerate(minmax):
            column = train[:, j]
            if use_range:
                shift[j], scale[j] = np.nanmin(column), np.nanmax(column) - np.nanmin(column)
            else:
                shift[j], scale[j] = np.nanmean(column), np.nanstd(column)
        scale[~(scale > 0)] = 1.0
        return cls(shift, scale)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.shift) / self.scale

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return z * self.scale + self.shift


def origins(start: int, stop: int, window: int, horizon: int) -> np.ndarray:
    """Origins t of the windows whose forecast rows [t, t + H) lie in [start, stop) and whose W input rows
    exist (t >= W); the inputs may reach back before `start` (earlier data is known at time t)."""
    return np.arange(max(start, window), stop - horizon + 1)


def windows(series: np.ndarray, target: np.ndarray, at: np.ndarray, window: int, horizon: int):
    """Inputs (n, W, F) = series[t - W:t] and targets (n, H) = target[t:t + H] for each origin t in `at`."""
    rows = at[:, None] + np.arange(-window, 0)  # (n, W)
    ahead = at[:, None] + np.arange(horizon)  # (n, H)
    return series[rows], target[ahead]


def persistence(y: np.ndarray, at: np.ndarray, horizon: int) -> np.ndarray:
    """The naive forecast: every step ahead is the last observed value y[t - 1]. (n, H)."""
    return np.repeat(y[at - 1][:, None], horizon, axis=1)


def seasonal_lags(horizon: int, season: int) -> np.ndarray:
    """For each step h ahead, how far back the seasonal-naive forecast looks: the same point of the last
    observed season, k*m rows back with k = ceil((h + 1) / m). (H,)."""
    return season * ((np.arange(horizon) + season) // season)


def seasonal_naive(y: np.ndarray, at: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """y[t + h - k*m], the value one (or k) seasons before the forecast row; NaN where that is before the
    first row. (n, H)."""
    rows = at[:, None] + np.arange(horizon) - seasonal_lags(horizon, season)  # (n, H)
    out = np.full(rows.shape, np.nan)
    known = rows >= 0
    out[known] = y[rows[known]]
    return out


def infer_season(y: np.ndarray, max_lag: int | None = None) -> int:
    """The seasonal period of `y`: the highest peak of the autocorrelation of the linearly detrended series
    after the autocorrelation first falls below zero (or the highest peak, if it never does), among lags
    2..max_lag (default: half the length). Raises ValueError if there is no peak."""
    n = len(y)
    max_lag = min(max_lag or n // 2, n - 1)
    steps = np.arange(n)
    detrended = y - np.polyval(np.polyfit(steps, y, 1), steps)
    detrended = detrended - detrended.mean()
    size = 1 << (2 * n - 1).bit_length()  # zero-padded FFT: the linear, not circular, autocorrelation
    spectrum = np.fft.rfft(detrended, size)
    acf = np.fft.irfft(spectrum * np.conj(spectrum), size)[:max_lag + 2]
    if acf[0] <= 0:
        raise ValueError("cannot infer a season from a constant series; give --season")
    acf = acf / acf[0]
    negative = np.nonzero(acf[:max_lag + 1] < 0)[0]
    lo = max(2, negative[0] if len(negative) else 2)
    lags = np.arange(lo, max_lag + 1)
    peaks = lags[(acf[lags] > acf[lags - 1]) & (acf[lags] >= acf[lags + 1])]
    if len(peaks) == 0:
        raise ValueError(f"no seasonal peak in the autocorrelation up to lag {max_lag}; give --season")
    return int(peaks[np.argmax(acf[peaks])])


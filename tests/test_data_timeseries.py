"""CSV time series: reading with the missing-value policy, the chronological split, windows and the baselines
against hand-run loops, and the season found in the autocorrelation."""
import numpy as np
import pytest

from rnnkit.data import timeseries as ts
from rnnkit.data.store import DataError


def write(path, header, rows):
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def test_read_csv_takes_numbers_missing_cells_and_dates(tmp_path):
    path = write(tmp_path / "s.csv", '"Month","y","x"', [('"2000-01"', 1.5, 3), ('"2000-02"', "NA", 4),
                                                          ('"2000-03"', 2, ""), ('"2000-04"', "-1e3", 5)])
    table = ts.read_csv(path, ["y", "x"], "Month")
    assert np.array_equal(table.values["y"], [1.5, np.nan, 2, -1000], equal_nan=True)
    assert np.array_equal(table.values["x"], [3, 4, np.nan, 5], equal_nan=True)
    assert table.dates == ["2000-01", "2000-02", "2000-03", "2000-04"] and table.lines.tolist() == [2, 3, 4, 5]
    assert ts.first_missing(table) == "line 3, column 'y'"


def test_categorical_columns_are_read_as_labels_and_one_hot_encoded(tmp_path):
    path = write(tmp_path / "s.csv", "y,wind", [(1, "NW"), (2, "SE"), (3, "NA"), (4, "cv"), (5, "NW")])
    table = ts.read_csv(path, ["y"], categorical=["wind"])
    assert table.labels == {"wind": ["NW", "SE", "", "cv", "NW"]}
    assert ts.first_missing(table) == "line 4, column 'wind'"
    expected = [[1, 0], [0, 1], [0, 0], [0, 0], [1, 0]]  # missing ("") and unknown ("cv") labels: all zeros
    assert ts.one_hot(table.labels["wind"], ["NW", "SE"]).tolist() == expected


@pytest.mark.parametrize("header, rows, message", [
    ("t,y", [(1, 2)], "no column 'z'; its columns are: t, y"),
    ("t,y,z", [(1, 2, 3), (2, "abc", 4)], "line 3, column 'y': 'abc' is not a number"),
    ("t,y,z", [(1, 2, 3), (2, "inf", 4)], "line 3, column 'y': 'inf' is not a finite number"),
    ("t,y,z", [(1, 2, 3), (2, 3)], "line 3: 2 cells, the header names 3"),
    ("t,y,z", [("2000-01-02", 2, 3), ("2000-01-01", 3, 4)], "line 3, column 't': '2000-01-01' does not come after"),
    ("t,y,z", [("yesterday", 2, 3)], "line 2, column 't': 'yesterday' is not a date"),
    ("t,y,z", [], "has a header but no data rows"),
])
def test_read_csv_errors_name_the_line_and_column(tmp_path, header, rows, message):
    with pytest.raises(DataError, match=message):
        ts.read_csv(write(tmp_path / "s.csv", header, rows), ["y", "z"], "t")


def test_read_csv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="time-series CSV not found: .*none.csv"):
        ts.read_csv(tmp_path / "none.csv", ["y"])


def test_fill_missing_interpolates_in_time_like_a_hand_loop():
    values = np.array([np.nan, np.nan, 2.0, np.nan, np.nan, 8.0, 1.0, np.nan])
    expected = values.copy()
    known = [i for i in range(len(values)) if not np.isnan(values[i])]
    for i in range(len(values)):
        if np.isnan(values[i]):
            before = [k for k in known if k < i]
            after = [k for k in known if k > i]
            if not before or not after:  # the ends take the nearest observed value
                expected[i] = values[(after or before)[0 if after else -1]]
            else:
                lo, hi = before[-1], after[0]
                expected[i] = values[lo] + (values[hi] - values[lo]) * (i - lo) / (hi - lo)
    assert np.allclose(ts.fill_missing(values), expected)
    assert expected.tolist() == [2, 2, 2, 4, 6, 8, 1, 1]
    with pytest.raises(DataError, match="column 'q' has no values"):
        ts.fill_missing(np.full(3, np.nan), "q")


def test_split_is_chronological_and_the_scaler_sees_the_training_rows_only():
    a, b = ts.chronological_split(100, 0.1, 0.2)
    assert (a, b) == (70, 80)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 2))
    fitted = ts.Scaler.fit(x[:a])
    x_changed = x.copy()
    x_changed[a:] *= 1000  # the future, however different, does not move the scaler
    assert np.array_equal(ts.Scaler.fit(x_changed[:a]).shift, fitted.shift)
    assert np.allclose(fitted.shift, x[:a].mean(0)) and np.allclose(fitted.scale, x[:a].std(0))
    z = fitted.transform(x)
    assert np.allclose(z[:a].mean(0), 0) and np.allclose(z[:a].std(0), 1) and np.allclose(fitted.inverse(z), x)
    ranged = ts.Scaler.fit(x[:a], (True, False))
    assert ranged.transform(x[:a])[:, 0].min() == 0 and ranged.transform(x[:a])[:, 0].max() == pytest.approx(1)
    with_nan = x[:a].copy()
    with_nan[3, 0] = np.nan
    assert np.isclose(ts.Scaler.fit(with_nan).shift[0], np.delete(x[:a, 0], 3).mean())


def test_windows_match_a_hand_loop():
    rng = np.random.default_rng(1)
    series, W, H = rng.normal(size=(40, 3)), 5, 3
    at = ts.origins(10, 30, W, H)
    assert at.tolist() == list(range(10, 28))  # forecast rows t..t+H-1 inside [10, 30)
    assert ts.origins(0, 12, W, H).tolist() == [5, 6, 7, 8, 9]  # t >= W: the inputs exist
    inputs, targets = ts.windows(series, series[:, 0], at, W, H)
    for n, t in enumerate(at):
        assert np.array_equal(inputs[n], np.stack([series[t - W + i] for i in range(W)]))
        assert np.array_equal(targets[n], [series[t + h, 0] for h in range(H)])


def test_baselines_match_a_brute_force_search():
    rng = np.random.default_rng(2)
    y, H = rng.normal(size=60), 7
    at = np.arange(1, 54)
    for m in (1, 3, 5, 12):
        got = ts.seasonal_naive(y, at, H, m)
        for n, t in enumerate(at):
            for h in range(H):
                row = t + h
                while row >= t:  # back one season at a time until the row is observed at time t
                    row -= m
                expected = y[row] if row >= 0 else np.nan
                assert np.array_equal(got[n, h], expected, equal_nan=True), (m, t, h)
    assert np.array_equal(ts.seasonal_naive(y, at, H, 1), ts.persistence(y, at, H))
    assert np.array_equal(ts.persistence(y, at, H), np.array([[y[t - 1]] * H for t in at]))


def test_season_is_found_in_the_autocorrelation():
    rng = np.random.default_rng(3)
    t = np.arange(600)
    for period in (7, 12, 24, 50):
        y = 0.05 * t + 3 * np.sin(2 * np.pi * t / period) + rng.normal(size=600)
        found = ts.infer_season(y)
        assert found == period if period < 50 else abs(found - period) <= 1  # noise moves a broad peak by a lag
    with pytest.raises(ValueError, match="constant"):
        ts.infer_season(np.ones(50))

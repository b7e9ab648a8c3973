"""Tests of `mog_flows.studies.report`: mean ± std over seeds (one value, none, NaN), its text, and the CSV and .npz
round trips."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from mog_flows.studies.report import mean_std, pm, read_arrays, read_csv, row_key, write_arrays, write_csv


def test_mean_std_is_the_mean_and_the_sample_standard_deviation():
    values = [2.9, 3.3, 3.0, 3.1]
    mean, std = mean_std(values)
    assert mean == pytest.approx(statistics.fmean(values)) and std == pytest.approx(statistics.stdev(values))
    assert mean_std(iter(values)) == (mean, std)  # any iterable
    assert mean_std([1, 3]) == (2.0, math.sqrt(2.0))  # integers too


def test_mean_std_of_one_value_has_nan_std_and_of_none_is_nan():
    mean, std = mean_std([0.25])
    assert mean == 0.25 and math.isnan(std)
    assert all(math.isnan(x) for x in mean_std([]))


def test_a_nan_value_makes_mean_and_std_nan():
    assert all(math.isnan(x) for x in mean_std([1.0, math.nan, 2.0]))
    assert all(math.isnan(x) for x in mean_std([math.nan]))


def test_pm_writes_mean_and_std_the_mean_alone_or_a_dash():
    assert pm(3.14159, 0.01234) == "3.142 ± 0.012"
    assert pm(3.14159, 0.01234, 1) == "3.1 ± 0.0"
    assert pm(*mean_std([0.5])) == "0.500"
    assert pm(*mean_std([])) == "—" and pm(math.nan, 0.1) == "—"


def test_csv_round_trip_with_column_types(tmp_path):
    rows = [
        {"name": "a", "seed": 0, "value": 1 / 3, "error": "", "array": torch.zeros(2)},
        {"name": "7", "seed": 12, "value": math.nan, "error": "diverged, at step 3"},
    ]
    write_csv(rows, tmp_path / "rows.csv", ["name", "seed", "value", "error", "missing"])
    header = (tmp_path / "rows.csv").read_text().splitlines()[0]
    assert header == "name,seed,value,error,missing"  # the array is left out, a missing column left empty
    back = read_csv(tmp_path / "rows.csv", integers={"seed"}, texts={"name", "error"})
    assert [r["name"] for r in back] == ["a", "7"] and [r["seed"] for r in back] == [0, 12]
    assert back[0]["value"] == float(f"{1 / 3:.8g}") and math.isnan(back[1]["value"])
    assert back[1]["error"] == "diverged, at step 3" and math.isnan(back[0]["missing"])
    write_csv(rows, tmp_path / "short.csv", ["value"], digits=3)
    assert (tmp_path / "short.csv").read_text().splitlines()[1] == "0.333"
    untyped = read_csv(tmp_path / "rows.csv")  # every cell a float where it is a number, else text
    assert untyped[0]["name"] == "a" and untyped[1]["name"] == 7.0 and untyped[1]["seed"] == 12.0


def test_arrays_round_trip_by_row_key(tmp_path):
    rows = [
        {"dataset": "grid", "base": "mog", "transform": "nsf", "seed": 0, "density": torch.rand(4, 4)},
        {"dataset": "grid", "base": "gaussian", "transform": "nsf", "seed": 0},
        {"dataset": "grid", "base": "mog", "transform": "nsf", "seed": 1, "density": torch.rand(4, 4)},
    ]
    assert row_key(rows[2]) == "grid/mog/nsf/1"
    write_arrays(rows, tmp_path / "densities.npz", "density")
    bare = [{k: v for k, v in row.items() if k != "density"} for row in rows]
    back = read_arrays(bare, tmp_path / "densities.npz", "density")
    assert torch.equal(back[0]["density"], rows[0]["density"]) and torch.equal(back[2]["density"], rows[2]["density"])
    assert "density" not in back[1]

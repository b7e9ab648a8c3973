"""What every study's report shares: mean ± std over seeds, its text, run tables as CSV and recorded arrays as .npz.

Conventions, the same for every study:

- `mean_std(values)` is the mean and the sample standard deviation (n - 1 in the denominator), summed with
  `math.fsum`. One value gives std NaN (one seed measures no spread); no values give (NaN, NaN). A NaN among the
  values makes both NaN: an undefined or failed measurement is never silently dropped, so a caller leaves out the
  rows it does not mean to count (failed runs) before reducing.
- `pm(mean, std)` writes "mean ± std", "mean" alone when std is NaN, and "—" when mean is NaN.
- `write_csv` writes one line per row, floats with `digits` significant digits; `read_csv` reads them back.
- `write_arrays` / `read_arrays` keep tensors the rows recorded (densities, samples) in a compressed .npz keyed by
  the row's identifying fields joined with "/" ("dataset/base/transform/seed").
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import torch

__all__ = ["ROW_KEY", "mean_std", "pm", "row_key", "write_csv", "read_csv", "write_arrays", "read_arrays"]

Row = dict[str, Any]
ROW_KEY = ("dataset", "base", "transform", "seed")  # the fields that name one run in a .npz


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of `values`; see the module's conventions for one value, none, and NaN."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    mean = math.fsum(values) / len(values)
    if len(values) == 1:
        return mean, math.nan
    # not statistics.stdev: it raises on NaN, which should propagate
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in values) / (len(values) - 1))


def pm(mean: float, std: float, digits: int = 3) -> str:
    """`mean` and `std` as "mean ± std" with `digits` decimals; "mean" when std is NaN (one seed), "—" when mean
    is NaN."""
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def row_key(row: Row, fields: Sequence[str] = ROW_KEY) -> str:
    """The name of a row's arrays in a .npz: its `fields` joined with "/"."""
    return "/".join(str(row[field]) for field in fields)


def write_csv(rows: Iterable[Row], path: str | os.PathLike, columns: Sequence[str], *, digits: int = 8) -> None:
    """One line per row with `columns` (other keys, such as arrays, are left out; missing ones are empty); floats
    with `digits` significant digits."""
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            cells = {k: v for k, v in row.items() if k in columns}
            writer.writerow({k: (f"{v:.{digits}g}" if isinstance(v, float) else v) for k, v in cells.items()})


def _number(value: str) -> Any:
    if value in ("", "None"):
        return math.nan
    try:
        return float(value)
    except ValueError:
        return value


def read_csv(path: str | os.PathLike, *, integers: Collection[str] = (), texts: Collection[str] = ()) -> list[Row]:
    """The rows `write_csv` wrote. A cell of a column in `texts` stays text, one in `integers` becomes an int, any
    other a float (NaN where empty or "None"), or stays text where it is not a number."""

    def parse(key: str, value: str) -> Any:
        if key in texts:
            return value
        if key in integers:
            return int(value)
        return _number(value)

    with open(path, newline="") as file:
        return [{key: parse(key, value) for key, value in row.items()} for row in csv.DictReader(file)]


def write_arrays(
    rows: Iterable[Row], path: str | os.PathLike, field: str, *, key: Sequence[str] = ROW_KEY, dtype: str | None = None
) -> None:
    """The tensors the rows hold under `field` as a compressed .npz, one array per row named `row_key(row, key)`
    (rows without `field` are left out), stored as `dtype` when given (e.g. "float16" for arrays kept for
    figures only)."""
    import numpy as np

    arrays = {row_key(row, key): torch.as_tensor(row[field]).numpy() for row in rows if field in row}
    if dtype is not None:
        arrays = {name: array.astype(dtype) for name, array in arrays.items()}
    np.savez_compressed(path, **arrays)


def read_arrays(rows: Iterable[Row], path: str | os.PathLike, field: str, *, key: Sequence[str] = ROW_KEY) -> list[Row]:
    """The rows with `row[field]` set to their tensor from the .npz at `path` (`write_arrays`), where it has one."""
    import numpy as np

    rows = list(rows)
    with np.load(path) as arrays:
        for row in rows:
            name = row_key(row, key)
            if name in arrays.files:
                row[field] = torch.from_numpy(arrays[name])
    return rows

"""Data files for the `mog-flows` command: reading points (N, D) from .npy, .csv or .pt, writing samples.

Shapes: N points (rows), D features (columns). A file holds

    .npy   a numeric array (N, D), or (N,) for N points of one feature (numpy.save; no pickled objects)
    .csv   comma-separated numbers, one point per line; the first line may be a header (it is one when none of its
           cells is a number); blank lines are skipped
    .pt    a tensor (N, D) or (N,) (torch.save(x, path)); not a dict, list or tuple of tensors

Integers are read as numbers; booleans, complex numbers and strings are refused. Every problem raises
`DataFileError` (a ValueError) naming the file: a missing, empty or unreadable file, another extension, a shape
other than (N,) or (N, D), no points, non-numeric CSV cells (line and column), NaN or infinite values (how many,
and where the first is), values beyond float32's range.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["DATA_EXTENSIONS", "DataFileError", "file_sha256", "load_data", "save_samples"]

DATA_EXTENSIONS = (".npy", ".csv", ".pt")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class DataFileError(ValueError):
    """A data file that cannot be used; the message names the file and the problem."""


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of the file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extension(path: Path, allowed: tuple[str, ...]) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        shown = f"'{path.suffix}'" if path.suffix else "none"
        raise DataFileError(f"{path}: unsupported extension ({shown}); expected {', '.join(allowed)}")
    return suffix


def load_data(path: str | os.PathLike) -> Tensor:
    """The points in `path` as a float32 tensor (N, D), N ≥ 1, D ≥ 1, finite (the formats: module docstring).

    Raises:
        DataFileError: the file is missing, empty, unreadable, of another extension or shape, has no points,
            non-numeric cells, NaN/inf values or values beyond float32's range.
    """
    path = Path(path)
    suffix = _extension(path, DATA_EXTENSIONS)
    if not path.exists():
        raise DataFileError(f"{path} does not exist")
    if path.is_dir():
        raise DataFileError(f"{path} is a directory, not a data file")
    try:
        size = path.stat().st_size
        if size == 0:
            raise DataFileError(f"{path} is empty (0 bytes)")
        if suffix == ".csv":
            return _checked(path, *_read_csv(path))
        if suffix == ".npy":
            return _checked(path, _read_npy(path))
        return _checked(path, _read_pt(path))
    except PermissionError as error:
        raise DataFileError(f"{path} cannot be read (permission denied)") from error
    except (IsADirectoryError, FileNotFoundError) as error:  # changed under our feet
        raise DataFileError(f"{path} cannot be read ({error.strerror})") from error


def _read_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as file:
        try:
            array = np.lib.format.read_array(file, allow_pickle=False)
        except ValueError as error:
            if "allow_pickle" in str(error) or "pickle" in str(error):
                raise DataFileError(f"{path} holds Python objects (a pickled array), not numbers") from error
            raise DataFileError(f"{path} cannot be read as a .npy file ({_one_line(error)})") from error
        except (EOFError, OSError) as error:
            raise DataFileError(f"{path} cannot be read as a .npy file ({_one_line(error)})") from error
    return array


def _read_pt(path: Path) -> np.ndarray:
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for a corrupt file (RuntimeError, UnpicklingError, ...)
        raise DataFileError(f"{path} cannot be read as a .pt file ({_one_line(error)})") from error
    if not isinstance(value, Tensor):
        raise DataFileError(
            f"{path} holds a {type(value).__name__}, not a tensor: save the data tensor itself, "
            "torch.save(x, path) with x of shape (N, D)"
        )
    if value.layout != torch.strided:
        value = value.to_dense()
    if value.dtype == torch.bool or value.is_complex():
        raise DataFileError(f"{path} holds a {str(value.dtype).removeprefix('torch.')} tensor, not real numbers")
    return value.detach().to(torch.float64).numpy()


def _read_csv(path: Path) -> tuple[np.ndarray, list[int]]:
    """The numbers of a CSV file as float64 (N, D), and the line number of each row."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataFileError(
            f"{path} is not a text file (not UTF-8 at byte {error.start}); expected comma-separated numbers"
        ) from error
    rows: list[list[float]] = []
    lines: list[int] = []
    width = header_line = None
    reader = csv.reader(io.StringIO(text))
    try:
        for cells in reader:
            line = reader.line_num
            if not cells or all(not cell.strip() for cell in cells):
                continue  # a blank line
            values = [_number(cell) for cell in cells]
            if width is None and header_line is None and all(value is None for value in values):
                header_line, width = line, len(cells)
                continue
            if width is None:
                width = len(cells)
            elif len(cells) != width:
                first = f"the header (line {header_line})" if header_line is not None else f"line {lines[0]}"
                raise DataFileError(f"{path}: line {line} has {len(cells)} columns, {first} has {width}")
            for column, (cell, value) in enumerate(zip(cells, values), start=1):
                if value is None:
                    what = "is empty" if not cell.strip() else f"{cell.strip()!r} is not a number"
                    hint = " (cells are separated by commas)" if len(cells) == 1 else ""
                    raise DataFileError(f"{path}: line {line}, column {column}: {what}{hint}")
            rows.append(values)
            lines.append(line)
    except csv.Error as error:
        raise DataFileError(f"{path}: line {reader.line_num} cannot be parsed as CSV ({error})") from error
    if not rows:
        raise DataFileError(f"{path} has no data rows" + (" (only a header)" if header_line is not None else ""))
    return np.asarray(rows, dtype=np.float64), lines


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _checked(path: Path, array: np.ndarray, lines: list[int] | None = None) -> Tensor:
    """array as float32 (N, D) after the checks; `lines`: the CSV line of each row, for the messages."""
    kind = array.dtype.kind
    if kind == "b":
        raise DataFileError(f"{path} holds booleans, not real numbers")
    if kind == "c":
        raise DataFileError(f"{path} holds complex numbers, not real numbers")
    if kind not in "iuf":
        raise DataFileError(f"{path} holds {array.dtype} values, not numbers")
    if array.ndim == 1:
        array = array[:, None]  # N points of one feature
    if array.ndim != 2:
        raise DataFileError(
            f"{path} holds an array of shape {tuple(array.shape)}; expected (N, D) points, or (N,) for N points of "
            "one feature"
        )
    if array.shape[0] == 0:
        raise DataFileError(f"{path} holds no points (shape {tuple(array.shape)})")
    if array.shape[1] == 0:
        raise DataFileError(f"{path} holds points without features (shape {tuple(array.shape)})")
    array = array.astype(np.float64, copy=False)
    bad = ~np.isfinite(array)
    if bad.any():
        raise DataFileError(f"{path} holds {int(bad.sum())} NaN or infinite value(s); the first {_where(bad, lines)}")
    large = np.abs(array) > _FLOAT32_MAX
    if large.any():
        raise DataFileError(
            f"{path} holds {int(large.sum())} value(s) beyond float32's range (|x| > 3.4e38), in which the flow "
            f"computes; the first {_where(large, lines)}"
        )
    return torch.from_numpy(array.astype(np.float32))


def _where(mask: np.ndarray, lines: list[int] | None) -> str:
    row, column = (int(i) for i in np.argwhere(mask)[0])  # the first in row-major order
    if lines is not None:
        return f"at line {lines[row]}, column {column + 1}"
    return f"at row {row}, column {column} (counting from 0)"


def save_samples(path: str | os.PathLike, samples: Tensor) -> None:
    """Write samples (N, D) to `path`: .npy (float32, numpy.save) or .csv (one point per line, no header)."""
    path = Path(path)
    suffix = _extension(path, (".npy", ".csv"))
    array = samples.detach().cpu().numpy()
    if suffix == ".npy":
        with open(path, "wb") as file:  # np.save(path) would append .npy to another name
            np.save(file, array)
    else:
        np.savetxt(path, array, delimiter=",", fmt="%.9g")  # 9 significant digits round-trip float32


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__

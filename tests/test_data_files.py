"""Data files: every format reads back what was written (N, D) as float32, a 1-D array is N points of one feature,
a CSV header is detected, and every bad file is one DataFileError naming the file and the problem."""

import re

import numpy as np
import pytest
import torch

from mog_flows.data_files import DataFileError, file_sha256, load_data, save_samples

POINTS = np.array([[0.5, -1.25], [3.0, 4.0], [-2.0, 1e-3]])


def write(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".pt", ".NPY"])
def test_each_format_reads_back_the_points(tmp_path, suffix):
    path = tmp_path / f"x{suffix}"
    if suffix.lower() == ".npy":
        with open(path, "wb") as file:
            np.save(file, POINTS)
    elif suffix == ".csv":
        np.savetxt(path, POINTS, delimiter=",")
    else:
        torch.save(torch.from_numpy(POINTS), path)
    x = load_data(path)
    assert x.dtype == torch.float32 and x.shape == (3, 2)
    torch.testing.assert_close(x, torch.from_numpy(POINTS).float())


def test_a_one_dimensional_array_is_points_of_one_feature(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(5.0))
    torch.save(torch.arange(4), tmp_path / "x.pt")  # integers are numbers
    assert load_data(tmp_path / "x.npy").shape == (5, 1)
    assert load_data(tmp_path / "x.pt").tolist() == [[0.0], [1.0], [2.0], [3.0]]


def test_csv_header_blank_lines_spaces_and_a_byte_order_mark(tmp_path):
    path = write(tmp_path / "x.csv", "\ufeffheight, weight\n\n1.5, 2\n -3e2 ,4\n\n")
    assert load_data(path).tolist() == [[1.5, 2.0], [-300.0, 4.0]]
    # without a header the first line is data
    assert load_data(write(tmp_path / "y.csv", "1,2\n3,4\n")).shape == (2, 2)


def test_save_samples_round_trips(tmp_path):
    samples = torch.randn(7, 3)
    for name in ("s.npy", "s.csv"):
        save_samples(tmp_path / name, samples)
        torch.testing.assert_close(load_data(tmp_path / name), samples, rtol=0, atol=0)
    with pytest.raises(DataFileError, match=r"s\.txt: unsupported extension \('\.txt'\); expected \.npy, \.csv"):
        save_samples(tmp_path / "s.txt", samples)


def test_file_sha256_follows_the_content(tmp_path):
    a, b = write(tmp_path / "a.csv", "1\n"), write(tmp_path / "b.csv", "2\n")
    assert file_sha256(a) != file_sha256(b) and len(file_sha256(a)) == 64
    assert file_sha256(a) == file_sha256(write(tmp_path / "c.csv", "1\n"))


def _npy(array):
    def make(path):
        np.save(path, array)

    return make


def _pt(value):
    def make(path):
        torch.save(value, path)

    return make


BAD_FILES = [
    pytest.param("x.npy", None, r"x\.npy does not exist", id="missing"),
    pytest.param("x.txt", "1,2\n", r"x\.txt: unsupported extension \('\.txt'\); expected \.npy, \.csv, \.pt", id="ext"),
    pytest.param("x", "1,2\n", r"x: unsupported extension \(none\)", id="no-extension"),
    pytest.param("x.csv", "", r"x\.csv is empty \(0 bytes\)", id="empty-csv"),
    pytest.param("x.npy", b"", r"x\.npy is empty \(0 bytes\)", id="empty-npy"),
    pytest.param("x.csv", "\n\n", r"x\.csv has no data rows$", id="blank-csv"),
    pytest.param("x.csv", "a,b\n", r"x\.csv has no data rows \(only a header\)", id="header-only"),
    pytest.param("x.npy", _npy(np.zeros((0, 2))), r"x\.npy holds no points \(shape \(0, 2\)\)", id="no-points"),
    pytest.param("x.npy", _npy(np.zeros((3, 0))), r"holds points without features \(shape \(3, 0\)\)", id="no-feat"),
    pytest.param(
        "x.npy", _npy(np.zeros((2, 3, 4))), r"shape \(2, 3, 4\); expected \(N, D\) points, or \(N,\)", id="3d"
    ),
    pytest.param("x.npy", _npy(np.float64(1.0)), r"x\.npy holds an array of shape \(\); expected \(N, D\)", id="0d"),
    pytest.param("x.npy", b"\x93NUMPY garbage", r"x\.npy cannot be read as a \.npy file", id="corrupt-npy"),
    pytest.param("x.npy", b"1,2\n3,4\n", r"x\.npy cannot be read as a \.npy file \(the magic string", id="csv-as-npy"),
    pytest.param("x.npy", _npy(np.array([{"a": 1}], dtype=object)), r"holds Python objects", id="pickled"),
    pytest.param("x.npy", _npy(np.array([["a", "b"]])), r"x\.npy holds <U1 values, not numbers", id="strings"),
    pytest.param("x.npy", _npy(np.ones((2, 2), dtype=bool)), r"holds booleans, not real numbers", id="bool"),
    pytest.param("x.npy", _npy(np.ones((2, 2), dtype=complex)), r"holds complex numbers", id="complex"),
    pytest.param("x.pt", b"not a torch file", r"x\.pt cannot be read as a \.pt file", id="corrupt-pt"),
    pytest.param("x.pt", _pt({"x": torch.zeros(2, 2)}), r"x\.pt holds a dict, not a tensor: save the data", id="dict"),
    pytest.param("x.pt", _pt((torch.zeros(2, 2),)), r"x\.pt holds a tuple, not a tensor", id="tuple"),
    pytest.param("x.pt", _pt(torch.ones(2, 2, dtype=torch.bool)), r"x\.pt holds a bool tensor", id="pt-bool"),
    pytest.param("x.csv", b"\xff\xfe1,2\n", r"x\.csv is not a text file \(not UTF-8 at byte 0\)", id="binary-csv"),
    pytest.param("x.csv", "a,b\n1,2\n3,x\n", r"x\.csv: line 3, column 2: 'x' is not a number$", id="cell"),
    pytest.param("x.csv", "1,2\n3,\n", r"x\.csv: line 2, column 2: is empty", id="empty-cell"),
    pytest.param("x.csv", "1,2\n3,4,5\n", r"x\.csv: line 2 has 3 columns, line 1 has 2", id="ragged"),
    pytest.param("x.csv", "a,b\n\n1\n", r"line 3 has 1 columns, the header \(line 1\) has 2", id="ragged-header"),
    pytest.param(
        "x.csv", "1 2\n3 4\n", r"line 2, column 1: '3 4' is not a number \(cells are separated by commas\)", id="spaces"
    ),
    pytest.param(
        "x.csv",
        "1,2\n3,nan\n\ninf,5\n",
        r"x\.csv holds 2 NaN or infinite value\(s\); the first at line 2, "
        r"column 2$",
        id="nan-csv",
    ),
    pytest.param(
        "x.npy",
        _npy(np.array([[0, 1], [2, np.inf], [np.nan, 0]])),
        r"holds 2 NaN or infinite value\(s\); the first at row 1, column 1 \(counting from 0\)",
        id="inf-npy",
    ),
    pytest.param(
        "x.pt",
        _pt(torch.tensor([1.0, float("nan")])),
        r"holds 1 NaN or infinite value\(s\); the first at row "
        r"1, column 0",
        id="nan-pt",
    ),
    pytest.param("x.npy", _npy(np.array([1.0, 1e39, -1e300])), r"holds 2 value\(s\) beyond float32's range", id="big"),
]


@pytest.mark.parametrize("name, content, match", BAD_FILES)
def test_a_bad_file_is_one_clear_error(tmp_path, name, content, match):
    path = tmp_path / name
    if callable(content):
        content(path)
        if name.endswith(".npy") and not path.exists():
            path.with_suffix(".npy").rename(path)
    elif content is not None:
        write(path, content)
    with pytest.raises(DataFileError) as info:
        load_data(path)
    message = str(info.value)
    assert str(path) in message and re.search(match, message), message
    assert "\n" not in message


def test_a_directory_is_not_a_data_file(tmp_path):
    (tmp_path / "d.npy").mkdir()
    with pytest.raises(DataFileError, match=r"d\.npy is a directory, not a data file"):
        load_data(tmp_path / "d.npy")

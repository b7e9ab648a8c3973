"""The `mog-flows` command end to end on tiny settings: train, evaluate and plot; and every failure as one
`error:` line with exit code 2, nothing written to a run directory before the arguments are checked."""

import hashlib
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from mog_flows import build_flow
from mog_flows.cli import main
from mog_flows.nflows_adapters import flow_base

TINY = ["--steps", "6", "--num-layers", "1", "--hidden-features", "8", "--batch-size", "64", "--no-progress"]


def fails(argv: list[str], capsys) -> str:
    """Run `mog-flows argv`; it must fail with exit code 2 and one `error:` line on stderr, which is returned."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mog-flows {argv[0]}: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run (train, evaluate, plot done), to be copied by the tests that change it."""
    run = tmp_path_factory.mktemp("trained") / "run"
    main(["train", str(run), "--dataset", "eight_gaussians", *TINY])
    return run


@pytest.fixture
def run_copy(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


def test_train_evaluate_plot(trained, run_copy, capsys):
    run = run_copy
    assert json.loads((run / "config.json").read_text())["dataset"] == "eight_gaussians"
    assert {"latest.pt", "best.pt", "config.json"} <= {p.name for p in (run / "checkpoints").iterdir()}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 6 and metrics["nll"] == metrics["nll"] and metrics["kl"] == metrics["kl"]
    assert (run / "figures" / "density.png").exists() and (run / "figures" / "training.png").exists()

    capsys.readouterr()
    main(["evaluate", str(run)])
    assert json.loads(capsys.readouterr().out)["nll"] == pytest.approx(metrics["nll"])
    main(["plot", str(run)])
    assert capsys.readouterr().err == ""


def test_train_again_resumes_a_finished_run_without_changes(run_copy):
    first = json.loads((run_copy / "metrics.json").read_text())
    main(["train", str(run_copy), *TINY])
    assert json.loads((run_copy / "metrics.json").read_text()) == first


def test_train_refuses_a_run_directory_with_other_settings(run_copy, capsys):
    config = (run_copy / "config.json").read_text()
    line = fails(["train", str(run_copy), *TINY[:-1], "--lr", "0.01", "--no-progress"], capsys)
    assert "other settings (lr: 0.001 there, 0.01 now)" in line and "choose another run directory" in line
    assert "--run-dir" not in line
    assert (run_copy / "config.json").read_text() == config


def test_evaluate_a_missing_run_is_a_clear_error(tmp_path, capsys):
    assert "not a run directory" in fails(["evaluate", str(tmp_path)], capsys)


BAD_ARGUMENTS = [
    pytest.param(["--base-lr-factor", "0"], r"--base-lr-factor must be a finite number > 0; got 0\.0", id="factor-0"),
    pytest.param(["--base-lr-factor", "inf"], r"--base-lr-factor must be a finite number > 0", id="factor-inf"),
    pytest.param(
        ["--temperature-schedule", "0", "1"], r"--temperature-schedule must be two finite numbers > 0", id="tau-0"
    ),
    pytest.param(
        ["--temperature-schedule", "1", "0.5", "--base", "gaussian"],
        r"--temperature-schedule anneals a mixture base's temperature: it needs base 'mog'",
        id="tau-gaussian",
    ),
    pytest.param(["--checkpoint-every", "0"], r"--checkpoint-every must be a positive integer; got 0", id="every-0"),
    pytest.param(["--steps", "0"], r"--steps must be a positive integer; got 0", id="steps-0"),
    pytest.param(["--batch-size", "0"], r"--batch-size must be a positive integer; got 0", id="batch-size-0"),
    pytest.param(["--num-layers", "0"], r"--num-layers must be a positive integer; got 0", id="num-layers-0"),
    pytest.param(["--hidden-features", "-1"], r"--hidden-features must be a positive integer", id="hidden-features"),
    pytest.param(["--num-components", "0"], r"--num-components must be a positive integer", id="num-components-0"),
    pytest.param(["--lr", "0"], r"--lr must be a finite number > 0; got 0\.0", id="lr-0"),
    pytest.param(["--lr", "nan"], r"--lr must be a finite number > 0; got nan", id="lr-nan"),
    pytest.param(["--seed", "-1"], r"--seed must be an integer in \[0, 2\*\*63\); got -1", id="seed-negative"),
    pytest.param(["--seed", "99999999999999999999"], r"--seed must be an integer in \[0, 2\*\*63\)", id="seed-huge"),
    pytest.param(["--device", "not-a-device"], r"--device must be 'auto' or a torch device", id="device"),
]


@pytest.mark.parametrize("arguments, match", BAD_ARGUMENTS)
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, capsys, arguments, match):
    run = tmp_path / "run"
    line = fails(["train", str(run), *TINY, *arguments], capsys)
    assert re.search(match, line), line
    assert not run.exists()  # the run directory is not poisoned: the corrected command trains there


def test_a_refused_command_leaves_the_run_directory_usable(tmp_path, capsys):
    run = tmp_path / "run"
    fails(["train", str(run), *TINY, "--steps", "0"], capsys)
    main(["train", str(run), *TINY])
    assert json.loads((run / "metrics.json").read_text())["step"] == 6


def test_an_empty_run_directory_name_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "the run directory must be a non-empty path" in fails(["train", "", *TINY], capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_run_directory_that_is_a_file_is_refused(tmp_path, capsys):
    path = tmp_path / "run"
    path.write_text("a file\n")
    assert "is a file, not a run directory" in fails(["train", str(path), *TINY], capsys)
    assert path.read_text() == "a file\n"


BAD_CONFIGS = [
    pytest.param("{ not json", r"config\.json is not valid JSON", id="garbage"),
    pytest.param(b"\xff\xfe\x00garbage", r"config\.json is not valid JSON", id="binary"),
    pytest.param("[1, 2, 3]", r"config\.json holds a list, not the settings of a run", id="list"),
    pytest.param('{"dataset": "eight_gaussians"}', r"config\.json lacks the settings \['base', ", id="keys-missing"),
    pytest.param("steps=0", r"config\.json: steps must be a positive integer; got 0", id="bad-value"),
    pytest.param("dataset=nowhere", r"config\.json: dataset must be one of .*; got 'nowhere'", id="bad-choice"),
]


@pytest.mark.parametrize("command", ["train", "evaluate", "plot"])
@pytest.mark.parametrize("content, match", BAD_CONFIGS)
def test_a_corrupt_config_json_is_one_error_line(run_copy, capsys, command, content, match):
    path = run_copy / "config.json"
    if isinstance(content, str) and "=" in content and not content.startswith("{"):
        key, value = content.split("=")
        config = json.loads(path.read_text())
        config[key] = int(value) if value.isdigit() else value
        content = json.dumps(config)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    before = path.read_bytes()
    line = fails([command, str(run_copy), *(TINY if command == "train" else [])], capsys)
    assert re.search(match, line), line
    assert path.read_bytes() == before


@pytest.mark.parametrize("command", ["evaluate", "plot"])
def test_a_corrupt_best_checkpoint_falls_back_to_latest(run_copy, capsys, command):
    best = run_copy / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:100])
    capsys.readouterr()
    main([command, str(run_copy)])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "best.pt cannot be read" in err and "using latest.pt (step 6) instead" in err
    assert err.startswith("mog-flows: warning: ")


@pytest.mark.parametrize("command", ["evaluate", "plot"])
def test_no_readable_checkpoint_is_one_error_line(run_copy, capsys, command):
    for name in ("best.pt", "latest.pt"):
        (run_copy / "checkpoints" / name).write_bytes(b"garbage")
    assert "latest.pt cannot be read" in fails([command, str(run_copy)], capsys)


def test_a_corrupt_latest_checkpoint_is_one_error_line_when_training(run_copy, capsys):
    (run_copy / "checkpoints" / "latest.pt").write_bytes(b"garbage")
    assert "latest.pt cannot be read" in fails(["train", str(run_copy), *TINY], capsys)


def test_an_interrupted_train_says_how_to_resume(tmp_path, capsys, monkeypatch):
    # fit raises KeyboardInterrupt after saving, for Ctrl-C, SIGTERM and SIGHUP alike (tests/test_training.py)
    def fit(*args, **kwargs):
        raise KeyboardInterrupt("received SIGTERM")

    monkeypatch.setattr("mog_flows.training.fit", fit)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["train", str(tmp_path / "run"), *TINY])
    assert info.value.code == 130
    assert capsys.readouterr().err.splitlines() == [
        "mog-flows train: interrupted (received SIGTERM); the last completed step is saved: run the same command "
        "again to resume"
    ]


def test_the_console_script_fails_without_a_traceback(tmp_path):
    # end to end through the interpreter: a number torch cannot seed with
    result = subprocess.run(
        [sys.executable, "-m", "mog_flows.cli", "train", str(tmp_path / "run"), "--seed", "99999999999999999999"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "mog-flows train: error: --seed must be an integer in [0, 2**63); got 99999999999999999999"
    ]
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_console_script_help():
    result = subprocess.run(
        [sys.executable, "-m", "mog_flows.cli", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("train", "evaluate", "sample", "plot", "compare"):
        assert command in result.stdout


# ---------------------------------------------------------------------------------------------- your own data
def _points(rows: int, seed: int) -> np.ndarray:
    """(rows, 3) points far from unit scale (the flow's first transform z-scores them)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, 3)) * [100.0, 1.0, 0.01] + [1000.0, 0.0, 5.0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """train.npy (300 points), val.csv (with a header), test.pt; 3 features."""
    root = tmp_path_factory.mktemp("files")
    np.save(root / "train.npy", _points(300, 0))
    np.savetxt(root / "val.csv", _points(60, 1), delimiter=",", header="a,b,c", comments="")
    torch.save(torch.from_numpy(_points(50, 2)), root / "test.pt")
    return root


@pytest.fixture(scope="module")
def trained_on_files(tmp_path_factory, files):
    run = tmp_path_factory.mktemp("own") / "run"
    main(["train", str(run), "--data", str(files / "train.npy"), "--val-data", str(files / "val.csv"), *TINY])
    return run


@pytest.fixture
def own_copy(trained_on_files, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_on_files, run)
    return run


def test_train_on_files_records_them_and_evaluates_on_them(own_copy, files, capsys):
    run = own_copy
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"] is None
    for key, name, rows in (("data", "train.npy", 300), ("val_data", "val.csv", 60)):
        assert config[key] == {
            "path": str((files / name).resolve()),
            "sha256": hashlib.sha256((files / name).read_bytes()).hexdigest(),
            "rows": rows,
            "features": 3,
        }
    assert {"latest.pt", "best.pt"} <= {p.name for p in (run / "checkpoints").iterdir()}
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"train_nll", "val_nll", "step", "parameters"} and metrics["step"] == 6
    # in the data's units: near the entropy of the data's Gaussian, sum_d 0.5 log(2 pi e s_d^2) = 4.26 nats
    assert 3.5 < metrics["train_nll"] < 5.5
    assert (run / "figures" / "training.png").exists() and not (run / "figures" / "density.png").exists()

    capsys.readouterr()
    main(["evaluate", str(run)])  # the run's own files, read again
    assert json.loads(capsys.readouterr().out) == pytest.approx(metrics)
    main(["evaluate", str(run), "--data", str(files / "val.csv")])  # the validation points as a test file
    printed = json.loads(capsys.readouterr().out)
    assert printed["nll"] == pytest.approx(metrics["val_nll"]) and printed["nll_per_dim"] == pytest.approx(
        metrics["val_nll"] / 3
    )
    assert printed["test_data"]["rows"] == 60 and printed["step"] == 6
    main(["evaluate", str(run), "--data", str(files / "test.pt")])
    assert 3.5 < json.loads(capsys.readouterr().out)["nll"] < 6


def test_sample_writes_npy_and_csv_reproducibly(trained_on_files, tmp_path, capsys):
    capsys.readouterr()
    main(["sample", str(trained_on_files), "-n", "200", "--out", str(tmp_path / "s.npy")])
    assert capsys.readouterr().out.startswith(f"wrote 200 samples of 3 feature(s) (step 6) to {tmp_path / 's.npy'}")
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (200, 3) and samples.dtype == np.float32 and np.isfinite(samples).all()
    assert abs(samples[:, 0].mean() - 1000) < 50 and abs(samples[:, 2].mean() - 5) < 0.01  # in the data's units
    main(["sample", str(trained_on_files), "-n", "200", "--out", str(tmp_path / "s.csv")])
    np.testing.assert_allclose(np.loadtxt(tmp_path / "s.csv", delimiter=","), samples, rtol=1e-7)
    main(["sample", str(trained_on_files), "-n", "200", "--seed", "1", "--out", str(tmp_path / "t.npy")])
    assert not np.allclose(np.load(tmp_path / "t.npy"), samples)


def test_sample_from_a_built_in_run(trained, tmp_path):
    main(["sample", str(trained), "--out", str(tmp_path / "s.npy")])
    assert np.load(tmp_path / "s.npy").shape == (10_000, 2)


def test_one_dimensional_data_are_points_of_one_feature(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=100))
    main(["train", str(tmp_path / "run"), "--data", str(tmp_path / "x.npy"), *TINY])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["features"] == 1
    main(["sample", str(tmp_path / "run"), "-n", "5", "--out", str(tmp_path / "s.csv")])
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 5
    (tmp_path / "two.csv").write_text("1,2\n")
    line = fails(["evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "two.csv")], capsys)
    assert line.endswith(f"two.csv has 2 feature(s) per point; the run {tmp_path / 'run'} was trained on 1")


def test_a_resume_with_other_data_is_refused(own_copy, files, tmp_path, capsys):
    config = (own_copy / "config.json").read_text()
    train, val = str(files / "train.npy"), str(files / "val.csv")
    other = tmp_path / "other.npy"
    np.save(other, _points(300, 7))
    line = fails(["train", str(own_copy), "--data", str(other), "--val-data", val, *TINY], capsys)
    assert f"data: {(files / 'train.npy').resolve()} (sha256 " in line and f"{other.resolve()} (sha256 " in line
    assert "repeat its settings and data to resume it, or choose another run directory" in line
    line = fails(["train", str(own_copy), "--data", train, *TINY], capsys)
    assert f"val_data: {(files / 'val.csv').resolve()} there, none now" in line
    line = fails(["train", str(own_copy), *TINY], capsys)  # the built-in default target
    assert "data: " in line and "there, none now" in line and "dataset" not in line
    assert (own_copy / "config.json").read_text() == config

    # the same points at another path resume (a finished run: nothing changes)
    moved = tmp_path / "moved.npy"
    shutil.copy(files / "train.npy", moved)
    metrics = (own_copy / "metrics.json").read_text()
    main(["train", str(own_copy), "--data", str(moved), "--val-data", val, *TINY])
    assert json.loads((own_copy / "metrics.json").read_text()) == pytest.approx(json.loads(metrics))


def test_a_changed_data_file_is_refused_naming_it(tmp_path, capsys):
    data = tmp_path / "x.csv"
    np.savetxt(data, _points(80, 0), delimiter=",")
    run = tmp_path / "run"
    main(["train", str(run), "--data", str(data), *TINY])
    np.savetxt(data, _points(80, 1), delimiter=",")
    line = fails(["train", str(run), "--data", str(data), *TINY], capsys)
    assert f"data: {data.resolve()} has changed since the run started (sha256 " in line
    line = fails(["evaluate", str(run)], capsys)
    assert f"{data.resolve()} has changed since the run was trained" in line and "--data TEST_FILE" in line
    data.unlink()
    line = fails(["evaluate", str(run)], capsys)
    assert "the run's data file cannot be used:" in line and "does not exist" in line


def test_the_training_flags_reach_fit(tmp_path, files):
    run = tmp_path / "run"
    flags = ["--base-lr-factor", "5", "--temperature-schedule", "1.0", "0.25", "--checkpoint-every", "2"]
    main(["train", str(run), "--data", str(files / "train.npy"), "--val-data", str(files / "val.csv"), *TINY, *flags])
    recorded = json.loads((run / "checkpoints" / "config.json").read_text())  # fit's own record of its arguments
    assert recorded["base_lr_factor"] == 5.0 and recorded["temperature_schedule"] == [1.0, 0.25]
    assert recorded["checkpoint_every"] == 2
    checkpoint = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert len(checkpoint["history"]["val_nll"]) == 3  # validated at steps 2, 4 and 6
    config = json.loads((run / "config.json").read_text())
    assert config["base_lr_factor"] == 5.0 and config["temperature_schedule"] == [1.0, 0.25]
    assert config["checkpoint_every"] == 2


@pytest.mark.parametrize(
    "flag, expected", [([], False), (["--compile"], True), (["--compile", "aot_eager"], "aot_eager")]
)
def test_compile_reaches_fit_and_the_default_k_is_build_flows(tmp_path, files, monkeypatch, flag, expected):
    import inspect

    from mog_flows import training

    seen, real_fit = {}, training.fit

    def recording_fit(flow, *args, **kwargs):
        seen.update(compile=kwargs["compile"], components=flow_base(flow).num_components)
        return real_fit(flow, *args, **{**kwargs, "compile": False})  # the flag's path, not compilation itself

    monkeypatch.setattr(training, "fit", recording_fit)
    main(["train", str(tmp_path / "run"), "--data", str(files / "train.npy"), *TINY, *flag])
    assert seen["compile"] == expected
    assert seen["components"] == inspect.signature(build_flow).parameters["num_components"].default == 32
    assert "compile" not in json.loads((tmp_path / "run" / "config.json").read_text())


def test_a_run_directory_written_before_the_new_settings_still_works(run_copy, capsys):
    path = run_copy / "config.json"
    config = json.loads(path.read_text())
    for key in ("base_lr_factor", "temperature_schedule", "checkpoint_every", "data", "val_data"):
        del config[key]
    path.write_text(json.dumps(config))
    metrics = json.loads((run_copy / "metrics.json").read_text())
    main(["train", str(run_copy), *TINY])  # resumes the finished run
    capsys.readouterr()
    main(["evaluate", str(run_copy)])
    assert json.loads(capsys.readouterr().out)["nll"] == pytest.approx(metrics["nll"])


BAD_DATA = [
    pytest.param("x.npy", None, r"x\.npy does not exist$", id="missing"),
    pytest.param("x.npy", b"\x93NUMPY\x01\x00garbage", r"x\.npy cannot be read as a \.npy file", id="corrupt"),
    pytest.param("x.pt", b"garbage", r"x\.pt cannot be read as a \.pt file", id="corrupt-pt"),
    pytest.param(
        "x.pt", {"x": torch.zeros(3, 2)}, r"x\.pt holds a dict, not a tensor: save the data tensor", id="dict"
    ),
    pytest.param("x.txt", "1,2\n", r"x\.txt: unsupported extension \('\.txt'\); expected \.npy, \.csv, \.pt", id="ext"),
    pytest.param(
        "x.npy", np.zeros((4, 2, 2)), r"x\.npy holds an array of shape \(4, 2, 2\); expected \(N, D\)", id="3d"
    ),
    pytest.param("x.csv", "a,b\n1,2\n3,oops\n", r"x\.csv: line 3, column 2: 'oops' is not a number$", id="cell"),
    pytest.param(
        "x.csv",
        "1,2\nnan,2\n3,inf\n",
        r"x\.csv holds 2 NaN or infinite value\(s\); the first at line 2, "
        r"column 1$",
        id="nan",
    ),
    pytest.param(
        "x.npy",
        np.array([[0.0, np.inf]]),
        r"holds 1 NaN or infinite value\(s\); the first at row 0, "
        r"column 1 \(counting from 0\)",
        id="inf-npy",
    ),
    pytest.param("x.csv", "", r"x\.csv is empty \(0 bytes\)$", id="empty"),
    pytest.param("x.csv", "a,b\n", r"x\.csv has no data rows \(only a header\)$", id="header-only"),
    pytest.param("x.npy", np.zeros((0, 2)), r"x\.npy holds no points \(shape \(0, 2\)\)$", id="no-points"),
]


def _make(path, content):
    if content is None:
        return
    if isinstance(content, np.ndarray):
        with open(path, "wb") as file:
            np.save(file, content)
    elif isinstance(content, dict):
        torch.save(content, path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


@pytest.mark.parametrize("option", ["--data", "--val-data"])
@pytest.mark.parametrize("name, content, match", BAD_DATA)
def test_a_bad_data_file_is_one_error_line_and_nothing_is_written(
    tmp_path, files, capsys, option, name, content, match
):
    path = tmp_path / name
    _make(path, content)
    run = tmp_path / "run"
    given = (
        ["--data", str(path)] if option == "--data" else ["--data", str(files / "train.npy"), "--val-data", str(path)]
    )
    line = fails(["train", str(run), *given, *TINY], capsys)
    assert str(path) in line and re.search(match, line), line
    assert not run.exists()


@pytest.mark.parametrize("name, content, match", BAD_DATA)
def test_a_bad_test_file_is_one_error_line(trained_on_files, tmp_path, capsys, name, content, match):
    path = tmp_path / name
    _make(path, content)
    metrics = (trained_on_files / "metrics.json").read_text()
    line = fails(["evaluate", str(trained_on_files), "--data", str(path)], capsys)
    assert str(path) in line and re.search(match, line), line
    assert (trained_on_files / "metrics.json").read_text() == metrics


def test_files_with_other_numbers_of_features_are_refused(tmp_path, files, trained, capsys):
    two = tmp_path / "two.csv"
    two.write_text("1,2\n3,4\n")
    run = tmp_path / "run"
    line = fails(["train", str(run), "--data", str(files / "train.npy"), "--val-data", str(two), *TINY], capsys)
    assert line.endswith(f"{two} has 2 feature(s) per point; {files / 'train.npy'} has 3")
    assert not run.exists()
    line = fails(["evaluate", str(trained), "--data", str(files / "test.pt")], capsys)  # a 2-D built-in target
    assert line.endswith(f"test.pt has 3 feature(s) per point; the run {trained} was trained on 2")


@pytest.mark.parametrize(
    "arguments, match",
    [
        (["--val-data", "v.npy"], r"--val-data needs --data \(a built-in --dataset brings its own validation split\)"),
        (["--data", "x.npy", "--dataset", "grid"], r"--data and --dataset exclude each other"),
        (["--data", ""], r"--data must name a file; got an empty path"),
    ],
)
def test_data_options_that_do_not_go_together(tmp_path, capsys, arguments, match):
    line = fails(["train", str(tmp_path / "run"), *arguments, *TINY], capsys)
    assert re.search(match, line), line
    assert not (tmp_path / "run").exists()


def test_built_in_runs_evaluate_on_a_test_file(trained, tmp_path, capsys):
    np.save(tmp_path / "t.npy", np.random.default_rng(0).normal(size=(100, 2)))
    capsys.readouterr()
    main(["evaluate", str(trained), "--data", str(tmp_path / "t.npy")])
    printed = json.loads(capsys.readouterr().out)
    assert {"nll", "nll_per_dim", "kl", "mode_coverage", "test_data", "step", "parameters"} == set(printed)
    assert printed["test_data"]["rows"] == 100


@pytest.mark.parametrize(
    "arguments, match",
    [
        (["--out", "s.txt"], r"s\.txt: unsupported extension \('\.txt'\); expected \.npy or \.csv"),
        (["--out", "nowhere/s.npy"], r"nowhere/s\.npy: the directory .*nowhere does not exist"),
        (["--out", "s.npy", "-n", "0"], r"-n must be a positive integer; got 0"),
        (["--out", "s.npy", "--seed", "-1"], r"--seed must be an integer in \[0, 2\*\*63\); got -1"),
    ],
)
def test_bad_sample_arguments(trained, tmp_path, capsys, monkeypatch, arguments, match):
    monkeypatch.chdir(tmp_path)
    line = fails(["sample", str(trained), *arguments], capsys)
    assert re.search(match, line), line
    assert list(tmp_path.iterdir()) == []


def test_the_console_script_names_a_bad_data_file(tmp_path):
    data = tmp_path / "x.csv"
    data.write_text("1,2\n3,x\n")
    result = subprocess.run(
        [sys.executable, "-m", "mog_flows.cli", "train", str(tmp_path / "run"), "--data", str(data)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"mog-flows train: error: {data}: line 2, column 2: 'x' is not a number"
    ]

"""The `mog-flows` command end to end on tiny settings: train, evaluate and plot; and every failure as one
`error:` line with exit code 2, nothing written to a run directory before the arguments are checked."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from mog_flows.cli import main

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
    for command in ("train", "evaluate", "plot", "compare"):
        assert command in result.stdout

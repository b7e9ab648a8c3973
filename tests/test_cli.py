"""The `mog-flows` command end to end on tiny settings."""

import json
import subprocess
import sys

import pytest

from mog_flows.cli import main

TINY = ["--steps", "6", "--num-layers", "1", "--hidden-features", "8", "--batch-size", "64", "--no-progress"]


def test_train_evaluate_plot(tmp_path, capsys):
    run = tmp_path / "run"
    main(["train", str(run), "--dataset", "eight_gaussians", *TINY])
    assert json.loads((run / "config.json").read_text())["dataset"] == "eight_gaussians"
    assert {"latest.pt", "best.pt", "config.json"} <= {p.name for p in (run / "checkpoints").iterdir()}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 6 and metrics["nll"] == metrics["nll"] and metrics["kl"] == metrics["kl"]
    assert (run / "figures" / "density.png").exists() and (run / "figures" / "training.png").exists()

    capsys.readouterr()
    main(["evaluate", str(run)])
    assert json.loads(capsys.readouterr().out)["nll"] == pytest.approx(metrics["nll"])
    main(["plot", str(run)])


def test_train_again_resumes_a_finished_run_without_changes(tmp_path):
    run = tmp_path / "run"
    main(["train", str(run), *TINY])
    first = json.loads((run / "metrics.json").read_text())
    main(["train", str(run), *TINY])
    assert json.loads((run / "metrics.json").read_text()) == first


def test_train_refuses_a_run_directory_with_other_settings(tmp_path):
    run = tmp_path / "run"
    main(["train", str(run), *TINY])
    with pytest.raises(SystemExit, match="other settings"):
        main(["train", str(run), *TINY[:-1], "--lr", "0.01", "--no-progress"])


def test_evaluate_a_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="not a run directory"):
        main(["evaluate", str(tmp_path)])


def test_console_script_help():
    result = subprocess.run(
        [sys.executable, "-m", "mog_flows.cli", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("train", "evaluate", "plot", "compare"):
        assert command in result.stdout

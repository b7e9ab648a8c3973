"""Tests of `mog_flows.studies.rad`: the runs it lists, the target decided from the numbers (either way), the
report, bad command-line input, and the experiment script end to end with --quick settings (seconds).
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

from mog_flows.studies import rad
from mog_flows.studies.comparison import read_results
from mog_flows.studies.rad import rad_specs, target_check, write_rad_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_rad_specs_are_seed_major_with_three_models_and_refuse_bad_targets():
    specs = rad_specs(["grid", "moons"], [4, 5], steps=10, num_pieces=3, density_resolution=20)
    assert [(s.seed, s.dataset, s.base) for s in specs[:3]] == [(4, "grid", m) for m in ("gaussian", "mog", "rad")]
    assert [s.seed for s in specs] == [4] * 6 + [5] * 6
    assert {s.transform for s in specs} == {"nsf"} and {s.num_pieces for s in specs} == {3}
    assert all((s.density_resolution == 20) == (s.seed == 4) for s in specs)  # the figure's seed only
    with pytest.raises(ValueError, match="2-D targets; 'gaussian_mixture' has 10 features"):
        rad_specs(["grid", "gaussian_mixture"], [0], steps=10)
    with pytest.raises(ValueError, match="unknown dataset 'swissroll'"):
        rad_specs(["swissroll"], [0], steps=10)
    with pytest.raises(ValueError, match="seeds must be distinct"):
        rad_specs(["grid"], [1, 1], steps=10)
    with pytest.raises(ValueError, match="at least one target and one seed"):
        rad_specs([], [0], steps=10)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        rad_specs(["grid"], [0], steps=0)


def rows_with(nll: dict[str, dict[str, list[float]]], rad_parameters: int = 1100) -> list[dict]:
    """Hand-made rows: {dataset: {model: NLL per seed}}, the MoG flow at 1000 parameters."""
    rows = []
    for dataset, by_model in nll.items():
        for model, values in by_model.items():
            for seed, value in enumerate(values):
                rows.append(
                    {
                        "dataset": dataset,
                        "base": model,
                        "transform": "nsf",
                        "seed": seed,
                        "features": 2,
                        "num_components": 8,
                        "hidden_features": {"gaussian": 9, "mog": 8, "rad": 7}[model],
                        "parameters": {"gaussian": 1010, "mog": 1000, "rad": rad_parameters}[model],
                        "mog_parameters": 1000,
                        "num_pieces": 2,
                        "steps": 10,
                        "batch_size": 8,
                        "lr": 1e-3,
                        "num_layers": 2,
                        "num_train": 10,
                        "num_val": 10,
                        "num_test": 10,
                        "checkpoint_every": 5,
                        "nll": value,
                        "kl": value - 2.5,
                        "mode_coverage": 1.0,
                        "seconds_per_step": 0.02,
                        "error": "",
                    }
                )
    return rows


def test_target_is_met_only_when_the_mog_flow_matches_rad_on_every_target(tmp_path):
    good = {"gaussian": [3.0, 3.1, 3.2], "mog": [2.8, 2.9, 2.7], "rad": [2.9, 2.9, 3.0]}
    bad = {"gaussian": [3.0, 3.1, 3.2], "mog": [3.0, 3.1, 3.0], "rad": [2.9, 3.0, 3.0]}  # MoG mean 3.033 > 2.967
    check = target_check(rows_with({"grid": good}))
    assert check["met"] and check["equal_budgets"]
    (entry,) = check["targets"]
    assert entry["mog"] == pytest.approx(2.8) and entry["rad"] == pytest.approx(2.9333333)
    assert entry["wins"] == 2 and entry["pairs"] == 3 and entry["diff_mean"] == pytest.approx(-0.1333333)

    rows = rows_with({"grid": good, "rings": bad})
    check = target_check(rows)
    assert not check["met"] and [e["matched"] for e in check["targets"]] == [True, False]
    text = write_rad_markdown(rows, tmp_path / "report.md")
    assert text == (tmp_path / "report.md").read_text()
    assert "Mean test NLL of the MoG flow ≤ RAD's on 1 of 2 targets — **NOT met**." in text
    assert "rings: MoG 3.033 ± 0.058 vs RAD 2.967 ± 0.058 nats" in text and "worse than RAD" in text
    table_row = "| grid | grid Gaussian mixture | 8 | 9 / 8 / 7 | 1010 / 1000 / 1100 | 3.100 ± 0.100 | 2.800 ± 0.100 |"
    assert table_row in text
    assert "RAD has at least the MoG flow's parameters on 2 of 2 targets — **yes**" in text

    smaller = target_check(rows_with({"grid": good}, rad_parameters=900))
    assert not smaller["equal_budgets"]  # a RAD under the budget is reported, not hidden
    failed = rows_with({"grid": good})
    failed[-1].update(nll=math.nan, kl=math.nan, error="training diverged at step 3")
    assert target_check(failed)["met"]  # two RAD seeds left: still 2.9 mean ≥ 2.8
    assert "training diverged at step 3" in write_rad_markdown(failed, tmp_path / "failed.md")


def test_script_quick_writes_report_csv_and_figure_and_rewrites_the_report(tmp_path):
    script = ROOT / "experiments" / "rad_comparison.py"
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path)], cwd=ROOT, check=True, capture_output=True
    )
    assert b"wrote" in result.stdout
    with open(tmp_path / "rad_comparison_quick.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["dataset"], r["base"]) for r in rows} == {
        (d, m) for d in ("eight_gaussians", "moons") for m in ("gaussian", "mog", "rad")
    }
    assert all(math.isfinite(float(r["nll"])) and math.isfinite(float(r["kl"])) for r in rows)
    assert all(int(r["parameters"]) >= int(r["mog_parameters"]) for r in rows)
    text = (tmp_path / "rad_comparison_quick.md").read_text()
    assert "| eight_gaussians | ring Gaussian mixture | 8 |" in text and "## Beside the paper" in text
    assert (tmp_path / "rad_comparison_quick.png").stat().st_size > 20_000
    assert not (tmp_path / ".rad_comparison_quick_cache").exists()
    recorded = read_results(tmp_path, "rad_comparison_quick")
    assert sum("samples" in r for r in recorded) == 6 and recorded[0]["density"].shape == (24, 24)
    (tmp_path / "rad_comparison_quick.md").unlink()
    rad.main(["--quick", "--report-only", "--out", str(tmp_path)])
    assert (tmp_path / "rad_comparison_quick.md").read_text() == text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--datasets", "digits"], "2-D targets; 'digits' has 64 features"),
        (["--steps", "0"], "steps must be a positive integer"),
        (["--num-pieces", "0"], "num_pieces must be a positive integer"),
        (["--num-pieces", "2"], "signs='alternating' needs an odd num_pieces"),
        (["--workers", "0"], "workers must be a positive integer"),
        (["--seeds", "-1"], "seeds must be non-negative"),
        (["--lr", "-1"], "lr must be a positive finite number"),
        (["--report-only"], "needs the results of a finished study"),
    ],
)
def test_bad_command_line_input_raises_value_error(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message):
        rad.main(["--quick", "--out", str(tmp_path), *argv])

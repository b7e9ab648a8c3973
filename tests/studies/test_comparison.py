"""Tests of `mog_flows.comparison`: one tiny run, the equal-budget rule, the reductions over seeds, the writers,
and the experiment script end to end with --smoke settings.

Shapes: D features, K components. Runs are tiny (two layers of width 8, a few steps).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mog_flows import build_flow
from mog_flows.studies import comparison
from mog_flows.studies.comparison import (
    RunSpec,
    count_parameters,
    default_num_components,
    matched_hidden_features,
    paired_differences,
    run_comparison,
    run_one,
    summarize,
    write_csv,
    write_markdown,
)
from mog_flows.datasets import get_dataset

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(steps=4, batch_size=32, hidden_features=8, num_layers=2, num_train=200, num_val=50, num_test=100)


@pytest.mark.parametrize("base", ["gaussian", "mog"])
def test_run_one_returns_finite_metrics_and_matched_budgets(base):
    row = run_one(RunSpec("eight_gaussians", base, "nsf", density_resolution=12, **TINY))
    for key in ("nll", "nll_per_dim", "kl", "mode_coverage", "seconds_per_step", "train_seconds"):
        assert math.isfinite(row[key]), key
    assert row["error"] == "" and row["num_components"] == 32 and row["features"] == 2
    assert row["parameters"] >= row["mog_parameters"]
    assert (row["parameters"] == row["mog_parameters"]) == (base == "mog")
    assert row["hidden_features"] >= 8 and (row["hidden_features"] == 8) == (base == "mog")
    assert row["density"].shape == (12, 12) and torch.isfinite(row["density"]).all()
    assert 0 <= row["best_step"] <= TINY["steps"]


def test_run_one_is_reproducible_and_serial_equals_pool():
    specs = [RunSpec("eight_gaussians", base, "maf", seed=3, **TINY) for base in ("gaussian", "mog")]
    serial = run_comparison(specs, workers=1)
    pooled = run_comparison(specs, workers=2)
    assert [r["base"] for r in pooled] == ["gaussian", "mog"]
    for a, b in zip(serial, pooled):
        assert a["nll"] == b["nll"] and a["kl"] == b["kl"]


def test_run_comparison_resumes_from_its_cache(tmp_path, monkeypatch):
    specs = [RunSpec("eight_gaussians", base, "realnvp", **TINY) for base in ("gaussian", "mog")]
    first = run_comparison(specs[:1], cache_dir=tmp_path)  # as if killed after the first run
    ran = []
    real_run_one = comparison.run_one
    monkeypatch.setattr(comparison, "run_one", lambda spec: ran.append(spec) or real_run_one(spec))
    done = []
    rows = run_comparison(specs, cache_dir=tmp_path, on_result=lambda *args: done.append(args[:2]))
    assert ran == specs[1:] and done == [(2, 2)]
    assert rows[0] == first[0] and rows[1]["base"] == "mog"
    assert len(list(tmp_path.glob("*.pt"))) == 2
    assert comparison.spec_key(specs[0]) != comparison.spec_key(dataclasses.replace(specs[0], seed=1))
    # K is part of the key once resolved: the default and the same K given explicitly name the same run
    assert comparison.spec_key(specs[0]) == comparison.spec_key(dataclasses.replace(specs[0], num_components=32))
    # how fit trains a mixture base is part of a MoG spec's key, not of a Gaussian one's
    keys = [comparison.spec_key(spec) for spec in specs]
    monkeypatch.setattr(comparison.training, "BASE_LR_FACTOR", 1.0)
    assert comparison.spec_key(specs[0]) == keys[0] and comparison.spec_key(specs[1]) != keys[1]


@pytest.mark.parametrize(("features", "transform", "components"), [(2, "nsf", 8), (2, "realnvp", 25), (10, "maf", 10)])
def test_matched_hidden_features_is_the_smallest_width_at_or_over_the_budget(features, transform, components):
    hidden, count, budget = matched_hidden_features(
        features, transform, num_layers=2, hidden_features=8, num_components=components
    )

    def parameters(base, width):
        flow = build_flow(
            features, base=base, transform=transform, num_layers=2, hidden_features=width, num_components=components
        )
        return count_parameters(flow)

    # a diagonal mixture adds K logits, K·D means and K·D scales
    assert budget == parameters("mog", 8) == parameters("gaussian", 8) + components * (1 + 2 * features)
    assert count == parameters("gaussian", hidden) >= budget
    assert hidden > 8 and parameters("gaussian", hidden - 1) < budget


def test_default_num_components_is_32_or_the_number_of_point_modes_when_larger():
    for name in ("eight_gaussians", "grid", "moons", "gaussian_mixture"):  # 8, 25, 2, 10 point modes
        assert default_num_components(get_dataset(name)) == 32
    for name in ("rings", "spirals", "digits"):  # no point modes
        assert default_num_components(get_dataset(name)) == 32
    assert default_num_components(SimpleNamespace(modes=torch.zeros(40, 2))) == 40
    assert default_num_components(SimpleNamespace(modes=None)) == 32


def test_run_spec_refuses_bad_settings():
    with pytest.raises(ValueError, match="base must be one of"):
        RunSpec("grid", "flow", "nsf")
    with pytest.raises(ValueError, match="dataset must be one of"):
        RunSpec("nope", "mog", "nsf")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        RunSpec("grid", "mog", "nsf", steps=0)


def hand_made_rows():
    """Three seeds of one cell, with known numbers, plus a failed run that must be left out."""
    nll = {"gaussian": [3.0, 3.2, 3.4], "mog": [2.9, 3.3, 3.0]}
    kl = {"gaussian": [0.3, 0.5, 0.4], "mog": [0.01, 0.03, 0.02]}
    rows = []
    for base in ("gaussian", "mog"):
        for seed in range(3):
            rows.append(
                {
                    "dataset": "grid",
                    "base": base,
                    "transform": "nsf",
                    "seed": seed,
                    "features": 2,
                    "num_components": 25,
                    "hidden_features": 65 if base == "gaussian" else 64,
                    "parameters": 100 if base == "gaussian" else 99,
                    "mog_parameters": 99,
                    "steps": 10,
                    "batch_size": 8,
                    "lr": 1e-3,
                    "num_layers": 2,
                    "num_train": 10,
                    "num_val": 10,
                    "num_test": 10,
                    "checkpoint_every": 5,
                    "nll": nll[base][seed],
                    "kl": kl[base][seed],
                    "mode_coverage": 1.0,
                    "seconds_per_step": 0.01,
                    "error": "",
                }
            )
    rows.append({**rows[0], "seed": 7, "nll": math.nan, "kl": math.nan, "error": "training diverged at step 3"})
    return rows, nll, kl


def test_summarize_computes_mean_and_sample_std_over_seeds():
    rows, nll, kl = hand_made_rows()
    summaries = {s["base"]: s for s in summarize(rows)}
    for base in ("gaussian", "mog"):
        s = summaries[base]
        assert s["nll_mean"] == pytest.approx(statistics.fmean(nll[base]))
        assert s["nll_std"] == pytest.approx(statistics.stdev(nll[base]))
        assert s["kl_mean"] == pytest.approx(statistics.fmean(kl[base]))
        assert s["kl_std"] == pytest.approx(statistics.stdev(kl[base]))
    assert summaries["gaussian"]["runs"] == 4 and summaries["gaussian"]["failed"] == 1
    assert summaries["gaussian"]["n"] == 3 and summaries["mog"]["failed"] == 0
    one = summarize(rows[:1])[0]
    assert one["nll_mean"] == 3.0 and math.isnan(one["nll_std"])
    no_kl = summarize([{**row, "kl": math.nan} for row in rows])[0]  # a target without an exact density
    assert math.isnan(no_kl["kl_mean"]) and math.isnan(no_kl["kl_std"])
    assert no_kl["nll_mean"] == pytest.approx(3.2)


def test_paired_differences_and_honest_report(tmp_path):
    rows, nll, _ = hand_made_rows()
    (pair,) = paired_differences(rows)
    diffs = [m - g for m, g in zip(nll["mog"], nll["gaussian"])]
    assert pair["pairs"] == 3 and pair["mog_wins"] == 2
    assert pair["diff_mean"] == pytest.approx(statistics.fmean(diffs))
    assert pair["diff_std"] == pytest.approx(statistics.stdev(diffs))
    text = write_markdown(rows, tmp_path / "table.md")
    assert text == (tmp_path / "table.md").read_text()
    assert "| grid (1 failed) | 2 | 25 | nsf | 10 | 65 / 64 | 100 / 99 | 3.200 ± 0.200 | 3.067 ± 0.208 |" in text
    assert "not on every seed (2/3)" in text  # honest: lower on average, not on every seed
    assert "MoG + NSF KL < 0.02 nats on grid: 0.020 ± 0.010 — **NOT met**" in text
    assert "training diverged at step 3" in text
    write_csv(rows, tmp_path / "runs.csv")
    with open(tmp_path / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)


def test_script_smoke_writes_table_csv_and_figure(tmp_path):
    script = ROOT / "experiments" / "compare_bases.py"
    result = subprocess.run(
        [sys.executable, str(script), "--smoke", "--out", str(tmp_path), "--workers", "1"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    assert "wrote" in result.stdout
    with open(tmp_path / "compare_bases.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["base"], r["transform"]) for r in rows} == {(b, t) for b in ("gaussian", "mog") for t in ("nsf", "maf")}
    assert all(math.isfinite(float(r["nll"])) for r in rows)
    assert all(int(r["parameters"]) >= int(r["mog_parameters"]) for r in rows)
    assert "| eight_gaussians | 2 | 32 | nsf |" in (tmp_path / "compare_bases.md").read_text()
    assert (tmp_path / "compare_bases.png").stat().st_size > 5_000
    assert (tmp_path / "compare_bases_densities.npz").exists()


# ---------------------------------------------------------------------------------------------------- the "rad" kind
@pytest.mark.parametrize(("transform", "pieces"), [("nsf", 2), ("maf", 3)])
def test_matched_rad_hidden_features_is_the_smallest_width_at_or_over_the_budget(transform, pieces):
    from mog_flows.baselines import RAD

    hidden, count, budget = comparison.matched_rad_hidden_features(
        2, transform, num_layers=2, hidden_features=8, num_components=8, num_pieces=pieces
    )
    flow = build_flow(2, base="mog", transform=transform, num_layers=2, hidden_features=8, num_components=8)

    def parameters(width):
        return count_parameters(RAD(2, num_pieces=pieces, num_layers=2, hidden_features=width))

    assert budget == count_parameters(flow)
    assert count == parameters(hidden) >= budget
    assert hidden == 1 or parameters(hidden - 1) < budget


def test_run_one_trains_rad_at_the_mog_flows_budget():
    row = run_one(RunSpec("eight_gaussians", "rad", "nsf", num_pieces=3, density_resolution=10, **TINY))
    for key in ("nll", "kl", "mode_coverage", "seconds_per_step"):
        assert math.isfinite(row[key]), key
    assert row["error"] == "" and row["num_pieces"] == 3
    mog = run_one(RunSpec("eight_gaussians", "mog", "nsf", **TINY))
    assert row["parameters"] >= row["mog_parameters"] == mog["parameters"]
    assert row["density"].shape == (10, 10) and row["samples"].shape == (comparison.NUM_SAMPLES_RECORDED, 2)
    assert torch.isfinite(row["samples"]).all()


def test_num_pieces_is_part_of_the_key_of_rad_specs_only():
    mog = RunSpec("grid", "mog", "nsf")
    rad = RunSpec("grid", "rad", "nsf")
    assert comparison.spec_key(mog) == comparison.spec_key(dataclasses.replace(mog, num_pieces=5))
    assert comparison.spec_key(rad) != comparison.spec_key(dataclasses.replace(rad, num_pieces=5))
    with pytest.raises(ValueError, match="num_pieces must be a positive integer"):
        RunSpec("grid", "rad", "nsf", num_pieces=0)


def test_paired_differences_between_any_two_models():
    rows, nll, _ = hand_made_rows()
    rad = [{**row, "base": "rad", "nll": row["nll"] + 0.1 * (row["seed"] - 1)} for row in rows if row["base"] == "mog"]
    (pair,) = paired_differences(rows + rad, base="mog", reference="rad")
    assert pair["pairs"] == 3 and pair["mog_wins"] == 1  # only seed 2 has RAD above the MoG flow
    assert pair["diff_mean"] == pytest.approx(0.0) and pair["diff_std"] == pytest.approx(0.1)
    (default,) = paired_differences(rows + rad)  # still MoG - Gaussian
    assert default["diff_mean"] == pytest.approx(statistics.fmean(m - g for m, g in zip(nll["mog"], nll["gaussian"])))
    with pytest.raises(ValueError, match="reference must be one of"):
        paired_differences(rows, reference="flow")

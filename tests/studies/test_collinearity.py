"""Tests of `mog_flows.studies.collinearity`: the problem's exact density against scipy and its samples, the seed's
penalty leaves training bitwise unchanged while the residual penalty does not, and the study end to end with
--quick settings."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats

from mog_flows.mdn import MixtureDensityNetwork, collinearity_penalty
from mog_flows.studies import collinearity as col

QUICK = dict(steps=25, train_size=300, test_size=200)


def test_the_exact_density_matches_scipy_and_the_samples():
    y, x = col.simulate(200_000, torch.Generator().manual_seed(0))
    a, b = col.COEFFICIENTS
    s, s3 = col.NOISE, col.THIRD_NOISE
    covariance = np.array(
        [[s**2, 0, a * s**2], [0, s**2, b * s**2], [a * s**2, b * s**2, (a**2 + b**2) * s**2 + s3**2]]
    )
    mean = col.true_mean(x[:200]).numpy()
    theirs = np.array([stats.multivariate_normal(m, covariance).logpdf(p) for m, p in zip(mean, y[:200].numpy())])
    np.testing.assert_allclose(col.exact_log_prob(y[:200], x[:200]).numpy(), theirs, rtol=1e-10, atol=1e-10)
    residual = y - col.true_mean(x)
    torch.testing.assert_close(torch.cov(residual.T), torch.tensor(covariance), atol=2e-3, rtol=0)
    # the third label is collinear with the first two: corr(r1, r3) = a s / sqrt((a² + b²) s² + s3²)
    correlation = col.residual_correlation(y, col.true_mean(x))
    assert abs(correlation[0, 2].item() - a * s / math.sqrt((a**2 + b**2) * s**2 + s3**2)) < 0.01


def test_the_seed_penalty_has_no_gradient_to_the_network():
    model = MixtureDensityNetwork(1, 3, 2)
    y, x = col.simulate(64, torch.Generator().manual_seed(1))
    y, x = y.float(), x.float()
    term = collinearity_penalty(y, 1.0)
    assert not term.requires_grad and term.item() > 0.5
    base = torch.autograd.grad(-model.log_prob(y, x).mean(), list(model.parameters()))
    total = torch.autograd.grad(-model.log_prob(y, x).mean() + term, list(model.parameters()))
    for g, h in zip(base, total, strict=True):
        assert torch.equal(g, h)


def test_the_seed_penalty_leaves_the_parameters_bitwise_unchanged_and_the_residual_one_does_not():
    rows = [
        col.run_spec(col.CollinearitySpec(p, lam, 3, **QUICK))
        for p, lam in (("none", 0.0), ("seed", 1.0), ("residual", 1.0))
    ]
    rows = col.compare_to_baseline(rows)
    none, seed, residual = rows
    assert seed["identical"] == 1 and seed["max_parameter_change"] == 0 and seed["penalty_requires_grad"] == 0
    assert seed["parameter_digest"] == none["parameter_digest"] and seed["test_nll"] == none["test_nll"]
    assert residual["identical"] == 0 and residual["max_parameter_change"] > 0


def test_the_study_runs_end_to_end_with_quick_settings(tmp_path, capsys):
    rows = col.main(["--quick", "--out", str(tmp_path)])
    capsys.readouterr()
    text = (tmp_path / "collinearity_quick.md").read_text()
    assert "Written by `python experiments/collinearity.py --quick`" in text
    assert "## Summary" in text and "## What the numbers say" in text
    assert len(rows) == 5 * 2
    assert all(r["identical"] == 1 for r in rows if r["penalty"] == "seed")
    assert "4 of 4 runs end at parameters bitwise identical" in text
    assert (tmp_path / "collinearity_quick.csv").exists() and (tmp_path / "collinearity_quick.png").exists()

"""Tests of `mog_flows.studies.mdn_inverse`: the quadrature conditional of Bishop's inverse problem against its
normalisation and simulated pairs, problem 2's closed-form density against scipy and its samples, the equal
budgets, and the study end to end with --quick settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from mog_flows.studies import mdn_inverse
from mog_flows.studies.mdn_inverse import (
    bishop_log_conditional,
    correlated_log_prob,
    simulate_bishop,
    simulate_correlated,
)

DOUBLE = torch.float64


@pytest.mark.parametrize("x0", [-0.05, 0.3, 0.5, 0.8, 1.07])
def test_the_quadrature_conditional_integrates_to_one(x0):
    grid = torch.linspace(0, 1, 50_001, dtype=DOUBLE)  # another grid than the normaliser's
    density = bishop_log_conditional(grid.unsqueeze(0), torch.tensor([x0])).exp()
    assert abs(torch.trapezoid(density, grid).item() - 1) < 2e-5  # a peak at an end of [0, 1]: 7e-6
    outside = bishop_log_conditional(torch.tensor([[-0.01, 1.01]]), torch.tensor([x0]))
    assert torch.isneginf(outside).all()


@pytest.mark.parametrize("x0", [0.5, 0.3])
def test_the_quadrature_conditional_matches_simulated_pairs_near_x(x0):
    y, x = simulate_bishop(2_000_000, torch.Generator().manual_seed(0))
    near = y[(x - x0).abs() < 0.004]
    assert near.numel() > 5000
    grid = torch.linspace(0, 1, 20_001, dtype=DOUBLE)
    density = bishop_log_conditional(grid.unsqueeze(0), torch.tensor([x0])).exp().squeeze(0)
    for statistic in (lambda t: t, lambda t: t**2, lambda t: (t < 1 / 3).double(), lambda t: (t > 2 / 3).double()):
        exact = torch.trapezoid(density * statistic(grid), grid).item()
        values = statistic(near)
        error = values.std().item() / math.sqrt(values.numel())
        assert abs(values.mean().item() - exact) < 5 * error + 2e-3, (values.mean().item(), exact)
    if x0 == 0.5:  # three branches, near 0.19, 0.5 and 0.81, each with real mass
        masses = [
            ((near >= a) & (near < b)).double().mean().item() for a, b in ((0, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1))
        ]
        assert min(masses) > 0.15


def test_the_correlated_density_matches_scipy_and_its_samples():
    generator = torch.Generator().manual_seed(1)
    y, x = simulate_correlated(200_000, generator)
    ours = correlated_log_prob(y[:500], x[:500]).numpy()
    covariance = 0.3**2 * np.array([[1.0, 0.9], [0.9, 1.0]])
    means = np.concatenate([x[:500].numpy(), x[:500].numpy() ** 2], -1)
    theirs = logsumexp(
        [
            np.array(
                [stats.multivariate_normal(sign * m, covariance).logpdf(p) for m, p in zip(means, y[:500].numpy())]
            )
            + math.log(0.5)
            for sign in (1, -1)
        ],
        axis=0,
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10)
    # samples: within a sign the residual has the stated covariance; the mean over both signs is 0
    sign = torch.where((y * torch.cat([x, x**2], -1)).sum(-1, keepdim=True) > 0, 1.0, -1.0)
    big = (x.abs() > 0.8).squeeze(-1)  # where the two components barely overlap
    residual = (y - sign * torch.cat([x, x**2], -1))[big]
    torch.testing.assert_close(torch.cov(residual.T), torch.tensor(covariance), atol=0.01, rtol=0)
    assert y.mean(0).abs().max() < 0.01


def test_models_match_their_budgets_within_ten_percent():
    for problem, K in (("bishop", 5), ("correlated", 2), ("correlated", 4)):
        for model in mdn_inverse.MODELS[problem]:
            width, parameters, budget = mdn_inverse.model_width(problem, model, K)
            assert budget <= parameters <= 1.1 * budget, (problem, model, width, parameters, budget)


def test_the_study_runs_end_to_end_with_quick_settings(tmp_path):
    rows = mdn_inverse.main(["--quick", "--out", str(tmp_path)])
    assert {(r["problem"], r["model"]) for r in rows} == {
        (p, m) for p, models in mdn_inverse.MODELS.items() for m in models
    }
    assert all(math.isfinite(r["kl"]) and math.isfinite(r["nll"]) for r in rows)
    assert all(r["kl"] > -0.05 for r in rows if r["problem"] == "bishop")  # a KL, up to quadrature error
    text = (tmp_path / "mdn_inverse_quick.md").read_text()
    assert "## Problem 1" in text and "| mog_flow | 3 |" in text and "| 2 | diagonal |" in text
    assert (tmp_path / "mdn_inverse_quick.csv").read_text().startswith("problem,model,num_components,seed")
    assert (tmp_path / "mdn_inverse_quick.png").exists()
    assert len(list((tmp_path / ".mdn_inverse_quick_rows").glob("*.pt"))) == len(rows)

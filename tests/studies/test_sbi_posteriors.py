"""Tests of `mog_flows.studies.sbi_posteriors`: the exact reference posteriors against grid quadrature of
prior × likelihood, the simulators, and the study end to end with smoke settings (skipped without sbi)."""

from __future__ import annotations

import math

import pytest
import torch

from mog_flows.studies import sbi_posteriors
from mog_flows.studies.sbi_posteriors import mode_masses, reference_posterior, simulate

DOUBLE = torch.float64


def log_likelihood(task: str, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | θ) in closed form, θ (G, 2), x (2,), written independently of the simulators."""
    if task == "two_moons":
        # p = x - (-|θ₁ + θ₂| / √2, (θ₂ - θ₁) / √2) = (r cos a + 0.25, r sin a), density N(r; 0.1, 0.01²)/(π r)
        p = x - torch.stack([-(theta.sum(-1)).abs() / math.sqrt(2), (theta[:, 1] - theta[:, 0]) / math.sqrt(2)], -1)
        radius = torch.hypot(p[:, 0] - 0.25, p[:, 1])
        inside = p[:, 0] - 0.25 > 0  # a ∈ (-π/2, π/2)
        log_p = -0.5 * ((radius - 0.1) / 0.01) ** 2 - radius.log()
        return torch.where(inside, log_p, -math.inf)
    if task == "gaussian_mixture":
        square = ((x - theta) ** 2).sum(-1)
        return torch.logaddexp(-0.5 * square, -0.5 * square / 0.01 - 2 * math.log(0.1))
    return (-0.5 * ((x - theta**2) / 0.2) ** 2).sum(-1)


@pytest.mark.parametrize("task", sbi_posteriors.TASKS)
def test_reference_draws_match_prior_times_likelihood(task):
    box = sbi_posteriors._BOX[task]
    x_o = torch.tensor(sbi_posteriors._X_O[task], dtype=DOUBLE)
    axis = torch.linspace(-box, box, 1201, dtype=DOUBLE)
    grid = torch.cartesian_prod(axis, axis)  # (G, 2)
    weights = (log_likelihood(task, grid, x_o)).exp()
    weights = weights / weights.sum()
    draws = reference_posterior(task, 100_000, seed=3)
    assert draws.shape == (100_000, 2) and (draws.abs() <= box).all()
    for statistic in (lambda t: t, lambda t: t**2, lambda t: t.prod(-1, keepdim=True), lambda t: (t > 0).double()):
        exact = (weights[:, None] * statistic(grid)).sum(0)
        values = statistic(draws)
        error = values.std(0) / math.sqrt(values.shape[0])
        assert ((values.mean(0) - exact).abs() < 5 * error + 2e-3 * box).all(), (values.mean(0), exact)


def test_simulators_are_centred_where_the_docstring_says():
    generator = torch.Generator().manual_seed(0)
    theta = torch.tensor([[0.3, -0.2]], dtype=DOUBLE).expand(20_000, 2)
    x = simulate("four_modes", theta, generator)
    torch.testing.assert_close(x.mean(0), theta[0] ** 2, atol=0.01, rtol=0)
    x = simulate("two_moons", theta, generator)
    # the moon's offset p = x - (-|θ₁ + θ₂| / √2, (θ₂ - θ₁) / √2) lies on a half ring of radius 0.1 around (0.25, 0)
    p = x - torch.tensor([-0.1 / math.sqrt(2), -0.5 / math.sqrt(2)], dtype=DOUBLE)
    radius = torch.hypot(p[:, 0] - 0.25, p[:, 1])
    assert abs(radius.mean().item() - 0.1) < 1e-3 and abs(radius.std().item() - 0.01) < 1e-3
    assert (p[:, 0] > 0.25).all()
    with pytest.raises(ValueError, match="task must be one of"):
        simulate("slcp", theta, generator)


def test_mode_masses():
    theta = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [2.0, 3.0]])
    torch.testing.assert_close(mode_masses("four_modes", theta), torch.tensor([0.0, 0.25, 0.25, 0.5], dtype=DOUBLE))
    torch.testing.assert_close(mode_masses("two_moons", theta), torch.tensor([0.5, 0.5], dtype=DOUBLE))
    assert mode_masses("gaussian_mixture", theta) is None


def test_the_study_runs_end_to_end_with_smoke_settings(tmp_path):
    pytest.importorskip("sbi")
    rows = sbi_posteriors.main(["--quick", "--tasks", "two_moons", "--out", str(tmp_path)])
    assert {row["method"] for row in rows} == set(sbi_posteriors.METHODS)
    assert all(0 <= row["c2st"] <= 1 for row in rows)
    text = (tmp_path / "sbi_posteriors_quick.md").read_text()
    assert "| two_moons | 200 |" in text and (tmp_path / "sbi_posteriors_quick.png").exists()
    assert len(list((tmp_path / ".sbi_posteriors_quick_rows").glob("*.pt"))) == len(rows)  # kept for reuse

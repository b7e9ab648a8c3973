"""Tests of `mog_flows.studies.kl_projection`: the model's density against scipy, the quadrature against closed
forms, θ* as moment matching (K = 1) and a maximum of E_p[log q] (K = 2), the sandwich against the closed-form
moments of p, the MLE as a stationary point, and the study end to end with --quick settings."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from mog_flows.studies import kl_projection as kp

DOUBLE = torch.float64


def _central_moment(k: int, centre: torch.Tensor) -> torch.Tensor:
    """E_p[(x - centre)^k] for k = 2, 3, 4, in closed form over p's components."""
    d, s2 = kp.TRUE_MEANS - centre, kp.TRUE_STDS**2
    terms = {2: d**2 + s2, 3: d**3 + 3 * d * s2, 4: d**4 + 6 * d**2 * s2 + 3 * s2**2}[k]
    return (kp.TRUE_WEIGHTS * terms).sum()


def test_log_q_is_the_mixture_density():
    theta = torch.tensor([0.3, -1.0, 2.0, -0.2, 0.4], dtype=DOUBLE)
    x = torch.linspace(-5, 5, 41, dtype=DOUBLE)
    w2 = 1 / (1 + math.exp(-0.3))
    density = (1 - w2) * stats.norm(-1.0, math.exp(-0.2)).pdf(x.numpy()) + w2 * stats.norm(2.0, math.exp(0.4)).pdf(
        x.numpy()
    )
    torch.testing.assert_close(kp.log_q(theta, x, 2), torch.tensor(density).log(), rtol=0, atol=1e-12)


def test_quadrature_expectation_matches_the_closed_form_for_one_gaussian():
    theta = torch.tensor([0.4, 0.1], dtype=DOUBLE)
    mu, sigma2 = 0.4, math.exp(0.2)
    exact = -0.5 * math.log(2 * math.pi * sigma2) - _central_moment(2, torch.tensor(mu, dtype=DOUBLE)) / (2 * sigma2)
    assert kp.expected_log_q(theta, 1).item() == pytest.approx(exact.item(), abs=1e-12)


def test_quadrature_matches_monte_carlo_where_the_fit_is_narrower_than_p():
    # an 80-node Gauss–Hermite rule per component of p was 2e-3 nats off at such a θ; Newton steps found it
    theta = torch.tensor([1.0, -1.56, 0.12, -1.6, 0.65], dtype=DOUBLE)  # σ₁ = 0.2 inside p's σ = 0.5 mode
    x = kp.sample_truth(2_000_000, torch.Generator().manual_seed(5))
    values = kp.log_q(theta, x, 2)
    error = values.std().item() / math.sqrt(x.numel())
    assert abs(kp.expected_log_q(theta, 2).item() - values.mean().item()) < 4 * error
    nodes, weights = kp._quadrature()
    mean = (kp.TRUE_WEIGHTS * kp.TRUE_MEANS).sum()
    assert weights.sum().item() == pytest.approx(1, abs=1e-12)
    assert (weights * nodes).sum().item() == pytest.approx(mean.item(), abs=1e-12)
    assert (weights * (nodes - mean) ** 4).sum().item() == pytest.approx(_central_moment(4, mean).item(), rel=1e-10)


def test_samples_of_p_match_its_moments():
    x = kp.sample_truth(400_000, torch.Generator().manual_seed(0))
    mean = (kp.TRUE_WEIGHTS * kp.TRUE_MEANS).sum()
    assert abs(x.mean() - mean) < 5 * math.sqrt(_central_moment(2, mean) / x.numel())
    assert abs(x.var() / _central_moment(2, mean) - 1) < 0.02


def test_the_one_component_projection_is_moment_matching_and_its_sandwich_is_closed_form():
    star = kp.projection(1)
    mean = (kp.TRUE_WEIGHTS * kp.TRUE_MEANS).sum()
    variance = _central_moment(2, mean)
    torch.testing.assert_close(star, torch.stack([mean, 0.5 * variance.log()]))
    assert torch.func.grad(lambda t: kp.expected_log_q(t, 1))(star).abs().max() < 1e-12
    A, B = kp.sandwich(star, None, 1)
    # scores for (μ, log σ): (x - μ)/σ², (x - μ)²/σ² - 1
    kurtosis = _central_moment(4, mean) / variance**2
    torch.testing.assert_close(A, torch.diag(torch.stack([1 / variance, torch.tensor(2.0, dtype=DOUBLE)])))
    expected_b = torch.tensor(
        [[1 / variance, _central_moment(3, mean) / variance**2], [_central_moment(3, mean) / variance**2, kurtosis - 1]]
    )
    torch.testing.assert_close(B, expected_b.to(DOUBLE))
    assert kurtosis > 3  # heavy tails: the naive variance of log σ̂ is too small


def test_the_two_component_projection_is_a_maximum():
    star = kp.projection(2, reference_draws=100_000, em_iterations=100)
    objective = lambda t: kp.expected_log_q(t, 2)  # noqa: E731
    assert torch.func.grad(objective)(star).norm() < 1e-9
    assert torch.linalg.eigvalsh(torch.func.hessian(objective)(star)).max() < 0
    assert star[1] < star[2]  # components in order of their means
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        assert objective(star + 0.01 * torch.randn(5, generator=generator, dtype=DOUBLE)) < objective(star)


def test_the_mle_is_a_stationary_point_of_the_sample_likelihood():
    x = kp.sample_truth(2_000, torch.Generator().manual_seed(1))
    theta, gradient = kp.fit_mle(x, 2, em_iterations=50, seed=0)
    assert gradient < 1e-8
    assert torch.func.grad(lambda t: kp.log_q(t, x, 2).mean())(theta).norm() < 1e-8
    one, _ = kp.fit_mle(x, 1)
    assert kp.log_q(theta, x, 2).mean() > kp.log_q(one, x, 1).mean()  # two components fit better


def test_the_study_runs_end_to_end_with_quick_settings(tmp_path, capsys):
    rows = kp.main(["--quick", "--out", str(tmp_path)])
    capsys.readouterr()
    text = (tmp_path / "kl_projection_quick.md").read_text()
    assert "python experiments/kl_projection.py --quick`" in text and "## K = 2" in text and "log-log slope" in text
    assert len(rows) == 2 * 2 * 3
    assert all(math.isfinite(r["excess_kl"]) and r["excess_kl"] >= -1e-12 for r in rows)
    assert (tmp_path / "kl_projection_quick.csv").exists()

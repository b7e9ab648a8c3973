"""`mog_flows.evaluation` against closed forms: Gaussian models and targets whose NLL and KL are known exactly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mog_flows.evaluation import (
    evaluate,
    grid_kl,
    log_prob_batched,
    mode_coverage,
    negative_log_likelihood,
    paired_kl,
)

DOUBLE = torch.float64
LOG_2PI = math.log(2 * math.pi)


class IsotropicGaussian(nn.Module):
    """N(loc, scale² I) with log_prob and sample: a model whose every quantity has a closed form."""

    def __init__(self, loc, scale: float, dtype=DOUBLE) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.as_tensor(loc, dtype=dtype))
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale), dtype=dtype))
        self.calls: list[int] = []

    def log_prob(self, x):
        self.calls.append(x.shape[0])
        assert x.dtype == self.loc.dtype
        D = self.loc.shape[0]
        return -0.5 * ((x - self.loc) / self.log_scale.exp()).square().sum(-1) - D * self.log_scale - 0.5 * D * LOG_2PI

    def sample(self, n):
        generator = torch.Generator().manual_seed(0)
        noise = torch.randn(n, self.loc.shape[0], generator=generator, dtype=self.loc.dtype)
        return self.loc + self.log_scale.exp() * noise


class Target:
    """An exact N(mean, scale² I) target, optionally with point modes."""

    has_exact_density = True

    def __init__(self, mean, scale: float, modes=None) -> None:
        self.mean, self.scale, self.modes = torch.as_tensor(mean, dtype=DOUBLE), scale, modes

    def log_prob(self, x):
        assert x.dtype == DOUBLE
        D = self.mean.shape[0]
        return -0.5 * ((x - self.mean) / self.scale).square().sum(-1) - D * math.log(self.scale) - 0.5 * D * LOG_2PI

    def sample(self, n, seed=0):
        generator = torch.Generator().manual_seed(seed)
        return self.mean + self.scale * torch.randn(n, self.mean.shape[0], generator=generator, dtype=DOUBLE)


def _closed_form_log_prob(x, loc, scale):
    D = x.shape[-1]
    return -0.5 * ((x - loc) / scale).square().sum(-1) - D * math.log(scale) - 0.5 * D * LOG_2PI


# ------------------------------------------------------------------------------------------------ log-likelihood
@pytest.mark.parametrize("dtype", [torch.float32, DOUBLE])
def test_log_prob_batched_is_the_closed_form_in_batches_on_the_cpu(dtype):
    model = IsotropicGaussian([1.0, -2.0, 0.5], 1.5, dtype=dtype)
    x = torch.randn(23, 3, generator=torch.Generator().manual_seed(1), dtype=DOUBLE)
    log_p = log_prob_batched(model, x, batch_size=5)
    assert model.calls == [5, 5, 5, 5, 3]
    assert log_p.shape == (23,) and log_p.dtype == dtype and log_p.device.type == "cpu"
    assert not log_p.requires_grad
    expected = _closed_form_log_prob(x, torch.tensor([1.0, -2.0, 0.5], dtype=DOUBLE), 1.5)
    tolerance = dict(rtol=1e-12, atol=1e-12) if dtype == DOUBLE else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_p.double(), expected, **tolerance)


def test_negative_log_likelihood_at_the_mean_and_in_expectation():
    D, scale = 4, 0.7
    model = IsotropicGaussian(torch.zeros(D), scale)
    # at the mode: -log q(0) = D log σ + (D/2) log 2π
    nll = negative_log_likelihood(model, torch.zeros(3, D, dtype=DOUBLE))
    assert nll == pytest.approx(D * math.log(scale) + 0.5 * D * LOG_2PI, rel=1e-14)
    # mean over x ~ N(0, σ² I) estimates the entropy (D/2)(1 + log 2πσ²); the sample mean has the same closed form
    x = Target(torch.zeros(D), scale).sample(200_000, seed=2)
    nll = negative_log_likelihood(model, x, batch_size=30_000)
    exact_on_sample = 0.5 * (x / scale).square().sum(-1).mean().item() + D * math.log(scale) + 0.5 * D * LOG_2PI
    assert nll == pytest.approx(exact_on_sample, rel=1e-12)
    assert nll == pytest.approx(0.5 * D * (1 + math.log(2 * math.pi * scale**2)), abs=0.02)


# ------------------------------------------------------------------------------------------------ KL
def test_paired_kl_is_the_exact_paired_difference_and_estimates_the_gaussian_kl():
    D = 3
    mean, p_scale, q_scale = torch.tensor([0.5, -1.0, 2.0], dtype=DOUBLE), 1.0, 1.3
    target, model = Target(mean, p_scale), IsotropicGaussian(torch.zeros(D), q_scale)
    x = target.sample(100_000, seed=3)
    kl = paired_kl(model, target, x)
    paired = (_closed_form_log_prob(x, mean, p_scale) - _closed_form_log_prob(x, torch.zeros(D), q_scale)).mean()
    assert kl == pytest.approx(paired.item(), rel=1e-10, abs=1e-12)
    # KL(N(m, s² I) ‖ N(0, t² I)) = D log(t/s) + (D s² + ‖m‖²) / (2 t²) - D/2
    exact = D * math.log(q_scale / p_scale) + (D * p_scale**2 + mean.square().sum().item()) / (2 * q_scale**2) - D / 2
    assert kl == pytest.approx(exact, abs=0.02)


def test_paired_kl_is_zero_for_the_target_itself():
    target = Target([1.0, 2.0], 0.5)
    model = IsotropicGaussian([1.0, 2.0], 0.5)
    assert paired_kl(model, target, target.sample(100)) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------ modes
def test_mode_coverage_counts_modes_with_enough_close_samples():
    modes = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    noise = 0.1 * torch.randn(105, 2, generator=torch.Generator().manual_seed(4))
    # 50 at mode 0, 50 at mode 1, 5 at mode 2, none at mode 3: the threshold is 0.2 · 105 / 4 = 5.25 samples
    samples = torch.cat([modes[0].expand(50, 2), modes[1].expand(50, 2), modes[2].expand(5, 2)]) + noise
    assert mode_coverage(samples, modes, radius=1.0) == 0.5
    assert mode_coverage(samples, modes, radius=1.0, min_fraction=0.19) == 0.75  # 5 ≥ 0.19 · 105 / 4 = 4.99
    assert mode_coverage(samples, modes, radius=1e-3) == 0.0  # nothing close enough
    # samples beyond the radius count for no mode, though they are nearest to one: 400 samples 2 from mode 2
    far = torch.cat([samples, torch.tensor([0.0, 8.0]).expand(400, 2)])
    assert mode_coverage(far, modes, radius=1.0) == 0.5  # threshold 0.2 · 505 / 4 = 25.25: modes 0 and 1
    assert mode_coverage(far, modes, radius=2.5) == 0.75  # now they reach mode 2


def test_mode_coverage_refuses_non_finite_samples():
    with pytest.raises(ValueError, match="samples"):
        mode_coverage(torch.tensor([[0.0, float("nan")]]), torch.zeros(1, 2), radius=1.0)


# ------------------------------------------------------------------------------------------------ evaluate
def test_evaluate_combines_the_metrics():
    modes = torch.tensor([[-10.0, 0.0], [10.0, 0.0]], dtype=DOUBLE)
    target = Target([0.0, 0.0], 1.0, modes=modes)
    model = IsotropicGaussian([0.0, 0.0], 1.0)
    x = target.sample(1000, seed=5)
    metrics = evaluate(model, target, x, num_samples=500)
    assert set(metrics) == {"nll", "nll_per_dim", "kl", "mode_coverage"}
    assert metrics["nll"] == pytest.approx(negative_log_likelihood(model, x), rel=1e-14)
    assert metrics["nll_per_dim"] == pytest.approx(metrics["nll"] / 2, rel=1e-14)
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-12)  # the model is the target
    # samples near 0 are 10 from both modes, beyond the default radius (spacing 20) / 3
    assert metrics["mode_coverage"] == 0.0
    # with a radius that reaches them, both modes get half the samples
    assert evaluate(model, target, x, num_samples=500, radius=15.0)["mode_coverage"] == 1.0


def test_evaluate_without_an_exact_density_or_modes_gives_nan():
    class Samples:
        pass

    model = IsotropicGaussian([0.0], 2.0)
    x = torch.zeros(4, 1, dtype=DOUBLE)
    metrics = evaluate(model, Samples(), x)
    assert metrics["nll"] == pytest.approx(math.log(2.0) + 0.5 * LOG_2PI, rel=1e-14)
    assert math.isnan(metrics["kl"]) and math.isnan(metrics["mode_coverage"])


# ------------------------------------------------------------------------------------------------ grid KL
def diagonal_gaussian(loc, scale):
    distribution = torch.distributions.Independent(
        torch.distributions.Normal(torch.tensor(loc, dtype=DOUBLE), torch.tensor(scale, dtype=DOUBLE)), 1
    )
    return distribution.log_prob


def test_grid_kl_matches_the_closed_form_of_two_gaussians():
    # KL(N(μ_p, S_p) ‖ N(μ_q, S_q)) for diagonal S: ½ Σ_d [s_p²/s_q² + (μ_q - μ_p)²/s_q² - 1 + 2 log(s_q/s_p)];
    # both well inside [-3, 3]² (≥ 5.4 std to every edge), so the grid's truncation moves KL by < 1e-7
    loc_p, scale_p, loc_q, scale_q = (0.2, -0.1), (0.4, 0.5), (-0.3, 0.3), (0.5, 0.45)
    expected = 0.5 * sum(
        sp**2 / sq**2 + (mq - mp) ** 2 / sq**2 - 1 + 2 * math.log(sq / sp)
        for mp, sp, mq, sq in zip(loc_p, scale_p, loc_q, scale_q)
    )
    kl = grid_kl(diagonal_gaussian(loc_p, scale_p), diagonal_gaussian(loc_q, scale_q))
    assert kl == pytest.approx(expected, abs=1e-6)
    # the other direction is another number: the function is KL(p‖q), not a symmetrised divergence
    reverse = grid_kl(diagonal_gaussian(loc_q, scale_q), diagonal_gaussian(loc_p, scale_p))
    assert abs(reverse - kl) > 0.1


def test_grid_kl_normalises_both_densities_on_the_grid():
    log_p, log_q = diagonal_gaussian((0.0, 0.0), (0.5, 0.5)), diagonal_gaussian((0.5, 0.0), (0.45, 0.45))
    kl = grid_kl(log_p, log_q)
    assert grid_kl(lambda x: log_p(x) + 3.0, lambda x: log_q(x) - 7.0) == pytest.approx(kl, abs=1e-12)
    assert grid_kl(log_p, log_p) == pytest.approx(0, abs=1e-12)
    # another box and resolution that both resolve the Gaussians give the same number
    assert grid_kl(log_p, log_q, bounds=4.0, resolution=400) == pytest.approx(kl, abs=1e-6)


def test_grid_kl_is_infinite_where_q_vanishes_under_p_and_checks_its_inputs():
    log_p = diagonal_gaussian((0.0, 0.0), (0.5, 0.5))
    half_plane = lambda x: torch.where(x[:, 0] > 0, 0.0, -math.inf).to(DOUBLE)  # noqa: E731
    assert grid_kl(log_p, half_plane) == math.inf
    assert math.isfinite(grid_kl(half_plane, log_p))  # p = 0 on half the grid: those terms count 0
    with pytest.raises(ValueError, match="one log-density per grid point"):
        grid_kl(log_p, lambda x: torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        grid_kl(log_p, lambda x: torch.full((x.shape[0],), math.nan))
    with pytest.raises(ValueError, match="bounds must be positive"):
        grid_kl(log_p, log_p, bounds=0.0)
    with pytest.raises(ValueError, match="resolution must be a positive integer"):
        grid_kl(log_p, log_p, resolution=0)

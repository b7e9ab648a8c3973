"""Tests of `mog_flows.maxent_problems` against independent float64 references (scipy quadrature and closed forms)."""

import math

import numpy as np
import pytest
import torch

from mog_flows.studies.maxent_problems import (
    bimodal_problem,
    dirichlet_problem,
    kl_from_samples,
    mmd_test,
    solve_bimodal,
)

stats = pytest.importorskip("scipy.stats")
integrate = pytest.importorskip("scipy.integrate")
special = pytest.importorskip("scipy.special")
DOUBLE = torch.float64


# ------------------------------------------------------------------------------------------ Dirichlet
def test_dirichlet_problem_matches_scipy():
    alpha = np.array([1.0, 2.0, 3.0])
    problem = dirichlet_problem(alpha)
    assert problem.entropy == pytest.approx(stats.dirichlet(alpha).entropy(), abs=1e-12)
    assert problem.entropy == pytest.approx(-1.2443, abs=5e-5)  # the MEFN paper's value
    expected = special.digamma(alpha) - special.digamma(alpha.sum())
    np.testing.assert_allclose(problem.target.numpy(), expected, atol=1e-12)
    torch.manual_seed(0)
    y = problem.sample(5)
    assert y.shape == (5, 2) and bool((y > 0).all() and (y.sum(-1) < 1).all())
    full = np.concatenate([y.numpy(), 1 - y.sum(-1, keepdim=True).numpy()], -1)
    reference = [stats.dirichlet(alpha).logpdf(point) for point in full]
    np.testing.assert_allclose(problem.log_prob(y).numpy(), reference, atol=1e-10)
    # the statistic's sample mean matches the target (E[log y_k] = ψ(α_k) - ψ(α₀))
    torch.manual_seed(1)
    values = problem.statistic(problem.sample(200_000))
    np.testing.assert_allclose(values.mean(0).numpy(), expected, atol=0.01)


@pytest.mark.parametrize(("alpha", "match"), [([1.0], "shape"), ([1.0, -2.0], "positive"), ([1.0, math.nan], "finite")])
def test_bad_dirichlet_parameters_are_refused(alpha, match):
    with pytest.raises(ValueError, match=match):
        dirichlet_problem(alpha)


# ------------------------------------------------------------------------------------------ bimodal
@pytest.mark.parametrize(("second", "fourth"), [(2.0, 4.6), (1.0, 2.99), (1.8, 3.6)])
def test_bimodal_solution_meets_its_moments_by_scipy_quadrature(second, fourth):
    theta, log_normaliser, entropy = solve_bimodal(second, fourth)
    a, b = theta.tolist()

    def density(x):
        return math.exp(a * x * x - b * x**4 - log_normaliser)

    assert integrate.quad(density, -np.inf, np.inf)[0] == pytest.approx(1.0, abs=1e-9)
    assert integrate.quad(lambda x: x * x * density(x), -np.inf, np.inf)[0] == pytest.approx(second, abs=1e-8)
    assert integrate.quad(lambda x: x**4 * density(x), -np.inf, np.inf)[0] == pytest.approx(fourth, abs=1e-8)
    reference = integrate.quad(lambda x: -density(x) * math.log(density(x)) if density(x) > 0 else 0.0, -20, 20)[0]
    assert entropy == pytest.approx(reference, abs=1e-8)
    if fourth == 2.99:  # nearly the moments of N(0, 1) (θ = (-1/2, 0), H = ½ log(2πe)), a boundary point
        assert a == pytest.approx(-0.5, abs=0.02) and 0 < b < 0.01
        assert entropy == pytest.approx(0.5 * math.log(2 * math.pi * math.e), abs=1e-3)


def test_the_default_bimodal_problem_is_bimodal_and_a_product_in_2d():
    one, two = bimodal_problem(1), bimodal_problem(2)
    a, b = one.parameters.tolist()
    assert a > 0 and b > 0  # modes at ±√(a / 2b), a dip at 0
    mode = math.sqrt(a / (2 * b))
    grid = torch.tensor([[0.0], [mode]], dtype=DOUBLE)
    assert (one.log_prob(grid)[1] - one.log_prob(grid)[0]).item() > 3  # at least e³ between mode and dip
    assert two.entropy == pytest.approx(2 * one.entropy)
    x = torch.tensor([[0.3, -1.2], [1.5, 0.1]], dtype=DOUBLE)
    torch.testing.assert_close(two.log_prob(x), one.log_prob(x[:, :1]) + one.log_prob(x[:, 1:]))
    torch.testing.assert_close(two.target, torch.tensor([2.0, 2.0, 4.6, 4.6], dtype=DOUBLE))
    assert two.statistic(x).shape == (2, 4)
    torch.manual_seed(0)
    samples = two.sample(200_000)
    np.testing.assert_allclose(two.statistic(samples).mean(0).numpy(), two.target.numpy(), rtol=0.02)


@pytest.mark.parametrize(("second", "fourth"), [(2.0, 3.9), (-1.0, 2.0), (math.inf, 2.0)])
def test_impossible_moments_are_refused(second, fourth):
    with pytest.raises(ValueError, match="moments must satisfy"):
        solve_bimodal(second, fourth)


# ------------------------------------------------------------------------------------------ KL and MMD
def test_kl_from_samples_matches_the_gaussian_closed_form():
    torch.manual_seed(0)
    q, p = torch.distributions.Normal(0.3, 1.2), torch.distributions.Normal(0.0, 1.0)
    x = q.sample((200_000,)).to(DOUBLE)
    kl, std_error = kl_from_samples(q.log_prob(x), p.log_prob(x))
    exact = math.log(1 / 1.2) + (1.2**2 + 0.3**2) / 2 - 0.5
    assert abs(kl - exact) < 4 * std_error and std_error < 0.01
    with pytest.raises(ValueError, match="same shape"):
        kl_from_samples(torch.zeros(3), torch.zeros(4))


def test_mmd_statistic_matches_a_direct_computation_and_the_test_has_power():
    generator = np.random.default_rng(0)
    x, y = generator.normal(size=(30, 2)), generator.normal(size=(25, 2)) + 0.2
    h = 0.9

    def k(a, b):
        return math.exp(-np.sum((a - b) ** 2) / (2 * h * h))

    kxx = sum(k(x[i], x[j]) for i in range(30) for j in range(30) if i != j) / (30 * 29)
    kyy = sum(k(y[i], y[j]) for i in range(25) for j in range(25) if i != j) / (25 * 24)
    kxy = sum(k(a, b) for a in x for b in y) / (30 * 25)
    result = mmd_test(torch.tensor(x), torch.tensor(y), bandwidth=h, num_permutations=10)
    assert result.mmd2 == pytest.approx(kxx + kyy - 2 * kxy, abs=1e-12)
    torch.manual_seed(0)
    same = mmd_test(torch.randn(300, 2), torch.randn(300, 2), num_permutations=200)
    shifted = mmd_test(torch.randn(300, 2), torch.randn(300, 2) + 0.5, num_permutations=200)
    assert same.p_value > 0.05 and shifted.p_value < 0.01
    with pytest.raises(ValueError, match="shapes"):
        mmd_test(torch.zeros(5, 2), torch.zeros(5, 3))

"""Relaxed sampling: the Concrete density, the nested-minibatch estimator, pathwise gradients."""

import math

import pytest
import torch

from mog_flows import MixtureOfGaussians, relaxed
from mog_flows.components import GaussianComponents, unpack_precision_factor
from mog_flows.relaxed import concrete_log_prob, gumbel_softmax

DOUBLE = torch.float64


def test_concrete_density_matches_torch():
    torch.manual_seed(0)
    log_weights = torch.log_softmax(torch.randn(5, dtype=DOUBLE), -1)
    for tau in (0.1, 0.5, 2.0):
        c, log_c = gumbel_softmax(log_weights, tau, 100)
        reference = torch.distributions.RelaxedOneHotCategorical(torch.tensor(tau, dtype=DOUBLE), logits=log_weights)
        torch.testing.assert_close(
            concrete_log_prob(log_c, log_weights, tau), reference.log_prob(c), rtol=1e-9, atol=1e-9
        )


@pytest.mark.parametrize("tau", [0.3, 1.0, 2.5])
def test_concrete_density_integrates_to_one_for_two_components(tau):
    log_weights = torch.log(torch.tensor([0.3, 0.7], dtype=DOUBLE))
    # substitute c_1 = sigmoid(t) to resolve the endpoint singularities: dc_1 = c_1 (1 - c_1) dt
    t = torch.linspace(-60, 60, 200_001, dtype=DOUBLE)
    log_c = torch.stack([torch.nn.functional.logsigmoid(t), torch.nn.functional.logsigmoid(-t)], -1)
    integrand = (concrete_log_prob(log_c, log_weights, tau) + log_c.sum(-1)).exp()
    assert abs(torch.trapezoid(integrand, t).item() - 1) < 1e-6


@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_concrete_density_integrates_to_one_for_three_components(tau):
    log_weights = torch.log(torch.tensor([0.2, 0.3, 0.5], dtype=DOUBLE))
    # the simplex in softmax coordinates c = softmax(s_1, s_2, 0);
    # the Jacobian of (s_1, s_2) -> (c_1, c_2) is c_1 c_2 c_3
    s = torch.linspace(-40, 40, 1601, dtype=DOUBLE)
    s1, s2 = torch.meshgrid(s, s, indexing="ij")
    log_c = torch.log_softmax(torch.stack([s1, s2, torch.zeros_like(s1)], -1), -1)
    integrand = (concrete_log_prob(log_c, log_weights, tau) + log_c.sum(-1)).exp()
    total = torch.trapezoid(torch.trapezoid(integrand, s, dim=-1), s).item()
    assert abs(total - 1) < 1e-4


def test_gumbel_argmax_frequencies_equal_the_weights_at_any_temperature():
    torch.manual_seed(1)
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=DOUBLE)
    n = 100_000
    for tau in (0.1, 1.0, 5.0):
        c, _ = gumbel_softmax(weights.log(), tau, n)
        freq = torch.bincount(c.argmax(-1), minlength=4).double() / n
        assert ((freq - weights).abs() < 5 * (weights * (1 - weights) / n).sqrt()).all()


def relaxed_density_reference(base, z, num_inner=2**18):
    with torch.no_grad():
        return base.nested_log_prob(z, num_inner=num_inner)


def mixture_for_bias_study():
    """K = 8 components in D = 2 (eight Gaussians on a circle), τ = 0.1: the setting of the bias target."""
    angles = torch.arange(8, dtype=DOUBLE) * 2 * math.pi / 8
    means = 2 * torch.stack([angles.cos(), angles.sin()], -1)
    return MixtureOfGaussians.from_parameters(
        torch.full((8,), 1 / 8, dtype=DOUBLE), means, torch.full((8, 2), 0.25, dtype=DOUBLE), temperature=0.1
    )


def nested_bias(base, z, reference, num_inner, repeats):
    with torch.no_grad():
        estimates = torch.stack([base.nested_log_prob(z, num_inner=num_inner) for _ in range(repeats)])
    return (estimates - reference).mean().item()


def test_nested_estimator_bias_is_small_at_1024_and_shrinks_with_m():
    torch.manual_seed(2)
    base = mixture_for_bias_study()
    z, _ = base.rsample(64)
    z = z.detach()
    reference = relaxed_density_reference(base, z)
    # repeats keep the Monte-Carlo error of each bias well below its size (≈ 0.001 nats at M = 1024)
    biases = {m: nested_bias(base, z, reference, m, repeats=r) for m, r in ((16, 100), (128, 100), (1024, 300))}
    assert abs(biases[1024]) <= 0.01, biases
    assert abs(biases[16]) > abs(biases[128]) > abs(biases[1024]), biases
    assert biases[16] < 0  # log of an unbiased mean underestimates (Jensen)


def test_nested_estimator_converges_to_the_exact_density_as_tau_goes_to_zero():
    torch.manual_seed(3)
    base = mixture_for_bias_study()
    z = base.sample(32).detach()
    # with one-hot c_j the estimate is a Monte-Carlo mean over components: relative error sqrt(7 / M) ≈ 0.01
    estimate = base.nested_log_prob(z, num_inner=2**16, temperature=1e-3)
    torch.testing.assert_close(estimate, base.log_prob(z), rtol=0, atol=0.05)


def test_nested_estimator_chunks_and_checkpointing_do_not_change_values_or_gradients(monkeypatch):
    base = MixtureOfGaussians(2, 4, covariance="full").double()
    z = torch.randn(10, 2, dtype=DOUBLE, requires_grad=True)

    def run():
        torch.manual_seed(4)
        value = base.nested_log_prob(z, num_inner=300)
        grads = torch.autograd.grad(value.sum(), [z, *base.parameters()])
        return value.detach(), grads

    whole, whole_grads = run()
    monkeypatch.setattr(relaxed, "_NESTED_CHUNK_PAIRS", 10 * 7)  # chunks of 7 inner samples
    chunked, chunked_grads = run()
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    for a, b in zip(chunked_grads, whole_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_nested_estimator_gradients_match_finite_differences(covariance, monkeypatch):
    monkeypatch.setattr(relaxed, "_NESTED_CHUNK_PAIRS", 6 * 5)  # several checkpointed chunks
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, dtype=DOUBLE, generator=g, requires_grad=True)
    loc = torch.randn(3, 2, dtype=DOUBLE, generator=g, requires_grad=True)
    scale = (0.3 * torch.randn(3, 2 if covariance == "diagonal" else 3, dtype=DOUBLE, generator=g)).requires_grad_()
    z = torch.randn(6, 2, dtype=DOUBLE, generator=g, requires_grad=True)

    def function(z, logits, loc, scale):
        if covariance == "diagonal":
            components = GaussianComponents(loc, log_scale=scale)
        else:
            components = GaussianComponents(loc, factor=unpack_precision_factor(scale, 2))
        torch.manual_seed(5)  # the same inner samples on every evaluation
        return relaxed.nested_log_prob(z, torch.log_softmax(logits, -1), components, num_inner=17, temperature=0.5)

    assert torch.autograd.gradcheck(function, (z, logits, loc, scale))


def closed_form_expectations(logits, loc, log_scale, frequency):
    """E[Σ_d z_d² + 3 cos(wᵀz)] of a diagonal mixture in closed form, differentiable in the parameters:
    E[z_d²] = Σ_k α_k (μ_kd² + σ_kd²),  E[cos(wᵀz)] = Σ_k α_k cos(wᵀμ_k) exp(-½ Σ_d w_d² σ_kd²)."""
    weights = torch.softmax(logits, -1)
    scale = log_scale.exp()
    second = (weights[:, None] * (loc.square() + scale.square())).sum()
    cosine = (
        weights * torch.cos(loc @ frequency) * torch.exp(-0.5 * (frequency.square() * scale.square()).sum(-1))
    ).sum()
    return second + 3 * cosine


def test_pathwise_gradients_match_the_closed_form():
    torch.manual_seed(6)
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=DOUBLE)
    means = torch.tensor([[-2.0, 0.5], [1.0, 1.5], [0.5, -2.0]], dtype=DOUBLE)
    variances = torch.tensor([[0.5, 0.3], [0.2, 0.8], [1.0, 0.4]], dtype=DOUBLE)
    base = MixtureOfGaussians.from_parameters(weights, means, variances, estimator="pathwise")
    frequency = torch.tensor([0.7, -1.1], dtype=DOUBLE)
    parameters = [base.logits, base.loc, base.log_scale]
    expected = torch.autograd.grad(closed_form_expectations(*parameters, frequency), parameters)

    batches = []
    for _ in range(40):
        z, _ = base.sample_and_log_prob(10_000)
        value = (z.square().sum(-1) + 3 * torch.cos(z @ frequency)).mean()
        batches.append(torch.cat([g.flatten() for g in torch.autograd.grad(value, parameters)]))
    batches = torch.stack(batches)
    estimate, standard_error = batches.mean(0), batches.std(0) / math.sqrt(len(batches))
    reference = torch.cat([g.flatten() for g in expected])
    z_scores = (estimate - reference) / standard_error
    assert (z_scores.abs() < 5).all(), z_scores
    # and the weights' gradient is substantial, not zero within noise: the estimator is informative
    assert (reference[:3].abs() / standard_error[:3] > 5).any()


def test_pathwise_sample_keeps_the_exact_values():
    torch.manual_seed(7)
    base = MixtureOfGaussians(3, 4).double()
    z = base.sample(100)
    surrogate = relaxed.pathwise_sample(z, torch.log_softmax(base.logits, -1), base.loc, base.log_scale)
    torch.testing.assert_close(surrogate, z.detach(), rtol=0, atol=1e-12)

"""MixtureOfGaussians: exact densities against scipy, sampling against parameters, gradients, errors."""

import math

import numpy as np
import pytest
import torch
from nflows.flows import Flow
from nflows.transforms import ReversePermutation
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from mog_flows import MixtureOfGaussians
from mog_flows.checks import temperature_limits
from mog_flows.mixture import ESTIMATORS

COVARIANCES = ("diagonal", "full")


def random_parameters(num_components, features, covariance, seed=0, spread=2.0):
    """Random weights (K,), means (K, D) and covariances (K, D) or (K, D, D) in float64."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(num_components, generator=g, dtype=torch.float64) + 0.2
    weights /= weights.sum()
    means = spread * torch.randn(num_components, features, generator=g, dtype=torch.float64)
    if covariance == "diagonal":
        covariances = 0.2 + torch.rand(num_components, features, generator=g, dtype=torch.float64)
    else:
        a = torch.randn(num_components, features, features, generator=g, dtype=torch.float64)
        covariances = a @ a.mT / features + 0.3 * torch.eye(features, dtype=torch.float64)
    return weights, means, covariances


def scipy_log_prob(x, weights, means, covariances):
    x, weights, means, covariances = (t.numpy() for t in (x, weights, means, covariances))
    per_component = [
        multivariate_normal(mean=m, cov=np.diag(c) if c.ndim == 1 else c).logpdf(x).reshape(len(x))
        for m, c in zip(means, covariances)
    ]
    return logsumexp(np.log(weights)[:, None] + np.stack(per_component), axis=0)


@pytest.mark.parametrize("covariance", COVARIANCES)
@pytest.mark.parametrize("num_components", [1, 3, 8])
@pytest.mark.parametrize("features", [1, 2, 5])
def test_log_prob_matches_scipy(covariance, num_components, features):
    params = random_parameters(num_components, features, covariance, seed=num_components * 10 + features)
    base = MixtureOfGaussians.from_parameters(*params, covariance=covariance)
    g = torch.Generator().manual_seed(1)
    # points near the components and far out in the tails
    x = torch.cat([base.sample(200).detach(), 6 * torch.randn(50, features, generator=g, dtype=torch.float64)])
    expected = scipy_log_prob(x, *params)
    actual = base.log_prob(x).detach().numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_mixture_parameters_round_trip(covariance):
    params = random_parameters(4, 3, covariance)
    base = MixtureOfGaussians.from_parameters(*params, covariance=covariance)
    out = base.mixture_parameters()
    for name, value in zip(("weights", "means", "covariances"), params):
        torch.testing.assert_close(out[name].detach(), value, rtol=1e-10, atol=1e-12)
    ordered = base.mixture_parameters(by_weight=True)
    assert torch.all(ordered["weights"][:-1] >= ordered["weights"][1:])
    order = torch.argsort(params[0], descending=True)
    torch.testing.assert_close(ordered["means"].detach(), params[1][order])
    torch.testing.assert_close(ordered["covariances"].detach(), params[2][order], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_density_integrates_to_one_on_grid(covariance):
    params = random_parameters(3, 2, covariance, seed=3, spread=1.5)
    base = MixtureOfGaussians.from_parameters(*params, covariance=covariance)
    axis = torch.linspace(-12, 12, 601, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    cell = (axis[1] - axis[0]) ** 2
    total = base.log_prob(grid).exp().sum() * cell
    assert abs(total.item() - 1) < 1e-6


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_log_prob_finite_and_accurate_for_large_inputs_in_float32(covariance):
    params = random_parameters(3, 2, covariance, seed=5)
    base64 = MixtureOfGaussians.from_parameters(*params, covariance=covariance)
    base32 = MixtureOfGaussians.from_parameters(*(p.float() for p in params), covariance=covariance)
    x = torch.tensor([[1e4, -1e4], [1e4, 1e4], [-3e3, 2.5e3], [0.5, -0.2]], dtype=torch.float64)
    lp32 = base32.log_prob(x.float())
    assert torch.isfinite(lp32).all()
    torch.testing.assert_close(lp32.double(), base64.log_prob(x), rtol=1e-5, atol=1e-5)


def test_float32_far_from_centre_is_as_accurate_as_the_direct_formula():
    """Components far from their common centre relative to their scales: the expanded quadratic form would cancel."""
    means = torch.tensor([[300.0, -300.0], [-300.0, 300.0], [300.0, 300.0]], dtype=torch.float64)
    variances = torch.full((3, 2), 0.01, dtype=torch.float64)
    weights = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    base64 = MixtureOfGaussians.from_parameters(weights, means, variances)
    base32 = MixtureOfGaussians.from_parameters(weights.float(), means.float(), variances.float())
    x = base64.sample(2000).detach()
    error = (base32.log_prob(x.float()).double() - base64.log_prob(x)).abs().max().item()
    assert error < 1e-3, f"float32 error {error:.2e}"


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_sample_moments_and_component_frequencies(covariance):
    torch.manual_seed(0)
    weights, means, covariances = random_parameters(3, 2, covariance, seed=7, spread=6.0)
    base = MixtureOfGaussians.from_parameters(weights, means, covariances, covariance=covariance)
    n = 200_000
    x = base.sample(n).detach()
    full_cov = torch.diag_embed(covariances) if covariance == "diagonal" else covariances
    mean = weights @ means
    second = (weights[:, None, None] * (full_cov + means[:, :, None] * means[:, None, :])).sum(0)
    cov = second - mean[:, None] * mean[None, :]
    se = (cov.diagonal() / n).sqrt()
    assert ((x.mean(0) - mean).abs() < 5 * se).all()
    torch.testing.assert_close(torch.cov(x.T), cov, rtol=0.02, atol=0.02)
    # the components are well separated: the most responsible component identifies the one sampled from
    responsibility = torch.log(weights) + torch.stack(
        [torch.distributions.MultivariateNormal(m, c).log_prob(x) for m, c in zip(means, full_cov)], dim=-1
    )
    freq = torch.bincount(responsibility.argmax(-1), minlength=3).double() / n
    assert ((freq - weights).abs() < 5 * (weights * (1 - weights) / n).sqrt() + 1e-3).all()


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_relaxed_samples_at_low_temperature_match_the_mixture(covariance):
    torch.manual_seed(1)
    weights, means, covariances = random_parameters(3, 2, covariance, seed=9, spread=6.0)
    base = MixtureOfGaussians.from_parameters(weights, means, covariances, covariance=covariance)
    n = 100_000
    z, c = base.rsample(n, temperature=0.01)
    z, c = z.detach(), c.detach()
    assert c.shape == (n, 3) and torch.allclose(c.sum(-1), torch.ones(n, dtype=torch.float64))
    # nearly one-hot: max c < 0.99 needs two perturbed logits within τ·log 99 ≈ 0.046 of each other (~3 % here)
    assert (c.max(-1).values > 0.99).float().mean() > 0.95
    freq = torch.bincount(c.argmax(-1), minlength=3).double() / n
    assert ((freq - weights).abs() < 5 * (weights * (1 - weights) / n).sqrt()).all()
    x = base.sample(n).detach()
    torch.testing.assert_close(z.mean(0), x.mean(0), rtol=0, atol=0.05)
    torch.testing.assert_close(torch.cov(z.T), torch.cov(x.T), rtol=0.03, atol=0.05)
    # the samples of each (nearly) chosen component are centred on its mean
    k = c.argmax(-1)
    for j in range(3):
        torch.testing.assert_close(z[k == j].mean(0), means[j], rtol=0, atol=0.05)


@pytest.mark.parametrize("covariance", COVARIANCES)
@pytest.mark.parametrize("conditional", [False, True])
def test_every_parameter_gets_a_gradient_through_rsample(covariance, conditional):
    torch.manual_seed(2)
    base = MixtureOfGaussians(2, 4, covariance=covariance, context_features=3 if conditional else None)
    context = torch.randn(5, 3) if conditional else None
    z, c = base.rsample(64, context=context)
    (z.sin().sum() + (c * torch.arange(4.0)).sum()).backward()
    for name, p in base.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("covariance", COVARIANCES)
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("conditional", [False, True])
def test_sample_and_log_prob_modes(covariance, estimator, conditional):
    if estimator == "pathwise" and covariance == "full":
        pytest.skip("pathwise is diagonal-only (refusal checked in test_bad_construction)")
    torch.manual_seed(3)
    base = MixtureOfGaussians(
        2, 3, covariance=covariance, estimator=estimator, num_inner=256, context_features=4 if conditional else None
    ).double()
    context = torch.randn(5, 4, dtype=torch.float64) if conditional else None
    z, log_p = base.sample_and_log_prob(7, context=context)
    lead = (5, 7) if conditional else (7,)
    assert z.shape == (*lead, 2) and log_p.shape == lead
    assert torch.isfinite(log_p).all()
    flat_z = z.reshape(-1, 2)
    flat_context = None if context is None else context.repeat_interleave(7, dim=0)
    exact = base.log_prob(flat_z, context=flat_context).reshape(lead)
    if estimator in ("exact", "pathwise", "gumbel-exact"):
        torch.testing.assert_close(log_p, exact)
    if estimator in ("gumbel-nested", "gumbel-exact", "gumbel-joint", "pathwise"):
        grads = torch.autograd.grad(log_p.sum() + z.sum(), list(base.parameters()), allow_unused=True)
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_gumbel_joint_is_component_density_plus_concrete_density():
    torch.manual_seed(4)
    weights, means, variances = random_parameters(3, 2, "diagonal", seed=4)
    base = MixtureOfGaussians.from_parameters(weights, means, variances, estimator="gumbel-joint", temperature=0.7)
    state = torch.get_rng_state()
    z, log_p = base.sample_and_log_prob(50)
    torch.set_rng_state(state)
    z2, c = base.rsample(50)
    torch.testing.assert_close(z, z2)
    loc, scale = c @ means, c @ variances.sqrt()
    expected = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    expected = expected + torch.distributions.RelaxedOneHotCategorical(
        torch.tensor(0.7, dtype=torch.float64), probs=weights
    ).log_prob(c)
    torch.testing.assert_close(log_p, expected, rtol=1e-8, atol=1e-8)


def test_exact_estimator_gives_no_gradient_to_the_weights():
    torch.manual_seed(5)
    base = MixtureOfGaussians(2, 3, estimator="exact")
    z, _ = base.sample_and_log_prob(100)
    z.sum().backward()
    assert base.logits.grad is None or torch.all(base.logits.grad == 0)
    assert base.loc.grad.abs().sum() > 0


@pytest.mark.parametrize("estimator", ["exact", "gumbel-nested", "pathwise"])
def test_nflows_flow_uses_the_estimator(estimator):
    torch.manual_seed(6)
    base = MixtureOfGaussians(2, 3, estimator=estimator, num_inner=128)
    flow = Flow(ReversePermutation(2), base)
    x, log_p = flow.sample_and_log_prob(32)
    assert x.shape == (32, 2) and log_p.shape == (32,)
    if estimator != "gumbel-nested":
        torch.testing.assert_close(log_p, flow.log_prob(x))


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_initialize_from_data_finds_the_modes(covariance):
    torch.manual_seed(7)
    centres = torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    data = centres[torch.randint(3, (3000,))] + 0.3 * torch.randn(3000, 2, dtype=torch.float64)
    base = MixtureOfGaussians(2, 3, covariance=covariance).double()
    base.initialize_from_data(data, seed=0)
    means = base.mixture_parameters()["means"].detach()
    distance = torch.cdist(centres, means).min(-1).values
    assert (distance < 0.1).all(), distance
    torch.testing.assert_close(
        base.mixture_parameters()["weights"].detach(), torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.03, rtol=0
    )


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_initialize_from_data_scale_factor_widens_every_component(covariance):
    torch.manual_seed(7)
    data = torch.randn(2000, 2, dtype=torch.float64) * torch.tensor([1.0, 3.0], dtype=torch.float64)
    exact, wide = (MixtureOfGaussians(2, 3, covariance=covariance).double() for _ in range(2))
    exact.initialize_from_data(data, seed=0)
    wide.initialize_from_data(data, seed=0, scale_factor=2.0)
    a, b = exact.mixture_parameters(), wide.mixture_parameters()
    torch.testing.assert_close(b["weights"], a["weights"])
    torch.testing.assert_close(b["means"], a["means"])
    torch.testing.assert_close(b["covariances"], 4.0 * a["covariances"])


@pytest.mark.parametrize("factor", [0.0, -1.0, float("nan"), float("inf"), "2"])
def test_initialize_from_data_refuses_a_bad_scale_factor(factor):
    base = MixtureOfGaussians(2, 3)
    before = {k: v.clone() for k, v in base.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(ValueError, match="scale_factor must be a finite number > 0"):
        base.initialize_from_data(torch.randn(100, 2), scale_factor=factor)
    assert all(torch.equal(base.state_dict()[k], v) for k, v in before.items())


def test_conditional_sample_shapes_and_initialisation():
    torch.manual_seed(8)
    base = MixtureOfGaussians(3, 4, context_features=2, covariance="full")
    context = torch.randn(6, 2)
    assert base.sample(5, context=context).shape == (6, 5, 3)
    z, c = base.rsample(5, context=context)
    assert z.shape == (6, 5, 3) and c.shape == (6, 5, 4)
    params = base.mixture_parameters(context)
    assert params["weights"].shape == (6, 4) and params["means"].shape == (6, 4, 3)
    assert params["covariances"].shape == (6, 4, 3, 3)
    base.initialize_from_data(torch.randn(500, 3) * 2 + 1, seed=0)
    assert torch.isfinite(base.log_prob(torch.randn(6, 3), context)).all()


def test_conditional_log_prob_matches_unconditional_per_row():
    torch.manual_seed(9)
    base = MixtureOfGaussians(2, 3, context_features=2).double()
    context = torch.randn(4, 2, dtype=torch.float64)
    x = torch.randn(4, 2, dtype=torch.float64)
    params = base.mixture_parameters(context)
    for i in range(4):
        single = MixtureOfGaussians.from_parameters(
            params["weights"][i].detach(), params["means"][i].detach(), params["covariances"][i].detach()
        )
        torch.testing.assert_close(base.log_prob(x[i : i + 1], context[i : i + 1]), single.log_prob(x[i : i + 1]))


def test_temperature_is_settable():
    base = MixtureOfGaussians(2, 3, temperature=1.0)
    base.temperature = 0.1
    assert base.temperature == 0.1


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(10)
    base = MixtureOfGaussians(2, 3, covariance="full")
    torch.save(base.state_dict(), tmp_path / "base.pt")
    other = MixtureOfGaussians(2, 3, covariance="full")
    other.load_state_dict(torch.load(tmp_path / "base.pt"))
    x = torch.randn(10, 2)
    assert torch.equal(base.log_prob(x), other.log_prob(x))


def test_state_dict_keeps_temperature_and_estimator(tmp_path):
    base = MixtureOfGaussians(2, 3, temperature=0.05, estimator="gumbel-joint", num_inner=64)
    torch.save(base.state_dict(), tmp_path / "base.pt")
    other = MixtureOfGaussians(2, 3)
    other.load_state_dict(torch.load(tmp_path / "base.pt", weights_only=True))
    assert (other.temperature, other.estimator, other.num_inner) == (0.05, "gumbel-joint", 64)


# ---------------------------------------------------------------------------- errors
def _base(**kwargs):
    return MixtureOfGaussians(2, 3, **kwargs)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: MixtureOfGaussians(2, 0), "num_components must be a positive integer"),
        (lambda: MixtureOfGaussians(0, 3), "features must be a positive integer"),
        (lambda: _base(covariance="spherical"), "covariance must be one of"),
        (lambda: _base(estimator="reinforce"), "estimator must be one of"),
        (lambda: _base(temperature=0.0), "temperature must be a finite number > 0"),
        (lambda: _base(temperature=-1.0), "temperature must be a finite number > 0"),
        (lambda: _base(covariance="full", estimator="pathwise"), "pathwise.*diagonal"),
    ],
)
def test_bad_construction(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda b: b.log_prob(torch.tensor([[0.0, float("nan")]])), "must be finite"),
        (lambda b: b.log_prob(torch.tensor([[0.0, float("inf")]])), "must be finite"),
        (lambda b: b.log_prob(torch.zeros(4, 3)), r"must have shape \(N, 2\)"),
        (lambda b: b.log_prob(torch.zeros(4)), r"must have shape \(N, 2\)"),
        (lambda b: b.log_prob(torch.zeros(4, 2, dtype=torch.float64)), "dtype"),
        (lambda b: b.log_prob(torch.zeros(4, 2), context=torch.zeros(4, 1)), "unconditional"),
        (lambda b: b.rsample(4, temperature=0), "temperature must be"),
        (lambda b: b.nested_log_prob(torch.zeros(4, 2), temperature=-0.5), "temperature must be"),
        (lambda b: b.nested_log_prob(torch.zeros(4, 2), num_inner=0), "num_inner must be"),
        (lambda b: setattr(b, "temperature", 0), "temperature must be"),
        (lambda b: setattr(b, "estimator", "score"), "estimator must be one of"),
    ],
)
def test_bad_input_unconditional(call, match):
    with pytest.raises(ValueError, match=match):
        call(_base())


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda b: b.log_prob(torch.zeros(4, 2)), "conditional: pass a context"),
        (lambda b: b.log_prob(torch.zeros(4, 2), context=torch.zeros(4, 5)), r"context must have shape \(N, 3\)"),
        (lambda b: b.log_prob(torch.zeros(4, 2), context=torch.zeros(3, 3)), "one row per input"),
        (lambda b: b.sample(4), "conditional: pass a context"),
        (
            lambda b: b.log_prob(torch.zeros(1, 2), context=torch.tensor([[0.0, float("nan"), 0.0]])),
            "context must be finite",
        ),
    ],
)
def test_bad_input_conditional(call, match):
    with pytest.raises(ValueError, match=match):
        call(_base(context_features=3))


def test_pathwise_with_full_covariance_is_refused_when_set_later():
    base = _base(covariance="full")
    with pytest.raises(ValueError, match="pathwise.*diagonal"):
        base.estimator = "pathwise"


@pytest.mark.parametrize(
    "weights, covariances, covariance, match",
    [
        ([-0.2, 0.6, 0.6], torch.ones(3, 2), "diagonal", "weights must be positive"),
        ([0.2, 0.2, 0.2], torch.ones(3, 2), "diagonal", "weights must sum to 1"),
        ([0.2, 0.3, 0.5], -torch.ones(3, 2), "diagonal", "variances.*positive"),
        ([0.2, 0.3, 0.5], torch.tensor([[[1.0, 2.0], [2.0, 1.0]]] * 3), "full", "symmetric positive definite"),
        ([0.2, 0.3, 0.5], torch.tensor([[[1.0, 0.5], [0.0, 1.0]]] * 3), "full", "symmetric positive definite"),
        ([0.2, 0.3, 0.5], torch.ones(3, 2), "full", r"full covariances must have shape \(3, 2, 2\)"),
        ([0.2, 0.3, 0.5], torch.ones(3, 3), "diagonal", r"variances of shape \(3, 2\)"),
        ([0.2, 0.3, float("nan")], torch.ones(3, 2), "diagonal", "weights must be finite"),
    ],
)
def test_bad_parameters(weights, covariances, covariance, match):
    with pytest.raises(ValueError, match=match):
        MixtureOfGaussians.from_parameters(torch.tensor(weights), torch.zeros(3, 2), covariances, covariance=covariance)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("covariance", COVARIANCES)
@pytest.mark.parametrize("estimator", ["exact", "gumbel-nested", "gumbel-joint"])
def test_cuda_matches_cpu(covariance, estimator):
    torch.manual_seed(11)
    base = MixtureOfGaussians(3, 4, covariance=covariance, estimator=estimator, num_inner=64).double()
    x = torch.randn(100, 3, dtype=torch.float64)
    expected = base.log_prob(x)
    gpu = base.to("cuda")
    torch.testing.assert_close(gpu.log_prob(x.cuda()).cpu(), expected)
    z, log_p = gpu.sample_and_log_prob(50)
    assert z.device.type == "cuda" and torch.isfinite(log_p).all()
    (log_p.sum() + z.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gpu.parameters())
    assert math.isfinite(gpu.nested_log_prob(x.cuda(), num_inner=32).sum().item())


# ---------------------------------------------------------------------------- hostile input (issue 13 §2)
GUMBEL = [name for name in ESTIMATORS if name.startswith("gumbel")]
HALF = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("estimator", ["exact", *GUMBEL])
@pytest.mark.parametrize("covariance", COVARIANCES)
def test_half_precision_sampling_and_parameters_work(covariance, estimator, dtype):
    torch.manual_seed(0)
    base32 = MixtureOfGaussians(3, 4, covariance=covariance, estimator=estimator, num_inner=32)
    base = MixtureOfGaussians(3, 4, covariance=covariance, estimator=estimator, num_inner=32)
    base.load_state_dict(base32.state_dict())
    base.to(dtype)
    params = base.mixture_parameters()
    reference = base32.to(torch.float32).mixture_parameters()
    for name in ("weights", "means", "covariances"):
        assert params[name].dtype == dtype
        torch.testing.assert_close(params[name].float(), reference[name], rtol=2e-2, atol=2e-2)
    for z in (base.sample(16), base.rsample(16)[0], *base.sample_and_log_prob(16)):
        assert z.dtype == dtype and torch.isfinite(z).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("estimator", GUMBEL)
@pytest.mark.parametrize("covariance", COVARIANCES)
def test_temperature_limits_of_the_dtype(covariance, estimator, dtype):
    """τ outside [√tiny, √max] of the dtype is refused, naming the limits; at the limits everything is finite."""
    low, high = temperature_limits(dtype)
    base = MixtureOfGaussians(3, 5, covariance=covariance, estimator=estimator, num_inner=32).to(dtype)
    with torch.no_grad():
        base.logits.copy_(5 * torch.randn(5))
    for bad in (low / 10, high * 10):
        with pytest.raises(ValueError, match=r"temperature must lie in \[.*\] for torch.float"):
            base.temperature = bad
        with pytest.raises(ValueError, match="temperature must lie in"):
            base.rsample(4, temperature=bad)
        with pytest.raises(ValueError, match="temperature must lie in"):
            base.nested_log_prob(torch.zeros(2, 3, dtype=dtype), temperature=bad)
    for tau in (low, high):
        base.temperature = tau
        z, log_p = base.sample_and_log_prob(64)
        relaxed, c = base.rsample(64)
        nested = base.nested_log_prob(relaxed.detach())
        assert all(torch.isfinite(t).all() for t in (z, log_p, relaxed, c, nested))


def test_a_temperature_the_new_dtype_cannot_hold_is_refused_at_use():
    base = MixtureOfGaussians(2, 3, temperature=1e-3, estimator="gumbel-nested").to(torch.float16)
    with pytest.raises(ValueError, match=r"temperature must lie in .* torch.float16"):
        base.sample_and_log_prob(4)
    with pytest.raises(ValueError, match=r"temperature must lie in .* torch.float16"):
        base.rsample(4)


@pytest.mark.parametrize("value", [True, False, "0.5", None, 1 + 1j, [0.5]], ids=repr)
def test_temperature_that_is_not_a_real_number_is_refused(value):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        MixtureOfGaussians(2, 3, temperature=value)


@pytest.mark.parametrize("count", [np.int64(3), np.int32(3), torch.tensor(3)], ids=["np.int64", "np.int32", "tensor"])
@pytest.mark.parametrize("covariance", COVARIANCES)
def test_integer_like_sample_counts_are_accepted(covariance, count):
    base = MixtureOfGaussians(2, 3, covariance=covariance)
    assert base.sample(count).shape == (3, 2)
    assert base.rsample(count)[0].shape == (3, 2)
    assert base.sample_and_log_prob(count)[1].shape == (3,)


@pytest.mark.parametrize("count", [0, -2, 2.5, True, "3", torch.tensor(2.0)], ids=repr)
def test_bad_sample_counts_are_refused(count):
    base = MixtureOfGaussians(2, 3)
    for call in (base.sample, base.rsample, base.sample_and_log_prob):
        with pytest.raises(ValueError, match="num_samples must be a positive integer"):
            call(count)


@pytest.mark.parametrize("name", ["weights", "means", "covariances"])
def test_complex_parameters_are_refused(name):
    values = {"weights": torch.tensor([0.5, 0.5]), "means": torch.zeros(2, 2), "covariances": torch.ones(2, 2)}
    values[name] = values[name].to(torch.complex64)
    with pytest.raises(ValueError, match=f"{name} must be real numbers"):
        MixtureOfGaussians.from_parameters(values["weights"], values["means"], values["covariances"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_full_covariance_symmetry_is_judged_relative_to_its_scale(scale, dtype):
    covariances = (scale * torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)).expand(2, 2, 2).clone()
    rounded = covariances.clone()
    rounded[0, 0, 1] *= 1 + 1e-7  # float32 rounding-level asymmetry
    base = MixtureOfGaussians.from_parameters(
        torch.tensor([0.5, 0.5]), torch.zeros(2, 2), rounded.to(dtype), covariance="full"
    )
    expected = 0.5 * (rounded + rounded.mT)
    torch.testing.assert_close(base.mixture_parameters()["covariances"].double(), expected, rtol=1e-5, atol=0)
    asymmetric = covariances.clone()
    asymmetric[0, 0, 1] *= 1 + 1e-3
    with pytest.raises(ValueError, match=r"components \[0\] are not symmetric"):
        MixtureOfGaussians.from_parameters(
            torch.tensor([0.5, 0.5]), torch.zeros(2, 2), asymmetric.to(dtype), covariance="full"
        )


def test_many_float32_weights_are_judged_with_a_tolerance_of_their_dtype():
    K = 20000
    weights = torch.softmax(torch.randn(K, generator=torch.Generator().manual_seed(0)), 0)
    weights[0] += 1.8e-6  # the float32 rounding of a sum of K weights can be off by this much
    base = MixtureOfGaussians.from_parameters(weights, torch.zeros(K, 1), torch.ones(K, 1))
    assert abs(base.mixture_parameters()["weights"].double().sum().item() - 1) < 1e-5
    with pytest.raises(ValueError, match="weights must sum to 1"):
        MixtureOfGaussians.from_parameters(weights.double() * 1.01, torch.zeros(K, 1), torch.ones(K, 1))


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_conditional_sample_in_batches(covariance):
    base = MixtureOfGaussians(2, 3, covariance=covariance, context_features=4)
    context = torch.randn(5, 4)
    for batch_size in (1, 3, 7, 10):
        assert base.sample(7, context=context, batch_size=batch_size).shape == (5, 7, 2)
    assert MixtureOfGaussians(2, 3).sample(7, batch_size=3).shape == (7, 2)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_mean_is_the_weighted_mean_of_the_components(covariance):
    weights, means, covariances = random_parameters(4, 3, covariance)
    base = MixtureOfGaussians.from_parameters(weights, means, covariances, covariance=covariance)
    torch.testing.assert_close(base.mean(), (weights.unsqueeze(-1) * means).sum(0).to(base.loc))
    conditional = MixtureOfGaussians(3, 4, covariance=covariance, context_features=2)
    context = torch.randn(6, 2)
    params = conditional.mixture_parameters(context)
    torch.testing.assert_close(conditional.mean(context), (params["weights"].unsqueeze(-1) * params["means"]).sum(-2))


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64, torch.float16], ids=str)
def test_context_of_another_dtype_is_refused(dtype):
    base = MixtureOfGaussians(2, 3, context_features=3)
    context = torch.zeros(4, 3, dtype=dtype)
    with pytest.raises(ValueError, match=r"context has dtype .* but the distribution's parameters are torch.float32"):
        base.log_prob(torch.zeros(4, 2), context=context)
    with pytest.raises(ValueError, match="context has dtype"):
        base.sample(2, context=context)

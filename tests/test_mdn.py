"""Mixture density networks: densities and losses against scipy, FrEIA and seed 000, bounds, sampling, fit, errors."""

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import mog_flows
from mog_flows.mdn import (
    JENSEN_FORMS,
    MixtureDensityNetwork,
    collinearity_penalty,
    jensen_bound,
    nll,
    residual_correlation_penalty,
)

COVARIANCES = ("full", "diagonal")
LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------------------------------------- references
def random_mixture(rows, num_components, features, covariance="full", seed=0, spread=2.0, scale=1.0):
    """Random y (N, D), weights (N, K), means (N, K, D), upper factors (N, K, D, D) in float64."""
    g = torch.Generator().manual_seed(seed)
    kw = {"generator": g, "dtype": torch.float64}
    weights = torch.softmax(torch.randn(rows, num_components, **kw), dim=-1)
    means = spread * torch.randn(rows, num_components, features, **kw)
    diagonal = torch.exp(0.3 * torch.randn(rows, num_components, features, **kw)) / scale
    factor = torch.diag_embed(diagonal)
    if covariance == "full":
        factor = factor + 0.5 * torch.randn(rows, num_components, features, features, **kw).triu(1) / scale
    y = spread * torch.randn(rows, features, **kw)
    return y, weights, means, factor


def scipy_component_log_prob(y, means, factor):
    """log N(y_n; μ_nk, (U_nkᵀU_nk)⁻¹) (N, K) by scipy, covariances from an explicit numpy inverse."""
    y, means, factor = (t.detach().double().numpy() for t in (y, means, factor))
    out = np.empty(means.shape[:2])
    for n in range(means.shape[0]):
        for k in range(means.shape[1]):
            covariance = np.linalg.inv(factor[n, k].T @ factor[n, k])
            out[n, k] = multivariate_normal(mean=means[n, k], cov=covariance).logpdf(y[n])
    return out


def scipy_log_prob(y, weights, means, factor):
    log_w = np.log(weights.detach().double().numpy())
    return logsumexp(log_w + scipy_component_log_prob(y, means, factor), axis=-1)


def seed_000_loss(Y, pi, mu, sigma, labels, lam=0.1):
    """Seed 000's `mdn_collinearity_loss`, as the seed has it (numpy, covariance matrices sigma (N, K, D, D))."""
    n = Y.shape[0]
    n_components = pi.shape[-1]
    nll = 0.0
    for i in range(n):
        prob = 0.0
        for k in range(n_components):
            diff = Y[i] - mu[i, k]
            d = len(diff)
            det_s = np.linalg.det(sigma[i, k])
            inv_s = np.linalg.inv(sigma[i, k])
            exponent = -0.5 * diff @ inv_s @ diff
            gauss = np.exp(exponent) / (np.sqrt((2 * np.pi) ** d * det_s) + 1e-300)
            prob += pi[i, k] * gauss
        nll -= np.log(prob + 1e-300)
    nll /= n
    label_corr = np.corrcoef(labels.T)
    mask = ~np.eye(label_corr.shape[0], dtype=bool)
    collinearity_penalty = lam * np.sum(label_corr[mask] ** 2)
    return nll + collinearity_penalty


def seed_000_penalty(labels, lam=0.1):
    """The penalty part of seed 000's function, line for line."""
    label_corr = np.corrcoef(labels.T)
    mask = ~np.eye(label_corr.shape[0], dtype=bool)
    return lam * np.sum(label_corr[mask] ** 2)


def make_mdn(covariance="full", in_features=3, out_features=2, num_components=3, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return MixtureDensityNetwork(
        in_features, out_features, num_components, covariance=covariance, hidden_features=16
    ).to(dtype)


@pytest.fixture
def float64_default():
    # FrEIA builds its factors in torch's default dtype
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# ---------------------------------------------------------------------------------------------- densities
@pytest.mark.parametrize("covariance", COVARIANCES)
def test_nll_matches_scipy(covariance):
    y, weights, means, factor = random_mixture(9, 4, 3, covariance)
    expected = -scipy_log_prob(y, weights, means, factor).mean()
    assert nll(y, weights, means, factor).item() == pytest.approx(expected, abs=1e-10, rel=1e-12)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_log_prob_matches_scipy(covariance):
    mdn = make_mdn(covariance)
    with torch.no_grad():  # non-trivial factors and weights, so the test sees the packing and the mixing
        mdn.net[-1].weight.normal_(0, 0.5)
    x, y = torch.randn(11, 3, dtype=torch.float64), torch.randn(11, 2, dtype=torch.float64)
    params = mdn(x)
    log_p = mdn.log_prob(y, x)
    assert log_p.shape == (11,) and log_p.dtype == torch.float64
    expected = scipy_log_prob(y, params["weights"], params["means"], params["precision_cholesky"])
    np.testing.assert_allclose(log_p.detach().numpy(), expected, rtol=1e-12, atol=1e-10)
    assert nll(y, **params).item() == pytest.approx(-expected.mean(), abs=1e-10)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_forward_parameters(covariance):
    mdn = make_mdn(covariance, out_features=3, num_components=4)
    params = mdn(torch.randn(5, 3, dtype=torch.float64))
    weights, means, factor = params["weights"], params["means"], params["precision_cholesky"]
    assert weights.shape == (5, 4) and means.shape == (5, 4, 3) and factor.shape == (5, 4, 3, 3)
    torch.testing.assert_close(weights.sum(-1), torch.ones(5, dtype=torch.float64))
    assert torch.equal(factor, factor.triu()) and (factor.diagonal(dim1=-2, dim2=-1) > 0).all()
    if covariance == "diagonal":
        assert torch.equal(factor, torch.diag_embed(factor.diagonal(dim1=-2, dim2=-1)))
    # components start apart: no two means of a row coincide
    gaps = torch.cdist(means[0], means[0]) + torch.eye(4, dtype=torch.float64)
    assert gaps.min() > 0.1
    assert (mdn.features, mdn.context_features) == (3, 3)


def test_density_integrates_to_one():
    mdn = make_mdn("full")
    with torch.no_grad():
        mdn.net[-1].weight.normal_(0, 0.3)
    grid = torch.linspace(-9, 9, 361, dtype=torch.float64)
    points = torch.cartesian_prod(grid, grid)  # (M, 2)
    context = torch.randn(1, 3, dtype=torch.float64).expand(len(points), 3)
    with torch.no_grad():
        mass = mdn.log_prob(points, context).exp().sum() * (grid[1] - grid[0]) ** 2
    assert mass.item() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_float32_outliers_finite_and_accurate(covariance):
    mdn64 = make_mdn(covariance)
    mdn32 = make_mdn(covariance, dtype=torch.float32)
    mdn32.load_state_dict({k: v.float() for k, v in mdn64.state_dict().items()})
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.tensor([[30.0, -30.0]], dtype=torch.float64).expand(6, 2)
    params = mdn64(x)
    # the setup: y lies more than 20 σ (Mahalanobis) from every component of every row
    whitened = (params["precision_cholesky"] @ (y.unsqueeze(-2) - params["means"]).unsqueeze(-1)).squeeze(-1)
    assert whitened.norm(dim=-1).min() > 20
    reference = mdn64.log_prob(y, x).detach()
    log_p32 = mdn32.log_prob(y.float(), x.float()).detach()
    assert torch.isfinite(log_p32).all()
    torch.testing.assert_close(log_p32.double(), reference, rtol=1e-5, atol=1e-4)
    p32 = {k: v.float() for k, v in params.items()}
    assert nll(y.float(), **p32).item() == pytest.approx(-reference.mean().item(), rel=1e-5)
    # the direct formula (exp, sum, log) is what these values rule out: it underflows to -inf in float32
    naive = (p32["weights"] * mdn32.log_prob(y.float(), x.float()).exp().unsqueeze(-1)).sum(-1).log()
    assert torch.isinf(naive).all()


# ---------------------------------------------------------------------------------------------- FrEIA
def freia_parameters(rows, num_components, features, seed=0):
    """FrEIA's packing: log-diagonal first, then the strict upper triangle row by row; and our U from it."""
    g = torch.Generator().manual_seed(seed)
    kw = {"generator": g, "dtype": torch.float64}
    weights = torch.softmax(torch.randn(rows, num_components, **kw), dim=-1)
    means = torch.randn(rows, num_components, features, **kw)
    entries = 0.4 * torch.randn(rows, num_components, features * (features + 1) // 2, **kw)
    factor = torch.diag_embed(entries[..., :features].exp())
    rows_, cols_ = torch.triu_indices(features, features, offset=1)  # row-major strict upper triangle
    factor[..., rows_, cols_] = entries[..., features:]
    y = torch.randn(rows, features, **kw)
    return y, weights, means, entries, factor


def test_nll_matches_freia(float64_default):
    gaussian_mixture = pytest.importorskip("FrEIA.modules").GaussianMixtureModel
    features, num_components = 3, 4
    y, weights, means, entries, factor = freia_parameters(8, num_components, features)
    gmm = gaussian_mixture([(features,)], [(num_components,), (num_components, features), (6,)])
    (z,), log_jacobian = gmm([y], c=[weights, means, entries, None])
    torch.testing.assert_close(z, (factor @ (y.unsqueeze(-2) - means).unsqueeze(-1)).squeeze(-1))
    freia_nll = gmm.nll_loss(weights, z, log_jacobian).mean()
    assert nll(y, weights, means, factor).item() == pytest.approx(
        freia_nll.item() + 0.5 * features * LOG_2PI, abs=1e-10
    )
    freia_bound = gmm.nll_upper_bound(weights, z, log_jacobian).mean()
    seed_form = jensen_bound(y, weights, means, factor, form="seed")
    # FrEIA drops -(D/2) log 2π from each of the K terms
    assert seed_form.item() == pytest.approx(freia_bound.item() + num_components * 0.5 * features * LOG_2PI, abs=1e-10)


# ---------------------------------------------------------------------------------------------- Jensen forms
@pytest.mark.parametrize("covariance", COVARIANCES)
def test_jensen_forms_match_their_definitions(covariance):
    y, weights, means, factor = random_mixture(7, 3, 2, covariance, seed=1)
    ell = scipy_component_log_prob(y, means, factor)  # (N, K)
    w = weights.numpy()
    K = w.shape[1]
    expected = {
        "weighted": np.mean(-(w * ell).sum(-1)),
        "uniform": np.mean(-np.log(K) - (np.log(w) + ell).mean(-1)),
        "seed": np.mean(-(np.log(w) + ell).sum(-1)),
    }
    for form in JENSEN_FORMS:
        value = jensen_bound(y, weights, means, factor, form=form).item()
        assert value == pytest.approx(expected[form], abs=1e-10), form
    assert jensen_bound(y, weights, means, factor).item() == pytest.approx(expected["weighted"], abs=1e-10)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("scale", [1.0, 0.05])  # 0.05: narrow components, a negative NLL at nearby points
def test_weighted_and_uniform_bound_the_nll(seed, scale):
    y, weights, means, factor = random_mixture(20, 4, 3, "full", seed=seed, spread=1.0, scale=1 / scale)
    if scale < 1:
        y = means[:, 0] + 0.01 * torch.randn(20, 3, dtype=torch.float64)  # near one narrow component
    exact = nll(y, weights, means, factor).item()
    for form in ("weighted", "uniform"):
        assert jensen_bound(y, weights, means, factor, form=form).item() >= exact - 1e-12, form


def test_seed_form_is_not_a_bound():
    # K = 3 identical N(0, 0.01 I) components in 2-D, weights 1/3, at a typical point of that Gaussian
    K, D = 3, 2
    y = torch.full((1, D), 0.0968, dtype=torch.float64)
    weights = torch.full((1, K), 1 / K, dtype=torch.float64)
    means = torch.zeros(1, K, D, dtype=torch.float64)
    factor = 10 * torch.eye(D, dtype=torch.float64).expand(1, K, D, D)  # Σ⁻¹ = 100 I
    exact = nll(y, weights, means, factor).item()
    seed_form = jensen_bound(y, weights, means, factor, form="seed").item()
    assert exact == pytest.approx(-1.83, abs=0.01)
    assert seed_form == pytest.approx(-2.19, abs=0.01)
    assert seed_form < exact  # eq. 15 fails to bound the NLL
    assert seed_form == pytest.approx(K * exact + K * math.log(K), abs=1e-12)
    for form in ("weighted", "uniform"):  # identical components: both bounds are tight
        assert jensen_bound(y, weights, means, factor, form=form).item() == pytest.approx(exact, abs=1e-12)


# ---------------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("covariance", COVARIANCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sample_shape_and_dtype(covariance, dtype):
    mdn = make_mdn(covariance, dtype=dtype)
    samples = mdn.sample(7, torch.randn(4, 3, dtype=dtype))
    assert samples.shape == (4, 7, 2) and samples.dtype == dtype and torch.isfinite(samples).all()


def monte_carlo_check(samples, mean, covariance, sigmas=5.0):
    """Sample mean and covariance within `sigmas` Monte Carlo standard errors of the given moments."""
    n = samples.shape[0]
    centred = samples - samples.mean(0)
    products = centred.unsqueeze(-1) * centred.unsqueeze(-2)  # (n, D, D)
    error = products.std(0) / math.sqrt(n)
    assert ((products.mean(0) - covariance).abs() < sigmas * error).all(), (products.mean(0), covariance)
    mean_error = samples.std(0) / math.sqrt(n)
    assert ((samples.mean(0) - mean).abs() < sigmas * mean_error).all()


def test_sample_covariance_is_inverse_precision():
    mdn = make_mdn("full", out_features=3, num_components=1)
    with torch.no_grad():  # one component with a strongly non-diagonal precision factor
        mdn.net[-1].bias[1 + 3 :] = torch.tensor([0.3, 1.5, -1.2, -0.4, 0.8, 0.2], dtype=torch.float64)
    context = torch.randn(1, 3, dtype=torch.float64)
    params = mdn(context)
    factor = params["precision_cholesky"][0, 0].detach()
    covariance = torch.linalg.inv(factor.T @ factor)
    # the seed's L = U⁻ᵀ would give (U Uᵀ)⁻¹: far from Σ here, so the check below tells them apart
    assert (torch.linalg.inv(factor @ factor.T) - covariance).abs().max() > 0.5
    torch.manual_seed(1)
    samples = mdn.sample(40_000, context)[0].detach()
    monte_carlo_check(samples, params["means"][0, 0].detach(), covariance)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_sample_moments_of_the_mixture(covariance):
    mdn = make_mdn(covariance, num_components=3)
    with torch.no_grad():
        mdn.net[-1].weight.normal_(0, 0.5)
    context = torch.randn(1, 3, dtype=torch.float64)
    params = {k: v[0].detach() for k, v in mdn(context).items()}
    w, mu, U = params["weights"], params["means"], params["precision_cholesky"]
    mean = w @ mu
    component_cov = torch.linalg.inv(U.mT @ U)  # (K, D, D)
    second = (w[:, None, None] * (component_cov + mu.unsqueeze(-1) * mu.unsqueeze(-2))).sum(0)
    torch.testing.assert_close(mdn.mean(context)[0].detach(), mean)
    torch.manual_seed(2)
    samples = mdn.sample(40_000, context)[0].detach()
    monte_carlo_check(samples, mean, second - mean.outer(mean))


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("covariance", COVARIANCES)
def test_fit_lowers_the_nll(covariance):
    torch.manual_seed(0)
    x = torch.randn(256, 1)
    y = torch.cat([2 * x, -x], dim=1) + 0.1 * torch.randn(256, 2)
    mdn = MixtureDensityNetwork(1, 2, 3, covariance=covariance, hidden_features=16)
    before = -mdn.log_prob(y, x).mean().item()
    history = mog_flows.fit(mdn, (y, x), steps=30, batch_size=128, lr=1e-2, progress=False, device="cpu")
    after = -mdn.log_prob(y, x).mean().item()
    assert len(history.train_loss) == 30
    assert after < before - 0.3


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_every_parameter_gets_a_gradient(covariance):
    mdn = make_mdn(covariance)
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    (-mdn.log_prob(y, x).mean()).backward()
    for name, parameter in mdn.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------------------------------- penalties
@pytest.mark.parametrize("seed", range(3))
def test_collinearity_penalty_matches_seed_000(seed):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(4, 4))
    labels = rng.normal(size=(50, 4)) @ mixing  # correlated columns
    value = collinearity_penalty(torch.from_numpy(labels), lam=0.3).item()
    assert value == pytest.approx(seed_000_penalty(labels, lam=0.3), abs=1e-12)
    assert collinearity_penalty(labels).item() == pytest.approx(seed_000_penalty(labels), abs=1e-12)  # numpy input


def test_nll_plus_penalty_matches_seed_000_loss():
    y, weights, means, factor = random_mixture(6, 3, 2, "full", seed=3, spread=1.0)
    labels = np.random.default_rng(0).normal(size=(6, 3))
    sigma = np.linalg.inv(factor.mT.numpy() @ factor.numpy())
    expected = seed_000_loss(y.numpy(), weights.numpy(), means.numpy(), sigma, labels)
    ours = nll(y, weights, means, factor) + collinearity_penalty(torch.from_numpy(labels))
    assert ours.item() == pytest.approx(expected, abs=1e-10)


def test_collinearity_penalty_refuses_a_constant_column():
    labels = torch.randn(20, 3, dtype=torch.float64)
    labels[:, 1] = 0.1
    with pytest.raises(ValueError, match=r"column\(s\) \[1\] are constant"):
        collinearity_penalty(labels)
    with pytest.raises(ValueError, match="at least 2 rows"):
        collinearity_penalty(labels[:1])
    with pytest.raises(ValueError, match="lam must be"):
        collinearity_penalty(torch.randn(5, 2), lam=-1.0)


def test_seed_penalty_has_no_gradient_but_the_residual_penalty_does():
    mdn = make_mdn("full")
    x = torch.randn(32, 3, dtype=torch.float64)
    y = torch.randn(32, 2, dtype=torch.float64) @ torch.tensor([[1.0, 0.8], [0.0, 0.6]], dtype=torch.float64)
    parameters = list(mdn.parameters())
    seed_penalty = collinearity_penalty(y)
    assert not seed_penalty.requires_grad  # a function of the labels alone
    loss = -mdn.log_prob(y, x).mean()
    with_penalty = torch.autograd.grad(loss + seed_penalty, parameters, retain_graph=True)
    without = torch.autograd.grad(loss, parameters, retain_graph=True)
    for a, b in zip(with_penalty, without):
        assert torch.equal(a, b)  # the seed's penalty changes nothing the network learns
    residual = residual_correlation_penalty(y, mdn.mean(x))
    assert residual.item() > 0
    grads = torch.autograd.grad(residual, parameters, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(g is None or torch.isfinite(g).all() for g in grads)


def test_residual_penalty_is_the_correlation_of_residuals():
    rng = np.random.default_rng(4)
    y, mean = rng.normal(size=(40, 3)), rng.normal(size=(40, 3))
    value = residual_correlation_penalty(torch.from_numpy(y), torch.from_numpy(mean), lam=0.5).item()
    assert value == pytest.approx(seed_000_penalty(y - mean, lam=0.5), abs=1e-12)
    with pytest.raises(ValueError, match=r"shape of y \(40, 3\); got \(40, 2\)"):
        residual_correlation_penalty(torch.from_numpy(y), torch.from_numpy(mean[:, :2]))


# ---------------------------------------------------------------------------------------------- errors
def _bad_inputs():
    y, weights, means, factor = random_mixture(4, 3, 2)
    negative = factor.clone()
    negative[1, 2, 0, 0] = -0.5
    lower = factor.clone()
    lower[0, 0, 1, 0] = 0.3
    nan_y = y.clone()
    nan_y[2, 1] = float("nan")
    return [
        ((y, weights, means[:, :2], factor), r"means must have shape \(4, 3, 2\).*got \(4, 2, 2\)"),
        (
            (y, weights, means, factor[..., :1]),
            r"precision_cholesky must have shape \(4, 3, 2, 2\).*got \(4, 3, 2, 1\)",
        ),
        ((y, weights[:3], means, factor), r"weights must have shape \(N, K\) = \(4, K\).*got \(3, 3\)"),
        ((y[:, :1], weights, means, factor), r"means must have shape \(4, 3, 1\).*got \(4, 3, 2\)"),
        ((y, weights, means, negative), "positive diagonal"),
        ((y, weights, means, lower), "upper-triangular"),
        ((nan_y, weights, means, factor), "y must be finite"),
        ((y, 2 * weights, means, factor), "sum to 1"),
        ((y, weights, means.float(), factor), "means has dtype torch.float32"),
    ]


@pytest.mark.parametrize("index", range(9))
def test_bad_mixture_inputs_raise(index):
    arguments, message = _bad_inputs()[index]
    with pytest.raises(ValueError, match=message):
        nll(*arguments)
    with pytest.raises(ValueError, match=message):
        jensen_bound(*arguments, form="uniform")


def test_bad_network_inputs_raise():
    mdn = make_mdn("full")
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"context must have shape \(N, 3\); got \(5, 2\)"):
        mdn.log_prob(y, x[:, :2])
    with pytest.raises(ValueError, match=r"y must have shape \(N, 2\); got \(5, 3\)"):
        mdn.log_prob(x, x)
    with pytest.raises(ValueError, match="5 rows of y, 4 context rows"):
        mdn.log_prob(y, x[:4])
    with pytest.raises(ValueError, match="dtype torch.float32"):
        mdn.log_prob(y.float(), x.float())
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        mdn.sample(0, x)
    with pytest.raises(ValueError, match="form must be one of"):
        jensen_bound(*random_mixture(2, 2, 2), form="tight")
    with pytest.raises(ValueError, match="covariance must be one of"):
        MixtureDensityNetwork(3, 2, 2, covariance="spherical")
    with pytest.raises(ValueError, match="num_components must be a positive integer"):
        MixtureDensityNetwork(3, 2, 0)
    with pytest.raises(ValueError, match="features but the model expects 2"):
        mog_flows.fit(mdn, (x, x), steps=1, progress=False, device="cpu")

"""Closed-form mixture algebra (mog_flows.kernels) and label alignment (mog_flows.labels)."""

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from mog_flows import MixtureOfGaussians
from mog_flows.kernels import (
    cauchy_schwarz_divergence,
    inner_product,
    l2_distance,
    log_inner_product,
    nuclear_norm_cost,
    scalar_cost,
    schur_trace_cost,
    self_norm,
    vector_matrix_cost,
)
from mog_flows.labels import align_to_reference, order_by_mean, permute_components


def random_mixture(k, d, *, covariance="full", seed=0, dtype=torch.float64, spread=2.0):
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(k, generator=g, dtype=dtype) + 0.2
    means = spread * torch.randn(k, d, generator=g, dtype=dtype)
    if covariance == "diagonal":
        covariances = 0.3 + torch.rand(k, d, generator=g, dtype=dtype)
    else:
        a = torch.randn(k, d, d, generator=g, dtype=dtype)
        covariances = a @ a.transpose(-1, -2) / d + 0.3 * torch.eye(d, dtype=dtype)
    return {"weights": weights / weights.sum(), "means": means, "covariances": covariances}


def full_covariances(p):
    c = p["covariances"]
    return torch.diag_embed(c) if c.shape == p["means"].shape else c


def scipy_inner_product(p, q):
    cp, cq = full_covariances(p).numpy(), full_covariances(q).numpy()
    total = 0.0
    for i in range(len(p["weights"])):
        for j in range(len(q["weights"])):
            density = multivariate_normal.pdf(p["means"][i].numpy(), q["means"][j].numpy(), cp[i] + cq[j])
            total += p["weights"][i].item() * q["weights"][j].item() * density
    return total


def scipy_density(p, x):
    c = full_covariances(p).numpy()
    logs = [
        np.log(p["weights"][k].item()) + multivariate_normal.logpdf(x, p["means"][k].numpy(), c[k])
        for k in range(len(p["weights"]))
    ]
    return np.exp(logsumexp(np.stack(logs), axis=0))


TYPES = [("full", "full"), ("diagonal", "diagonal"), ("diagonal", "full"), ("full", "diagonal")]


@pytest.mark.parametrize("types", TYPES)
@pytest.mark.parametrize("d", [1, 3])
def test_inner_product_matches_pairwise_scipy_sum(types, d):
    p = random_mixture(3, d, covariance=types[0], seed=1)
    q = random_mixture(4, d, covariance=types[1], seed=2, spread=1.0)
    expected = scipy_inner_product(p, q)
    assert inner_product(p, q).item() == pytest.approx(expected, rel=1e-10, abs=0)
    assert log_inner_product(p, q).item() == pytest.approx(np.log(expected), rel=1e-10)
    assert self_norm(p).item() == pytest.approx(scipy_inner_product(p, p), rel=1e-10)


def test_inner_product_matches_monte_carlo():
    p = random_mixture(3, 2, covariance="full", seed=3, spread=1.0)
    q = random_mixture(2, 2, covariance="diagonal", seed=4, spread=1.0)
    torch.manual_seed(0)
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=p["weights"]),
        torch.distributions.MultivariateNormal(p["means"], covariance_matrix=p["covariances"]),
    )
    x = mixture.sample((200_000,)).numpy()
    values = scipy_density(q, x)
    estimate, error = values.mean(), values.std() / np.sqrt(len(values))
    assert abs(inner_product(p, q).item() - estimate) < 4 * error


def test_l2_distance_matches_grid_quadrature():
    p = random_mixture(2, 2, covariance="full", seed=5, spread=1.0)
    q = random_mixture(3, 2, covariance="diagonal", seed=6, spread=1.0)
    axis = np.linspace(-9, 9, 721)
    xx, yy = np.meshgrid(axis, axis, indexing="ij")
    x = np.stack([xx.ravel(), yy.ravel()], axis=-1)
    step = axis[1] - axis[0]
    expected = ((scipy_density(p, x) - scipy_density(q, x)) ** 2).sum() * step**2
    assert l2_distance(p, q).item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("types", TYPES)
def test_symmetry_and_permutation_invariance(types):
    p = random_mixture(3, 2, covariance=types[0], seed=7)
    q = random_mixture(4, 2, covariance=types[1], seed=8)
    assert inner_product(p, q).item() == pytest.approx(inner_product(q, p).item(), rel=1e-12)
    assert l2_distance(p, q).item() == pytest.approx(l2_distance(q, p).item(), rel=1e-12)
    assert cauchy_schwarz_divergence(p, q).item() == pytest.approx(cauchy_schwarz_divergence(q, p).item(), rel=1e-12)
    shuffled = permute_components(p, torch.tensor([2, 0, 1]))
    assert inner_product(shuffled, q).item() == pytest.approx(inner_product(p, q).item(), rel=1e-12)
    assert l2_distance(shuffled, p).item() < 1e-14


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_distance_to_itself_is_zero(dtype, covariance):
    p = random_mixture(4, 3, covariance=covariance, seed=9, dtype=dtype)
    copy = {key: value.clone() for key, value in p.items()}
    assert l2_distance(p, p).item() == 0.0
    assert l2_distance(p, copy).item() == 0.0
    assert cauchy_schwarz_divergence(p, copy).item() == 0.0
    tiny = {**copy, "means": copy["means"] + 1e-3}
    assert 0.0 <= l2_distance(p, tiny).item() < self_norm(p).item() * 1e-4
    assert l2_distance(p, tiny).dtype == dtype
    assert cauchy_schwarz_divergence(p, tiny).item() < 1e-4
    q = random_mixture(4, 3, covariance=covariance, seed=10, dtype=dtype)
    assert l2_distance(p, q).item() > 1e-3
    assert cauchy_schwarz_divergence(p, q).item() > 1e-3


def test_diagonal_agrees_with_same_as_full():
    p = random_mixture(3, 3, covariance="diagonal", seed=11)
    q = random_mixture(2, 3, covariance="diagonal", seed=12)
    p_full = {**p, "covariances": torch.diag_embed(p["covariances"])}
    q_full = {**q, "covariances": torch.diag_embed(q["covariances"])}
    expected = inner_product(p, q).item()
    for a, b in [(p_full, q_full), (p, q_full), (p_full, q)]:
        assert inner_product(a, b).item() == pytest.approx(expected, rel=1e-12)
    assert l2_distance(p, p_full).item() < 1e-14


def test_cauchy_schwarz_divergence_properties():
    p = random_mixture(3, 2, covariance="full", seed=13)
    q = random_mixture(3, 2, covariance="diagonal", seed=14)
    value = cauchy_schwarz_divergence(p, q).item()
    expected = -np.log(scipy_inner_product(p, q) / np.sqrt(scipy_inner_product(p, p) * scipy_inner_product(q, q)))
    assert value == pytest.approx(expected, rel=1e-10)
    assert value > 0
    far = {**q, "means": q["means"] + 200.0}  # ⟨p, q⟩ underflows; the log-space divergence stays finite
    assert np.isfinite(cauchy_schwarz_divergence(p, far).item())
    assert cauchy_schwarz_divergence(p, far).item() > 1000


@pytest.mark.parametrize("types", TYPES)
def test_gradients_are_finite_and_pass_gradcheck(types):
    p = random_mixture(2, 2, covariance=types[0], seed=15, spread=1.0)
    q = random_mixture(3, 2, covariance=types[1], seed=16, spread=1.0)
    leaves = [p["weights"], p["means"], p["covariances"], q["means"], q["covariances"]]
    leaves = [t.clone().requires_grad_(True) for t in leaves]

    def build(w, m, c, m2, c2):
        if c.dim() == 3:
            c = 0.5 * (c + c.transpose(-1, -2))  # gradcheck perturbs single entries; keep Σ symmetric
        if c2.dim() == 3:
            c2 = 0.5 * (c2 + c2.transpose(-1, -2))
        return {"weights": w, "means": m, "covariances": c}, {"weights": q["weights"], "means": m2, "covariances": c2}

    for function in (inner_product, l2_distance, cauchy_schwarz_divergence):
        grads = torch.autograd.grad(function(*build(*leaves)), leaves)
        assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
        assert torch.autograd.gradcheck(lambda *args, f=function: f(*build(*args)), leaves)


def test_zero_weights_give_finite_values_and_gradients():
    p = random_mixture(3, 2, covariance="diagonal", seed=19)
    weights = torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64, requires_grad=True)
    dropped = {key: value[[0, 2]] for key, value in p.items()}
    dropped["weights"] = torch.tensor([0.5, 0.5], dtype=torch.float64)
    value = inner_product({**p, "weights": weights}, p)
    (grad,) = torch.autograd.grad(value, weights)
    assert torch.isfinite(grad).all()
    assert value.item() == pytest.approx(inner_product(dropped, p).item(), rel=1e-12)


def test_follows_dtype_and_rejects_mismatched_dtypes():
    p = random_mixture(2, 2, dtype=torch.float32)
    assert inner_product(p, p).dtype == torch.float32
    q = random_mixture(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="dtype"):
        inner_product(p, q)


def test_bad_inputs_raise_value_errors():
    p = random_mixture(3, 2, covariance="full")
    with pytest.raises(ValueError, match=r"weights'\] must have shape \(3,\).*got \(2,\)"):
        inner_product({**p, "weights": p["weights"][:2]}, p)
    with pytest.raises(ValueError, match=r"covariances'\] must have shape \(3, 2\).*\(3, 2, 2\).*got \(3, 3\)"):
        inner_product(p, {**p, "covariances": torch.ones(3, 3, dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"means'\] must have shape \(K, D\); got \(3,\)"):
        inner_product({**p, "means": p["means"][:, 0]}, p)
    with pytest.raises(ValueError, match="must be positive; got minimum"):
        inner_product({**p, "covariances": -torch.ones(3, 2, dtype=torch.float64)}, p)
    not_spd = p["covariances"].clone()
    not_spd[0] = torch.tensor([[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="positive definite"):
        l2_distance({**p, "covariances": not_spd}, p)
    asymmetric = p["covariances"].clone()
    asymmetric[0, 0, 1] += 1.0
    with pytest.raises(ValueError, match="symmetric"):
        l2_distance({**p, "covariances": asymmetric}, p)
    nan_means = p["means"].clone()
    nan_means[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"means'\] must be finite"):
        cauchy_schwarz_divergence(p, {**p, "means": nan_means})
    with pytest.raises(ValueError, match="negative"):
        inner_product({**p, "weights": -p["weights"]}, p)
    q = random_mixture(2, 3)
    with pytest.raises(ValueError, match=r"same number of features D.*\(3, 2\).*\(2, 3\)"):
        inner_product(p, q)
    with pytest.raises(ValueError, match="keys"):
        inner_product({"weights": p["weights"]}, p)


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_works_with_mixture_of_gaussians_parameters(covariance):
    torch.manual_seed(0)
    model = MixtureOfGaussians(2, 3, covariance=covariance).double()
    with torch.no_grad():
        model.loc.mul_(3.0)
    p = model.mixture_parameters()
    detached = {k: v.detach() for k, v in p.items()}
    assert inner_product(p, p).item() == pytest.approx(scipy_inner_product(detached, detached), rel=1e-10)
    assert all(g is not None for g in torch.autograd.grad(self_norm(p), [model.loc]))
    assert l2_distance(p, {k: v.detach().clone() for k, v in p.items()}).item() == 0.0
    reference = {k: v.detach() for k, v in p.items()}
    shuffled = permute_components(reference, torch.tensor([1, 2, 0]))
    aligned, permutation = align_to_reference(shuffled, reference)
    assert permutation.tolist() == [2, 0, 1]
    for key in aligned:
        torch.testing.assert_close(aligned[key], reference[key])
    ordered = order_by_mean(p)
    assert (ordered["means"][1:, 0] >= ordered["means"][:-1, 0]).all()


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_align_recovers_a_random_permutation(covariance):
    reference = random_mixture(5, 3, covariance=covariance, seed=17, spread=4.0)
    g = torch.Generator().manual_seed(0)
    shuffle = torch.randperm(5, generator=g)
    noise = {key: 1e-2 * torch.rand(value.shape, generator=g, dtype=value.dtype) for key, value in reference.items()}
    noise["covariances"] = 1e-2 * torch.rand(1, generator=g, dtype=torch.float64) * reference["covariances"]
    perturbed = {key: value + noise[key] for key, value in reference.items()}
    assert shuffle.tolist() != list(range(5))
    shuffled = permute_components(perturbed, shuffle)
    aligned, permutation = align_to_reference(shuffled, reference)
    # shuffled[..., i] = perturbed[..., shuffle[i]], so reference j sits at position shuffle⁻¹[j]
    assert permutation.tolist() == torch.argsort(shuffle).tolist()
    torch.testing.assert_close(aligned["means"], perturbed["means"])
    assert l2_distance(aligned, reference).item() == pytest.approx(l2_distance(perturbed, reference).item(), rel=1e-12)


def test_align_works_per_row_and_keeps_gradients():
    n, k, d = 6, 4, 2
    g = torch.Generator().manual_seed(1)
    means = 3.0 * torch.randn(n, k, d, generator=g, dtype=torch.float64)
    reference = {
        "weights": torch.full((n, k), 1.0 / k, dtype=torch.float64),
        "means": means,
        "covariances": torch.full((n, k, d), 0.5, dtype=torch.float64),
    }
    shuffles = torch.stack([torch.randperm(k, generator=g) for _ in range(n)])
    shuffled = permute_components(reference, shuffles)
    shuffled["means"] = shuffled["means"].clone().requires_grad_(True)
    aligned, permutation = align_to_reference(shuffled, reference)
    assert permutation.shape == (n, k)
    assert permutation.tolist() == torch.argsort(shuffles, dim=-1).tolist()
    torch.testing.assert_close(aligned["means"], means)
    aligned["means"].sum().backward()
    assert torch.equal(shuffled["means"].grad, torch.ones(n, k, d, dtype=torch.float64))
    # one unbatched reference for every row
    single = {key: value[0] for key, value in reference.items()}
    rows = permute_components(
        {key: value[:1].expand(n, *value.shape[1:]) for key, value in reference.items()}, shuffles
    )
    _, permutation = align_to_reference(rows, single)
    assert permutation.tolist() == torch.argsort(shuffles, dim=-1).tolist()
    with pytest.raises(ValueError, match="reference\\['means'\\] must have shape"):
        align_to_reference(shuffled, {key: value[:3] for key, value in reference.items()})


def test_order_by_mean_sorts_per_row():
    g = torch.Generator().manual_seed(2)
    params = {
        "weights": torch.full((3, 4), 0.25),
        "means": torch.randn(3, 4, 2, generator=g),
        "covariances": torch.ones(3, 4, 2, 2) * torch.eye(2),
    }
    for axis in (0, 1):
        ordered = order_by_mean(params, axis=axis)
        assert (ordered["means"][..., 1:, axis] >= ordered["means"][..., :-1, axis]).all()
        torch.testing.assert_close(ordered["means"].sort(dim=-2).values, params["means"].sort(dim=-2).values)
    with pytest.raises(ValueError, match="axis"):
        order_by_mean(params, axis=2)


# ------------------------------------------------------------------------------------------ seed 002 kernel costs
COSTS = [scalar_cost, vector_matrix_cost, schur_trace_cost, nuclear_norm_cost]


def two_clusters():
    g = torch.Generator().manual_seed(0)
    noise = 0.5 * torch.randn(100, 2, generator=g, dtype=torch.float64)
    return (
        noise + torch.tensor([3.0, 3.0], dtype=torch.float64) * torch.tensor([-1.0, 1.0]).repeat_interleave(50)[:, None]
    )


def centres(means, variance):
    k = means.shape[0]
    return {"weights": torch.full((k,), 1.0 / k, dtype=means.dtype), "means": means, "covariances": variance}


def test_kernel_costs_match_explicit_block_matrices():
    data, s = two_clusters(), 0.1
    p = random_mixture(3, 2, covariance="full", seed=18)
    cov = p["covariances"].numpy()
    mu, x = p["means"].numpy(), data.numpy()
    gram = np.array([[multivariate_normal.pdf(mu[k], mu[l], cov[k] + cov[l]) for l in range(3)] for k in range(3)])
    cross = np.array([multivariate_normal.pdf(x, mu[k], cov[k] + s * np.eye(2)) for k in range(3)])  # (K, N)
    h_data = np.array([multivariate_normal.pdf(x, x[n], 2 * s * np.eye(2)) for n in range(len(x))])  # (N, N)
    b = cross.mean(-1)
    norm_q = h_data.mean()
    vector = 1 - b @ np.linalg.solve(gram, b) / norm_q
    assert vector_matrix_cost(p, data, data_variance=s, jitter=0.0).item() == pytest.approx(vector, rel=1e-8)
    # the matrix costs' columns: the parts q_l = (1/N) Σ_n r_nl ψ_n with r_nl ∝ B_ln (weights ignored)
    resp = cross / cross.sum(0)  # (K, N)
    c = cross @ resp.T / len(x)  # ⟨φ_k, q_l⟩
    h = resp @ h_data @ resp.T / len(x) ** 2  # ⟨q_l, q_m⟩
    schur = 1 - np.trace(c.T @ np.linalg.solve(gram, c)) / np.trace(h)
    assert schur_trace_cost(p, data, data_variance=s, jitter=0.0).item() == pytest.approx(schur, rel=1e-8)
    singular = np.linalg.svd(np.linalg.solve(np.linalg.cholesky(gram), c), compute_uv=False)
    nuclear = 1 - singular.sum() / np.sqrt(np.linalg.eigvalsh(h).clip(0)).sum()
    assert nuclear_norm_cost(p, data, data_variance=s, jitter=0.0).item() == pytest.approx(nuclear, rel=1e-8)


def test_vector_matrix_cost_is_the_best_relative_l2_residual():
    data, s = two_clusters(), 0.1
    p = centres(
        torch.tensor([[-3.0, -3.0], [3.0, 3.0]], dtype=torch.float64), torch.full((2, 2), 0.3, dtype=torch.float64)
    )
    kde = {
        "weights": torch.full((100,), 0.01, dtype=torch.float64),
        "means": data,
        "covariances": torch.full_like(data, s),
    }
    gram = torch.stack(
        [
            torch.stack(
                [
                    inner_product(
                        centres(p["means"][[k]], p["covariances"][[k]]), centres(p["means"][[l]], p["covariances"][[l]])
                    )
                    for l in range(2)
                ]
            )
            for k in range(2)
        ]
    )
    b = torch.stack([inner_product(centres(p["means"][[k]], p["covariances"][[k]]), kde) for k in range(2)])
    best = {**p, "weights": torch.linalg.solve(gram, b)}
    assert (best["weights"] > 0).all()
    expected = l2_distance(best, kde) / self_norm(kde)
    assert vector_matrix_cost(p, data, data_variance=s, jitter=0.0).item() == pytest.approx(expected.item(), rel=1e-8)
    assert scalar_cost(p, data, data_variance=s).item() == pytest.approx(
        1 - np.exp(-cauchy_schwarz_divergence(p, kde).item()), rel=1e-12
    )


@pytest.mark.parametrize("cost", COSTS, ids=lambda f: f.__name__)
def test_kernel_cost_is_not_optimised_by_centres_on_data_points(cost):
    data, s = two_clusters(), 0.1
    dt = torch.float64
    on_points = [centres(data[[0, 50]].clone(), torch.full((2, 2), v, dtype=dt)) for v in (1e-4, s)]
    at_clusters = centres(torch.tensor([[-3.0, -3.0], [3.0, 3.0]], dtype=dt), torch.full((2, 2), 0.25, dtype=dt))
    value = cost(at_clusters, data, data_variance=s).item()
    assert 0.0 <= value < 1.0
    for p in on_points:
        assert cost(p, data, data_variance=s).item() > value + 0.05
    # and descending from centres on data points moves them off and lowers the cost, with finite gradients
    means = data[[0, 50]].clone().requires_grad_(True)
    log_var = torch.full((2, 2), np.log(s), dtype=dt, requires_grad=True)
    start = cost(centres(means, log_var.exp()), data, data_variance=s).item()
    optimizer = torch.optim.Adam([means, log_var], lr=0.05)
    for _ in range(60):
        optimizer.zero_grad()
        loss = cost(centres(means, log_var.exp()), data, data_variance=s)
        loss.backward()
        assert torch.isfinite(means.grad).all() and torch.isfinite(log_var.grad).all()
        optimizer.step()
    assert loss.item() < start - 0.05


def test_kernel_costs_reject_bad_data():
    p = random_mixture(2, 2)
    with pytest.raises(ValueError, match=r"data must have shape \(N, 2\); got \(5, 3\)"):
        scalar_cost(p, torch.zeros(5, 3, dtype=torch.float64), data_variance=0.1)
    with pytest.raises(ValueError, match="data_variance must be positive"):
        schur_trace_cost(p, torch.zeros(5, 2, dtype=torch.float64), data_variance=0.0)


def quantile_draws(n, variance):
    """n 'draws' (n, 1) of N(0, variance) at the quantiles (i - ½)/n: sample averages ≈ population integrals."""
    from scipy.stats import norm

    x = norm.ppf((np.arange(n) + 0.5) / n) * np.sqrt(variance)
    return torch.tensor(x, dtype=torch.float64)[:, None]


def best_single_variance(cost, data, s):
    from scipy.optimize import minimize_scalar

    def value(log_t):
        one = {
            "weights": torch.ones(1, dtype=torch.float64),
            "means": torch.zeros(1, 1, dtype=torch.float64),
            "covariances": torch.tensor([[np.exp(log_t)]], dtype=torch.float64),
        }
        return cost(one, data, data_variance=s).item()

    return float(np.exp(minimize_scalar(value, bounds=(np.log(1e-4), np.log(20.0)), method="bounded").x))


@pytest.mark.parametrize("s", [0.01, 0.1, 0.5])
def test_one_centre_optimal_variance_fits_the_density_for_every_cost(s):
    # Gaussian data of variance v, one centre at its mean: every cost fits the kernel estimate q = N(0, v + s), so
    # the best centre variance is v + s. (Projecting the single data kernels ψ_n instead, as the matrix costs once
    # did, gives sqrt(s² + 2 s v), which tends to 0 with the bandwidth.)
    v = 1.0
    data = quantile_draws(400, v)
    for cost in COSTS:
        assert best_single_variance(cost, data, s) == pytest.approx(v + s, rel=2e-3), cost.__name__


@pytest.mark.parametrize("cost", [schur_trace_cost, nuclear_norm_cost], ids=lambda f: f.__name__)
def test_matrix_costs_fit_two_separated_clusters_with_unequal_weights(cost):
    # two clusters N(∓5, 1) with weights 0.3 / 0.7 and two centres at their means: the best common variance of the
    # centres is the clusters' 1 + s, and at it the cost is nearly 0 (the nuclear norm's old normalisation by
    # sqrt(K tr H) left it at 0.07 there: equality in ‖M‖_* ≤ sqrt(K) ‖M‖_F needs equal singular values)
    from scipy.optimize import minimize_scalar

    s = 0.05
    data = torch.cat([quantile_draws(300, 1.0) - 5.0, quantile_draws(700, 1.0) + 5.0])
    means = torch.tensor([[-5.0], [5.0]], dtype=torch.float64)
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64)

    def value(log_t):
        p = {"weights": weights, "means": means, "covariances": torch.full((2, 1), np.exp(log_t), dtype=torch.float64)}
        return cost(p, data, data_variance=s).item()

    best = minimize_scalar(value, bounds=(np.log(1e-4), np.log(20.0)), method="bounded")
    assert np.exp(best.x) == pytest.approx(1 + s, rel=5e-3)
    assert 0.0 <= best.fun < 1e-3
    assert value(np.log(1e-3)) > 0.5  # narrow centres on the cluster means are far from the optimum


@pytest.mark.parametrize("cost", COSTS, ids=lambda f: f.__name__)
def test_kernel_costs_are_invariant_to_rigid_motions_and_relabelling(cost):
    data, s = two_clusters(), 0.1
    p = random_mixture(3, 2, covariance="full", seed=20)
    value = cost(p, data, data_variance=s).item()
    assert 0.0 <= value <= 1.0
    angle = 0.7
    r = torch.tensor([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], dtype=torch.float64)
    shift = torch.tensor([5.0, -2.0], dtype=torch.float64)
    moved = {
        "weights": p["weights"],
        "means": p["means"] @ r.T + shift,
        "covariances": r @ p["covariances"] @ r.T,
    }
    assert cost(moved, data @ r.T + shift, data_variance=s).item() == pytest.approx(value, rel=1e-9)
    order = torch.tensor([2, 0, 1])
    assert cost(permute_components(p, order), data, data_variance=s).item() == pytest.approx(value, rel=1e-9)
    reweighted = {**p, "weights": torch.tensor([0.8, 0.1, 0.1], dtype=torch.float64)}
    if cost is scalar_cost:  # the only cost that reads the weights
        assert abs(cost(reweighted, data, data_variance=s).item() - value) > 1e-3
    else:
        assert cost(reweighted, data, data_variance=s).item() == pytest.approx(value, rel=1e-12)

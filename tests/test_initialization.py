"""`mog_flows.initialization`: k-means++ seeding, k-means / EM fits against scikit-learn, the restart criterion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture

from mog_flows.datasets import get_dataset
from mog_flows.initialization import fit_mixture, kmeans_plus_plus, mixture_log_likelihood

DOUBLE = torch.float64
COVARIANCES = ("diagonal", "full")
CENTRES = torch.tensor([[-12.0, 0.0], [12.0, 2.0], [0.0, 15.0]], dtype=DOUBLE)
SCALES = torch.tensor([[[1.0, 0.0], [0.6, 0.8]], [[0.5, 0.0], [0.0, 1.5]], [[1.2, 0.0], [-0.4, 0.6]]], dtype=DOUBLE)
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=DOUBLE)


def separated_data(num_points: int = 3000, seed: int = 0) -> torch.Tensor:
    """Three well-separated 2-D Gaussian clusters with correlated, unequal covariances L Lᵀ."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.multinomial(WEIGHTS, num_points, replacement=True, generator=generator)
    noise = torch.randn(num_points, 2, generator=generator, dtype=DOUBLE)
    return CENTRES[labels] + torch.einsum("nij,nj->ni", SCALES[labels], noise)


def _matched(means: torch.Tensor) -> torch.Tensor:
    """The fitted component nearest each true centre: indices (3,), one per centre, all different."""
    nearest = torch.cdist(CENTRES, means).argmin(-1)
    assert sorted(nearest.tolist()) == [0, 1, 2], means
    return nearest


# ------------------------------------------------------------------------------------------------ k-means++
def test_kmeans_plus_plus_picks_data_points_one_per_separated_cluster():
    data = separated_data()
    for seed in range(5):
        centres = kmeans_plus_plus(data, 3, torch.Generator().manual_seed(seed))
        assert centres.shape == (3, 2) and centres.dtype == DOUBLE
        # each centre is a data point, row for row (cdist's matmul path rounds a zero distance to ~1e-7)
        assert (centres[:, None, :] == data[None, :, :]).all(-1).any(-1).all()
        assert sorted(torch.cdist(centres, CENTRES).argmin(-1).tolist()) == [0, 1, 2]


def test_kmeans_plus_plus_is_fixed_by_the_generator_and_handles_repeated_points():
    data = separated_data(500)
    a = kmeans_plus_plus(data, 4, torch.Generator().manual_seed(3))
    b = kmeans_plus_plus(data, 4, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # all points equal: no distance to weigh by, the choice falls back to uniform and stays finite
    same = torch.ones(10, 2, dtype=DOUBLE)
    torch.testing.assert_close(kmeans_plus_plus(same, 3), torch.ones(3, 2, dtype=DOUBLE), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ EM vs sklearn
@pytest.mark.parametrize("covariance", COVARIANCES)
def test_em_matches_scikit_learn_on_separated_clusters(covariance):
    data = separated_data()
    weights, means, covariances = fit_mixture(data, 3, covariance=covariance, num_iterations=100, seed=0)
    ours = mixture_log_likelihood(data, weights, means, covariances, covariance)
    kind = "diag" if covariance == "diagonal" else "full"

    def reference(reg_covar: float) -> GaussianMixture:
        gm = GaussianMixture(3, covariance_type=kind, tol=1e-12, max_iter=1000, n_init=3, reg_covar=reg_covar)
        return gm.set_params(random_state=0).fit(data.numpy())

    # the maximum-likelihood fit: ours carries a ridge of 1e-4 of the mean data variance, a second-order loss
    mle = reference(1e-9).score(data.numpy())  # mean log-likelihood per point
    assert mle - 1e-3 < ours <= mle + 1e-9
    # with scikit-learn's own ridge set to ours the two EMs reach the same fixed point
    fitted = reference(1e-4 * data.var(0).mean().item())
    assert ours == pytest.approx(fitted.score(data.numpy()), abs=1e-9)
    order, mine = _matched(torch.from_numpy(fitted.means_)), _matched(means)
    tight = dict(rtol=0, atol=1e-7)
    torch.testing.assert_close(weights[mine], torch.from_numpy(fitted.weights_)[order], **tight)
    torch.testing.assert_close(means[mine], torch.from_numpy(fitted.means_)[order], **tight)
    torch.testing.assert_close(covariances[mine], torch.from_numpy(fitted.covariances_)[order], **tight)
    # and the true clusters: three weights near (0.5, 0.3, 0.2)
    torch.testing.assert_close(weights[mine], WEIGHTS, rtol=0, atol=0.03)


def test_kmeans_finds_the_separated_centres():
    data = separated_data()
    weights, means, variances = fit_mixture(data, 3, method="kmeans", num_iterations=20, seed=1)
    mine = _matched(means)
    torch.testing.assert_close(means[mine], CENTRES, rtol=0, atol=0.1)
    assert variances.shape == (3, 2) and (variances > 0).all()
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_fit_mixture_keeps_the_most_likely_of_its_restarts(covariance):
    # eight uniform squares: single k-means++ seedings end in different EM optima
    data = get_dataset("checkerboard").sample(3000, seed=0).double()
    settings = dict(covariance=covariance, num_iterations=10)
    single = [mixture_log_likelihood(data, *fit_mixture(data, 8, seed=s, **settings), covariance) for s in range(8)]
    assert max(single) - min(single) > 0.05, single
    # with restarts every seed keeps a fit at least as likely as the typical single one, and the spread shrinks
    restarted = [mixture_log_likelihood(data, *fit_mixture(data, 8, seed=s, num_restarts=8, **settings), covariance)
                 for s in range(4)]  # fmt: skip
    assert min(restarted) >= np.median(single), (restarted, single)
    assert max(restarted) - min(restarted) < (max(single) - min(single)) / 2, (restarted, single)
    with pytest.raises(ValueError, match="num_restarts"):
        fit_mixture(data, 8, num_restarts=0)


# ------------------------------------------------------------------------------------------------ log-likelihood
@pytest.mark.parametrize("covariance", COVARIANCES)
def test_mixture_log_likelihood_matches_scipy(covariance):
    generator = torch.Generator().manual_seed(6)
    data = 3 * torch.randn(200, 3, generator=generator, dtype=DOUBLE)
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=DOUBLE)
    means = torch.randn(3, 3, generator=generator, dtype=DOUBLE)
    if covariance == "diagonal":
        covariances = 0.5 + torch.rand(3, 3, generator=generator, dtype=DOUBLE)
        dense = torch.diag_embed(covariances)
    else:
        a = torch.randn(3, 3, 3, generator=generator, dtype=DOUBLE)
        covariances = dense = a @ a.mT + 0.5 * torch.eye(3, dtype=DOUBLE)
    per_component = np.stack(
        [multivariate_normal(m.numpy(), c.numpy()).logpdf(data.numpy()) for m, c in zip(means, dense)], axis=-1
    )
    expected = logsumexp(per_component, b=weights.numpy(), axis=-1).mean()
    assert mixture_log_likelihood(data, weights, means, covariances, covariance) == pytest.approx(expected, rel=1e-12)


def test_mixture_log_likelihood_is_minus_infinity_off_the_support_and_checks_its_covariance():
    data = torch.tensor([[0.0, 0.0], [math.inf, 0.0]], dtype=DOUBLE)
    weights, means, variances = torch.ones(1, dtype=DOUBLE), torch.zeros(1, 2, dtype=DOUBLE), torch.ones(1, 2)
    assert mixture_log_likelihood(data, weights, means, variances.double(), "diagonal") == -math.inf
    with pytest.raises(ValueError, match="covariance"):
        mixture_log_likelihood(data[:1], weights, means, variances.double(), "spherical")

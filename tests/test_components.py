"""Float32 accuracy of the shared-component kernels (`mog_flows.components`) against torch.distributions.

The adversarial suite: narrow components far from the others (scales 1e-4 … 1e4 in one mixture, separations up
to 1e4), points near every component and far from all, small and large N. Our float32 `log_prob` and its gradients
must be within 2× of the error torch.distributions makes on the same float32 inputs, plus 1e-6 (absolute for
log-densities, relative to the largest reference entry for gradients). References are float64 torch.distributions.
"""

from __future__ import annotations

import pytest
import torch
from torch import distributions as td

from mog_flows import MixtureOfGaussians
from mog_flows.components import (
    GaussianComponents,
    accumulation_dtype,
    covariance_from_precision_factor,
    precision_factor_from_covariance,
    unpack_precision_factor,
)
from mog_flows.testing import ADVERSARIAL_SETTINGS, MixtureCase, adversarial_case, spread_case

DOUBLE = torch.float64


def _float32(case: MixtureCase) -> tuple[MixtureOfGaussians, torch.Tensor]:
    """The case's mixture as a float32 base, and its points in float32."""
    base = MixtureOfGaussians.from_parameters(case.weights, case.means, case.covariances, covariance=case.covariance)
    return base.float(), case.points.float()


def _torch_mixture(params: dict, covariance: str, dtype: torch.dtype):
    """torch.distributions on the base's (float32) parameters, in `dtype`; differentiable in loc and logits."""
    loc = params["means"].detach().to(dtype).requires_grad_()
    logits = params["weights"].detach().log().to(dtype).requires_grad_()
    if covariance == "diagonal":
        component = td.Independent(td.Normal(loc, params["covariances"].detach().to(DOUBLE).sqrt().to(dtype)), 1)
    else:
        tril = torch.linalg.cholesky(params["covariances"].detach().to(DOUBLE)).to(dtype)
        component = td.MultivariateNormal(loc, scale_tril=tril)
    return td.MixtureSameFamily(td.Categorical(logits=logits), component, validate_args=False), loc, logits


def _errors(base: MixtureOfGaussians, x: torch.Tensor, covariance: str) -> dict[str, tuple[float, float]]:
    """{quantity: (our float32 error, torch's float32 error)} against float64 torch.distributions."""
    params = base.mixture_parameters()
    reference, ref_loc, _ = _torch_mixture(params, covariance, DOUBLE)
    x64 = x.double().requires_grad_()
    ref_lp = reference.log_prob(x64)
    ref_gx, ref_gloc = torch.autograd.grad(ref_lp.mean(), (x64, ref_loc))

    peer, peer_loc, _ = _torch_mixture(params, covariance, torch.float32)
    xp = x.clone().requires_grad_()
    peer_lp = peer.log_prob(xp)
    peer_gx, peer_gloc = torch.autograd.grad(peer_lp.mean(), (xp, peer_loc))

    xo = x.clone().requires_grad_()
    our_lp = base.log_prob(xo)
    our_gx, our_gloc = torch.autograd.grad(our_lp.mean(), (xo, base.loc))

    def err(a, ref, relative=False):
        e = (a.double() - ref).abs().max().item()
        return e / max(ref.abs().max().item(), 1e-300) if relative else e

    return {
        "log_prob": (err(our_lp, ref_lp), err(peer_lp, ref_lp)),
        "grad_x": (err(our_gx, ref_gx, True), err(peer_gx, ref_gx, True)),
        "grad_loc": (err(our_gloc, ref_gloc, True), err(peer_gloc, ref_gloc, True)),
    }


@pytest.mark.parametrize("num_points", [4, 8192])
@pytest.mark.parametrize("setting", ADVERSARIAL_SETTINGS, ids=lambda c: f"K{len(c[0])}-sep{c[1]:g}-D{c[2]}")
@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_float32_log_prob_and_gradients_within_twice_torch_error(covariance, setting, num_points):
    scales, separation, features = setting
    base, x = _float32(adversarial_case(covariance, scales, separation, features, num_points, seed=0))
    for name, (ours, theirs) in _errors(base, x, covariance).items():
        assert ours <= 2 * theirs + 1e-6, f"{name}: ours {ours:.2e}, torch {theirs:.2e}"


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_benign_and_spread_inputs_are_accurate(covariance):
    # trained bases: scales 0.03-0.09 (MAF) and points spread wider than the components
    for spread in (1.0, 4.0, 30.0):
        base, x = _float32(spread_case(covariance, spread, 4096))
        for name, (ours, theirs) in _errors(base, x, covariance).items():
            assert ours <= 2 * theirs + 1e-6, f"spread {spread}, {name}: ours {ours:.2e}, torch {theirs:.2e}"


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_empty_batch_gives_empty_log_prob_and_zero_gradients(covariance):
    base = MixtureOfGaussians(3, 4, covariance=covariance)
    out = base.log_prob(torch.zeros(0, 3))
    assert out.shape == (0,)
    out.sum().backward()
    for p in base.parameters():
        assert p.grad is not None and torch.all(p.grad == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_full_covariance_components_sample(dtype):
    factor = torch.eye(2).expand(3, 2, 2).to(dtype)
    components = GaussianComponents(torch.zeros(3, 2, dtype=dtype), factor=factor)
    sample = components.select(torch.tensor([0, 1, 2])).sample(torch.randn(3, 2, dtype=dtype))
    assert sample.dtype == dtype and torch.isfinite(sample).all()


def test_accumulation_dtype_is_one_step_wider():
    assert accumulation_dtype(torch.float32) == torch.float64
    assert accumulation_dtype(torch.float64) == torch.float64
    assert accumulation_dtype(torch.float16) == torch.float32
    assert accumulation_dtype(torch.bfloat16) == torch.float32


# ------------------------------------------------------------------------------------------------ conversions
def _random_covariances(*batch: int, features: int = 4, seed: int = 0) -> torch.Tensor:
    """Well-conditioned SPD matrices batch + (D, D) in float64: A Aᵀ + D I."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(*batch, features, features, generator=generator, dtype=DOUBLE)
    return a @ a.mT + features * torch.eye(features, dtype=DOUBLE)


@pytest.mark.parametrize("batch", [(), (5,), (2, 3)], ids=lambda b: f"batch{b}")
def test_precision_factor_is_upper_triangular_with_inverse_gram(batch):
    covariance = _random_covariances(*batch)
    factor = precision_factor_from_covariance(covariance)
    assert factor.shape == covariance.shape and factor.dtype == DOUBLE
    torch.testing.assert_close(factor, factor.triu(), rtol=0, atol=0)
    assert (factor.diagonal(dim1=-2, dim2=-1) > 0).all()
    torch.testing.assert_close(factor.mT @ factor, torch.linalg.inv(covariance), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch", [(), (5,), (2, 3)], ids=lambda b: f"batch{b}")
def test_covariance_precision_factor_round_trip(batch):
    covariance = _random_covariances(*batch, seed=1)
    back = covariance_from_precision_factor(precision_factor_from_covariance(covariance))
    assert back.shape == covariance.shape and back.dtype == DOUBLE
    torch.testing.assert_close(back, covariance, rtol=1e-10, atol=1e-12)
    # and from the other side: an arbitrary upper factor with positive diagonal
    generator = torch.Generator().manual_seed(2)
    factor = torch.randn(*batch, 4, 4, generator=generator, dtype=DOUBLE).triu()
    factor.diagonal(dim1=-2, dim2=-1).copy_(torch.rand(*batch, 4, generator=generator, dtype=DOUBLE) + 0.5)
    covariance = covariance_from_precision_factor(factor)
    torch.testing.assert_close(covariance, torch.linalg.inv(factor.mT @ factor), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(precision_factor_from_covariance(covariance), factor, rtol=1e-9, atol=1e-10)


def test_precision_factor_refuses_covariances_that_are_not_positive_definite():
    covariance = _random_covariances(3, seed=3)
    covariance[1] = torch.tensor([[1.0, 2.0, 0.0, 0.0], [2.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0] * 3 + [1.0]])
    with pytest.raises(ValueError, match=r"positive definite; components \[1\] are not"):
        precision_factor_from_covariance(covariance)


def test_half_precision_factor_gives_its_covariance_in_its_dtype():
    factor = precision_factor_from_covariance(_random_covariances(2, seed=4))
    covariance = covariance_from_precision_factor(factor.to(torch.bfloat16))
    assert covariance.dtype == torch.bfloat16
    torch.testing.assert_close(covariance.double(), covariance_from_precision_factor(factor), rtol=0.05, atol=0.05)


def test_large_off_diagonal_precision_entries_give_finite_gradients():
    # EM on a strongly correlated cluster (penguins, K = 6) gave an off-diagonal entry of U above float32's exp
    # range: exp of the discarded branch was inf and the whole gradient NaN. Packed order: (0,0) (0,1) (0,2)
    # (1,1) (1,2) (2,2).
    raw = torch.tensor([[0.1, 120.0, -95.0, 0.2, 3.0, -0.3]], requires_grad=True)
    factor = unpack_precision_factor(raw, 3)
    expected = torch.tensor([[0.1, 120.0, -95.0], [0.0, 0.2, 3.0], [0.0, 0.0, -0.3]])
    expected.diagonal().exp_()
    torch.testing.assert_close(factor[0], expected)
    factor.sum().backward()
    diagonal = torch.tensor([True, False, False, True, False, True])
    torch.testing.assert_close(raw.grad[0], torch.where(diagonal, raw.detach()[0].exp(), torch.ones(6)))

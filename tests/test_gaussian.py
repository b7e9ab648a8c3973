"""Float32 accuracy of the shared-component kernels (`mog_flows.gaussian`) against torch.distributions.

The adversarial suite: narrow components far from the others (scales 1e-4 … 1e4 in one mixture, separations up
to 1e4), points near every component and far from all, small and large N. Our float32 `log_prob` and its gradients
must be within 2× of the error torch.distributions makes on the same float32 inputs, plus 1e-6 (absolute for
log-densities, relative to the largest reference entry for gradients). References are float64 torch.distributions.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as td

from mog_flows import MixtureOfGaussians
from mog_flows.gaussian import GaussianComponents, accumulation_dtype

DOUBLE = torch.float64


def _case(covariance: str, scales: list[float], separation: float, num_points: int, features: int, seed: int):
    """Mixture parameters in float64 (rounded through float32, so every implementation holds the same mixture)
    and float32 points: half near the components, a quarter between, a quarter far from all."""
    g = torch.Generator().manual_seed(seed)
    K, D = len(scales), features
    means = separation * torch.rand(K, D, dtype=DOUBLE, generator=g)
    means[0] = 0.0
    means[-1, 0] = separation
    scale = torch.tensor(scales, dtype=DOUBLE)[:, None] * (0.5 + torch.rand(K, D, dtype=DOUBLE, generator=g))
    weights = torch.softmax(torch.randn(K, dtype=DOUBLE, generator=g), 0)
    if covariance == "diagonal":
        covariances = scale.square()
    else:
        off = torch.tril(torch.randn(K, D, D, dtype=DOUBLE, generator=g), -1) * 0.3 / math.sqrt(D)
        tril = scale.unsqueeze(-1) * (torch.eye(D, dtype=DOUBLE) + off)
        covariances = tril @ tril.mT
    base = MixtureOfGaussians.from_parameters(weights, means, covariances, covariance=covariance).float()
    index = torch.randint(K, (num_points,), generator=g)
    near = means[index] + scale[index] * torch.randn(num_points, D, dtype=DOUBLE, generator=g)
    kind = torch.arange(num_points) % 4
    far = separation * (4 * torch.rand(num_points, D, dtype=DOUBLE, generator=g) - 2)
    between = 0.5 * (means[index] + means[(index + 1) % K])
    x = torch.where((kind == 2)[:, None], between, torch.where((kind == 3)[:, None], far, near)).float()
    return base, x


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


ADVERSARIAL = [
    # (scales, separation, features): the two-component cases and a wide-range many-component mixture
    ([1e-4, 1.0], 100.0, 2),
    ([1e-3, 1.0], 1e4, 2),
    ([1e-2, 1.0], 10.0, 2),
    ([1e-4, 1e-2, 1.0, 1e2, 1e4], 1e4, 4),
    ([10.0**e for e in torch.linspace(-4, 4, 64).tolist()], 1e3, 16),
]


@pytest.mark.parametrize("num_points", [4, 8192])
@pytest.mark.parametrize("case", ADVERSARIAL, ids=lambda c: f"K{len(c[0])}-sep{c[1]:g}-D{c[2]}")
@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_float32_log_prob_and_gradients_within_twice_torch_error(covariance, case, num_points):
    scales, separation, features = case
    base, x = _case(covariance, scales, separation, num_points, features, seed=0)
    for name, (ours, theirs) in _errors(base, x, covariance).items():
        assert ours <= 2 * theirs + 1e-6, f"{name}: ours {ours:.2e}, torch {theirs:.2e}"


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_benign_and_spread_inputs_are_accurate(covariance):
    # trained bases: scales 0.03-0.09 (MAF) and points spread wider than the components
    for spread in (1.0, 4.0, 30.0):
        base, x = _case(covariance, [0.03, 0.05, 0.09, 0.5] * 4, 5.0, 4096, 8, seed=1)
        x = x * spread
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

"""`mog_flows.simplex`: `simplex_flow`'s density against an independent float64 change of variables, and its
sampling direction. (The additive logistic transform's own tests live with the maximum-entropy study, in
tests/test_maxent.py.)"""

from __future__ import annotations

import pytest
import torch
from nflows.distributions import Distribution
from nflows.flows import Flow
from nflows.transforms import CompositeTransform, ReversePermutation
from torch import nn
from torch.autograd.functional import jacobian

from mog_flows import build_flow
from mog_flows.nflows_adapters import flow_base, flow_transform
from mog_flows.simplex import AdditiveLogRatio, simplex_flow

DOUBLE = torch.float64


@torch.no_grad()
def _perturb(module: nn.Module, scale: float = 0.2, seed: int = 0) -> None:
    """Seeded noise on every parameter, so that the flow is far from the identity."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in module.parameters():
        parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=DOUBLE).to(parameter))


def _flow(features: int, base: str, transform: str) -> Flow:
    torch.manual_seed(0)
    kwargs = dict(num_components=3) if base == "mog" else {}
    flow = build_flow(features, base=base, transform=transform, num_layers=2, hidden_features=8, **kwargs).to(DOUBLE)
    _perturb(flow)
    return flow


def _simplex_points(num_points: int, features: int, seed: int = 1) -> torch.Tensor:
    """Dirichlet(1/2, ..., 1/2) points, first D of D + 1 coordinates: many near the simplex's faces."""
    torch.manual_seed(seed)
    concentration = torch.full((features + 1,), 0.5, dtype=DOUBLE)
    y = torch.distributions.Dirichlet(concentration).sample((num_points,))[:, :features]
    keep = (y > 1e-8).all(-1) & (y.sum(-1) < 1 - 1e-8)  # well inside the open simplex in float64
    return y[keep]


def _alr(y: torch.Tensor) -> torch.Tensor:
    """The additive log-ratio written out: x_i = log y_i - log(1 - Σ_j y_j), y (D,) -> (D,)."""
    return torch.log(y) - torch.log(1 - y.sum())


CASES = [
    pytest.param(1, "gaussian", "maf", id="D1-gaussian-maf"),
    pytest.param(2, "mog", "nsf", id="D2-mog-nsf"),
    pytest.param(3, "mog", "realnvp", id="D3-mog-realnvp"),
    pytest.param(3, "gaussian", "nsf", id="D3-gaussian-nsf"),
]


@pytest.mark.parametrize("features, base, transform", CASES)
def test_simplex_log_prob_is_the_change_of_variables_with_an_explicit_jacobian(features, base, transform):
    flow = _flow(features, base, transform)
    on_simplex = simplex_flow(flow)
    y = _simplex_points(40, features)
    with torch.no_grad():
        log_prob = on_simplex.log_prob(y)
    expected = []
    for point in y:
        x = _alr(point)
        sign, log_det = torch.linalg.slogdet(jacobian(_alr, point))  # (D, D) by autograd
        assert sign > 0
        with torch.no_grad():
            expected.append(flow.log_prob(x.unsqueeze(0)).squeeze(0) + log_det)
    torch.testing.assert_close(log_prob, torch.stack(expected), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("features, base, transform", CASES)
def test_simplex_samples_are_the_additive_logistic_of_the_flow_samples(features, base, transform):
    flow = _flow(features, base, transform)
    on_simplex = simplex_flow(flow)
    with torch.no_grad():
        torch.manual_seed(7)
        x = flow.sample(50)
        torch.manual_seed(7)
        y = on_simplex.sample(50)
    expected = torch.exp(x) / (1 + torch.exp(x).sum(-1, keepdim=True))  # y_i = e^{x_i} / (1 + Σ_j e^{x_j})
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-12)
    assert (y > 0).all() and (y.sum(-1) < 1).all()


def test_simplex_flow_shares_the_flow_parameters_and_base():
    flow = _flow(2, "mog", "maf")
    on_simplex = simplex_flow(flow)
    assert flow_base(on_simplex) is flow_base(flow)
    assert {id(p) for p in on_simplex.parameters()} == {id(p) for p in flow.parameters()}
    # its transform is the additive log-ratio, then the flow's own transform
    y = _simplex_points(10, 2)
    with torch.no_grad():
        z = flow_transform(on_simplex)(y)[0]
        expected = flow_transform(flow)(AdditiveLogRatio(2)(y)[0])[0]
    torch.testing.assert_close(z, expected, rtol=0, atol=0)
    # training one trains the other
    before = on_simplex.log_prob(y).detach()
    with torch.no_grad():
        flow_base(flow).loc.add_(0.5)
    assert not torch.allclose(on_simplex.log_prob(y).detach(), before)


def test_simplex_flow_refuses_what_it_cannot_wrap():
    with pytest.raises(TypeError, match="nflows Flow"):
        simplex_flow(nn.Linear(2, 2))

    class Shapeless(Distribution):
        def _log_prob(self, inputs, context):
            return inputs.new_zeros(inputs.shape[0])

    with pytest.raises(ValueError, match="number of features"):
        simplex_flow(Flow(CompositeTransform([ReversePermutation(2)]), Shapeless()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_saturated_logistic_outputs_stay_strictly_inside_the_simplex(dtype):
    # x_1 = 30 (float32: y_1 rounds to 1, so 1 - y_1 = 0), x = -200 (y underflows to 0), and benign rows
    from mog_flows.simplex import AdditiveLogistic

    x = torch.tensor([[30.0, 0.0], [-200.0, 1.0], [800.0, -800.0], [0.3, -1.2]], dtype=dtype)
    y, log_det = AdditiveLogistic(2)(x)
    last = 1 - y.sum(-1)
    assert (y > 0).all() and (last > 0).all() and torch.isfinite(torch.log(last)).all()
    exact = torch.log_softmax(torch.cat([x.double(), torch.zeros(4, 1, dtype=DOUBLE)], -1), -1)
    torch.testing.assert_close(log_det.double(), exact.sum(-1))  # the log-determinant is exact
    plain = torch.log_softmax(torch.cat([x, torch.zeros(4, 1, dtype=dtype)], -1), -1)[:, :2].exp()
    assert torch.equal(y[3], plain[3])  # a benign row is untouched
    torch.testing.assert_close(y.double(), exact[:, :2].exp(), rtol=0, atol=2 * torch.finfo(dtype).eps)

"""`build_flow`: nflows flows (neural spline, MAF, RealNVP) over a mixture-of-Gaussians or Gaussian base.

Every conditioner's last layer starts at zero output (with biases set so the elementwise map is the identity),
so a new flow is exactly the identity map and its density is the base density.
"""

from __future__ import annotations

import math

import torch
from nflows.distributions import Distribution, StandardNormal
from nflows.flows import Flow
from nflows.nn.nets import ResidualNet
from nflows.transforms import (
    AffineCouplingTransform,
    CompositeTransform,
    MaskedAffineAutoregressiveTransform,
    MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
    Permutation,
    PiecewiseRationalQuadraticCouplingTransform,
    RandomPermutation,
    ReversePermutation,
)
from nflows.transforms.splines.rational_quadratic import DEFAULT_MIN_DERIVATIVE
from torch import nn

from .checks import check_choice, check_positive_int
from .mixture import MixtureOfGaussians

__all__ = ["build_flow", "TRANSFORMS"]

TRANSFORMS = ("nsf", "maf", "realnvp")
_SCALE_EPSILON = 1e-3


def _inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


class _SoftplusAffineCoupling(AffineCouplingTransform):
    """Affine coupling with scale softplus(s) + 1e-3 (as nflows' MAF), instead of nflows' saturating
    sigmoid(s + 2) + 1e-3, so the identity (scale 1) sits where the gradient is healthy."""

    def _scale_and_shift(self, transform_params):
        unconstrained_scale = transform_params[:, self.num_transform_features :, ...]
        shift = transform_params[:, : self.num_transform_features, ...]
        return nn.functional.softplus(unconstrained_scale) + _SCALE_EPSILON, shift


class _StandardNormal(StandardNormal):
    """nflows' `StandardNormal`, sampling in the dtype and on the device the module lives on (nflows draws in
    torch's default dtype, so a float64 flow over it could not sample)."""

    def __init__(self, shape):
        super().__init__(shape)
        self._log_z = self._log_z.to(torch.get_default_dtype())  # a buffer: follows .to(dtype/device) from here on

    def _sample(self, num_samples, context):
        batch = (num_samples,) if context is None else (context.shape[0], num_samples)
        return torch.randn(*batch, *self._shape, dtype=self._log_z.dtype, device=self._log_z.device)


def _identity_init(final_layer: nn.Linear, features: int, identity_bias: torch.Tensor) -> None:
    """Zero the last layer and set its bias to `identity_bias` (per-feature parameters) for every feature,
    in nflows' feature-major layout (feature, parameter) of autoregressive and spline conditioners."""
    with torch.no_grad():
        final_layer.weight.zero_()
        final_layer.bias.copy_(identity_bias.to(final_layer.bias).repeat(features))


def _spline_identity_bias(num_bins: int) -> torch.Tensor:
    # uniform widths and heights (zeros) and unit interior derivatives make the rational-quadratic spline the identity
    derivative = _inverse_softplus(1 - DEFAULT_MIN_DERIVATIVE)
    return torch.cat([torch.zeros(2 * num_bins), torch.full((num_bins - 1,), derivative)])


def _make_base(features, base, num_components, context_features, hidden_features, base_kwargs) -> Distribution:
    if isinstance(base, Distribution):
        if base_kwargs:
            raise ValueError(f"base_kwargs {sorted(base_kwargs)} only apply to base='mog'; a Distribution was given")
        return base
    check_choice("base", base, ("mog", "gaussian"))
    if base == "gaussian":
        if base_kwargs:
            raise ValueError(f"base_kwargs {sorted(base_kwargs)} only apply to base='mog'")
        return _StandardNormal([features])
    base_kwargs.setdefault("hidden_features", hidden_features)
    return MixtureOfGaussians(features, num_components, context_features=context_features, **base_kwargs)


def build_flow(
    features: int,
    *,
    base: str | Distribution = "mog",
    transform: str = "nsf",
    num_layers: int = 4,
    hidden_features: int = 64,
    num_components: int = 8,
    context_features: int | None = None,
    num_bins: int = 8,
    tail_bound: float = 5.0,
    **base_kwargs,
) -> Flow:
    """An nflows `Flow` of `num_layers` transforms over a base distribution.

    Args:
        features: D.
        base: "mog" (a `MixtureOfGaussians` with `num_components` and `base_kwargs`), "gaussian" (standard
            normal) or any nflows `Distribution`.
        transform: "nsf" (rational-quadratic spline couplings; autoregressive when D = 1), "maf" (masked affine
            autoregressive) or "realnvp" (affine couplings, D ≥ 2), alternating with feature permutations, and a
            last permutation that undoes their product, so that a new flow is the identity.
        hidden_features: width of the conditioner networks (and of a conditional base's context network).
        context_features: C; makes transforms and a "mog" base conditional on a context (N, C).
        num_bins, tail_bound: spline settings for "nsf" (identity outside [-tail_bound, tail_bound]).
    """
    check_positive_int("features", features)
    check_positive_int("num_layers", num_layers)
    check_positive_int("hidden_features", hidden_features)
    check_choice("transform", transform, TRANSFORMS)
    if transform == "realnvp" and features < 2:
        raise ValueError(f"transform='realnvp' needs features >= 2 (it splits the features); got {features}")
    distribution = _make_base(features, base, num_components, context_features, hidden_features, dict(base_kwargs))

    layers = []
    for index in range(num_layers):
        if features > 1:
            layers.append(ReversePermutation(features) if index % 2 == 0 else RandomPermutation(features))
        layers.append(_make_layer(transform, features, index, hidden_features, context_features, num_bins, tail_bound))
    if features > 1:
        # undo the product of the permutations, so that a new flow is the identity (a permutation in front of the
        # base would change a mixture's density; it adds nothing a learnable mixture cannot absorb)
        net = torch.arange(features)
        for layer in layers:
            if isinstance(layer, Permutation):
                net = net[layer._permutation]  # x[:, p1][:, p2] = x[:, p1[p2]]
        layers.append(Permutation(torch.argsort(net)))
    return Flow(CompositeTransform(layers), distribution)


def _coupling_mask(features: int, index: int) -> torch.Tensor:
    mask = torch.arange(features) % 2 == index % 2
    return mask.long()


def _make_layer(transform, features, index, hidden_features, context_features, num_bins, tail_bound):
    def conditioner(in_features, out_features):
        return ResidualNet(in_features, out_features, hidden_features, context_features=context_features, num_blocks=2)

    if transform == "maf":
        layer = MaskedAffineAutoregressiveTransform(
            features, hidden_features, context_features=context_features, num_blocks=2, use_residual_blocks=True
        )
        bias = torch.tensor([_inverse_softplus(1 - _SCALE_EPSILON), 0.0])  # (unconstrained scale, shift)
        _identity_init(layer.autoregressive_net.final_layer, features, bias)
        return layer
    if transform == "nsf" and features == 1:
        layer = MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
            features,
            hidden_features,
            context_features=context_features,
            num_bins=num_bins,
            tails="linear",
            tail_bound=tail_bound,
            num_blocks=2,
        )
        _identity_init(layer.autoregressive_net.final_layer, features, _spline_identity_bias(num_bins))
        return layer
    mask = _coupling_mask(features, index)
    transformed = int(mask.sum())
    if transform == "nsf":
        layer = PiecewiseRationalQuadraticCouplingTransform(
            mask, conditioner, num_bins=num_bins, tails="linear", tail_bound=tail_bound
        )
        _identity_init(layer.transform_net.final_layer, transformed, _spline_identity_bias(num_bins))
        return layer
    layer = _SoftplusAffineCoupling(mask, conditioner)
    with torch.no_grad():  # layout: shifts of the transformed features, then their unconstrained scales
        final = layer.transform_net.final_layer
        final.weight.zero_()
        final.bias.zero_()
        final.bias[transformed:] = _inverse_softplus(1 - _SCALE_EPSILON)
    return layer

"""`build_flow`: nflows flows (neural spline, MAF, RealNVP) over a mixture-of-Gaussians or Gaussian base.

Every conditioner's last layer starts at zero output (with biases set so the elementwise map is the identity),
so a new flow is exactly the identity map and its density is the base density.
"""

from __future__ import annotations

import math

import torch
from nflows.distributions import Distribution, StandardNormal
from nflows.flows import Flow as NflowsFlow
from nflows.nn.nets import ResidualNet
from nflows.transforms import (
    AffineCouplingTransform,
    CompositeTransform,
    MaskedAffineAutoregressiveTransform,
    MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
    Permutation,
    PiecewiseRationalQuadraticCouplingTransform,
    PointwiseAffineTransform,
    RandomPermutation,
    ReversePermutation,
)
from nflows.transforms.splines.rational_quadratic import DEFAULT_MIN_DERIVATIVE
from torch import nn

from .checks import (
    check_choice,
    check_context,
    check_features,
    check_like,
    check_num_samples,
    check_positive_int,
    check_positive_number,
)
from .mixture import MixtureOfGaussians
from .nflows_adapters import distribution_features, permutation_indices, sample_in_batches

__all__ = ["build_flow", "Flow", "TRANSFORMS"]

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


class Flow(NflowsFlow):
    """nflows' `Flow` with its inputs checked at the boundary: inputs of shape (N, features) and finite, a context
    exactly when the flow is conditional, of shape (N, context_features), both in the flow's dtype and on its device.
    An empty batch gives an empty result (with zero gradients); `sample` takes integer-like counts and, with a
    context, `batch_size`."""

    def __init__(
        self,
        transform,
        distribution,
        embedding_net: nn.Module | None = None,
        *,
        features: int,
        context_features: int | None,
    ) -> None:
        super().__init__(transform, distribution, embedding_net)
        self.features = features
        # with an embedding net the context is its input, whose width only the net knows: rows and dtype are checked
        self.context_features = context_features
        self._embedded = embedding_net is not None

    def _reference(self) -> torch.Tensor:
        return next(self.parameters())

    def _checked_inputs(self, inputs, name: str = "inputs") -> torch.Tensor:
        inputs = check_features(name, torch.as_tensor(inputs), self.features)
        return check_like(name, inputs, self._reference(), "the flow")

    def _checked_context(self, context, rows: int | None) -> torch.Tensor | None:
        if context is not None:
            context = torch.as_tensor(context)
        if self._embedded:
            if context is None:
                raise ValueError("this flow is conditional (it has an embedding net): pass a context")
            if rows is not None and context.shape[0] != rows:
                raise ValueError(f"context must have one row per input: {rows} inputs, {context.shape[0]} context rows")
        else:
            check_context(context, self.context_features, rows)
        if context is not None:
            check_like("context", context, self._reference(), "the flow")
        return context

    def log_prob(self, inputs, context=None) -> torch.Tensor:
        inputs = self._checked_inputs(inputs)
        context = self._checked_context(context, rows=inputs.shape[0])
        if inputs.shape[0] == 0:
            # nflows' couplings cannot reshape an empty batch; the empty sum keeps the graph (zero gradients)
            return inputs.sum(-1) + sum(parameter.sum() for parameter in self.parameters()) * 0
        return self._log_prob(inputs, context)

    def transform_to_noise(self, inputs, context=None) -> torch.Tensor:
        inputs = self._checked_inputs(inputs)
        context = self._checked_context(context, rows=inputs.shape[0])
        if inputs.shape[0] == 0:
            return inputs * 1
        return super().transform_to_noise(inputs, context)

    def sample(self, num_samples, context=None, batch_size=None) -> torch.Tensor:
        context = self._checked_context(context, rows=None)
        return sample_in_batches(self._sample, num_samples, context, batch_size)

    def sample_and_log_prob(self, num_samples, context=None):
        num_samples = check_num_samples(num_samples)
        context = self._checked_context(context, rows=None)
        return super().sample_and_log_prob(num_samples, context)


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
        _check_given_base(base, features, context_features)
        return base
    check_choice("base", base, ("mog", "gaussian"))
    if base == "gaussian":
        if base_kwargs:
            raise ValueError(f"base_kwargs {sorted(base_kwargs)} only apply to base='mog'")
        return _StandardNormal([features])
    base_kwargs.setdefault("hidden_features", hidden_features)
    return MixtureOfGaussians(features, num_components, context_features=context_features, **base_kwargs)


def _check_given_base(base: Distribution, features: int, context_features: int | None) -> None:
    """A given base must live in the flow's D and be conditioned as the flow is (where the base says so)."""
    base_features = distribution_features(base)  # ours, nflows' StandardNormal and other shaped bases
    if base_features is not None and base_features != features:
        raise ValueError(f"the base distribution has {base_features} features but build_flow got features={features}")
    if isinstance(base, MixtureOfGaussians) and base.context_features != context_features:
        if base.context_features is None:
            raise ValueError(
                f"build_flow(context_features={context_features}) needs a conditional base (nflows passes the context "
                "to it): build the MixtureOfGaussians with the same context_features, or pass base='mog'"
            )
        raise ValueError(
            f"the base MixtureOfGaussians is conditional with context_features={base.context_features} but "
            f"build_flow got context_features={context_features}; they must be equal"
        )


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
    standardize: torch.Tensor | None = None,
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
        num_bins: spline bins for "nsf".
        tail_bound: the "nsf" splines are the identity outside [-tail_bound, tail_bound].
        standardize: None, or data (N, D): the flow's first transform becomes the fixed affine map
            z = (x - m) / s, m and s the mean and standard deviation of each feature over the rows (s = 1 where a
            feature is constant), so that data in any units meet the layers and the base near unit scale, while
            `log_prob` stays in the data's units (it includes -Σ_d log s_d). m and s are buffers, saved in the
            state dict: to rebuild a saved flow, pass any (1, D) tensor and load the state dict.
    """
    check_positive_int("features", features)
    check_positive_int("num_layers", num_layers)
    check_positive_int("hidden_features", hidden_features)
    check_choice("transform", transform, TRANSFORMS)
    if context_features is not None:
        check_positive_int("context_features", context_features)
    check_positive_int("num_bins", num_bins)
    check_positive_number("tail_bound", tail_bound)
    if transform == "realnvp" and features < 2:
        raise ValueError(f"transform='realnvp' needs features >= 2 (it splits the features); got {features}")
    distribution = _make_base(features, base, num_components, context_features, hidden_features, dict(base_kwargs))

    layers = [] if standardize is None else [_standardizing_transform(standardize, features)]
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
                net = net[permutation_indices(layer)]  # x[:, p1][:, p2] = x[:, p1[p2]]
        layers.append(Permutation(torch.argsort(net)))
    return Flow(CompositeTransform(layers), distribution, features=features, context_features=context_features)


def _standardizing_transform(data: torch.Tensor, features: int) -> PointwiseAffineTransform:
    """x -> (x - m) / s over the rows of data (N, D), computed in float64, in the default dtype."""
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"standardize must be None or a data tensor (N, {features}); got {type(data).__name__}")
    data = check_features("standardize", data.detach(), features)
    if data.shape[0] == 0:
        raise ValueError(f"standardize must have at least one row; got shape {tuple(data.shape)}")
    data = data.double()
    mean, std = data.mean(0), data.std(0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    dtype = torch.get_default_dtype()
    return PointwiseAffineTransform(shift=(-mean / std).to(dtype), scale=(1 / std).to(dtype))


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

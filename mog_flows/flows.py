"""`build_flow`: nflows flows (neural spline, MAF, RealNVP) over a mixture-of-Gaussians or Gaussian base.

Every conditioner's last layer starts at zero output (with biases set so the elementwise map is the identity),
so a new flow is exactly the identity map and its density is the base density.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

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
    check_finite,
    check_like,
    check_num_samples,
    check_positive_int,
    check_positive_number,
)
from .mixture import MixtureOfGaussians
from .nflows_adapters import distribution_features, permutation_indices, sample_in_batches

__all__ = ["build_flow", "Flow", "Standardize", "TRANSFORMS"]

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
            if self.context_features is not None and (context.dim() != 2 or context.shape[1] != self.context_features):
                raise ValueError(
                    f"context must have shape (N, {self.context_features}) (the embedding net's input); "
                    f"got {tuple(context.shape)}"
                )
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


_BASE_KEYWORDS = tuple(
    name
    for name, parameter in inspect.signature(MixtureOfGaussians.__init__).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name != "context_features"
)


def _make_base(features, base, num_components, context_features, hidden_features, base_kwargs) -> Distribution:
    unknown = sorted(set(base_kwargs) - set(_BASE_KEYWORDS))
    if unknown:
        raise TypeError(
            f"build_flow got unexpected keyword argument(s) {', '.join(map(repr, unknown))}: its own arguments are "
            f"{', '.join(_BUILD_FLOW_KEYWORDS)}, and other keywords go to the MixtureOfGaussians base, which takes "
            f"{', '.join(_BASE_KEYWORDS)}"
        )
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
    num_components: int = 32,
    context_features: int | None = None,
    num_bins: int = 8,
    tail_bound: float = 5.0,
    standardize: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
    embedding_net: nn.Module | None = None,
    **base_kwargs: Any,
) -> Flow:
    """An nflows `Flow` of `num_layers` transforms over a base distribution.

    Args:
        features: D.
        base: "mog" (a `MixtureOfGaussians` with `num_components` and `base_kwargs`), "gaussian" (standard
            normal) or any nflows `Distribution`.
        transform: "nsf" (rational-quadratic spline couplings; autoregressive when D = 1), "maf" (masked affine
            autoregressive) or "realnvp" (affine couplings, D ≥ 2), alternating with feature permutations, and a
            last permutation that undoes their product, so that a new flow is the identity. Each coupling after
            the first transforms the features the one before it left unchanged (or, every other layer, a new split
            of them), so every feature is transformed in every pair of layers; in 2-D the two features alternate.
        hidden_features: width of the conditioner networks (and of a conditional base's context network).
        num_components: K of a "mog" base. The default, 32, is what the base comparison chose on held-out seeds
            (a flow over 8 components lost to a 32-component mixture alone on curved modes).
        context_features: C; makes transforms and a "mog" base conditional on a context (N, C). With an
            `embedding_net`, C is the width of the context the net takes; the layers and the base are then
            conditioned on the net's output, whose width is found by calling the net on a (2, C) probe.
        num_bins: spline bins for "nsf".
        tail_bound: the "nsf" splines are the identity outside [-tail_bound, tail_bound].
        standardize: None, or data (N, D): the flow's first transform becomes the fixed affine map
            z = (x - m) / s, m and s the mean and standard deviation of each feature over the rows (s = 1 where a
            feature is constant), so that data in any units meet the layers and the base near unit scale, while
            `log_prob` stays in the data's units (it includes -Σ_d log s_d). m and s are buffers, saved in the
            state dict: to rebuild a saved flow, pass any (1, D) tensor and load the state dict. For a
            conditional flow, a tuple (x (N, D), context (N, C)) also z-scores the context (a `Standardize`
            module in front of the embedding net), as sbi's `z_score_x` and `z_score_theta` do; either entry may be
            None; the context's scaling has no log-determinant (log p(x | c) is a density in x).
        embedding_net: a module (N, C) -> (N, E) that the context passes through before it reaches the
            transforms and a "mog" base (sbi's embedding nets); it trains with the flow. Needs `context_features`.
        **base_kwargs: passed to the `MixtureOfGaussians` of a "mog" base: covariance, temperature, estimator,
            num_inner (any other keyword is a TypeError naming build_flow).
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
    x_data, context_data = _standardize_data(standardize, features, context_features)
    if context_data is not None:
        embedding_net = nn.Sequential(Standardize(context_data), embedding_net or nn.Identity())
    layer_context = _embedding_features(embedding_net, context_features)
    distribution = _make_base(features, base, num_components, layer_context, hidden_features, dict(base_kwargs))

    layers = [] if x_data is None else [_standardizing_transform(x_data, features)]
    net = torch.arange(features)  # net[j]: the input feature at position j after the permutations so far
    transformed = None  # the input features the previous coupling transformed
    for index in range(num_layers):
        if features > 1:
            permutation = ReversePermutation(features) if index % 2 == 0 else RandomPermutation(features)
            layers.append(permutation)
            net = net[permutation_indices(permutation)]  # x[:, p1][:, p2] = x[:, p1[p2]]
        mask = _coupling_mask(net, index, transformed)
        transformed = net[mask.bool()]
        layers.append(_make_layer(transform, features, mask, hidden_features, layer_context, num_bins, tail_bound))
    if features > 1:
        # undo the product of the permutations, so that a new flow is the identity (a permutation in front of the
        # base would change a mixture's density; it adds nothing a learnable mixture cannot absorb)
        layers.append(Permutation(torch.argsort(net)))
    return Flow(
        CompositeTransform(layers), distribution, embedding_net, features=features, context_features=context_features
    )


_BUILD_FLOW_KEYWORDS = tuple(name for name in inspect.signature(build_flow).parameters if name != "base_kwargs")


class Standardize(nn.Module):
    """A fixed affine map c -> (c - m) / s, m and s the mean and standard deviation of each column of the data it
    was built from (s = 1 where a column is constant), kept as buffers: the context's z-scoring of
    `build_flow(standardize=(x, context))`."""

    def __init__(self, data: torch.Tensor) -> None:
        super().__init__()
        mean, std = _moments(data)
        dtype = torch.get_default_dtype()
        self.register_buffer("mean", mean.to(dtype))
        self.register_buffer("std", std.to(dtype))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return (inputs - self.mean) / self.std


def _moments(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    data = data.detach().double()
    mean, std = data.mean(0), data.std(0, correction=0)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def _standardize_data(standardize, features: int, context_features: int | None):
    """(x data or None, context data or None) from `standardize`: None, a tensor (N, D) or a tuple (x, context),
    either of which may be None."""
    if standardize is None or isinstance(standardize, torch.Tensor):
        return standardize, None
    if isinstance(standardize, tuple) and len(standardize) == 2:
        x, context = standardize
        if context is None:
            return x, None
        if context_features is None:
            raise ValueError("standardize=(x, context) needs a conditional flow: pass context_features")
        if not isinstance(context, torch.Tensor):
            raise TypeError(
                f"standardize's context must be a tensor (N, {context_features}); got {type(context).__name__}"
            )
        context = check_features("standardize's context", context.detach(), context_features)
        if isinstance(x, torch.Tensor) and context.shape[0] != x.shape[0]:
            raise ValueError(
                f"standardize's x and context must have the same rows; got {x.shape[0]} and {context.shape[0]}"
            )
        check_finite("standardize's context", context)
        return x, context
    raise TypeError(
        f"standardize must be None, a data tensor (N, {features}) or a tuple (x, context); "
        f"got {type(standardize).__name__}"
    )


@torch.no_grad()
def _embedding_features(embedding_net: nn.Module | None, context_features: int | None) -> int | None:
    """The context width the layers see: the embedding net's output width on a (2, C) probe, else C."""
    if embedding_net is None:
        return context_features
    if not isinstance(embedding_net, nn.Module):
        raise TypeError(f"embedding_net must be an nn.Module (N, C) -> (N, E); got {type(embedding_net).__name__}")
    if context_features is None:
        raise ValueError(
            "embedding_net needs context_features: the width C of the context it takes (the layers are then "
            "conditioned on its output)"
        )
    reference = next(iter(embedding_net.parameters()), None)
    probe = torch.zeros(
        2,
        context_features,
        dtype=torch.get_default_dtype() if reference is None else reference.dtype,
        device=None if reference is None else reference.device,
    )
    training = embedding_net.training
    embedding_net.eval()
    try:
        output = embedding_net(probe)
    except Exception as error:
        raise ValueError(
            f"embedding_net fails on a context of shape (2, {context_features}) (context_features={context_features}): "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from error
    finally:
        embedding_net.train(training)
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != 2 or output.shape[1] < 1:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(
            f"embedding_net must map a context (N, {context_features}) to (N, E); on (2, "
            f"{context_features}) it returned {shape}"
        )
    return output.shape[1]


def _standardizing_transform(data: torch.Tensor, features: int) -> PointwiseAffineTransform:
    """x -> (x - m) / s over the rows of data (N, D), computed in float64, in the default dtype."""
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"standardize must be None or a data tensor (N, {features}); got {type(data).__name__}")
    data = check_features("standardize", data.detach(), features)
    if data.shape[0] == 0:
        raise ValueError(f"standardize must have at least one row; got shape {tuple(data.shape)}")
    check_finite("standardize", data)
    mean, std = _moments(data)
    dtype = torch.get_default_dtype()
    return PointwiseAffineTransform(shift=(-mean / std).to(dtype), scale=(1 / std).to(dtype))


def _coupling_mask(net: torch.Tensor, index: int, previous: torch.Tensor | None) -> torch.Tensor:
    """The coupling mask (1 = transformed) of layer `index`, by position, given `net` (the input feature at each
    position) and the input features the previous coupling transformed.

    Odd layers transform exactly the input features the previous layer left unchanged, so every pair of layers
    transforms every feature once, conditioned on all the others, whatever the random permutations drew. Even
    layers transform the even positions (a new split of the features), or the complement of the previous layer's
    features when that split repeats it; with D = 2 the transformed feature thus alternates. (Masks by position
    alone left a feature untransformed by every layer in one 2-D flow in four.)"""
    positions = (torch.arange(net.numel()) % 2 == 0).long()
    if previous is None:
        return positions
    complement = (~torch.isin(net, previous)).long()
    if index % 2 == 1 or torch.equal(torch.sort(net[positions.bool()]).values, torch.sort(previous).values):
        return complement
    return positions


def _make_layer(transform, features, mask, hidden_features, context_features, num_bins, tail_bound):
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

"""Flows on the open probability simplex: the additive logistic bijection ℝᴰ → Δᴰ and its inverse, the additive
log-ratio, as nflows transforms (the maximum-entropy Dirichlet study, MEFN §4.1).

Shapes: N batch, D features. A point of the open D-simplex Δᴰ = {y ∈ (0, 1)^{D+1}: Σ y = 1} is represented by its
first D coordinates y (N, D), with y_i > 0 and Σ_i y_i < 1; the last coordinate is y_{D+1} = 1 - Σ_i y_i.

    additive logistic   y_i = exp(x_i) / (1 + Σ_j exp(x_j)),     i = 1..D   (softmax of (x_1, ..., x_D, 0))
    additive log-ratio  x_i = log(y_i / y_{D+1})

The Jacobian of the additive logistic map is diag(y) - y yᵀ, with determinant Π_{i=1}^{D+1} y_i, so

    log |det ∂y/∂x| = Σ_{i=1}^{D+1} log y_i = Σ_i x_i - (D + 1) log(1 + Σ_j exp(x_j)).
"""

from __future__ import annotations

import torch
from nflows.distributions import Distribution
from nflows.flows import Flow
from nflows.transforms import CompositeTransform, InverseTransform, Transform
from nflows.transforms.base import InputOutsideDomain
from torch import Tensor

from .flows import Flow as CheckedFlow
from .nflows_adapters import distribution_features, flow_base, flow_transform

__all__ = ["AdditiveLogistic", "AdditiveLogRatio", "simplex_flow"]


def _log_simplex(x: Tensor) -> Tensor:
    """log (y_1, ..., y_{D+1}) = log_softmax(x_1, ..., x_D, 0): x (N, D) -> (N, D + 1), finite for any finite x."""
    return torch.log_softmax(torch.cat([x, x.new_zeros(*x.shape[:-1], 1)], dim=-1), dim=-1)


def _inside(y: Tensor) -> Tensor:
    """y (N, D) moved to the nearest points that stay strictly inside the simplex in y's dtype: coordinates that
    underflowed to 0 become the smallest normal number, and rows whose sum rounded up to 1 (the last coordinate
    below the dtype's resolution at 1: x_i > 17 in float32) are scaled to sum to 1 - eps. Such points are not
    representable otherwise (1 - Σ y would be 0 and a statistic's log(1 - Σ y) -inf); the change is below the
    rounding of y itself, and the log-determinant, computed in log space, is exact. Other rows are unchanged."""
    info = torch.finfo(y.dtype)
    y = y.clamp_min(info.tiny)
    total = y.sum(-1, keepdim=True)
    limit = 1 - info.eps
    return torch.where(total > limit, y * (limit / total), y)


class AdditiveLogistic(Transform):
    """The additive logistic bijection ℝᴰ → Δᴰ, x ↦ y = softmax(x, 0)[:D] (forward), and its inverse, the additive
    log-ratio y ↦ log(y / (1 - Σ y)).

    In nflows' convention a `Flow`'s transform maps data to noise, so a flow *on the simplex* puts the inverse map,
    `AdditiveLogRatio`, first in its transform (see `simplex_flow`); this class is the sampling direction.
    Both directions return (outputs (N, D), log|det| (N,)); `inverse` raises nflows' `InputOutsideDomain` for
    points that are not in the open simplex.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        if isinstance(features, bool) or not isinstance(features, int) or features < 1:
            raise ValueError(f"features must be a positive integer; got {features!r}")
        self.features = features

    def _check(self, inputs: Tensor, name: str) -> None:
        if inputs.dim() != 2 or inputs.shape[-1] != self.features:
            raise ValueError(f"{name} must have shape (N, {self.features}); got {tuple(inputs.shape)}")

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(inputs, "inputs")
        log_y = _log_simplex(inputs)  # (N, D + 1)
        return _inside(log_y[:, :-1].exp()), log_y.sum(-1)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(inputs, "inputs")
        last = 1 - inputs.sum(-1, keepdim=True)  # y_{D+1}: (N, 1)
        if not bool((inputs > 0).all() and (last > 0).all()):
            raise InputOutsideDomain(
                "inputs must lie in the open simplex (every coordinate > 0 and their sum < 1); "
                f"got minimum {inputs.min().item():.3g} and maximum sum {(1 - last).max().item():.6g}"
            )
        log_y, log_last = inputs.log(), last.log()
        outputs = log_y - log_last  # (N, D) - (N, 1)
        return outputs, -(log_y.sum(-1) + log_last.squeeze(-1))


class AdditiveLogRatio(InverseTransform):
    """The additive log-ratio Δᴰ → ℝᴰ (forward) and the additive logistic map (inverse): the data-side transform
    of a flow on the simplex, as nflows' `Logit` is of a flow on the unit cube."""

    def __init__(self, features: int) -> None:
        super().__init__(AdditiveLogistic(features))


def simplex_flow(flow: Flow) -> Flow:
    """A flow on the open D-simplex (first D coordinates): `flow` (on ℝᴰ) followed, in the sampling direction, by
    the additive logistic map. The new flow shares `flow`'s transform and base (training one trains the other);
    its `log_prob(y)` is log q(alr(y)) + log|det ∂alr/∂y|, a density w.r.t. Lebesgue measure on the first D
    coordinates."""
    if not isinstance(flow, Flow):
        raise TypeError(f"flow must be an nflows Flow; got {type(flow).__name__}")
    base: Distribution = flow_base(flow)
    features = distribution_features(base)
    if features is None:
        raise ValueError("cannot tell the number of features of the flow's base distribution")
    return CheckedFlow(
        CompositeTransform([AdditiveLogRatio(features), flow_transform(flow)]),
        base,
        features=features,
        context_features=getattr(flow, "context_features", None),
    )

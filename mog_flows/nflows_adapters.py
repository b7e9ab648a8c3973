"""The one place that reaches into nflows: its private attributes, and the parts of its API that mog_flows
re-implements at its own boundary.

nflows 0.14's `Flow` keeps its parts in private attributes (`_transform`, `_distribution`, `_embedding_net`) and
its `Permutation` its index in `_permutation`; every module and test that needs them goes through the functions
here, so that an nflows release that renames them is fixed in one file.

nflows 0.14's `Distribution.sample(n, context, batch_size)` refuses integer-like counts (numpy integers, 0-d
tensors) and, given a context, concatenates its batches along the wrong dimension (samples are (N, n, D) there).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from nflows.distributions import Distribution
from nflows.flows import Flow
from nflows.transforms import Permutation, Transform
from torch import Tensor, nn

from .checks import check_num_samples

__all__ = [
    "flow_base",
    "flow_transform",
    "flow_embedding_net",
    "embed_context",
    "permutation_indices",
    "transform_layers",
    "distribution_features",
    "sample_in_batches",
]


def flow_base(flow: Flow) -> Distribution:
    """The base distribution of an nflows `Flow`."""
    return flow._distribution


def flow_transform(flow: Flow) -> Transform:
    """The transform of an nflows `Flow` (data -> base space in its forward direction)."""
    return flow._transform


def flow_embedding_net(flow: Flow) -> nn.Module:
    """The context embedding of an nflows `Flow` (an identity when none was given)."""
    return flow._embedding_net


def embed_context(flow: Flow, context: Tensor | None) -> Tensor | None:
    """The context as the flow's transform and base see it: through the flow's embedding net."""
    return None if context is None else flow._embedding_net(context)


def transform_layers(transform: Transform) -> list[Transform]:
    """The layers of a transform in their forward order: those of an nflows `CompositeTransform` (flattened),
    else the transform itself."""
    parts = getattr(transform, "_transforms", None)
    if parts is None:
        return [transform]
    return [layer for part in parts for layer in transform_layers(part)]


def permutation_indices(layer: Permutation) -> Tensor:
    """The index p of an nflows `Permutation`: the layer maps x to x[:, p]."""
    return layer._permutation


def distribution_features(distribution: Distribution) -> int | None:
    """D of a distribution that says it: a `features` attribute (ours) or nflows `StandardNormal`'s one-dimensional
    `_shape`; None otherwise."""
    value = getattr(distribution, "features", None)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    shape = getattr(distribution, "_shape", None)
    if isinstance(shape, torch.Size) and len(shape) == 1:
        return shape[0]
    return None


def sample_in_batches(
    draw: Callable[[int, Tensor | None], Tensor], num_samples, context: Tensor | None, batch_size
) -> Tensor:
    """`draw(n, context)` called for at most `batch_size` samples at a time (all at once when `batch_size` is None),
    the pieces joined along the sample dimension: 0 without a context, 1 with one ((N, n, D))."""
    num_samples = check_num_samples(num_samples)
    if batch_size is None:
        return draw(num_samples, context)
    batch_size = check_num_samples(batch_size, "batch_size")
    full, rest = divmod(num_samples, batch_size)
    sizes = [batch_size] * full + ([rest] if rest else [])
    return torch.cat([draw(size, context) for size in sizes], dim=0 if context is None else 1)

"""The parts of nflows' `Distribution` API that mog_flows re-implements at its own boundary.

nflows 0.14's `Distribution.sample(n, context, batch_size)` refuses integer-like counts (numpy integers, 0-d
tensors) and, given a context, concatenates its batches along the wrong dimension (samples are (N, n, D) there).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .checks import check_num_samples

__all__ = ["sample_in_batches"]


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

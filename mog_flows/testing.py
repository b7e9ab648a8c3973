"""Mixtures that stress float32 density code: the adversarial accuracy suite shared by the tests and the benchmark.

Expanded quadratic forms (one matrix product for every (point, component) pair) cancel catastrophically when a
narrow component sits far from the others. `adversarial_suite` returns mixtures built to expose that: scales from
1e-4 to 1e4 in one mixture, separations up to 1e4, K up to 64, D up to 16, with points near every component, between
pairs of components and far from all. `spread_case` is the realistic counterpart: narrow, trained-like components
(scales 0.03 … 0.09 and 0.5, as a MAF's base contracts to) and points spread wider than them.

Everything is float64 and rounded through float32 (so that a float32 model and its float64 copy hold the same
mixture); compare an implementation's float32 result with its own float64 result on those values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MixtureCase", "ADVERSARIAL_SETTINGS", "adversarial_case", "adversarial_suite", "spread_case"]

# (scales, separation, features): two-component cases (a narrow component at the origin, a unit one far away)
# and wide-range many-component mixtures
ADVERSARIAL_SETTINGS: tuple[tuple[tuple[float, ...], float, int], ...] = (
    ((1e-4, 1.0), 100.0, 2),
    ((1e-3, 1.0), 1e4, 2),
    ((1e-2, 1.0), 10.0, 2),
    ((1e-4, 1e-2, 1.0, 1e2, 1e4), 1e4, 4),
    (tuple(10.0 ** (-4 + 8 * i / 63) for i in range(64)), 1e3, 16),
)


@dataclass(frozen=True)
class MixtureCase:
    """One mixture and points to score, float64 (values representable in float32).

    weights (K,), means (K, D), covariances (K, D) variances ("diagonal") or (K, D, D) SPD matrices ("full"),
    scale_tril (K, D, D) lower Cholesky factors of the covariances (diagonal matrices for "diagonal"), points (N, D).
    """

    name: str
    covariance: str
    weights: Tensor
    means: Tensor
    covariances: Tensor
    scale_tril: Tensor
    points: Tensor


def _round32(tensor: Tensor) -> Tensor:
    return tensor.float().double()


def adversarial_case(
    covariance: str,
    scales: tuple[float, ...],
    separation: float,
    features: int,
    num_points: int,
    seed: int = 0,
) -> MixtureCase:
    """K = len(scales) components: means uniform in [0, separation]ᴰ (the first at the origin, the last with
    first coordinate `separation`), per-coordinate scales `scales[k]` × U(0.5, 1.5), full covariance adding
    correlations (unit lower-triangular factor, off-diagonal entries ~ N(0, 0.3²/D)). Points: half near a component
    (drawn from it), a quarter half-way between two components, a quarter uniform in [-2, 2]ᴰ × separation."""
    if covariance not in ("diagonal", "full"):
        raise ValueError(f"covariance must be 'diagonal' or 'full'; got {covariance!r}")
    g = torch.Generator().manual_seed(seed)
    K, D, double = len(scales), features, torch.float64
    means = separation * torch.rand(K, D, dtype=double, generator=g)
    means[0] = 0.0
    means[-1, 0] = separation
    scale = torch.tensor(scales, dtype=double)[:, None] * (0.5 + torch.rand(K, D, dtype=double, generator=g))
    weights = torch.softmax(torch.randn(K, dtype=double, generator=g), 0)
    if covariance == "diagonal":
        tril = torch.diag_embed(scale)
    else:
        off = torch.tril(torch.randn(K, D, D, dtype=double, generator=g), -1) * 0.3 / math.sqrt(D)
        tril = scale.unsqueeze(-1) * (torch.eye(D, dtype=double) + off)
    index = torch.randint(K, (num_points,), generator=g)
    near = means[index] + (tril[index] @ torch.randn(num_points, D, 1, dtype=double, generator=g)).squeeze(-1)
    kind = (torch.arange(num_points) % 4)[:, None]
    far = separation * (4 * torch.rand(num_points, D, dtype=double, generator=g) - 2)
    between = 0.5 * (means[index] + means[(index + 1) % K])
    points = torch.where(kind == 2, between, torch.where(kind == 3, far, near))
    name = f"K{K}-sep{separation:g}-D{D}-N{num_points}"
    return _case(name, covariance, weights, means, tril, points)


def spread_case(covariance: str, spread: float, num_points: int, seed: int = 1) -> MixtureCase:
    """Trained-like narrow components (16 in 8-D, scales 0.03, 0.05, 0.09, 0.5 repeated, separation 5), the
    adversarial layout of points, every point then scaled by `spread` (1: near the components; 4, 30: wider)."""
    case = adversarial_case(covariance, (0.03, 0.05, 0.09, 0.5) * 4, 5.0, 8, num_points, seed)
    return MixtureCase(
        f"trained-like-spread{spread:g}-N{num_points}",
        covariance,
        case.weights,
        case.means,
        case.covariances,
        case.scale_tril,
        _round32(case.points * spread),
    )


def adversarial_suite(covariance: str, num_points: int, seed: int = 0) -> list[MixtureCase]:
    """One `adversarial_case` per entry of `ADVERSARIAL_SETTINGS`."""
    return [
        adversarial_case(covariance, scales, separation, features, num_points, seed)
        for scales, separation, features in ADVERSARIAL_SETTINGS
    ]


def _case(name, covariance, weights, means, tril, points) -> MixtureCase:
    weights = _round32(weights)
    weights = weights / weights.sum()
    tril = _round32(tril)
    covariances = tril.diagonal(dim1=-2, dim2=-1).square() if covariance == "diagonal" else tril @ tril.mT
    return MixtureCase(name, covariance, weights, _round32(means), covariances, tril, _round32(points))

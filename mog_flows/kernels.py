"""Closed-form algebra of Gaussian mixtures: inner products, L2 distances and the Cauchy–Schwarz divergence.

Shapes: K components of p, K' components of q, D features. A *mixture parameter dict* is what
`MixtureOfGaussians.mixture_parameters()` returns: "weights" (K,), "means" (K, D) and "covariances", either
(K, D) variances (diagonal) or (K, D, D) matrices (full). p and q may mix the two types (seed 002).

The product of two Gaussian densities integrates in closed form,

    ∫ N(x; μ, Σ) N(x; μ', Σ') dx = N(μ; μ', Σ + Σ'),

so for p = Σ_i w_i N(μ_i, Σ_i) and q = Σ_j w'_j N(μ'_j, Σ'_j)

    ⟨p, q⟩ = ∫ p q dx = Σ_ij w_i w'_j N(μ_i; μ'_j, Σ_i + Σ'_j),
    ‖p - q‖² = ⟨p, p⟩ - 2 ⟨p, q⟩ + ⟨q, q⟩,
    D_CS(p, q) = -log ⟨p, q⟩ + ½ log ⟨p, p⟩ + ½ log ⟨q, q⟩   (≥ 0 by Cauchy–Schwarz, 0 iff p = q).

Every term is computed in log space (log-weights plus the Gaussian log-density, Cholesky factor of Σ_i + Σ'_j
for full covariances, a per-feature sum for two diagonal ones) and reduced with `logsumexp`; all functions are
differentiable with respect to every entry of p and q and follow their dtype and device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mog_flows.checks import check_like
from mog_flows.components import LOG_2PI

__all__ = [
    "check_mixture_parameters",
    "log_inner_product",
    "inner_product",
    "self_norm",
    "l2_distance",
    "cauchy_schwarz_divergence",
]

_KEYS = ("weights", "means", "covariances")


def check_mixture_parameters(name: str, params: dict[str, Tensor], *, batch_dims: int = 0) -> tuple[Tensor, ...]:
    """Validate a mixture parameter dict and return (weights, means, covariances, is_diagonal).

    With `batch_dims=b` the tensors carry b leading batch dimensions (an MDN's N rows): weights (*B, K),
    means (*B, K, D), covariances (*B, K, D) or (*B, K, D, D). Raises ValueError naming the expected and actual
    shapes for mismatched shapes, NaN/infinite values, negative weights, non-positive variances or covariance
    matrices that are not symmetric positive definite.
    """
    if not isinstance(params, dict) or any(key not in params for key in _KEYS):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"{name} must be a dict with keys {list(_KEYS)}; got {got}")
    weights, means, covariances = (torch.as_tensor(params[key]) for key in _KEYS)
    lead = "".join(f"N{i}, " if batch_dims > 1 else "N, " for i in range(batch_dims))
    if means.dim() != batch_dims + 2:
        raise ValueError(f"{name}['means'] must have shape ({lead}K, D); got {tuple(means.shape)}")
    batch, (k, d) = tuple(means.shape[:batch_dims]), means.shape[batch_dims:]
    if tuple(weights.shape) != (*batch, k):
        raise ValueError(
            f"{name}['weights'] must have shape {(*batch, k)} to match the means; got {tuple(weights.shape)}"
        )
    diagonal = tuple(covariances.shape) == (*batch, k, d)
    if not diagonal and tuple(covariances.shape) != (*batch, k, d, d):
        raise ValueError(
            f"{name}['covariances'] must have shape {(*batch, k, d)} (variances) or {(*batch, k, d, d)} (matrices) "
            f"to match the means; got {tuple(covariances.shape)}"
        )
    for key, tensor in zip(_KEYS, (weights, means, covariances)):
        if not tensor.is_floating_point():
            raise ValueError(f"{name}['{key}'] must be a floating-point tensor; got dtype {tensor.dtype}")
        check_like(f"{name}['{key}']", tensor, means, f"{name}['means']")
        if not torch.isfinite(tensor).all():
            raise ValueError(
                f"{name}['{key}'] must be finite; got NaN or infinite values in shape {tuple(tensor.shape)}"
            )
    if (weights < 0).any():
        raise ValueError(f"{name}['weights'] must be non-negative; got minimum {weights.min().item():.3g}")
    if diagonal:
        if (covariances <= 0).any():
            raise ValueError(
                f"{name}['covariances'] (variances, shape {tuple(covariances.shape)}) must be positive; "
                f"got minimum {covariances.min().item():.3g}"
            )
    else:
        asymmetry = (covariances - covariances.transpose(-1, -2)).abs().amax()
        if asymmetry > 1e-6 * covariances.abs().amax().clamp_min(1.0):
            raise ValueError(
                f"{name}['covariances'] (shape {tuple(covariances.shape)}) must be symmetric; "
                f"got asymmetry {asymmetry.item():.3g}"
            )
        _, info = torch.linalg.cholesky_ex(covariances.detach())
        if (info != 0).any():
            raise ValueError(
                f"{name}['covariances'] (shape {tuple(covariances.shape)}) must be positive definite; "
                f"{int((info != 0).sum())} matrix(ces) are not"
            )
    return weights, means, covariances, diagonal


def _pair(p: dict[str, Tensor], q: dict[str, Tensor]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    first = check_mixture_parameters("p", p)
    second = check_mixture_parameters("q", q)
    if first[1].shape[-1] != second[1].shape[-1]:
        raise ValueError(
            f"p and q must have the same number of features D: p['means'] has shape {tuple(first[1].shape)}, "
            f"q['means'] has shape {tuple(second[1].shape)}"
        )
    check_like("q['means']", second[1], first[1], "p")
    return first, second


def _log_terms(first: tuple[Tensor, ...], second: tuple[Tensor, ...]) -> Tensor:
    """log w_i + log w'_j + log N(μ_i; μ'_j, Σ_i + Σ'_j), shape (K, K')."""
    w, mu, cov, diag = first
    w2, mu2, cov2, diag2 = second
    d = mu.shape[-1]
    diff = mu[:, None, :] - mu2[None, :, :]  # (K, 1, D) - (1, K', D) -> (K, K', D)
    if diag and diag2:
        s = cov[:, None, :] + cov2[None, :, :]  # (K, K', D) variances of the difference
        log_density = -0.5 * (d * LOG_2PI + s.log().sum(-1) + (diff**2 / s).sum(-1))
    else:
        full, full2 = (torch.diag_embed(c) if is_diag else c for c, is_diag in ((cov, diag), (cov2, diag2)))
        s = full[:, None, :, :] + full2[None, :, :, :]  # (K, K', D, D)
        chol = torch.linalg.cholesky(s)
        white = torch.linalg.solve_triangular(chol, diff.unsqueeze(-1), upper=False).squeeze(-1)  # L⁻¹ (μ - μ')
        half_log_det = torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
        log_density = -0.5 * (d * LOG_2PI + (white**2).sum(-1)) - half_log_det
    return w.log()[:, None] + w2.log()[None, :] + log_density  # (K, 1) + (1, K') + (K, K')


def log_inner_product(p: dict[str, Tensor], q: dict[str, Tensor]) -> Tensor:
    """log ∫ p(x) q(x) dx = logsumexp_ij [log w_i + log w'_j + log N(μ_i; μ'_j, Σ_i + Σ'_j)], a scalar."""
    first, second = _pair(p, q)
    return torch.logsumexp(_log_terms(first, second).reshape(-1), dim=0)


def inner_product(p: dict[str, Tensor], q: dict[str, Tensor]) -> Tensor:
    """∫ p(x) q(x) dx = Σ_ij w_i w'_j N(μ_i; μ'_j, Σ_i + Σ'_j), a scalar (CONTRACT: `mog_flows.kernels`)."""
    return log_inner_product(p, q).exp()


def self_norm(p: dict[str, Tensor]) -> Tensor:
    """∫ p(x)² dx = ⟨p, p⟩, a scalar."""
    return inner_product(p, p)


def l2_distance(p: dict[str, Tensor], q: dict[str, Tensor]) -> Tensor:
    """∫ (p(x) - q(x))² dx = ⟨p, p⟩ - 2 ⟨p, q⟩ + ⟨q, q⟩, a scalar clamped at ≥ 0.

    The three terms cancel when p ≈ q: the result carries an absolute rounding error of a few ulps of
    ⟨p, p⟩ + ⟨q, q⟩ (about 1e-7 of it in float32, 1e-16 in float64), so distances below that are noise, and
    the clamp removes the negative ones. Identical inputs (the same dict or an exact copy) give exactly 0,
    because ⟨p, q⟩ is then computed by the same operations as ⟨p, p⟩ and ⟨q, q⟩.
    """
    first, second = _pair(p, q)
    pp = torch.logsumexp(_log_terms(first, first).reshape(-1), dim=0).exp()
    qq = torch.logsumexp(_log_terms(second, second).reshape(-1), dim=0).exp()
    pq = torch.logsumexp(_log_terms(first, second).reshape(-1), dim=0).exp()
    return (pp - 2 * pq + qq).clamp_min(0.0)


def cauchy_schwarz_divergence(p: dict[str, Tensor], q: dict[str, Tensor]) -> Tensor:
    """D_CS(p, q) = -log(⟨p, q⟩ / sqrt(⟨p, p⟩ ⟨q, q⟩)), a scalar clamped at ≥ 0.

    Symmetric, zero iff p = q, and unchanged when either density is multiplied by a constant (seed 002's
    scalar cost is built on this ratio). Computed from the three log inner products, so it stays finite for
    mixtures far apart (where ⟨p, q⟩ underflows).
    """
    first, second = _pair(p, q)
    log_pp = torch.logsumexp(_log_terms(first, first).reshape(-1), dim=0)
    log_qq = torch.logsumexp(_log_terms(second, second).reshape(-1), dim=0)
    log_pq = torch.logsumexp(_log_terms(first, second).reshape(-1), dim=0)
    return (0.5 * (log_pp + log_qq) - log_pq).clamp_min(0.0)

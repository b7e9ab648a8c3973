"""Batched Gaussian log-densities and the triangular precision factors behind every mixture here.

Shapes: N points, K components, D features. A *diagonal* component is (loc, log_scale) with standard
deviations exp(log_scale). A *full* component is (loc, U) with U the upper-triangular Cholesky factor of
the precision, Σ⁻¹ = Uᵀ U, whose diagonal is positive (seed 001, eqs. 9–13):

    log N(x; μ, Σ) = -½ ‖U (x - μ)‖² + Σ_d log U_dd - (D/2) log 2π.

U is stored packed as its D(D+1)/2 upper-triangular entries with the diagonal in log space, so any real
vector is a valid factor and log|Σ⁻¹|^{1/2} is the sum of the raw diagonal entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "LOG_2PI",
    "GaussianComponents",
    "packed_size",
    "unpack_precision_factor",
    "pack_precision_factor",
    "diagonal_log_prob",
    "diagonal_log_prob_shared",
    "full_log_prob",
    "full_log_prob_shared",
]

LOG_2PI = math.log(2 * math.pi)

# The expanded diagonal quadratic form  Σ p x² - 2 Σ p x μ + Σ p μ²  loses accuracy when its terms are much
# larger than their sum. A row is recomputed by the direct formula when the terms exceed this multiple of
# (1 + result): the expansion's rounding error then stays within ~1e-5 (1 + result) in float32.
_EXPANSION_GUARD = 32.0


def packed_size(features: int) -> int:
    return features * (features + 1) // 2


def _triu_indices(features: int, device: torch.device) -> tuple[Tensor, Tensor]:
    rows, cols = torch.triu_indices(features, features, device=device)
    return rows, cols


def unpack_precision_factor(raw: Tensor, features: int) -> Tensor:
    """Packed raw entries (..., D(D+1)/2) -> upper-triangular U (..., D, D) with U_dd = exp(raw_dd)."""
    rows, cols = _triu_indices(features, raw.device)
    values = torch.where(rows == cols, raw.exp(), raw)
    factor = raw.new_zeros(*raw.shape[:-1], features, features)
    factor[..., rows, cols] = values
    return factor


def pack_precision_factor(factor: Tensor) -> Tensor:
    """Upper-triangular U (..., D, D) with positive diagonal -> packed raw entries (..., D(D+1)/2)."""
    features = factor.shape[-1]
    rows, cols = _triu_indices(features, factor.device)
    values = factor[..., rows, cols]
    return torch.where(rows == cols, values.log(), values)


def diagonal_log_prob(x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    """log N(x; μ_k, diag σ_k²) by the direct formula; x (..., D), loc and log_scale (..., K, D) -> (..., K)."""
    z = (x.unsqueeze(-2) - loc) * torch.exp(-log_scale)  # (..., 1, D) - (..., K, D) -> (..., K, D)
    return -0.5 * z.square().sum(-1) - log_scale.sum(-1) - 0.5 * x.shape[-1] * LOG_2PI


def diagonal_log_prob_shared(x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    """log N(x_n; μ_k, diag σ_k²) for components shared by the batch: x (N, D), loc, log_scale (K, D) -> (N, K).

    The quadratic form is expanded into matrix products, (x²) Pᵀ - 2 x (μ ⊙ P)ᵀ + Σ μ² P with P = σ⁻², so no
    (N, K, D) tensor is formed. Inputs are centred on the mean component location first, and rows where the
    expansion could cancel catastrophically are recomputed by the direct formula.
    """
    centre = loc.detach().mean(0)
    x, loc = x - centre, loc - centre
    precision = torch.exp(-2 * log_scale)  # (K, D)
    x_term = (x * x) @ precision.T  # (N, K)
    loc_term = (loc * loc * precision).sum(-1)  # (K,)
    quad = x_term - 2 * (x @ (loc * precision).T) + loc_term
    with torch.no_grad():
        magnitude = x_term + loc_term
        risky = (magnitude > _EXPANSION_GUARD * (1 + quad.clamp(min=0))).any(-1)
        rows = risky.nonzero().squeeze(-1) if bool(risky.any()) else None
    if rows is not None:
        z = (x[rows].unsqueeze(-2) - loc) * torch.exp(-log_scale)  # (R, 1, D) - (K, D) -> (R, K, D)
        quad = quad.index_put((rows,), z.square().sum(-1))
    return -0.5 * quad - log_scale.sum(-1) - 0.5 * x.shape[-1] * LOG_2PI


def full_log_prob(x: Tensor, loc: Tensor, factor: Tensor) -> Tensor:
    """log N(x; μ_k, (U_kᵀU_k)⁻¹); x (..., D), loc (..., K, D), factor (..., K, D, D) -> (..., K)."""
    diff = x.unsqueeze(-2) - loc  # (..., 1, D) - (..., K, D) -> (..., K, D)
    whitened = (factor @ diff.unsqueeze(-1)).squeeze(-1)  # U (x - μ): (..., K, D)
    log_det = factor.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return -0.5 * whitened.square().sum(-1) + log_det - 0.5 * x.shape[-1] * LOG_2PI


def full_log_prob_shared(x: Tensor, loc: Tensor, factor: Tensor) -> Tensor:
    """Full-covariance log-densities of components shared by the batch.

    x (N, D), loc (K, D), factor (K, D, D) -> (N, K).

    U x is computed for all K at once as one matrix product x Wᵀ with W the stacked factors (K·D, D);
    the whitened difference U x - U μ is then a plain subtraction with no cancellation beyond that of x - μ.
    """
    num_components, features = loc.shape
    centre = loc.detach().mean(0)
    x, loc = x - centre, loc - centre
    whitened_x = (x @ factor.reshape(num_components * features, features).T).view(-1, num_components, features)
    whitened_loc = (factor @ loc.unsqueeze(-1)).squeeze(-1)  # (K, D)
    whitened = whitened_x - whitened_loc  # (N, K, D) - (K, D)
    log_det = factor.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return -0.5 * whitened.square().sum(-1) + log_det - 0.5 * features * LOG_2PI


@dataclass(frozen=True)
class GaussianComponents:
    """K Gaussian components with batch shape B (() when shared by every point, (N,) when conditional).

    loc: B + (K, D); exactly one of log_scale: B + (K, D) (diagonal) or factor: B + (K, D, D) (full, upper U).
    """

    loc: Tensor
    log_scale: Tensor | None = None
    factor: Tensor | None = None

    @property
    def is_diagonal(self) -> bool:
        return self.log_scale is not None

    def log_prob(self, x: Tensor) -> Tensor:
        """log N(x_i; component k) for all pairs: x B + (n, D) -> B + (n, K)."""
        if self.loc.dim() == 2:  # shared components: matrix-product kernels
            if self.is_diagonal:
                return diagonal_log_prob_shared(x, self.loc, self.log_scale)
            return full_log_prob_shared(x, self.loc, self.factor)
        loc = self.loc.unsqueeze(-3)  # B + (1, K, D): broadcast over the n points of each batch row
        if self.is_diagonal:
            return diagonal_log_prob(x, loc, self.log_scale.unsqueeze(-3))
        return full_log_prob(x, loc, self.factor.unsqueeze(-4))

    def paired_log_prob(self, x: Tensor) -> Tensor:
        """log N(x_i; component i) for per-sample components (K = n): x B + (n, D) -> B + (n,)."""
        if self.is_diagonal:
            return diagonal_log_prob(x, self.loc.unsqueeze(-2), self.log_scale.unsqueeze(-2)).squeeze(-1)
        return full_log_prob(x, self.loc.unsqueeze(-2), self.factor.unsqueeze(-3)).squeeze(-1)

    def select(self, index: Tensor) -> GaussianComponents:
        """Hard choice of one component per sample: index B + (n,) -> components B + (n, ...)."""
        loc = torch.take_along_dim(self.loc, index.unsqueeze(-1), dim=-2)
        if self.is_diagonal:
            return GaussianComponents(loc, log_scale=torch.take_along_dim(self.log_scale, index.unsqueeze(-1), dim=-2))
        factor = torch.take_along_dim(self.factor, index[..., None, None], dim=-3)
        return GaussianComponents(loc, factor=factor)

    def soft_select(self, weights: Tensor) -> GaussianComponents:
        """Convex combination per sample (seed 003, §3.2): weights B + (n, K) on the simplex -> B + (n, ...).

        Diagonal: μ(c) = cᵀμ and σ(c) = cᵀσ, the seed's choice. Full: μ(c) = cᵀμ and U(c) = Σ_k c_k U_k, the
        precision factor is soft-selected; a convex combination of upper-triangular factors with positive
        diagonals is again one, and it is the diagonal rule's analogue that needs no matrix inverse.
        """
        loc = weights @ self.loc  # B + (n, K) @ B + (K, D)
        if self.is_diagonal:
            return GaussianComponents(loc, log_scale=torch.log(weights @ self.log_scale.exp()))
        factor = torch.einsum("...nk,...kij->...nij", weights, self.factor)
        return GaussianComponents(loc, factor=factor)

    def sample(self, noise: Tensor) -> Tensor:
        """Reparameterised sample of per-sample components: noise B + (n, D) ~ N(0, I) -> B + (n, D)."""
        if self.is_diagonal:
            return self.loc + self.log_scale.exp() * noise
        # x = μ + U⁻¹ ε has covariance U⁻¹U⁻ᵀ = (UᵀU)⁻¹ = Σ: one triangular solve, never an explicit inverse
        return self.loc + torch.linalg.solve_triangular(self.factor, noise.unsqueeze(-1), upper=True).squeeze(-1)

    def split(self, size: int) -> list[GaussianComponents]:
        """Chunks along the component axis."""
        locs = self.loc.split(size, dim=-2)
        if self.is_diagonal:
            return [GaussianComponents(a, log_scale=b) for a, b in zip(locs, self.log_scale.split(size, dim=-2))]
        return [GaussianComponents(a, factor=b) for a, b in zip(locs, self.factor.split(size, dim=-3))]

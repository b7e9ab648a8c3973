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
_EXPANSION_GUARD = 24.0

# Below this many (point, component, feature) triples the direct formula costs less than the expansion's
# few dozen small operations (and needs no guard).
_DIRECT_ENTRIES = 2**13

# The full-covariance kernel works on blocks of rows holding about this many whitened entries (N·K·D), 16 MiB in
# float32: small enough to stay in the last-level cache, large enough that a call launches few operations (each one
# synchronises torch's threads, which costs a scheduler tick whenever other processes hold the cores).
_BLOCK_ENTRIES = 2**22


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


def _quadratic_features(x: Tensor, centre: Tensor, *, differentiable: bool = False) -> Tensor:
    """(y_1², y_1, …, y_D², y_D, 1) per row of the centred points y = x - centre: x (N, D), centre (D,) -> (N, 2D + 1).

    Each square sits next to its coordinate, so a matrix product accumulates the two terms of one coordinate
    one after the other, which rounds more tightly than all squares first. The default writes the features in
    place without autograd (the kernels below differentiate through them by hand), in three operations.
    """
    num_points, features = x.shape
    if differentiable:
        y = x - centre
        paired = torch.stack([y * y, y], dim=-1).flatten(-2)  # (N, D, 2) -> (N, 2D)
        return torch.cat([paired, torch.ones_like(y[:, :1])], dim=-1)
    with torch.no_grad():
        out = x.new_empty(num_points, 2 * features + 1)
        centred = torch.sub(x, centre, out=out[:, 1 : 2 * features : 2])
        torch.mul(centred, centred, out=out[:, 0 : 2 * features : 2])
        out[:, 2 * features] = 1
    return out


def _diagonal_coefficients(square: Tensor, linear: Tensor, constant: Tensor) -> Tensor:
    """Coefficients (2D + 1, K) of `_quadratic_features` from square (K, D), linear (K, D) and constant (K,) terms."""
    paired = torch.stack([square, linear], dim=-1).flatten(-2)  # (K, D, 2) -> (K, 2D)
    return torch.cat([paired, constant.unsqueeze(-1)], dim=-1).T.contiguous()


class _QuadraticForm(torch.autograd.Function):
    """features @ coefficients with features = `_quadratic_features(x, centre)` (N, 2D + 1) and coefficients
    (2D + 1, K) -> (N, K).

    The features are built outside autograd; the backward pass carries their gradient to x by hand,
    ∂/∂x_d = 2 y_d ∂/∂(y_d²) + ∂/∂y_d with y = x - centre (a constant), so no (N, 2D + 1) graph is recorded.
    """

    @staticmethod
    def forward(x: Tensor, centre: Tensor, features: Tensor, coefficients: Tensor) -> Tensor:
        return features @ coefficients

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, centre, features, coefficients = inputs
        ctx.save_for_backward(x, centre, features, coefficients)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, centre, features, coefficients = ctx.saved_tensors
        need_x, _, _, need_coefficients = ctx.needs_input_grad
        if torch.is_grad_enabled():  # double backward: features as a differentiable function of x
            features = _quadratic_features(x, centre, differentiable=True)
        grad_x = grad_coefficients = None
        if need_coefficients:
            grad_coefficients = features.T @ grad  # (2D + 1, N) @ (N, K)
        if need_x:
            per_feature = grad @ coefficients[:-1].T  # (N, 2D): gradients w.r.t. y_d² and y_d, interleaved
            grad_x = 2 * features[:, 1:-1:2] * per_feature[:, 0::2] + per_feature[:, 1::2]
        return grad_x, None, None, grad_coefficients


def diagonal_log_prob_shared(x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    """log N(x_n; μ_k, diag σ_k²) for components shared by the batch: x (N, D), loc, log_scale (K, D) -> (N, K).

    The quadratic form is expanded into one matrix product, with P = σ⁻²,

        log N(x; μ, σ) = Σ_d (-½ P_d x_d² + μ_d P_d x_d) - ½ Σ_d μ_d² P_d - Σ_d log σ_d - (D/2) log 2π,

    so no (N, K, D) tensor is formed. Inputs are centred on the mean component location first, and rows where
    the expansion could cancel catastrophically are recomputed by the direct formula (see `_EXPANSION_GUARD`).
    Small problems (N·K·D ≤ `_DIRECT_ENTRIES`) use the direct formula throughout.
    """
    features = x.shape[-1]
    if x.shape[0] * loc.shape[0] * features <= _DIRECT_ENTRIES:
        return diagonal_log_prob(x, loc, log_scale)
    centre = loc.detach().mean(0)
    loc = loc - centre
    precision = torch.exp(-2 * log_scale)  # (K, D)
    loc_term = (loc * loc * precision).sum(-1)  # Σ_d μ_d² P_d: (K,)
    normalizer = -log_scale.sum(-1) - 0.5 * features * LOG_2PI  # (K,)
    inputs = _quadratic_features(x, centre)  # (N, 2D + 1), of the centred points
    coefficients = _diagonal_coefficients(-0.5 * precision, loc * precision, normalizer - 0.5 * loc_term)
    log_p = _QuadraticForm.apply(x, centre, inputs, coefficients)  # (N, K)
    rows = _cancelling_rows(inputs, loc.detach(), precision.detach(), loc_term.detach())
    if rows is not None:
        z = ((x[rows] - centre).unsqueeze(-2) - loc) * torch.exp(-log_scale)  # (R, 1, D) - (K, D) -> (R, K, D)
        log_p = log_p.index_put((rows,), normalizer - 0.5 * z.square().sum(-1))
    return log_p


@torch.no_grad()
def _cancelling_rows(inputs: Tensor, loc: Tensor, precision: Tensor, loc_term: Tensor) -> Tensor | None:
    """Indices of the rows where, for some k, the expansion's terms Σ P x² + Σ P μ² exceed G (1 + quad), or None;
    inputs are the quadratic features (N, 2D + 1) of the centred points x, loc the centred locations (K, D).

    Only components with Σ P μ² > G/4 can qualify: ‖x‖_P ≤ ‖x - μ‖_P + ‖μ‖_P bounds the terms by
    quad + 2 √(quad Σ P μ²) + 2 Σ P μ², which stays below G (1 + quad) for every x when Σ P μ² ≤ G/4 (G > 2).
    For the others the test, (1 - G)(Σ P x² + Σ P μ²) + 2G Σ P x μ - G > 0, is one more matrix product.
    """
    guard = _EXPANSION_GUARD
    far = (loc_term > guard / 4).nonzero().squeeze(-1)
    if len(far) == 0:
        return None
    precision, loc, loc_term = precision[far], loc[far], loc_term[far]
    test = inputs @ _diagonal_coefficients(
        (1 - guard) * precision, 2 * guard * loc * precision, (1 - guard) * loc_term - guard
    )
    if test.numel() == 0 or not bool(test.max() > 0):
        return None
    return (test.amax(-1) > 0).nonzero().squeeze(-1)


def full_log_prob(x: Tensor, loc: Tensor, factor: Tensor) -> Tensor:
    """log N(x; μ_k, (U_kᵀU_k)⁻¹); x (..., D), loc (..., K, D), factor (..., K, D, D) -> (..., K)."""
    diff = x.unsqueeze(-2) - loc  # (..., 1, D) - (..., K, D) -> (..., K, D)
    whitened = (factor @ diff.unsqueeze(-1)).squeeze(-1)  # U (x - μ): (..., K, D)
    log_det = factor.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return -0.5 * whitened.square().sum(-1) + log_det - 0.5 * x.shape[-1] * LOG_2PI


def _block_rows(columns: int) -> int:
    return max(1, _BLOCK_ENTRIES // max(columns, 1))


def _whitened_log_prob(features: Tensor, weight: Tensor, normalizer: Tensor) -> Tensor:
    """The plain formula behind `_WhitenedLogProb`, broadcasting over leading batch dimensions."""
    whitened = (features @ weight).unflatten(-1, (-1, normalizer.shape[-1]))  # (..., N, D, K)
    return torch.add(normalizer.unsqueeze(-2), whitened.square().sum(-2), alpha=-0.5)


class _WhitenedLogProb(torch.autograd.Function):
    """-½ ‖U_k x_n - U_k μ_k‖² + c_k for all (n, k), evaluated in blocks of rows.

    features (N, D + 1) = [x, 1] built outside autograd; weight (D + 1, D·K) with column d·K + k holding row d
    of [U_k | -U_k μ_k]; normalizer c (K,). Each block's whitened differences (rows, D, K) stay in cache and are
    never stored: the backward pass recomputes them block by block.
    """

    @staticmethod
    def forward(x: Tensor, features: Tensor, weight: Tensor, normalizer: Tensor) -> Tensor:
        num_points, num_components = features.shape[0], normalizer.shape[0]
        rows = _block_rows(weight.shape[1])
        out = features.new_empty(num_points, num_components)
        buffer = features.new_empty(min(rows, num_points), weight.shape[1])
        for start in range(0, num_points, rows):
            block = features[start : start + rows]
            n = block.shape[0]
            whitened = torch.mm(block, weight, out=buffer[:n])  # (n, D·K)
            whitened.mul_(whitened)
            target = out[start : start + n]
            torch.sum(whitened.view(n, -1, num_components), dim=1, out=target)  # Σ_d over a strided axis
            torch.add(normalizer, target, alpha=-0.5, out=target)
        return out

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, features, weight, normalizer = inputs
        ctx.save_for_backward(x, features, weight)

    @staticmethod
    def backward(ctx, grad: Tensor):
        # out of place where `grad` is involved, so that vectorised jacobians can batch it
        x, features, weight = ctx.saved_tensors
        need_x, _, need_weight, need_normalizer = ctx.needs_input_grad
        num_components = grad.shape[-1]
        dims = weight.shape[0] - 1
        if torch.is_grad_enabled():  # double backward: features as a differentiable function of x
            features = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=-1)
        rows = _block_rows(weight.shape[1])
        buffer = None if torch.is_grad_enabled() else features.new_empty(min(rows, len(features)), weight.shape[1])
        grad_x, grad_weight = [], None
        for start in range(0, len(features), rows):
            block = features[start : start + rows]
            n = block.shape[0]
            whitened = torch.mm(block, weight) if buffer is None else torch.mm(block, weight, out=buffer[:n])
            g = whitened.view(n, -1, num_components) * grad[..., start : start + n, None, :]  # -∂/∂ whitened
            g = g.reshape(*g.shape[:-2], -1)  # (..., n, D·K)
            if need_weight:
                term = block.T @ g
                grad_weight = term if grad_weight is None else grad_weight + term
            if need_x:
                grad_x.append(g @ weight[:dims].T)
        return (
            -torch.cat(grad_x, dim=-2) if need_x else None,
            None,
            -grad_weight if need_weight else None,
            grad.sum(-2) if need_normalizer else None,
        )

    @staticmethod
    def vmap(info, in_dims, x, features, weight, normalizer):
        moved = [t if d is None else t.movedim(d, 0) for t, d in zip((features, weight, normalizer), in_dims[1:])]
        return _whitened_log_prob(*moved), 0 if any(d is not None for d in in_dims[1:]) else None


def full_log_prob_shared(x: Tensor, loc: Tensor, factor: Tensor) -> Tensor:
    """Full-covariance log-densities of components shared by the batch.

    x (N, D), loc (K, D), factor (K, D, D) -> (N, K).

    U_k x - U_k μ_k is computed for all K at once as one matrix product [x, 1] W with W (D + 1, D·K) the stacked
    factors and offsets, in blocks of rows so that no (N, K, D) tensor is formed or stored (the backward pass
    recomputes each block); there is no cancellation beyond that of U x - U μ after centring on the mean location.
    """
    num_components, features = loc.shape
    centre = loc.detach().mean(0)
    x, loc = x - centre, loc - centre
    with torch.no_grad():
        inputs = torch.nn.functional.pad(x, (0, 1), value=1.0)  # [x, 1]: (N, D + 1)
    offset = (factor @ loc.unsqueeze(-1)).squeeze(-1)  # U_k μ_k: (K, D)
    augmented = torch.cat([factor, -offset.unsqueeze(-1)], dim=-1)  # (K, D, D + 1): rows of [U_k | -U_k μ_k]
    weight = augmented.permute(2, 1, 0).reshape(features + 1, features * num_components)  # column d·K + k
    normalizer = factor.diagonal(dim1=-2, dim2=-1).log().sum(-1) - 0.5 * features * LOG_2PI
    return _WhitenedLogProb.apply(x, inputs, weight, normalizer)


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

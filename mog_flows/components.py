"""Batched Gaussian component log-densities and the triangular precision factors behind every mixture here.

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
    "accumulation_dtype",
    "packed_size",
    "unpack_precision_factor",
    "pack_precision_factor",
    "precision_factor_from_covariance",
    "covariance_from_precision_factor",
    "diagonal_log_prob",
    "diagonal_log_prob_shared",
    "full_log_prob",
    "full_log_prob_shared",
]

LOG_2PI = math.log(2 * math.pi)

# Rounding. The kernels for components shared by the batch expand the quadratic form,
#     ‖y - m_k‖²_P = ‖y‖²_P - 2⟨y, m_k⟩_P + ‖m_k‖²_P  (diagonal)   or   U_k y - U_k m_k  (full),
# with y = x - c and m_k = μ_k - c centred on the mean location c, so that one matrix product scores every pair
# (n, k). Expansions cancel when their terms are much larger than the result (a narrow component far from c), so
# they accumulate in a wider dtype than their inputs (`accumulation_dtype`: float32 in float64, half precision in
# float32): a pair whose terms stay below G (1 + result) then rounds by at most ~4 G u_wide (1 + result), with
# G = u_out / (32 u_wide) an eighth of one rounding of the returned value (torch.distributions' direct formula
# makes a few). The few rows with a pair beyond G are recomputed by the direct formula on the uncentred inputs
# (x - μ_k first). Float64 inputs have no wider dtype: there G = `_MIN_GUARD`, an error below ~1e-14 (1 + result).
_MIN_GUARD = 24.0

# Below this many (point, component, feature) triples the direct formula costs less than the expansion's
# few dozen small operations (and needs no guard).
_DIRECT_ENTRIES = 2**13

# The full-covariance kernel works on blocks of rows holding about this many bytes of whitened entries (N·K·D):
# small enough to stay in the last-level cache, large enough that a call launches few operations (each one
# synchronises torch's threads, which costs a scheduler tick whenever other processes hold the cores).
_BLOCK_BYTES = 2**24


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the shared-component kernels accumulate in for inputs of `dtype`: one step wider, up to float64."""
    return torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32


def _guard(dtype: torch.dtype, wide: torch.dtype) -> float:
    return max(_MIN_GUARD, torch.finfo(dtype).eps / (32 * torch.finfo(wide).eps))


def packed_size(features: int) -> int:
    return features * (features + 1) // 2


def _triu_indices(features: int, device: torch.device) -> tuple[Tensor, Tensor]:
    rows, cols = torch.triu_indices(features, features, device=device)
    return rows, cols


def unpack_precision_factor(raw: Tensor, features: int) -> Tensor:
    """Packed raw entries (..., D(D+1)/2) -> upper-triangular U (..., D, D) with U_dd = exp(raw_dd)."""
    rows, cols = _triu_indices(features, raw.device)
    diagonal = rows == cols
    # exp of the diagonal entries only: exp of a large off-diagonal entry would overflow to inf in the branch
    # torch.where discards, and its backward (0 * inf) would make the whole gradient NaN
    values = torch.where(diagonal, torch.where(diagonal, raw, torch.zeros_like(raw)).exp(), raw)
    factor = raw.new_zeros(*raw.shape[:-1], features, features)
    factor[..., rows, cols] = values
    return factor


def pack_precision_factor(factor: Tensor) -> Tensor:
    """Upper-triangular U (..., D, D) with positive diagonal -> packed raw entries (..., D(D+1)/2)."""
    features = factor.shape[-1]
    rows, cols = _triu_indices(features, factor.device)
    values = factor[..., rows, cols]
    return torch.where(rows == cols, values.log(), values)


def precision_factor_from_covariance(covariance: Tensor) -> Tensor:
    """Covariance Σ (..., D, D), symmetric positive definite -> upper-triangular U (..., D, D) with Σ⁻¹ = UᵀU.

    U = chol(Σ⁻¹)ᵀ with Σ⁻¹ from Σ's own Cholesky factor (`torch.cholesky_inverse`), never an explicit inverse;
    its diagonal is positive. The input is used as given (symmetrise it first if it is symmetric only up to
    rounding). Raises a `ValueError` naming the batch entries ("components") whose Σ is not positive definite.
    """
    cholesky, info = torch.linalg.cholesky_ex(covariance)
    if (info != 0).any():
        bad = (info != 0).nonzero()
        bad = bad.flatten().tolist() if info.dim() <= 1 else [tuple(index) for index in bad.tolist()]
        raise ValueError(f"covariances must be symmetric positive definite; components {bad} are not")
    precision = torch.cholesky_inverse(cholesky)
    return torch.linalg.cholesky(precision).mT


def covariance_from_precision_factor(factor: Tensor) -> Tensor:
    """Upper-triangular U (..., D, D) with positive diagonal -> covariance Σ = (UᵀU)⁻¹ (..., D, D).

    One `torch.cholesky_inverse` of U as the upper factor, no explicit inverse. Half-precision factors are
    inverted in float32 and the result is returned in the factor's dtype.
    """
    wide = torch.float32 if factor.dtype in (torch.float16, torch.bfloat16) else factor.dtype
    return torch.cholesky_inverse(factor.to(wide), upper=True).to(factor.dtype)


def diagonal_log_prob(x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    """log N(x; μ_k, diag σ_k²) by the direct formula; x (..., D), loc and log_scale (..., K, D) -> (..., K)."""
    z = (x.unsqueeze(-2) - loc) * torch.exp(-log_scale)  # (..., 1, D) - (..., K, D) -> (..., K, D)
    return -0.5 * z.square().sum(-1) - log_scale.sum(-1) - 0.5 * x.shape[-1] * LOG_2PI


def diagonal_log_prob_shared(x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    """log N(x_n; μ_k, diag σ_k²) for components shared by the batch: x (N, D), loc, log_scale (K, D) -> (N, K).

    With P = σ⁻² and y, m centred on the mean location, the log-density is one matrix product,

        log N = [y², y, 1] [-½ Pᵀ; (P m)ᵀ; c − ½ Σ_d P_kd m_kd²],   c = −Σ_d log σ_kd − (D/2) log 2π,

    so no (N, K, D) tensor is formed; it accumulates in `accumulation_dtype` and rows where it could still cancel are
    recomputed by the direct formula (see "Rounding" above). Small problems use the direct formula throughout.
    """
    dtype, wide = x.dtype, accumulation_dtype(x.dtype)
    x, loc, log_scale = x.to(wide), loc.to(wide), log_scale.to(wide)
    num_points, features = x.shape
    if num_points * loc.shape[0] * features <= _DIRECT_ENTRIES:
        return diagonal_log_prob(x, loc, log_scale).to(dtype)
    centre = loc.detach().mean(0)
    y, m = x - centre, loc - centre
    precision = torch.exp(-2 * log_scale)  # (K, D)
    weighted_loc = precision * m
    loc_term = (m * weighted_loc).sum(-1)  # ‖m‖²_P: (K,)
    normalizer = -log_scale.sum(-1) - 0.5 * features * LOG_2PI  # (K,)
    # [y², y, 1]: one buffer filled in place (every fresh large temporary costs page faults on first touch)
    inputs = torch.empty(num_points, 2 * features + 1, dtype=wide, device=x.device)
    inputs[:, :features] = y * y
    inputs[:, features : 2 * features] = y
    inputs[:, 2 * features] = 1.0
    coefficients = torch.cat([-0.5 * precision, weighted_loc, (normalizer - 0.5 * loc_term).unsqueeze(-1)], dim=1)
    log_p = inputs @ coefficients.T  # (N, K)
    # terms ‖y‖²_P + ‖m‖²_P ≤ (‖y - m‖_P + ‖m‖_P)² + ‖m‖²_P stay below G (1 + result) for every y unless
    # ‖m‖²_P > G/4 (G ≥ 2): only such components are tested. Trained mixtures have none.
    guard = _guard(dtype, wide)
    with torch.no_grad():
        far = (loc_term > guard / 4).nonzero().squeeze(-1)
        rows = None
        if len(far):
            terms = inputs[:, :features] @ precision[far].T + loc_term[far]  # ‖y‖²_P + ‖m‖²_P: (N, K')
            rows = _rows_beyond(terms, -2 * (log_p[:, far] - normalizer[far]), guard)
    if rows is not None:
        log_p = log_p.index_put((rows,), diagonal_log_prob(x[rows], loc, log_scale))
    return log_p.to(dtype)


@torch.no_grad()
def _rows_beyond(terms: Tensor, result: Tensor, guard: float) -> Tensor | None:
    """Indices of the rows n where terms_nk > G (1 + result_nk) for some column k, or None; terms, result (N, K')."""
    if terms.numel() == 0:
        return None
    flagged = (terms > guard * (1 + result)).any(-1)
    return flagged.nonzero().squeeze(-1) if bool(flagged.any()) else None


def full_log_prob(x: Tensor, loc: Tensor, factor: Tensor) -> Tensor:
    """log N(x; μ_k, (U_kᵀU_k)⁻¹); x (..., D), loc (..., K, D), factor (..., K, D, D) -> (..., K)."""
    diff = x.unsqueeze(-2) - loc  # (..., 1, D) - (..., K, D) -> (..., K, D)
    whitened = (factor @ diff.unsqueeze(-1)).squeeze(-1)  # U (x - μ): (..., K, D)
    log_det = factor.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return -0.5 * whitened.square().sum(-1) + log_det - 0.5 * x.shape[-1] * LOG_2PI


def _block_rows(columns: int, dtype: torch.dtype) -> int:
    return max(1, _BLOCK_BYTES // (max(columns, 1) * torch.finfo(dtype).bits // 8))


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
        rows = _block_rows(weight.shape[1], weight.dtype)
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
        rows = _block_rows(weight.shape[1], weight.dtype)
        buffer = None if torch.is_grad_enabled() else features.new_empty(min(rows, len(features)), weight.shape[1])
        grad_x, grad_weight = [], torch.zeros_like(weight) if need_weight else None
        for start in range(0, len(features), rows):
            block = features[start : start + rows]
            n = block.shape[0]
            whitened = torch.mm(block, weight) if buffer is None else torch.mm(block, weight, out=buffer[:n])
            g = whitened.view(n, -1, num_components) * grad[..., start : start + n, None, :]  # -∂/∂ whitened
            g = g.reshape(*g.shape[:-2], -1)  # (..., n, D·K)
            if need_weight:
                grad_weight = grad_weight + block.T @ g
            if need_x:
                grad_x.append(g @ weight[:dims].T)
        return (
            (-torch.cat(grad_x, dim=-2) if grad_x else torch.zeros_like(x)) if need_x else None,
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

    U_k y - U_k m_k (y, m centred on the mean location) is computed for all K at once as one matrix product
    [y, 1] W with W (D + 1, D·K) the stacked factors and offsets, in blocks of rows so that no (N, K, D) tensor is
    formed or stored (the backward pass recomputes each block). It accumulates in `accumulation_dtype`; the terms of
    pair (n, k) are bounded by (‖U_k‖_F ‖y_n‖ + ‖|U_k| |m_k|‖)², and rows where that bound exceeds G (1 + result)
    are recomputed by the direct formula (see "Rounding" above).
    """
    dtype, wide = x.dtype, accumulation_dtype(x.dtype)
    x, loc, factor = x.to(wide), loc.to(wide), factor.to(wide)
    num_components, features = loc.shape
    if len(x) == 0:
        return full_log_prob(x, loc, factor).to(dtype)
    centre = loc.detach().mean(0)
    y, m = x - centre, loc - centre
    with torch.no_grad():
        inputs = torch.nn.functional.pad(y, (0, 1), value=1.0)  # [y, 1]: (N, D + 1)
    offset = (factor @ m.unsqueeze(-1)).squeeze(-1)  # U_k m_k: (K, D)
    augmented = torch.cat([factor, -offset.unsqueeze(-1)], dim=-1)  # (K, D, D + 1): rows of [U_k | -U_k m_k]
    weight = augmented.permute(2, 1, 0).reshape(features + 1, features * num_components)  # column d·K + k
    normalizer = factor.diagonal(dim1=-2, dim2=-1).log().sum(-1) - 0.5 * features * LOG_2PI
    log_p = _WhitenedLogProb.apply(y, inputs, weight, normalizer)
    guard = _guard(dtype, wide)
    with torch.no_grad():
        # entry d of U_k y rounds by ~u Σ_j |U_dj| |y_j| ≤ u ‖U_d‖ ‖y‖: the terms of pair (n, k) are at most
        # (‖U_k‖_F ‖y_n‖ + ‖|U_k| |m_k|‖)², and no pair of component k can pass G unless its largest (over n) does
        frobenius = factor.square().sum((-2, -1)).sqrt()  # (K,)
        loc_bound = (factor.abs() @ m.abs().unsqueeze(-1)).squeeze(-1).norm(dim=-1)  # (K,)
        norms = y.norm(dim=-1, keepdim=True)  # (N, 1)
        far = (frobenius * norms.max() + loc_bound > guard**0.5).nonzero().squeeze(-1)
        rows = None
        if len(far):
            terms = (norms * frobenius[far] + loc_bound[far]).square()  # (N, K')
            rows = _rows_beyond(terms, -2 * (log_p[:, far] - normalizer[far]), guard)
    if rows is not None:
        log_p = log_p.index_put((rows,), full_log_prob(x[rows], loc, factor))
    return log_p.to(dtype)


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
        factor = self.factor
        if noise.dtype in (torch.float16, torch.bfloat16):  # torch has no triangular solve in half precision
            factor, noise = factor.float(), noise.float()
        solved = torch.linalg.solve_triangular(factor, noise.unsqueeze(-1), upper=True).squeeze(-1)
        return self.loc + solved.to(self.loc.dtype)

    def split(self, size: int) -> list[GaussianComponents]:
        """Chunks along the component axis."""
        locs = self.loc.split(size, dim=-2)
        if self.is_diagonal:
            return [GaussianComponents(a, log_scale=b) for a, b in zip(locs, self.log_scale.split(size, dim=-2))]
        return [GaussianComponents(a, factor=b) for a, b in zip(locs, self.factor.split(size, dim=-3))]

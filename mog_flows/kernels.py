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

Seed 002's four costs for learning mixture centres from data x (N, D) (`scalar_cost`, `vector_matrix_cost`,
`schur_trace_cost`, `nuclear_norm_cost`) are reconstructed at the end of the module from the same closed forms.
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
    "scalar_cost",
    "vector_matrix_cost",
    "schur_trace_cost",
    "nuclear_norm_cost",
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


def _log_gaussian_pairs(first: tuple[Tensor, ...], second: tuple[Tensor, ...]) -> Tensor:
    """log N(μ_i; μ'_j, Σ_i + Σ'_j), shape (K, K')."""
    _, mu, cov, diag = first
    _, mu2, cov2, diag2 = second
    d = mu.shape[-1]
    diff = mu[:, None, :] - mu2[None, :, :]  # (K, 1, D) - (1, K', D) -> (K, K', D)
    if diag and diag2:
        s = cov[:, None, :] + cov2[None, :, :]  # (K, K', D) variances of the difference
        return -0.5 * (d * LOG_2PI + s.log().sum(-1) + (diff**2 / s).sum(-1))
    full, full2 = (torch.diag_embed(c) if is_diag else c for c, is_diag in ((cov, diag), (cov2, diag2)))
    s = full[:, None, :, :] + full2[None, :, :, :]  # (K, K', D, D)
    chol = torch.linalg.cholesky(s)
    white = torch.linalg.solve_triangular(chol, diff.unsqueeze(-1), upper=False).squeeze(-1)  # L⁻¹ (μ - μ')
    half_log_det = torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
    return -0.5 * (d * LOG_2PI + (white**2).sum(-1)) - half_log_det


def _log_weights(weights: Tensor) -> Tensor:
    # a zero weight becomes log(tiny): its terms vanish and its gradient is 0 instead of NaN (0 · ∞)
    return weights.clamp_min(torch.finfo(weights.dtype).tiny).log()


def _log_terms(first: tuple[Tensor, ...], second: tuple[Tensor, ...]) -> Tensor:
    """log w_i + log w'_j + log N(μ_i; μ'_j, Σ_i + Σ'_j), shape (K, K')."""
    log_w, log_w2 = _log_weights(first[0]), _log_weights(second[0])
    return log_w[:, None] + log_w2[None, :] + _log_gaussian_pairs(first, second)  # (K, 1) + (1, K') + (K, K')


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


# ---------------------------------------------------------------------------------------------------- seed 002 costs
# Reconstructions: seed 002 is only an abstract (the paper is not available here). Its four "kernelized matrix costs"
# for learning the centres φ_k = N(μ_k, Σ_k) of a mixture p = Σ w_k φ_k against data x_1..x_N are rebuilt below from
# the Gaussian Gram matrix G_kl = ⟨φ_k, φ_l⟩ = N(μ_k; μ_l, Σ_k + Σ_l) (K, K), the cross-correlation
# B_kn = ⟨φ_k, ψ_n⟩ = N(μ_k; x_n, Σ_k + s I) (K, N) with the data kernels ψ_n = N(x_n, s I) of bandwidth
# s = `data_variance`, and their Gram H_nm = N(x_n; x_m, 2 s I) (N, N). The data density is the kernel estimate
# q = (1/N) Σ_n ψ_n. Each cost lies in [0, 1] and is 0 at its optimum.
#
# The two matrix costs do not project the single data kernels ψ_n: Σ_n ‖ψ_n - Proj ψ_n‖² is a Nyström-type error
# whose best centres are as narrow as the data kernels (one centre on N(0, v) data: variance sqrt(s² + 2 s v), which
# tends to 0 with s), so it does not measure how well p fits the density. They project instead the K parts of q that
# the centres are responsible for, q_l = (1/N) Σ_n r_nl ψ_n with r_nl = B_ln / Σ_k B_kn (Σ_l q_l = q; equally
# weighted centres, so that these costs, like the vector-matrix one, score the span of the centres and ignore the
# weights: a cost that read the weights only through such a split would not pin them down, since a fit can move all
# the weight onto one centre and keep the span). Each part is density-like, so the optimum is the span's fit to q
# (for K = 1 both costs reduce to the Cauchy–Schwarz ratio), and centres shrinking onto data points drive the costs
# towards 1, not 0 (tests/test_kernels.py checks both). A fitted density takes its weights from elsewhere, e.g. the
# L2 projection G⁻¹ b of q onto the centres.


def _centres_and_data(params: dict[str, Tensor], data: Tensor, data_variance: float) -> tuple[tuple, tuple]:
    centres = check_mixture_parameters("params", params)
    data = torch.as_tensor(data)
    if data.dim() != 2 or data.shape[-1] != centres[1].shape[-1]:
        raise ValueError(f"data must have shape (N, {centres[1].shape[-1]}); got {tuple(data.shape)}")
    check_like("data", data, centres[1], "params")
    if not data_variance > 0:
        raise ValueError(f"data_variance must be positive; got {data_variance!r}")
    n = data.shape[0]
    kde = (torch.full((n,), 1.0 / n, dtype=data.dtype, device=data.device), data, torch.full_like(data, data_variance))
    return centres, check_mixture_parameters("data kernels", dict(zip(_KEYS, kde)))


def _whitened_cross(centres: tuple, kde: tuple, jitter: float) -> Tensor:
    """L⁻¹ B with L Lᵀ = G + jitter · mean(diag G) I, shape (K, N)."""
    cross = _log_gaussian_pairs(centres, kde).exp()
    return torch.linalg.solve_triangular(_gram_factor(centres, jitter), cross, upper=False)


def _gram_factor(centres: tuple, jitter: float) -> Tensor:
    """L with L Lᵀ = G + jitter · mean(diag G) I, the Cholesky factor of the centres' Gram matrix (K, K)."""
    gram = _log_gaussian_pairs(centres, centres).exp()
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.cholesky(gram + jitter * torch.diagonal(gram).mean() * eye)


def scalar_cost(params: dict[str, Tensor], data: Tensor, *, data_variance: float) -> Tensor:
    """1 - ⟨p, q⟩ / sqrt(⟨p, p⟩ ⟨q, q⟩): the Cauchy–Schwarz ratio of the mixture p and the data's kernel estimate q.

    Uses the weights of `params`; 0 iff p = q. `data`: (N, D). Reconstruction of seed 002's scalar cost.
    """
    centres, kde = _centres_and_data(params, data, data_variance)
    p, q = dict(zip(_KEYS, centres[:3])), dict(zip(_KEYS, kde[:3]))
    return 1 - torch.exp(-cauchy_schwarz_divergence(p, q))


def vector_matrix_cost(
    params: dict[str, Tensor], data: Tensor, *, data_variance: float, jitter: float = 1e-6
) -> Tensor:
    """1 - bᵀ G⁻¹ b / ⟨q, q⟩ with b = B 1/N: the relative squared L2 residual of projecting q onto span{φ_k}.

    bᵀ G⁻¹ b = max_w (2 ⟨Σ w_k φ_k, q⟩ - ‖Σ w_k φ_k‖²), so the weights are implied (optimal) and those of `params`
    are ignored. Reconstruction of seed 002's vector-matrix cost.
    """
    centres, kde = _centres_and_data(params, data, data_variance)
    projected = _whitened_cross(centres, kde, jitter).mean(-1)  # L⁻¹ b, (K,)
    norm_q = _log_gaussian_pairs(kde, kde).exp().mean()
    return 1 - (projected**2).sum() / norm_q


def _responsibility_blocks(params: dict[str, Tensor], data: Tensor, data_variance: float, jitter: float):
    """The whitened cross-correlation L⁻¹ C (K, K) of the centres with the data parts q_l, and their Gram H (K, K).

    C_kl = ⟨φ_k, q_l⟩ = (1/N) Σ_n B_kn r_nl and H_lm = ⟨q_l, q_m⟩ = (1/N²) rᵀ H_data r (module comment).
    """
    centres, kde = _centres_and_data(params, data, data_variance)
    log_cross = _log_gaussian_pairs(centres, kde)  # log B, (K, N)
    resp = torch.softmax(log_cross, dim=0)  # r_nl as (K, N): columns sum to 1
    n = data.shape[0]
    cross = log_cross.exp() @ resp.T / n  # C, (K, K)
    parts_gram = resp @ _log_gaussian_pairs(kde, kde).exp() @ resp.T / n**2  # H, (K, K)
    return torch.linalg.solve_triangular(_gram_factor(centres, jitter), cross, upper=False), parts_gram


def _trace_sqrt(psd: Tensor) -> Tensor:
    """tr(M^{1/2}) of a symmetric PSD M from its eigenvalues (clamped at 0; finite gradients at 0 eigenvalues)."""
    values = torch.linalg.eigvalsh(0.5 * (psd + psd.T))
    floor = torch.finfo(psd.dtype).eps * values.abs().max().detach()
    return values.clamp_min(floor).sqrt().sum()


def schur_trace_cost(params: dict[str, Tensor], data: Tensor, *, data_variance: float, jitter: float = 1e-6) -> Tensor:
    """tr(H - Cᵀ G⁻¹ C) / tr(H): the trace of the Schur complement of G in the joint Gram [[G, C], [Cᵀ, H]].

    The columns are the parts q_l of the data's kernel estimate that the centres are responsible for (module comment),
    so this is Σ_l ‖q_l - Proj q_l‖² / Σ_l ‖q_l‖², the relative squared L2 residual of projecting every part onto
    span{φ_k}. Weights ignored. Costs O(N² D) per call (the data Gram). A
    reconstruction of seed 002's matrix-matrix cost (the paper was not available): its columns are this project's
    choice, made so that the cost measures the fit of the density (single data kernels as columns do not).
    """
    whitened, parts_gram = _responsibility_blocks(params, data, data_variance, jitter)
    return 1 - (whitened**2).sum() / torch.diagonal(parts_gram).sum()


def nuclear_norm_cost(params: dict[str, Tensor], data: Tensor, *, data_variance: float, jitter: float = 1e-6) -> Tensor:
    """1 - ‖G^{-1/2} C‖_* / ‖H^{1/2}‖_*: the nuclear norm of the whitened cross-correlation against its largest value.

    ‖G^{-1/2} C‖_* = tr((Cᵀ G⁻¹ C)^{1/2}) and Cᵀ G⁻¹ C ≼ H (a projection), so the ratio is at most 1, with equality
    iff every part q_l lies in span{φ_k}: the cost is in [0, 1] and 0 exactly there. (Normalising by
    sqrt(K tr H), the Cauchy–Schwarz bound ‖M‖_* ≤ sqrt(K) ‖M‖_F, would leave the cost above 0 at a perfect fit
    with unequal weights.) Computed from eigenvalues, so gradients stay finite where singular values coincide or
    vanish. A reconstruction of seed 002's SVD cost, with the columns of `schur_trace_cost`.
    """
    whitened, parts_gram = _responsibility_blocks(params, data, data_variance, jitter)
    return 1 - _trace_sqrt(whitened.T @ whitened) / _trace_sqrt(parts_gram)

"""Label alignment for mixtures: canonical orderings and matching components to a reference (seed 004).

A mixture is identifiable only up to a permutation of its K components, so comparing fitted parameters
(across seeds, runs or MDN rows) first needs their labels aligned. Parameter dicts are those of
`mog_flows.kernels` with optional leading batch dimensions (an MDN's N rows): weights (*B, K),
means (*B, K, D), covariances (*B, K, D) variances or (*B, K, D, D) matrices.

A permutation `perm` of shape (*B, K) maps new positions to old ones: aligned[..., j] = params[..., perm[j]].
"""

from __future__ import annotations

import torch
from torch import Tensor

from mog_flows.kernels import check_mixture_parameters

__all__ = ["permute_components", "order_by_mean", "alignment_cost", "align_to_reference"]


def permute_components(params: dict[str, Tensor], permutation: Tensor) -> dict[str, Tensor]:
    """Reorder the components of `params` by `permutation` (*B, K): out[..., j] = params[..., permutation[j]]."""
    batch_dims = permutation.dim() - 1
    out = {}
    for key, value in params.items():
        index = permutation.view(*permutation.shape, *([1] * (value.dim() - permutation.dim())))
        out[key] = torch.take_along_dim(value, index.to(value.device), dim=batch_dims)
    return out


def order_by_mean(params: dict[str, Tensor], axis: int = 0) -> dict[str, Tensor]:
    """The components of `params` sorted by increasing mean along feature `axis` (per row when batched)."""
    means = torch.as_tensor(params["means"])
    batch_dims = means.dim() - 2
    check_mixture_parameters("params", params, batch_dims=max(batch_dims, 0))
    d = means.shape[-1]
    if not -d <= axis < d:
        raise ValueError(f"axis must index one of the D = {d} features; got {axis}")
    order = torch.argsort(means[..., axis], dim=-1, stable=True)  # (*B, K)
    return permute_components(params, order)


def alignment_cost(params: dict[str, Tensor], reference: dict[str, Tensor]) -> Tensor:
    """C[..., j, i] = (μ_i - μ^ref_j)ᵀ (Σ^ref_j)⁻¹ (μ_i - μ^ref_j), shape (*B, K, K).

    The squared Mahalanobis distance of a component's mean from each reference component, measured in that
    reference component's covariance: a mean one standard deviation off costs 1 whatever the scale of the
    features. Weights and covariances of `params` do not enter (they vary most between fits of one mixture).
    """
    means = params["means"]
    ref_means, ref_cov = reference["means"], reference["covariances"]
    diff = means.unsqueeze(-3) - ref_means.unsqueeze(-2)  # (*B, 1, K, D) - (*B, K, 1, D) -> (*B, K, K, D)
    if ref_cov.shape == ref_means.shape:  # variances
        return (diff**2 / ref_cov.unsqueeze(-2)).sum(-1)
    chol = torch.linalg.cholesky(ref_cov).unsqueeze(-3)  # (*B, K, 1, D, D)
    chol = chol.expand(*diff.shape[:-1], *chol.shape[-2:])
    white = torch.linalg.solve_triangular(chol, diff.unsqueeze(-1), upper=False).squeeze(-1)
    return (white**2).sum(-1)


def align_to_reference(params: dict[str, Tensor], reference: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
    """Permute the components of `params` to best match `reference`; returns (aligned params, permutation).

    Minimises Σ_j C[j, perm[j]] (`alignment_cost`) with the Hungarian algorithm
    (`scipy.optimize.linear_sum_assignment`), separately for each row when `params` has leading batch
    dimensions; `reference` either has the same batch dimensions or none (one reference for every row).
    The permutation (*B, K) is an int64 tensor on `params`' device; the aligned tensors keep their gradients.
    """
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as error:  # scipy is a test dependency only
        raise ImportError("align_to_reference needs scipy (pip install scipy)") from error
    means = torch.as_tensor(params["means"])
    batch_dims = means.dim() - 2
    check_mixture_parameters("params", params, batch_dims=max(batch_dims, 0))
    ref_means = torch.as_tensor(reference["means"])
    ref_batch = ref_means.dim() - 2
    check_mixture_parameters("reference", reference, batch_dims=max(ref_batch, 0))
    batch, (k, d) = tuple(means.shape[:-2]), means.shape[-2:]
    if (
        tuple(ref_means.shape[-2:]) != (k, d)
        or ref_batch not in (0, batch_dims)
        or (ref_batch and tuple(ref_means.shape[:-2]) != batch)
    ):
        raise ValueError(
            f"reference['means'] must have shape {(k, d)} or {(*batch, k, d)} to match params['means']; "
            f"got {tuple(ref_means.shape)}"
        )
    with torch.no_grad():
        cost = alignment_cost(params, reference)  # (*B, K, K)
        cost = cost.expand(*batch, k, k).reshape(-1, k, k).to(device="cpu", dtype=torch.float64).numpy()
    rows = [torch.as_tensor(linear_sum_assignment(c)[1]) for c in cost]
    permutation = torch.stack(rows).reshape(*batch, k).to(device=means.device, dtype=torch.long)
    return permute_components(params, permutation), permutation

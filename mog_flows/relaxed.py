"""Differentiable sampling of mixtures: Gumbel-softmax (Concrete) relaxations, the nested-minibatch density
estimator of relaxed samples, and unbiased pathwise gradients through exact mixture samples.

Shapes: K components, D features, n samples, M inner (nested) samples; B a batch shape, () or (N,).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .components import LOG_2PI, GaussianComponents

__all__ = [
    "gumbel_softmax",
    "concrete_log_prob",
    "nested_log_prob",
    "pathwise_sample",
]

# Inner samples are scored in chunks holding at most this many (point, inner sample) pairs.
_NESTED_CHUNK_PAIRS = 2**20


def gumbel_softmax(log_weights: Tensor, temperature: float, num_samples: int) -> tuple[Tensor, Tensor]:
    """Concrete samples c = softmax((log α + g) / τ), g ~ Gumbel(0, 1) (seed 003, §3.1).

    log_weights: B + (K,) normalised log α. Returns (c, log c), each B + (n, K); log c is computed directly
    so that it stays finite where c underflows to 0 at small τ.
    """
    shape = (*log_weights.shape[:-1], num_samples, log_weights.shape[-1])
    # g = -log E with E ~ Exp(1) is Gumbel(0, 1); the clamp keeps log finite where E rounds to 0
    exponential = torch.empty(shape, dtype=log_weights.dtype, device=log_weights.device).exponential_()
    gumbel = -exponential.clamp(min=torch.finfo(log_weights.dtype).tiny).log()
    log_c = torch.log_softmax((log_weights.unsqueeze(-2) + gumbel) / temperature, dim=-1)
    return log_c.exp(), log_c


def concrete_log_prob(log_c: Tensor, log_weights: Tensor, temperature: float) -> Tensor:
    """Log-density of the Concrete distribution at c, w.r.t. Lebesgue measure on its first K-1 coordinates.

        log p(c | α, τ) = log Γ(K) + (K-1) log τ - K log Σ_k α_k c_k^{-τ} + Σ_k (log α_k - (τ+1) log c_k)

    (seed 003, eq. 2; the density torch's `RelaxedOneHotCategorical.log_prob` returns).
    log_c: (..., K) logarithms of points on the simplex; log_weights: (..., K) normalised log α.
    """
    num_components = log_c.shape[-1]
    return (
        math.lgamma(num_components)
        + (num_components - 1) * math.log(temperature)
        - num_components * torch.logsumexp(log_weights - temperature * log_c, dim=-1)
        + (log_weights - (temperature + 1) * log_c).sum(-1)
    )


def _mean_density_chunk(z: Tensor, inner: GaussianComponents) -> Tensor:
    # log Σ_j p(z | c_j) over one chunk of inner samples: B + (n,)
    return torch.logsumexp(inner.log_prob(z), dim=-1)


def nested_log_prob(
    z: Tensor,
    log_weights: Tensor,
    components: GaussianComponents,
    *,
    num_inner: int,
    temperature: float,
) -> Tensor:
    """Nested-minibatch estimate of the relaxed density (seed 003, §3.2): log (1/M) Σ_j p(z | c_j).

    z: B + (n, D); log_weights B + (K,) and components of batch shape B. The inner c_j ~ Concrete(α, τ) are
    drawn independently of z and shared by the n points of a batch row. Inner samples are scored chunk by
    chunk; under autograd each chunk is checkpointed (recomputed in the backward pass), so the extra peak
    memory is one chunk's worth, not O(n·M·D).
    """
    points = z.shape[-2] * math.prod(z.shape[:-2])
    chunk = max(1, min(num_inner, _NESTED_CHUNK_PAIRS // max(points, 1)))
    track = torch.is_grad_enabled() and (z.requires_grad or log_weights.requires_grad or components.loc.requires_grad)
    partial_sums = []
    for start in range(0, num_inner, chunk):
        c, _ = gumbel_softmax(log_weights, temperature, min(chunk, num_inner - start))
        inner = components.soft_select(c)  # B + (m, ...)
        if track:
            partial_sums.append(
                checkpoint(_mean_density_chunk, z, inner, use_reentrant=False, preserve_rng_state=False)
            )
        else:
            partial_sums.append(_mean_density_chunk(z, inner))
    return torch.logsumexp(torch.stack(partial_sums, dim=-1), dim=-1) - math.log(num_inner)


def pathwise_sample(z: Tensor, log_weights: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    """Exact mixture samples carrying unbiased pathwise gradients w.r.t. weights, means and scales.

    Implicit reparameterisation through the Rosenblatt (sequential conditional CDF) transform (Graves 2016;
    Figurnov et al. 2018): dimension d of a diagonal mixture given the earlier ones is a univariate mixture
    with posterior weights w_k(z_<d), with CDF F_d(z_d | z_<d; θ). Holding u_d = F_d fixed gives
        dz_d/dθ = -(∂F_d/∂θ + Σ_{d'<d} ∂F_d/∂z_d' · dz_d'/dθ) / p_d(z_d | z_<d),
    which the surrogate z_d - (F_d - stop_grad(F_d)) / stop_grad(p_d) produces under autograd while keeping the
    value of z exactly.

    z: B + (n, D) exact samples (their own graph is ignored); log_weights B + (K,); loc, log_scale B + (K, D).
    """
    z = z.detach()
    log_w = log_weights.unsqueeze(-2)  # B + (1, K): becomes the posterior log-weights given z_<d
    loc, scale = loc.unsqueeze(-3), log_scale.exp().unsqueeze(-3)  # B + (1, K, D)
    tiny = torch.finfo(z.dtype).tiny
    coordinates = []
    for d in range(z.shape[-1]):
        standardized = (z[..., d : d + 1] - loc[..., d]) / scale[..., d]  # B + (n, K)
        posterior = torch.softmax(log_w, dim=-1)
        cdf = (posterior * torch.special.ndtr(standardized)).sum(-1)
        log_component_pdf = -0.5 * standardized.square() - scale[..., d].log() - 0.5 * LOG_2PI
        pdf = (posterior * log_component_pdf.exp()).sum(-1).detach().clamp(min=tiny)
        coordinate = z[..., d] - (cdf - cdf.detach()) / pdf
        coordinates.append(coordinate)
        # posterior update uses the surrogate so gradients reach later dimensions through z_d
        standardized_surrogate = (coordinate.unsqueeze(-1) - loc[..., d]) / scale[..., d]
        log_w = log_w - 0.5 * standardized_surrogate.square() - scale[..., d].log()
    return torch.stack(coordinates, dim=-1)

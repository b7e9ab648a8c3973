"""Maximum-entropy problems with known answers, and the checks of a learned solution (the `fit_maxent` studies).

Shapes: N samples, D features, m constraints.

A problem is "maximise H(q) subject to E_q[T(x)] = t"; its solution p is in the exponential family
p(x) ∝ exp(θᵀT(x)), and for a learned q

    KL(q ‖ p) = E_q[log q(x) - log p(x)],

estimated from exact samples of q with exact log-densities of both (`kl_from_samples`).

- `dirichlet_problem`: on the open simplex, T(y) = log y (K coordinates), t_k = ψ(α_k) - ψ(α₀): the solution is
  Dirichlet(α) (MEFN §4.1).
- `bimodal_problem`: on ℝᴰ, T(x) = (x_d², x_d⁴)_d, the same two moments per coordinate: the solution is the product of
  D copies of p(x) ∝ exp(θ₁x² - θ₂x⁴), bimodal when θ₁ > 0. θ and the entropy are solved by quadrature in float64.
- `mmd_test`: the kernel two-sample test (Gretton et al., JMLR 2012) with a permutation p-value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..checks import check_finite, check_positive_int

__all__ = [
    "MaxEntProblem",
    "dirichlet_problem",
    "bimodal_problem",
    "solve_bimodal",
    "kl_from_samples",
    "mmd_test",
    "MMDResult",
]

DOUBLE = torch.float64


@dataclass(frozen=True)
class MaxEntProblem:
    """A maximum-entropy problem with its exact solution.

    Attributes:
        name: a short label.
        features: D, the dimension of the samples the flow produces.
        statistic: T, x (N, D) -> (N, m), differentiable torch operations (any float dtype).
        target: t, shape (m,), float64.
        log_prob: log p(x) of the exact solution, x (N, D) -> (N,).
        sample: n -> n exact draws (n, D) of the solution, float64 (torch's global RNG).
        entropy: H(p) in nats.
        parameters: the natural parameters θ (m,) of the solution.
    """

    name: str
    features: int
    statistic: Callable[[Tensor], Tensor]
    target: Tensor
    log_prob: Callable[[Tensor], Tensor]
    sample: Callable[[int], Tensor]
    entropy: float
    parameters: Tensor


# ----------------------------------------------------------------------------------------------- Dirichlet
def _log_coordinates(y: Tensor) -> Tensor:
    """log of all K coordinates of points y (N, K - 1) of the open simplex -> (N, K)."""
    return torch.cat([y, 1 - y.sum(-1, keepdim=True)], -1).log()


def dirichlet_problem(alpha=(1.0, 2.0, 3.0)) -> MaxEntProblem:
    """E[log y_k] = ψ(α_k) - ψ(α₀), k = 1..K, on the open (K-1)-simplex (first K - 1 coordinates): the answer is
    Dirichlet(α), whose entropy is log B(α) + (α₀ - K) ψ(α₀) - Σ_k (α_k - 1) ψ(α_k)."""
    alpha = torch.as_tensor(alpha, dtype=DOUBLE)
    if alpha.dim() != 1 or alpha.numel() < 2:
        raise ValueError(f"alpha must have shape (K,) with K ≥ 2; got {tuple(alpha.shape)}")
    check_finite("alpha", alpha)
    if not bool((alpha > 0).all()):
        raise ValueError(f"alpha must be positive; got {alpha.tolist()}")
    dirichlet = torch.distributions.Dirichlet(alpha)
    target = torch.digamma(alpha) - torch.digamma(alpha.sum())

    def log_prob(y: Tensor) -> Tensor:
        return dirichlet.log_prob(torch.cat([y, 1 - y.sum(-1, keepdim=True)], -1).to(DOUBLE))

    def sample(n: int) -> Tensor:
        return dirichlet.sample((n,))[:, :-1]

    return MaxEntProblem(
        name="dirichlet",
        features=alpha.numel() - 1,
        statistic=_log_coordinates,
        target=target,
        log_prob=log_prob,
        sample=sample,
        entropy=dirichlet.entropy().item(),
        parameters=alpha - 1,
    )


# ----------------------------------------------------------------------------------------------- bimodal
def _grid(half_width: float, points: int) -> tuple[Tensor, Tensor]:
    """Nodes x (P,) on [-half_width, half_width] and their composite Simpson weights (P,), P odd."""
    x = torch.linspace(-half_width, half_width, points, dtype=DOUBLE)
    weights = torch.ones(points, dtype=DOUBLE)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    return x, weights * (x[1] - x[0]) / 3


def solve_bimodal(
    second_moment: float,
    fourth_moment: float,
    *,
    half_width: float = 8.0,
    points: int = 20_001,
    tolerance: float = 1e-12,
) -> tuple[Tensor, float, float]:
    """θ = (θ₁, θ₂) of the 1-D maximum-entropy density p(x) = exp(θ₁x² - θ₂x⁴ - A(θ)) with E[x²], E[x⁴] given, its
    log-normaliser A(θ) and its entropy, by Newton's method on the convex dual A(θ) - θ₁m₂ + θ₂m₄ with Simpson
    quadrature on [-half_width, half_width] in float64.

    Returns: θ (2,) float64, A(θ), H(p) = A(θ) - θ₁m₂ + θ₂m₄.
    """
    m2, m4 = float(second_moment), float(fourth_moment)
    if not (math.isfinite(m2) and math.isfinite(m4)) or m2 <= 0 or m4 <= m2 * m2:
        raise ValueError(
            "the moments must satisfy 0 < E[x²] and E[x⁴] > E[x²]² (a positive variance of x²); "
            f"got E[x²] = {second_moment!r}, E[x⁴] = {fourth_moment!r}"
        )
    check_positive_int("points", points)
    if points % 2 == 0 or points < 3:
        raise ValueError(f"points must be odd and ≥ 3 (Simpson's rule); got {points}")
    x, weights = _grid(half_width, points)
    features = torch.stack([x**2, -(x**4)], -1)  # (P, 2): θᵀf = θ₁x² - θ₂x⁴
    target = torch.tensor([m2, -m4], dtype=DOUBLE)

    def dual(theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """A(θ) - θᵀt, its gradient E[f] - t and its Hessian Cov f."""
        log_density = features @ theta  # (P,)
        log_normaliser = torch.logsumexp(log_density + weights.log(), 0)
        p = (log_density - log_normaliser).exp() * weights  # quadrature masses (P,)
        mean = p @ features
        centred = features - mean
        return log_normaliser - theta @ target, mean - target, (centred * p[:, None]).T @ centred

    theta = torch.tensor([0.0, 1.0 / (2 * m4)], dtype=DOUBLE)
    value, gradient, hessian = dual(theta)
    for _ in range(200):
        step = torch.linalg.solve(hessian, gradient)
        scale = 1.0
        while True:  # backtracking: stay where the density is normalisable (θ₂ > 0) and the dual decreases
            candidate = theta - scale * step
            if candidate[1] > 0:
                new_value, new_gradient, new_hessian = dual(candidate)
                if new_value <= value + 1e-4 * scale * (gradient @ -step):
                    break
            scale /= 2
            if scale < 1e-12:
                raise ValueError(f"no maximum-entropy solution found for E[x²] = {m2}, E[x⁴] = {m4}")
        theta, value, gradient, hessian = candidate, new_value, new_gradient, new_hessian
        if gradient.abs().max() < tolerance:
            break
    else:
        raise ValueError(f"Newton's method did not converge for E[x²] = {m2}, E[x⁴] = {m4}")
    log_normaliser = value + theta @ target
    entropy = log_normaliser - theta @ target
    return theta, log_normaliser.item(), entropy.item()


def _moments(x: Tensor) -> Tensor:
    """(x_1², ..., x_D², x_1⁴, ..., x_D⁴): x (N, D) -> (N, 2D)."""
    squares = x * x
    return torch.cat([squares, squares * squares], -1)


def bimodal_problem(
    features: int = 1, *, second_moment: float = 2.0, fourth_moment: float = 4.6, whiten: bool = False
) -> MaxEntProblem:
    """E[x_d²] = `second_moment`, E[x_d⁴] = `fourth_moment` for each of the D coordinates: the answer is the product of
    D copies of p(x) ∝ exp(θ₁x² - θ₂x⁴) (2ᴰ modes at ±√(θ₁/2θ₂) per coordinate when θ₁ > 0), entropy D·H(p).

    The statistic is ordered (x_1², ..., x_D², x_1⁴, ..., x_D⁴), with target (m₂, ..., m₄, ...). With `whiten`, it is
    the equivalent constraint set L⁻¹(x_d² - m₂, x_d⁴ - m₄) per coordinate (ordered the same way), target 0, L the
    Cholesky factor of Cov_p(x², x⁴): the same feasible set and solution, but constraints of unit variance and no
    correlation under p, which conditions the augmented-Lagrangian iteration (x² and x⁴ are strongly correlated and
    x⁴ has a large variance, so the raw λ-update contracts slowly along one direction and overshoots along the other).
    """
    check_positive_int("features", features)
    theta, log_normaliser, entropy = solve_bimodal(second_moment, fourth_moment)
    x_grid, weights = _grid(8.0, 20_001)
    masses = (theta[0] * x_grid**2 - theta[1] * x_grid**4 - log_normaliser).exp() * weights
    raw = torch.stack([x_grid**2 - second_moment, x_grid**4 - fourth_moment], -1)  # (P, 2)
    cholesky = torch.linalg.cholesky((raw * masses[:, None]).T @ raw)  # L Lᵀ = Cov_p(x², x⁴)
    if whiten:
        target = torch.zeros(2 * features, dtype=DOUBLE)
        centre = torch.tensor([second_moment, fourth_moment], dtype=DOUBLE)
        inverse = torch.linalg.inv(cholesky)

        def statistic(x: Tensor) -> Tensor:
            squares = x * x
            values = torch.stack([squares, squares * squares], -1) - centre.to(x)  # (N, D, 2)
            white = values @ inverse.to(x).T  # (N, D, 2) @ (2, 2) -> (N, D, 2)
            return torch.cat([white[..., 0], white[..., 1]], -1)

    else:
        target = torch.tensor([second_moment] * features + [fourth_moment] * features, dtype=DOUBLE)
        statistic = _moments
    cdf = torch.cumsum((theta[0] * x_grid**2 - theta[1] * x_grid**4 - log_normaliser).exp() * weights, 0)
    cdf = cdf / cdf[-1]

    def log_prob(x: Tensor) -> Tensor:
        x = x.to(DOUBLE)
        return (theta[0] * x**2 - theta[1] * x**4 - log_normaliser).sum(-1)

    def sample(n: int) -> Tensor:  # inverse CDF on the quadrature grid, linear interpolation
        u = torch.rand(n, features, dtype=DOUBLE)
        index = torch.searchsorted(cdf, u).clamp(1, cdf.numel() - 1)
        low, high = cdf[index - 1], cdf[index]
        fraction = (u - low) / (high - low).clamp_min(1e-300)
        return x_grid[index - 1] + fraction * (x_grid[1] - x_grid[0])

    return MaxEntProblem(
        name=f"bimodal-{features}d",
        features=features,
        statistic=statistic,
        target=target,
        log_prob=log_prob,
        sample=sample,
        entropy=features * entropy,
        parameters=theta,
    )


# ----------------------------------------------------------------------------------------------- checks
def kl_from_samples(log_q: Tensor, log_p: Tensor) -> tuple[float, float]:
    """KL(q ‖ p) ≈ mean(log q(x) - log p(x)) over x ~ q, and its Monte-Carlo standard error; log_q, log_p (N,)."""
    if log_q.shape != log_p.shape or log_q.dim() != 1 or log_q.numel() < 2:
        raise ValueError(
            f"log_q and log_p must have the same shape (N,) with N ≥ 2; got {tuple(log_q.shape)} and "
            f"{tuple(log_p.shape)}"
        )
    difference = log_q.to(DOUBLE) - log_p.to(DOUBLE)
    check_finite("log_q - log_p", difference)
    return difference.mean().item(), difference.std().item() / math.sqrt(difference.numel())


@dataclass(frozen=True)
class MMDResult:
    """`mmd_test`'s answer: the unbiased MMD² estimate, its permutation p-value, and the kernel bandwidth."""

    mmd2: float
    p_value: float
    bandwidth: float


def _unbiased_mmd2(kernel: Tensor, first: Tensor) -> Tensor:
    """Unbiased MMD² for each labelling (R, N+M) bool (True: first sample) of a kernel matrix (N+M, N+M) -> (R,)."""
    a, b = first.to(kernel), (~first).to(kernel)
    n, m = a.sum(-1), b.sum(-1)
    diagonal = kernel.diagonal()
    kxx = ((a @ kernel) * a).sum(-1) - a @ diagonal  # Σ_{i≠j} k(x_i, x_j)
    kyy = ((b @ kernel) * b).sum(-1) - b @ diagonal
    kxy = ((a @ kernel) * b).sum(-1)
    return kxx / (n * (n - 1)) + kyy / (m * (m - 1)) - 2 * kxy / (n * m)


def mmd_test(
    x: Tensor, y: Tensor, *, num_permutations: int = 500, bandwidth: float | None = None, seed: int = 0
) -> MMDResult:
    """Kernel two-sample test of H0: x (N, D) and y (M, D) come from the same distribution.

    k(a, b) = exp(-‖a - b‖² / (2 h²)), h = `bandwidth` or the median distance of the pooled sample; the statistic is
    the unbiased MMD² estimate, and p = (1 + #{permuted MMD² ≥ observed}) / (1 + `num_permutations`) over random
    relabellings of the pooled sample (a generator seeded by `seed`: the global RNG is left alone).
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1] or x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(
            f"x and y must have shapes (N, D) and (M, D) with N, M ≥ 2; got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    check_positive_int("num_permutations", num_permutations)
    pooled = torch.cat([x, y]).to(DOUBLE)
    check_finite("x and y", pooled)
    squared = torch.cdist(pooled, pooled).square()  # (N+M, N+M)
    if bandwidth is None:
        upper = squared[torch.triu_indices(*squared.shape, 1).unbind()]
        bandwidth = upper.median().sqrt().item()
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0; got {bandwidth!r}")
    kernel = torch.exp(-squared / (2 * bandwidth**2))
    n, total = x.shape[0], pooled.shape[0]
    observed_labels = torch.arange(total) < n
    observed = _unbiased_mmd2(kernel, observed_labels[None])[0]
    generator = torch.Generator().manual_seed(seed)
    permutations = torch.argsort(torch.rand(num_permutations, total, generator=generator), -1)
    labels = observed_labels[permutations]  # (R, N+M): each a random relabelling with N "first"
    exceed = 0
    for chunk in labels.split(64):
        exceed += int((_unbiased_mmd2(kernel, chunk) >= observed).sum())
    return MMDResult(observed.item(), (1 + exceed) / (1 + num_permutations), float(bandwidth))

"""Mixture density networks with full or diagonal covariances (seed 001), their losses and bounds (seed 000).

Shapes: N batch, K components, D features (the modelled y), C context features (the network input x),
n samples per context row, L label columns.

A mixture density network maps x (N, C) to a Gaussian mixture over y per row,

    p(y | x) = Σ_k w_k(x) N(y; μ_k(x), Σ_k(x)),   Σ_k⁻¹ = U_kᵀ U_k,

with U_k upper-triangular with a positive diagonal: the Cholesky factor of the precision (seed 001, eqs. 9–13).
Every density here is computed in log space,

    log N(y; μ, Σ) = -½ ‖U (y - μ)‖² + Σ_d log U_dd - (D/2) log 2π,
    log p(y | x)   = logsumexp_k [log w_k + log N(y; μ_k, Σ_k)],

so that points far from every component (20 σ and more) keep finite, accurate log densities in float32.

Corrections to the seeds, each noted again where it matters:
- seed 001 eq. 1 normalises by √((2π)^K |Σ|); the exponent is the dimension D, not the number of components K.
- seed 001 §3 sizes the packed factor entries as D(D-1)/2; a triangle with its diagonal has D(D+1)/2 entries
  (FrEIA's own `GaussianMixtureModel` docstring says D(D+1)/2, and its code reads D of them as the diagonal).
- seed 001 §2.3 samples with L = Ūᵀ "inverse of its transpose"; the covariance factor is L = U⁻¹,
  Σ = (UᵀU)⁻¹ = U⁻¹U⁻ᵀ (with L = U⁻ᵀ, L Lᵀ = (U Uᵀ)⁻¹ ≠ Σ in general).
- seed 001 eq. 15 is not an upper bound of the NLL in general (`jensen_bound`, form="seed").
- seed 000's NLL computes exp, sums, then takes log(prob + 1e-300): a point far from every component underflows
  to the floor, log(1e-300) ≈ -690.8, whatever its true density; here it is a logsumexp of log densities.
- seed 000's "collinearity penalty" depends on the labels only, so its gradient w.r.t. the network is zero
  (`collinearity_penalty`); `residual_correlation_penalty` is a differentiable penalty of the kind its text asks for.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .checks import (
    check_choice,
    check_features,
    check_finite,
    check_like,
    check_num_samples,
    check_positive_int,
)
from .components import (
    GaussianComponents,
    diagonal_log_prob,
    full_log_prob,
    packed_size,
    unpack_precision_factor,
)

__all__ = [
    "MixtureDensityNetwork",
    "COVARIANCES",
    "JENSEN_FORMS",
    "nll",
    "jensen_bound",
    "collinearity_penalty",
    "residual_correlation_penalty",
]

COVARIANCES = ("full", "diagonal")
JENSEN_FORMS = ("weighted", "uniform", "seed")

# the spread of the initial component means (the output layer's bias), in units of y
_INITIAL_MEAN_SPREAD = 1.0
# the output layer's weights start this small: every row starts near one mixture with distinct components
_OUTPUT_WEIGHT_SCALE = 1e-2


class MixtureDensityNetwork(nn.Module):
    """Conditional Gaussian mixture p(y | x) whose weights, means and precision factors an MLP predicts from x.

    Args:
        in_features: C, the width of the network input x (the `context` of `log_prob` and `sample`).
        out_features: D, the dimension of the modelled y.
        num_components: K ≥ 1.
        covariance: "full" (U upper-triangular, D(D+1)/2 raw entries per component, the diagonal exponentiated:
            seed 001 eq. 10) or "diagonal" (U diagonal, D raw log entries per component).
        hidden_features: width of the two hidden layers (SiLU).

    The network outputs K logits, K·D means and K·S raw factor entries per row, S = D(D+1)/2 ("full", packed as
    `mog_flows.components.unpack_precision_factor` reads them) or S = D ("diagonal"). Seed 001 §3 gives the packed
    size as D(D-1)/2, which leaves out the diagonal. The output layer starts with small weights and a bias holding
    zero logits, means drawn from N(0, I) (so components start apart) and zero raw factors (U = I).

    `features` (= D) and `context_features` (= C) say what `fit` must pass: `fit(mdn, (y, x), steps=...)`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_components: int,
        *,
        covariance: str = "full",
        hidden_features: int = 64,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.num_components = check_positive_int("num_components", num_components)
        self.covariance = check_choice("covariance", covariance, COVARIANCES)
        hidden = check_positive_int("hidden_features", hidden_features)
        K, D = num_components, out_features
        self._factor_size = packed_size(D) if covariance == "full" else D
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, K * (1 + D + self._factor_size)),
        )
        last = self.net[-1]
        with torch.no_grad():
            last.weight.mul_(_OUTPUT_WEIGHT_SCALE)
            means = _INITIAL_MEAN_SPREAD * torch.randn(K * D)
            last.bias.copy_(torch.cat([torch.zeros(K), means, torch.zeros(K * self._factor_size)]))

    @property
    def features(self) -> int:
        """D, the dimension of y (what `fit` checks its data against)."""
        return self.out_features

    @property
    def context_features(self) -> int:
        """C, the dimension of the network input x."""
        return self.in_features

    def _reference(self) -> Tensor:
        return self.net[-1].weight

    def _check_context(self, context: Tensor, rows: int | None = None) -> Tensor:
        if not isinstance(context, Tensor):
            raise TypeError(f"context must be a torch.Tensor of shape (N, {self.in_features}); got {type(context)}")
        check_features("context", context, self.in_features)
        check_like("context", context, self._reference(), "the network")
        if rows is not None and context.shape[0] != rows:
            raise ValueError(f"context must have one row per y: {rows} rows of y, {context.shape[0]} context rows")
        return context

    def _raw(self, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (N, C) -> log weights (N, K), means (N, K, D), raw factor entries (N, K, S)."""
        K, D = self.num_components, self.out_features
        out = self.net(context)
        logits, means, raw = out.split([K, K * D, K * self._factor_size], dim=-1)
        log_weights = torch.log_softmax(logits, dim=-1)
        return log_weights, means.unflatten(-1, (K, D)), raw.unflatten(-1, (K, self._factor_size))

    def _factor(self, raw: Tensor) -> Tensor:
        if self.covariance == "full":
            return unpack_precision_factor(raw, self.out_features)
        return torch.diag_embed(raw.exp())

    def _components(self, means: Tensor, raw: Tensor) -> GaussianComponents:
        if self.covariance == "full":
            return GaussianComponents(means, factor=unpack_precision_factor(raw, self.out_features))
        return GaussianComponents(means, log_scale=-raw)  # U = diag(exp(raw)): σ = exp(-raw)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Mixture parameters per row of x (N, C).

        Returns:
            dict with "weights" (N, K) on the simplex, "means" (N, K, D) and "precision_cholesky" (N, K, D, D),
            upper-triangular U_k with a positive diagonal, Σ_k⁻¹ = U_kᵀU_k (diagonal U_k when covariance="diagonal").
        """
        self._check_context(x)
        log_weights, means, raw = self._raw(x)
        return {"weights": log_weights.exp(), "means": means, "precision_cholesky": self._factor(raw)}

    def log_prob(self, y: Tensor, context: Tensor) -> Tensor:
        """Exact log p(y | x) = logsumexp_k [log w_k + log N(y; μ_k, Σ_k)]: y (N, D), context x (N, C) -> (N,).

        The weights enter as log-softmax outputs and each component as its log density (never exp then log), so
        y far from every component gives finite values in float32.
        """
        if not isinstance(y, Tensor):
            raise TypeError(f"y must be a torch.Tensor of shape (N, {self.out_features}); got {type(y)}")
        check_features("y", y, self.out_features)
        check_like("y", y, self._reference(), "the network")
        self._check_context(context, rows=y.shape[0])
        log_weights, means, raw = self._raw(context)
        if self.covariance == "full":
            component = full_log_prob(y, means, unpack_precision_factor(raw, self.out_features))  # (N, K)
        else:
            component = diagonal_log_prob(y, means, -raw)  # (N, K)
        return torch.logsumexp(log_weights + component, dim=-1)

    def mean(self, context: Tensor) -> Tensor:
        """Conditional mean E[y | x] = Σ_k w_k μ_k: context x (N, C) -> (N, D); differentiable."""
        self._check_context(context)
        log_weights, means, _ = self._raw(context)
        return (log_weights.exp().unsqueeze(-1) * means).sum(-2)  # (N, K, 1) * (N, K, D) -> (N, D)

    def sample(self, num_samples: int, context: Tensor) -> Tensor:
        """Exact ancestral samples: num_samples n, context x (N, C) -> (N, n, D).

        k ~ Categorical(w(x)), then y = μ_k + U_k⁻¹ η with η ~ N(0, I): one triangular solve, no inverse, and
        Cov = U⁻¹U⁻ᵀ = (UᵀU)⁻¹ = Σ_k (seed 001 §2.3 uses the inverse of Uᵀ instead, which is wrong).
        Gradients flow to the means and factors of the chosen components, not through the choice of k.
        Uses torch's global RNG and the parameters' dtype and device.
        """
        n = check_num_samples(num_samples)
        self._check_context(context)
        log_weights, means, raw = self._raw(context)
        index = torch.multinomial(log_weights.exp().detach(), n, replacement=True)  # (N, n)
        noise = torch.randn(*index.shape, self.out_features, dtype=means.dtype, device=means.device)
        return self._components(means, raw).select(index).sample(noise)  # (N, n, D)


# ---------------------------------------------------------------------------------------------- mixture losses
def _check_mixture(y: Tensor, weights: Tensor, means: Tensor, precision_cholesky: Tensor) -> None:
    """y (N, D), weights (N, K), means (N, K, D), precision_cholesky (N, K, D, D) upper, positive diagonal."""
    for name, tensor in (("y", y), ("weights", weights), ("means", means), ("precision_cholesky", precision_cholesky)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor; got {tensor.dtype}")
    if y.dim() != 2:
        raise ValueError(f"y must have shape (N, D); got {tuple(y.shape)}")
    if weights.dim() != 2:
        raise ValueError(f"weights must have shape (N, K); got {tuple(weights.shape)}")
    (N, D), K = y.shape, weights.shape[-1]
    if weights.shape[0] != N:
        raise ValueError(
            f"weights must have shape (N, K) = ({N}, K) to match y {tuple(y.shape)}; got {tuple(weights.shape)}"
        )
    expected = {"means": (N, K, D), "precision_cholesky": (N, K, D, D)}
    for name, tensor in (("means", means), ("precision_cholesky", precision_cholesky)):
        if tuple(tensor.shape) != expected[name]:
            raise ValueError(
                f"{name} must have shape {expected[name]} to match y {tuple(y.shape)} and weights "
                f"{tuple(weights.shape)}; got {tuple(tensor.shape)}"
            )
    for name, tensor in (("means", means), ("precision_cholesky", precision_cholesky), ("y", y)):
        if tensor.dtype != weights.dtype or tensor.device != weights.device:
            raise ValueError(
                f"{name} has dtype {tensor.dtype} on {tensor.device} but weights are {weights.dtype} on "
                f"{weights.device}; all mixture inputs must share one dtype and device"
            )
    for name, tensor in (("y", y), ("weights", weights), ("means", means), ("precision_cholesky", precision_cholesky)):
        check_finite(name, tensor)
    if (weights < 0).any():
        raise ValueError(f"weights must be non-negative; got a minimum of {weights.min().item():.3g}")
    total = weights.sum(-1)
    tolerance = 1e3 * torch.finfo(weights.dtype).eps * max(K, 1)
    if ((total - 1).abs() > tolerance).any():
        worst = (total - 1).abs().argmax().item()
        raise ValueError(f"weights must sum to 1 along K; row {worst} sums to {total[worst].item():.6g}")
    if precision_cholesky.tril(-1).ne(0).any():
        raise ValueError(
            "precision_cholesky must be upper-triangular (Σ⁻¹ = UᵀU); got non-zero entries below the diagonal"
        )
    diagonal = precision_cholesky.diagonal(dim1=-2, dim2=-1)
    if (diagonal <= 0).any():
        raise ValueError(
            f"precision_cholesky must have a positive diagonal; got {(diagonal <= 0).sum().item()} diagonal "
            f"entries ≤ 0 (smallest {diagonal.min().item():.3g})"
        )


def _component_log_prob(y: Tensor, weights: Tensor, means: Tensor, precision_cholesky: Tensor) -> Tensor:
    """Validated log N(y_n; μ_nk, Σ_nk): (N, K), with 2π (seed 001 eq. 1 with D, not K, in the exponent)."""
    _check_mixture(y, weights, means, precision_cholesky)
    return full_log_prob(y, means, precision_cholesky)


def nll(y: Tensor, weights: Tensor, means: Tensor, precision_cholesky: Tensor) -> Tensor:
    """Mean exact negative log-likelihood (seed 001 eq. 14 with its constant -(D/2) log 2π) -> scalar.

        nll = -(1/N) Σ_n logsumexp_k [log w_nk + log N(y_n; μ_nk, Σ_nk)]

    Args:
        y: points, shape (N, D).
        weights: mixture weights, shape (N, K), non-negative and summing to 1 per row (a zero weight drops its
            component).
        means: component means, shape (N, K, D).
        precision_cholesky: upper-triangular U, shape (N, K, D, D), positive diagonal, Σ⁻¹ = UᵀU.

    Raises:
        ValueError: shapes that do not match (expected and actual shapes named), NaN or infinite values, weights
            off the simplex, a factor with entries below the diagonal or a diagonal entry ≤ 0.
    """
    component = _component_log_prob(y, weights, means, precision_cholesky)
    return -torch.logsumexp(weights.log() + component, dim=-1).mean()


def jensen_bound(
    y: Tensor, weights: Tensor, means: Tensor, precision_cholesky: Tensor, *, form: str = "weighted"
) -> Tensor:
    """A Jensen-inequality surrogate of `nll` -> scalar; arguments as in `nll`, with ℓ_k = log N(y; μ_k, Σ_k):

        "weighted": mean of -Σ_k w_k ℓ_k                        ≥ nll  (Jensen with the weights as the measure)
        "uniform":  mean of -log K - (1/K) Σ_k (log w_k + ℓ_k)  ≥ nll  (Jensen with the uniform measure)
        "seed":     mean of -Σ_k (log w_k + ℓ_k)                  seed 001 eq. 15 as written

    The "seed" form sums over k without the 1/K, which is not a Jensen bound: it equals K × "uniform" - K log K,
    and falls below the NLL whenever the NLL is negative enough, e.g. K = 3 identical N(0, 0.01 I) components in
    2-D give an NLL near -1.8 at typical points and a "seed" value near -2.2. Kept for fidelity to the seed (and to
    FrEIA's `nll_upper_bound`, which it equals up to the constant K (D/2) log 2π); do not use it as a bound.
    "uniform" and "seed" are infinite when a weight is exactly zero.
    """
    check_choice("form", form, JENSEN_FORMS)
    component = _component_log_prob(y, weights, means, precision_cholesky)  # (N, K)
    if form == "weighted":
        # w_k ℓ_k with ℓ_k finite: a zero weight contributes exactly 0
        return -(weights * component).sum(-1).mean()
    joint = weights.log() + component  # log w_k + ℓ_k: (N, K)
    if form == "uniform":
        return (-math.log(weights.shape[-1]) - joint.mean(-1)).mean()
    return -joint.sum(-1).mean()


# ---------------------------------------------------------------------------------------------- label penalties
def _correlation(matrix: Tensor, name: str, what: str) -> Tensor:
    """Pearson correlation matrix (L, L) of the columns of matrix (N, L), as numpy's corrcoef(matrix.T)."""
    if matrix.dim() != 2:
        raise ValueError(f"{name} must have shape (N, L); got {tuple(matrix.shape)}")
    if matrix.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows to define correlations; got shape {tuple(matrix.shape)}")
    check_finite(name, matrix)
    centred = matrix - matrix.mean(0)
    covariance = centred.T @ centred / (matrix.shape[0] - 1)  # (L, L)
    std = covariance.diagonal().sqrt()
    scale = matrix.abs().amax(0).clamp_min(torch.finfo(matrix.dtype).tiny)
    constant = (std <= 8 * torch.finfo(matrix.dtype).eps * scale).nonzero().flatten().tolist()
    if constant:
        raise ValueError(f"{name} column(s) {constant} are constant: their {what} correlations are undefined (0/0)")
    return covariance / std.unsqueeze(-1) / std  # (L, 1) then (L,)


def _off_diagonal_square_sum(correlation: Tensor) -> Tensor:
    mask = ~torch.eye(correlation.shape[0], dtype=torch.bool, device=correlation.device)
    return correlation[mask].square().sum()


def collinearity_penalty(labels: Tensor, lam: float = 0.1) -> Tensor:
    """Seed 000's collinearity penalty, exactly: λ Σ_{i≠j} corr(labels)_ij² -> scalar.

    Args:
        labels: shape (N, L), N ≥ 2; correlations between its columns over the N rows (numpy's
            `corrcoef(labels.T)`). A numpy array is accepted and converted.
        lam: λ ≥ 0.

    The seed's comment says it penalises "correlation between predicted means and labels", but what it computes
    involves the labels only: it is a constant of the data, and its gradient w.r.t. every network parameter is zero
    (it shifts the loss, it cannot change what is learnt). `residual_correlation_penalty` is a differentiable
    penalty in the spirit of the seed's text.

    Raises:
        ValueError: labels not of shape (N, L) with N ≥ 2, non-finite, or with a constant column (where numpy
            would return NaN); a negative or non-finite lam.
    """
    labels = torch.as_tensor(labels)
    if not labels.is_floating_point():
        labels = labels.to(torch.get_default_dtype())
    lam = _check_lam(lam)
    return lam * _off_diagonal_square_sum(_correlation(labels, "labels", "label"))


def residual_correlation_penalty(y: Tensor, predicted_mean: Tensor, lam: float = 0.1) -> Tensor:
    """λ Σ_{i≠j} corr(r)_ij² over the batch of residuals r = y - E_q[y | x] -> scalar; differentiable.

    Args:
        y: targets, shape (N, D), N ≥ 2.
        predicted_mean: the model's conditional mean E_q[y | x], shape (N, D), e.g. `MixtureDensityNetwork.mean(x)`;
            gradients flow through it to the network.
        lam: λ ≥ 0.

    It penalises residual structure shared between output coordinates that the conditional mean has not explained,
    the differentiable counterpart of seed 000's label-only `collinearity_penalty`.

    Raises:
        ValueError: mismatched or non-(N, D) shapes, fewer than 2 rows, non-finite values, a residual column that is
            constant over the batch, a negative or non-finite lam.
    """
    if not isinstance(y, Tensor) or not isinstance(predicted_mean, Tensor):
        raise TypeError("y and predicted_mean must be torch.Tensors")
    if y.shape != predicted_mean.shape:
        raise ValueError(f"predicted_mean must have the shape of y {tuple(y.shape)}; got {tuple(predicted_mean.shape)}")
    lam = _check_lam(lam)
    return lam * _off_diagonal_square_sum(_correlation(y - predicted_mean, "residuals y - predicted_mean", "residual"))


def _check_lam(lam: float) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number ≥ 0; got {lam!r}")
    return float(lam)

"""`fit_maxent`: maximum-entropy flow networks (MEFN; Loaiza-Ganem, Gao & Cunningham, ICLR 2017, arXiv 1701.03504),
trained by the stochastic augmented Lagrangian method of the paper's Algorithm 1 and the authors' code
(github.com/gabloa/max_ent_flow_nets, `MEFN_dirichlet_theano.ipynb`).

Shapes: B minibatch rows (`batch_size`), D features, m constraints, E test batches (`test_batches`).

Over the density q of a flow, the problem

    maximise H(q) = -E_q[log q(x)]   subject to   R(q) = E_q[T(x)] - t = 0      (T: ℝᴰ → ℝᵐ, t ∈ ℝᵐ)

is solved in standardised units. From the E·B samples of the initial flow's test batches (drawn before the first
step, with the training-time sampler) `fit_maxent` takes each statistic's standard deviation s_j and, frozen at that
value for the whole run (`result.scale`), solves the equivalent problem

    maximise H(q)   subject to   R(q) = (E_q[T(x)] - t) / s = 0      (elementwise: R_j = (E[T_j] - t_j) / s_j)

with the same feasible set and solution, whatever the units of T. Everything below (the penalty, λ's update, c's
Welch test and the stopping test, the history's violation norms) works on these standardised residuals; the result
reports `.violation` in the caller's units, the multipliers of the caller's problem (λ_j / s_j, so that the answer
is q ∝ exp(-Σ_j λ_j T_j)), and the standardised violation beside them. The scaling is per constraint rather than a
whitening by the Cholesky factor of Cov T: it makes the run invariant to the units of every statistic, which is what
the scaling is for, and keeps each residual tied to one of the caller's constraints, so that the stopping test and
the diagnostics name them. A whitening would also have to use the covariance under the *initial* flow, which need not
resemble the one at the answer, and it amplifies the noise of that estimate where constraints are nearly redundant
(its factor is then near-singular); a caller who knows the covariance at the answer can still pass whitened
statistics (`studies.maxent_problems.bimodal_problem(whiten=True)` does). A statistic of zero variance under the
initial flow (the same value on every sample, to rounding) has no scale and, constant where the flow puts its mass,
no gradient to steer the flow with: `fit_maxent` refuses it with a ValueError rather than invent a floor.

The standardised problem is solved by minimising, for fixed multipliers λ (m,) and penalty c > 0, the augmented
Lagrangian

    L(q; λ, c) = -H(q) + λᵀR(q) + (c/2) ‖W R(q)‖²,     W = Cov_q(R)^-1/2  (`metric="whiten"`, the default)

with W re-estimated after every epoch from that epoch's test samples (W = I with `metric="scale"`). Why: with exact
inner solves, E_q[T] responds to λ through Cov_q(T) (the dual's Hessian), so λ ← λ + c WᵀW R̂ is a damped Newton step
on the dual that contracts the error by 1/(1 + c) per epoch whatever the correlations of the constraints (x² and x⁴
are nearly collinear) and however far the initial flow, which set s, is from the answer. With per-constraint scaling
alone, the contraction is c·F/(1 + c·F) for the standardised Fisher matrix F, tiny along nearly redundant directions
or when the initial flow is much broader than the answer, and the development sweep's runs stalled there.

for `epoch_steps` Adam steps (one augmented-Lagrangian epoch), then updating λ and c. Each step draws x_1..x_B and
their log-densities from `flow.sample_and_log_prob(B)` (a `MixtureOfGaussians` base's `estimator` decides how a
relaxed sample is scored) and descends the minibatch objective

    -Ĥ + λᵀR̂ + (c/2) R̂₁ᵀWᵀW R̂₂,      Ĥ = -(1/B) Σ_b log q(x_b),   R̂ = (1/B) Σ_b (T(x_b) - t) / s,

R̂₁, R̂₂ the same means over the first and the second half of the batch. The halves are independent, so
E[R̂₁ᵀR̂₂] = ‖R‖² and the term's gradient is unbiased for that of (c/2)‖R‖² (R̂ᵀR̂ is biased by tr Cov T / B).
After each epoch, from E fresh test batches of B samples of the training-time sampler (`augmented_lagrangian_update`):

    λ ← λ + c WᵀW R̂    R̂ pooled over the E·B samples;
    c ← min(β c, c_max) when ‖R‖ did not fall below γ times its value after the previous epoch (the first epoch
                       compares with the initial model): a one-sided Welch test at level α rejects
                       E[s] ≤ γ² E[s_prev], s_e = (W R̂_{e,1})ᵀ(W R̂_{e,2}) the unbiased split-half estimate of
                       ‖W R‖² from test batch e, both epochs' s in the metric W of the epoch being tested (the
                       authors test E‖R̂_e‖ ≤ γ E‖R̂_e,prev‖, `penalty_test="norm"`); c_max = `max_penalty`;
    stop               when each constraint passes its two-sided t-test of E[T_j] = t_j at level α/m (Bonferroni),
                       log q is affine in T on the epoch's exact samples (half the residual variance of log q
                       regressed on T, about KL(q ‖ p) to second order, below `stationarity_tolerance`: constraints
                       met by a flow that has not yet maximised its entropy no longer stop the run), the
                       remaining violations move the entropy by less than `entropy_tolerance` to first order
                       (|λᵀR̂| below it, see below), and τ is at the end of its annealing schedule. A run that
                       ends without passing it issues a `MaxEntNotConvergedWarning` (a UserWarning) naming what
                       failed.

Why the test in entropy units: for the answer p ∝ exp(-λ*ᵀT) and any q, H(q) - H(p) = λ*ᵀR(q) - KL(q ‖ p)
(standardised λ*, R). The stationarity test bounds the KL part; the t-tests only say that each R_j is within its
noise. Where the multipliers are large (nearly collinear constraints such as x² and x⁴), standardised violations
of 0.001-0.01, within that noise, went with entropies 0.01-0.02 nats off in development and held-out runs that had
stopped early (docs/studies/maxent.md). λᵀR̂ is the mean over the test samples of the scalar λᵀ(T(x) - t)/s,
so its standard error, std(λᵀT)/√(E·B) ≈ std(log q)/√(E·B) near the answer (about 0.004 nats at the default 65 536
samples), does not grow with the size of λ or the collinearity of T. It uses the λ the epoch was trained with, which
does not depend on the test samples it is evaluated on.

The delivered model is the flow over the *exact* base: `flow.sample`, `flow.log_prob`. The result's entropy and
violation are measured on fresh exact samples with exact log-densities, and each epoch's history keeps the
training-time estimates beside the exact ones, so that the gap between them is visible.

With `checkpoint_dir`, the state at the end of every epoch (model, optimizer, λ, c, the scale s, the last test
statistics, history, RNG) goes to `latest.pt` (format "mog_flows.maxent/2", readable with `torch.load(...,
weights_only=True)`), and calling `fit_maxent` again with the same arguments resumes from it and ends with the result
of an uninterrupted run (bitwise on the CPU; a checkpoint of format "mog_flows.maxent/1", written before the
standardisation, is refused with a message that says so). An interruption inside an epoch loses that epoch's steps
only; SIGTERM (a scheduler's preemption) and SIGHUP (a closed terminal) interrupt as Ctrl-C does, with
KeyboardInterrupt("received SIGTERM") and so on.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from nflows.distributions import Distribution
from torch import Tensor
from tqdm import tqdm

from .checks import (
    check_bool,
    check_choice,
    check_finite,
    check_number_in,
    check_optional_positive_number,
    check_positive_int,
    check_seed,
)
from .mixture import MixtureOfGaussians
from .runs import (
    InterruptGuard,
    capture_rng,
    check_checkpoint_dir,
    check_mixture_settings,
    check_resume_config,
    check_temperature_schedule,
    diverged,
    eval_mode,
    first_line,
    forked_rng,
    geometric_temperature,
    load_training_state,
    non_finite_parameters,
    read_checkpoint,
    restore_rng,
    set_temperature,
    write_atomic,
    write_config,
)

__all__ = [
    "fit_maxent",
    "MaxEntSettings",
    "MaxEntResult",
    "MaxEntHistory",
    "MaxEntNotConvergedWarning",
    "LagrangianUpdate",
    "augmented_lagrangian_update",
    "penalty_statistics",
    "PENALTY_TESTS",
    "METRICS",
    "FINAL_TEMPERATURE",
    "CHECKPOINT_FORMAT",
]

CHECKPOINT_FORMAT = "mog_flows.maxent/3"
_OLD_FORMATS = ("mog_flows.maxent/1", "mog_flows.maxent/2")  # formats this version refuses to resume, with a reason
PENALTY_TESTS = ("split", "norm")
METRICS = ("whiten", "scale")
_EIGENVALUE_FLOOR = 1e-3  # relative floor on the eigenvalues of Cov R when whitening (nearly redundant constraints)
FINAL_TEMPERATURE = 0.05  # where τ of a Gumbel-estimated mixture base is annealed to by default
FINAL_LR_RATIO = 30.0  # final_lr="auto": lr / 30 at the last step (cosine decay)
PENALTY_CAP_RATIO = 16.0  # max_penalty="auto": 16 times the initial c
_PROBE_ROWS = 4
_EVAL_CHUNK = 4096  # rows per pass in the final exact evaluation

Statistic = Callable[[Tensor], Tensor]


# ----------------------------------------------------------------------------------------------- statistics
def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b), by its continued fraction (modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast below the mean; use the symmetry above it
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 100_000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),  # even term d_{2m}
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),  # odd term d_{2m+1}
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


def _student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom."""
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))  # P(T > |t|)
    return tail if t >= 0 else 1.0 - tail


def _student_t_isf(p: float, df: float) -> float:
    """The t with P(T > t) = p, 0 < p ≤ 1/2, for Student's t with `df` degrees of freedom (by bisection)."""
    low, high = 0.0, 1.0
    while _student_t_sf(high, df) > p:
        low, high = high, 2 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        low, high = (middle, high) if _student_t_sf(middle, df) > p else (low, middle)
    return high


def _welch_greater(sample: Tensor, reference: Tensor) -> float:
    """p-value of Welch's one-sided test of H0: E[sample] ≤ E[reference] against E[sample] > E[reference]."""
    n1, n2 = sample.numel(), reference.numel()
    v1, v2 = sample.var().item() / n1, reference.var().item() / n2
    difference = sample.mean().item() - reference.mean().item()
    if v1 + v2 == 0:
        return 0.0 if difference > 0 else 1.0
    df = (v1 + v2) ** 2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1))  # Welch–Satterthwaite
    return _student_t_sf(difference / math.sqrt(v1 + v2), df)


def _mean_is_zero(values: Tensor) -> Tensor:
    """Two-sided one-sample t-test p-values of H0: E[values_j] = 0 for each column of values (N, m) -> (m,)."""
    n = values.shape[0]
    mean, std_error = values.mean(0), values.std(0) / math.sqrt(n)
    p_values = []
    for mu, se in zip(mean.tolist(), std_error.tolist()):
        if se == 0:
            p_values.append(1.0 if mu == 0 else 0.0)
        else:
            p_values.append(min(1.0, 2 * _student_t_sf(abs(mu) / se, n - 1)))
    return torch.tensor(p_values, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------- the schedule
@dataclass(frozen=True)
class LagrangianUpdate:
    """What `augmented_lagrangian_update` decided.

    Attributes:
        multipliers: λ + c R̂, shape (m,).
        penalty: min(β c, max_penalty) if `increased`, else c.
        statistics: the per-batch s_e (E,) of the penalty test, the reference of the next epoch's test.
        violation: R̂ pooled over all test samples, shape (m,); violation_std_error: its standard errors (m,).
        welch_p_value: p of the one-sided Welch test that ‖R‖ fell below γ times its previous value.
        constraint_p_values: two-sided t-test p-values of E[T_j] = t_j, shape (m,).
        increased: whether the test asked for a larger c (exactly when welch_p_value < α; c stays at max_penalty
            once there).
        converged: whether every constraint passed its test at level α/m (all constraint_p_values > α/m).
    """

    multipliers: Tensor
    penalty: float
    statistics: Tensor
    violation: Tensor
    violation_std_error: Tensor
    welch_p_value: float
    constraint_p_values: Tensor
    increased: bool
    converged: bool


def penalty_statistics(residuals: Tensor, penalty_test: str = "split") -> Tensor:
    """Per-batch statistics s_e (E,) of the penalty test from residuals (E, B, m): "split": R̂_{e,1}ᵀR̂_{e,2}, the
    product of the means over the first ⌊B/2⌋ and the other rows (unbiased for ‖R‖²); "norm": ‖R̂_e‖."""
    check_choice("penalty_test", penalty_test, PENALTY_TESTS)
    if penalty_test == "norm":
        return residuals.mean(1).norm(dim=-1)  # (E, B, m) -> (E, m) -> (E,)
    half = residuals.shape[1] // 2
    return (residuals[:, :half].mean(1) * residuals[:, half:].mean(1)).sum(-1)


def augmented_lagrangian_update(
    residuals: Tensor,
    multipliers: Tensor,
    penalty: float,
    previous_statistics: Tensor,
    *,
    gamma: float = 0.25,
    beta: float = 4.0,
    alpha: float = 0.05,
    penalty_test: str = "split",
    max_penalty: float | None = None,
    metric: Tensor | None = None,
) -> LagrangianUpdate:
    """One update of the augmented-Lagrangian parameters after an epoch (MEFN Algorithm 1, lines 7-10).

    Args:
        residuals: T(x) - t for E test batches of B fresh samples each, shape (E, B, m).
        multipliers: λ in effect during the epoch, shape (m,).
        penalty: c in effect during the epoch.
        previous_statistics: the s_e (E',) of the previous epoch's test batches (or of the initial model's), as
            returned in `LagrangianUpdate.statistics`.
        gamma, beta: c ← β c when ‖R‖ did not fall below γ times its previous value.
        max_penalty: None, or the largest c (c ← min(β c, max_penalty)). Why a cap: λ ← λ + c R̂ carries c times
            the noise of R̂, and the test keeps asking for a larger c once ‖R‖ is at the noise of its estimate, so
            that over a long run c grows without bound until the noisy multipliers wreck the flow (the authors' TF
            notebook carries a commented-out cap for this).
        alpha: level of the Welch test and (Bonferroni-corrected, α/m) of the stopping test.
        penalty_test: "split": s_e = R̂_{e,1}ᵀR̂_{e,2} over the two halves of test batch e, unbiased for ‖R‖², and
            the test of E[s] ≤ γ² E[s_prev]; "norm" (the authors'): s_e = ‖R̂_e‖ and the test of E[s] ≤ γ E[s_prev].
        metric: None (the identity), or an invertible W (m, m): the penalty is (c/2) ‖W R‖², so the penalty test
            works on W R̂ and the update is λ ← λ + c WᵀW R̂ (the method of multipliers for that penalty). With W
            the inverse Cholesky factor of Cov T, λ's update is a damped Newton step on the dual (its Hessian is
            Cov T). The stopping test always tests the m constraints themselves, the columns of `residuals`.

    The authors' code (`MEFN_dirichlet_theano.ipynb`, the Lagrangian update after each epoch) runs
    `t,p = scipy.stats.ttest_ind(norms_new, gamma*norms, equal_var = False)` over 1000 norms of R̂ from batches of
    1000 samples and does `c *= 4` when `u < 1-p/2.0 and t>0` for a uniform u, i.e. with probability 1 - p_greater,
    p_greater the one-sided p-value used here. This update makes that rule deterministic: c grows exactly when the
    test rejects "‖R‖ fell below γ times its previous value" at level α. λ is updated first, with the c of the
    epoch (`lam += c*hk_new`).

    Why "split" by default: E‖R̂_e‖ never falls below the batch noise √(tr Cov T / B), however small ‖R‖ is, so
    once ‖R‖ is under that floor the "norm" test says "did not fall" after every epoch and c grows by β each time
    (the authors' TF notebook carries a commented-out cap on c for this); the growing c multiplies the noise of the
    λ update and of the gradients until training breaks. The split-half estimate has no floor: at ‖R‖ ≈ 0 the test
    rejects with probability about α.
    """
    if residuals.dim() != 3 or residuals.shape[0] < 2 or residuals.shape[1] < 2:
        raise ValueError(f"residuals must have shape (E, B, m) with E, B ≥ 2; got {tuple(residuals.shape)}")
    if multipliers.shape != residuals.shape[-1:]:
        raise ValueError(
            f"multipliers must have shape ({residuals.shape[-1]},) to match residuals; got {tuple(multipliers.shape)}"
        )
    if previous_statistics.dim() != 1 or previous_statistics.numel() < 2:
        raise ValueError(
            f"previous_statistics must have shape (E',) with E' ≥ 2; got {tuple(previous_statistics.shape)}"
        )
    check_choice("penalty_test", penalty_test, PENALTY_TESTS)
    if max_penalty is not None and not max_penalty >= penalty:
        raise ValueError(f"max_penalty must be None or ≥ the current penalty {penalty}; got {max_penalty!r}")
    residuals = residuals.detach().to(torch.float64)
    num_constraints = residuals.shape[-1]
    if metric is not None and metric.shape != (num_constraints, num_constraints):
        raise ValueError(
            f"metric must have shape ({num_constraints}, {num_constraints}) to match residuals; "
            f"got {tuple(metric.shape)}"
        )
    weighted = residuals if metric is None else residuals @ metric.detach().to(residuals).T  # W R per row
    statistics = penalty_statistics(weighted, penalty_test)
    violation = residuals.mean((0, 1))
    factor = gamma**2 if penalty_test == "split" else gamma
    welch_p = _welch_greater(statistics, factor * previous_statistics.detach().to(torch.float64))
    increased = welch_p < alpha
    pooled = residuals.flatten(0, 1)  # (E·B, m)
    constraint_p = _mean_is_zero(pooled)
    step = violation if metric is None else metric.detach().to(violation).T @ (weighted.mean((0, 1)))
    new_multipliers = multipliers + (penalty * step).to(multipliers)
    return LagrangianUpdate(
        multipliers=new_multipliers,
        penalty=min(penalty * beta, math.inf if max_penalty is None else max_penalty) if increased else penalty,
        statistics=statistics,
        violation=violation,
        violation_std_error=pooled.std(0) / math.sqrt(pooled.shape[0]),
        welch_p_value=welch_p,
        constraint_p_values=constraint_p,
        increased=increased,
        converged=bool((constraint_p > alpha / num_constraints).all()),
    )


# ----------------------------------------------------------------------------------------------- results
@dataclass
class MaxEntHistory:
    """Per augmented-Lagrangian epoch; entry e belongs to epoch e + 1. Estimates come from the E·B test samples
    drawn after the epoch's last step. Violations are those of the standardised problem (module docstring), R_j =
    (E[T_j] - t_j) / s_j with s = `MaxEntResult.scale`: multiply by s for the caller's units.

    Attributes:
        steps: completed SGD steps at the end of the epoch.
        entropy: training-time entropy estimate, -mean log q from `flow.sample_and_log_prob` (the base's estimator).
        exact_entropy: -mean `flow.log_prob(x)` over exact `flow.sample`s (the entropy of the delivered model).
        violation_norm: the standardised ‖R̂‖ of the training-time samples; exact_violation_norm: of exact samples.
        penalty: c (of the standardised problem) in effect during the epoch; multipliers: λ (m floats) in effect
            during the epoch, in the caller's units (λ_j / s_j of the standardised problem, as in `MaxEntResult`).
        welch_p_value: the Welch test's p (c was multiplied by β after the epoch when it is < α).
        constraint_p_value: the smallest of the m stopping-test p-values (the run stops when it is > α/m).
        constraint_violation: the standardised R̂ (m floats) of the stopping test; constraint_p_values: its m
            p-values; constraint_tolerance: the m half-widths of the test's acceptance region (a constraint passes
            when |R̂_j| is below it: the t quantile at α/(2m) times R̂_j's standard error).
        temperature: τ of the mixture base at the end of the epoch (nan without one).
        stationarity: half the residual variance of log q regressed on the standardised T over the epoch's exact
            samples (the stopping test's third condition; about KL(q ‖ p) to second order, 0 at the answer).
        entropy_excess: λᵀR̂, the first-order change of the entropy that the test batches' remaining violations
            make, in nats (λ the epoch's multipliers; the stopping test's fourth condition asks |λᵀR̂| below
            `entropy_tolerance`); entropy_excess_std_error: its Monte-Carlo standard error.
        wall_time: seconds spent in `fit_maxent`, summed over resumed calls.
    """

    steps: list[int] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    exact_entropy: list[float] = field(default_factory=list)
    violation_norm: list[float] = field(default_factory=list)
    exact_violation_norm: list[float] = field(default_factory=list)
    penalty: list[float] = field(default_factory=list)
    multipliers: list[list[float]] = field(default_factory=list)
    welch_p_value: list[float] = field(default_factory=list)
    constraint_p_value: list[float] = field(default_factory=list)
    temperature: list[float] = field(default_factory=list)
    constraint_violation: list[list[float]] = field(default_factory=list)
    constraint_p_values: list[list[float]] = field(default_factory=list)
    constraint_tolerance: list[list[float]] = field(default_factory=list)
    stationarity: list[float] = field(default_factory=list)
    entropy_excess: list[float] = field(default_factory=list)
    entropy_excess_std_error: list[float] = field(default_factory=list)
    wall_time: float = 0.0

    _FLOATS = (
        "entropy",
        "exact_entropy",
        "violation_norm",
        "exact_violation_norm",
        "penalty",
        "welch_p_value",
        "constraint_p_value",
        "temperature",
        "stationarity",
        "entropy_excess",
        "entropy_excess_std_error",
    )
    _VECTORS = ("multipliers", "constraint_violation", "constraint_p_values", "constraint_tolerance")  # (epochs, m)

    @property
    def epochs(self) -> int:
        return len(self.steps)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and numbers only, so a checkpoint loads with `torch.load(..., weights_only=True)`."""
        state = {name: torch.tensor(getattr(self, name), dtype=torch.float64) for name in self._FLOATS}
        return {
            **state,
            **{name: torch.tensor(getattr(self, name), dtype=torch.float64) for name in self._VECTORS},
            "steps": torch.tensor(self.steps, dtype=torch.int64),
            "wall_time": self.wall_time,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> MaxEntHistory:
        lists = {name: state[name].tolist() for name in (*cls._FLOATS, *cls._VECTORS, "steps")}
        return cls(**lists, wall_time=float(state["wall_time"]))


@dataclass
class MaxEntResult:
    """What `fit_maxent` delivers, all measured on `eval_samples` fresh exact samples of the trained flow.

    Attributes:
        entropy: -mean flow.log_prob(x), x ~ flow.sample (nats); entropy_std_error: its Monte-Carlo standard error.
        violation: E[T(x)] - t in the caller's units, shape (m,); violation_std_error: its standard errors (m,).
        history: `MaxEntHistory`, one entry per augmented-Lagrangian epoch.
        multipliers: the final λ (m,) in the caller's units: λ_j / s_j of the standardised problem, so that at the
            answer q(x) ∝ exp(-Σ_j λ_j T_j(x)); penalty: the final c, of the standardised problem.
        converged: whether the stopping test of the last epoch passed (False: the run used all `steps`, and
            `fit_maxent` warned).
        steps: SGD steps taken.
        scale: s (m,), each statistic's standard deviation under the initial flow, the units of the standardised
            problem (module docstring).
        standardized_violation: violation / scale (m,), from the same exact samples.
        constraint_p_values: the p-values (m,) of the last epoch's stopping test (a constraint passes when its p is
            above α/m); its standardised violations and tolerances are in `history.constraint_violation[-1]` and
            `history.constraint_tolerance[-1]`.
        stationarity: half the residual variance of log q(x) regressed on T(x) over the final exact samples, in nats:
            0 when log q is affine in T, as at the answer; to second order a lower bound on KL(q ‖ p) for the
            exponential-family member p nearest q (and, with the constraints met, on H(p) - H(q)).
    """

    entropy: float
    entropy_std_error: float
    violation: Tensor
    violation_std_error: Tensor
    history: MaxEntHistory
    multipliers: Tensor
    penalty: float
    converged: bool
    steps: int
    scale: Tensor
    standardized_violation: Tensor
    constraint_p_values: Tensor
    stationarity: float


class MaxEntNotConvergedWarning(UserWarning):
    """`fit_maxent` ended without passing its stopping test: some constraints are outside their tolerance. The
    message names them, with their standardised violations, tolerances and p-values."""


@dataclass(frozen=True)
class MaxEntSettings:
    """The settings of one `fit_maxent` run (its arguments, see `fit_maxent` for each; `temperature_schedule`
    resolved to a pair or None), validated when built. `config()` is what the run's `config.json` and checkpoints
    hold, beside the target, the statistic's name and the model; a checkpoint resumes only a run whose config
    matches it entry for entry."""

    steps: int
    batch_size: int = 512
    seed: int = 0
    epoch_steps: int = 500
    lr: float = 3e-3
    final_lr: float | None = 1e-4
    penalty: float = 1.0
    max_penalty: float | None = 16.0
    gamma: float = 0.5
    beta: float = 2.0
    alpha: float = 0.05
    penalty_test: str = "split"
    test_batches: int = 128
    eval_samples: int = 2**15
    temperature_schedule: tuple[float, float] | None = None
    max_grad_norm: float | None = 5.0
    stop_early: bool = True
    metric: str = "whiten"
    stationarity_tolerance: float | None = 0.01
    entropy_tolerance: float | None = 0.005

    def __post_init__(self) -> None:
        for name in ("steps", "epoch_steps", "test_batches", "eval_samples", "batch_size"):
            check_positive_int(name, getattr(self, name))
        for name in ("batch_size", "test_batches", "eval_samples"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be at least 2; got {getattr(self, name)}")
        check_seed(self.seed)
        bounds = {"lr": (0, math.inf), "penalty": (0, math.inf), "gamma": (0, 1), "beta": (1, math.inf)}
        for name, (low, high) in {**bounds, "alpha": (0, 1)}.items():
            object.__setattr__(self, name, float(check_number_in(name, getattr(self, name), low, high)))
        final_lr = self.final_lr
        if final_lr is not None:
            if isinstance(final_lr, bool) or not isinstance(final_lr, (int, float)) or not 0 < final_lr <= self.lr:
                raise ValueError(f"final_lr must be None or a number in (0, lr = {self.lr:g}]; got {final_lr!r}")
            object.__setattr__(self, "final_lr", float(final_lr))
        max_penalty = self.max_penalty
        if max_penalty is not None:
            if (
                isinstance(max_penalty, bool)
                or not isinstance(max_penalty, (int, float))
                or not self.penalty <= max_penalty < math.inf
            ):
                raise ValueError(
                    f"max_penalty must be None or a finite number ≥ penalty = {self.penalty}; got {max_penalty!r}"
                )
            object.__setattr__(self, "max_penalty", float(max_penalty))
        check_choice("penalty_test", self.penalty_test, PENALTY_TESTS)
        check_choice("metric", self.metric, METRICS)
        object.__setattr__(
            self,
            "stationarity_tolerance",
            check_optional_positive_number("stationarity_tolerance", self.stationarity_tolerance),
        )
        object.__setattr__(
            self, "entropy_tolerance", check_optional_positive_number("entropy_tolerance", self.entropy_tolerance)
        )
        object.__setattr__(self, "max_grad_norm", check_optional_positive_number("max_grad_norm", self.max_grad_norm))
        check_bool("stop_early", self.stop_early)
        if self.temperature_schedule is not None:
            start, end = self.temperature_schedule
            object.__setattr__(self, "temperature_schedule", (float(start), float(end)))

    def config(self) -> dict[str, Any]:
        config = asdict(self)
        if self.temperature_schedule is not None:
            config["temperature_schedule"] = list(self.temperature_schedule)
        return config


# ----------------------------------------------------------------------------------------------- fit_maxent
def fit_maxent(
    flow: Distribution,
    statistic: Statistic,
    target: Tensor,
    *,
    steps: int,
    batch_size: int = 512,
    seed: int = 0,
    progress: bool = True,
    epoch_steps: int = 500,
    lr: float = 3e-3,
    final_lr: float | str | None = "auto",
    penalty: float = 1.0,
    max_penalty: float | str | None = "auto",
    gamma: float = 0.5,
    beta: float = 2.0,
    alpha: float = 0.05,
    penalty_test: str = "split",
    test_batches: int = 128,
    eval_samples: int = 2**15,
    temperature_schedule: tuple[float, float] | str | None = "auto",
    max_grad_norm: float | None = 5.0,
    checkpoint_dir: str | os.PathLike | None = None,
    stop_early: bool = True,
    metric: str = "whiten",
    stationarity_tolerance: float | None = 0.01,
    entropy_tolerance: float | None = 0.005,
    estimator: str | None = "auto",
) -> MaxEntResult:
    """Train `flow` in place to maximise its entropy subject to E[statistic(x)] = target; returns a `MaxEntResult`.

    The constraints may be on any scale: each is divided by its statistic's standard deviation under the initial
    flow, and the run solves that standardised problem (module docstring), so `penalty`, `max_penalty` and the
    history's violation norms are in standardised units, while `result.violation` is in the caller's. A run that ends
    without passing the stopping test issues a `MaxEntNotConvergedWarning` naming what failed, with numbers.

    The defaults are the recommended settings: they were chosen on a development suite (`studies.maxent_tuning`:
    Dirichlet(1, 2, 3) and the bimodal E[x²], E[x⁴] family, `python experiments/maxent_tuning.py`) and validated on
    held-out problems that the choice never saw (`python experiments/maxent_heldout.py`); docs/studies/maxent.md
    quotes both tables.

    Args:
        flow: an unconditional nflows `Flow` (any from `build_flow`, any base and estimator) or `Distribution`
            with `sample_and_log_prob`; trained where its parameters live (device and dtype).
        statistic: T, a differentiable callable x (n, D) -> (n, m), each column varying under the initial flow.
        target: t, shape (m,), finite.
        steps: the most SGD steps to take; the run stops earlier after an epoch that passes the stopping test.
        batch_size: B ≥ 2 samples per step, split in two halves for the penalty term; also the size of each test batch.
        seed: seeds torch's RNG for the run (the caller's RNG state is restored afterwards).
        progress: show a tqdm bar (also hidden when stderr is not a terminal).
        epoch_steps: SGD steps per augmented-Lagrangian epoch (the authors' `max_iter`, 3000).
        lr: Adam's learning rate (the first step's, with `final_lr`).
        final_lr: "auto" (lr / 30), None (a constant `lr`) or a number in (0, lr]: cosine decay from `lr` at the first
            step to `final_lr` at the last, so that the last epochs settle the flow at the current multipliers
            instead of leaving it where the optimizer's noise put it (a departure from the authors' constant rate).
        penalty: the initial c of the standardised problem (the authors use 0.05 with 3000-step epochs on their
            raw constraints; 1 suits shorter epochs).
        max_penalty: "auto" (16 · penalty), None (no cap, as in the paper), or the largest c the schedule may reach
            (≥ penalty); long runs need one (see `augmented_lagrangian_update`).
        gamma: the schedule's γ (see `augmented_lagrangian_update`; the paper's 0.25 asks ‖R‖ to fall fourfold in
            every epoch, which a stochastic inner solve rarely does, so c grew fourfold nearly every epoch).
        beta: the schedule's β (the paper's 4).
        alpha: the test level α.
        penalty_test: the statistic of the test that decides c ("split" or the authors' "norm").
        test_batches: E ≥ 2 batches of B fresh samples after each epoch, for the λ update and the two tests (the
            authors use 1000 batches of 1000). The default 128 (65 536 samples at B = 512, about 6 % of a 500-step
            epoch's time) resolves standardised violations of about 0.01: with 32 the stopping test could not see
            violations of 0.01–0.02, and the development Dirichlet stopped there with |ΔH| ≈ 0.011
            (docs/studies/maxent.md, the studies' own problems with the defaults only).
        eval_samples: exact samples for the final entropy and violation.
        temperature_schedule: (start, end): anneal the τ of every `MixtureOfGaussians` geometrically from start
            (first step) to end (last step); "auto": from the current τ to `FINAL_TEMPERATURE` when a mixture base
            uses a "gumbel-*" estimator, none otherwise; None: leave τ alone. The run does not stop early before
            τ has reached its end, so that what was trained is what is delivered.
        max_grad_norm: clip the gradient norm (None: no clipping).
        stop_early: stop after an epoch that passes the stopping test (False: always take all `steps`, e.g. to
            compare runs at equal steps; the test is still recorded in `result.converged` and the history).
        metric: the norm of the penalty and of λ's update. "whiten": ‖W R‖ with W = Cov(R)^-1/2 re-estimated from
            every epoch's test batches (eigenvalues floored at 1e-3 of the largest), so that λ's update is a damped
            Newton step on the dual whatever the constraints' correlations and however far the initial flow is
            from the answer; "scale": ‖R‖ of the per-constraint standardised residuals, fixed for the run.
        estimator: "auto": a diagonal `MixtureOfGaussians` base whose estimator is "exact" trains with "pathwise"
            (unbiased gradients for its weights too; "exact" misses how the component choice depends on them) and
            gets its own estimator back afterwards; other bases train with their own estimator. None: every base
            trains with its own estimator.
        stationarity_tolerance: the stopping test also asks that log q be an affine function of T on the test
            samples, as at the answer (q ∝ exp(-λᵀT)): half the residual variance of log q regressed on T (about
            KL(q ‖ p) to second order) must be below it, in nats. None: constraints only.
        entropy_tolerance: the stopping test also asks that the remaining violations change the entropy by less
            than this, in nats, to first order: |λᵀR̂| on the test samples (H(q) - H(p) = λᵀR - KL(q ‖ p); module
            docstring), so that violations too small for the per-constraint tests but multiplied by large λ do not
            stop a run short of the answer. With the stationarity tolerance (the KL part) it budgets the entropy's
            error: 0.005 + 0.01 nats. Chosen from that budget and the development runs that stopped early with
            |ΔH| of 0.0135 (docs/studies/maxent.md), before the held-out suite was re-run. None: no such test.
        checkpoint_dir: where `config.json` and `latest.pt` go: a str or os.PathLike naming a directory that exists
            or can be created, checked by writing a file into it before any work ("" is refused: pass "." for the
            current directory). A directory holding `latest.pt` of a run with the same arguments is resumed from
            it; one of another run, or of a flow whose mixture base has another estimator, num_inner or (when no
            temperature schedule sets it) temperature, raises ValueError.

    Raises:
        TypeError: `flow` is not an nflows Distribution or `statistic` not callable.
        ValueError: bad arguments: a statistic of the wrong shape, without gradient, or with a column of zero
            variance under the initial flow (nothing to standardise it by), a target that is not finite or of the
            wrong length, a conditional flow, a checkpoint_dir that is not a path, is a file, lies under a file or
            cannot be written, an unreadable, foreign or older-format checkpoint; a statistic that returns NaN or inf
            on finite samples (the message says where: the first samples, a step, the test batches or the final
            evaluation, and for how many samples), at any time, the last completed epoch being kept.
        TrainingDivergedError: a non-finite objective, gradient, parameter or sample.
        KeyboardInterrupt: Ctrl-C, SIGTERM or SIGHUP (the latter two where they have their default handlers and
            `fit_maxent` runs in the main thread); the last completed epoch is kept in `latest.pt`.

    Warns:
        MaxEntNotConvergedWarning: the run ended (all `steps` taken) without passing the stopping test.
    """
    check_bool("progress", progress)
    if not isinstance(flow, Distribution):
        raise TypeError(f"flow must be an nflows Flow or Distribution; got {type(flow).__name__}")
    if not callable(statistic):
        raise TypeError(f"statistic must be a callable (n, D) -> (n, m); got {type(statistic).__name__}")
    parameters = [p for p in flow.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("flow has no trainable parameters")
    mixtures = [module for module in flow.modules() if isinstance(module, MixtureOfGaussians)]
    if estimator not in ("auto", None):
        raise ValueError(f'estimator must be "auto" or None; got {estimator!r}')

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    # "auto" follows lr and penalty; a bad lr or penalty is then MaxEntSettings' error to name, not final_lr's
    if final_lr == "auto":
        final_lr = lr / FINAL_LR_RATIO if number(lr) else None
    if max_penalty == "auto":
        max_penalty = PENALTY_CAP_RATIO * penalty if number(penalty) else None
    for name, value in (("final_lr", final_lr), ("max_penalty", max_penalty)):
        if isinstance(value, str):
            raise ValueError(f'{name} must be "auto", None or a number; got {value!r}')
    switched = _training_estimators(mixtures) if estimator == "auto" else []
    try:
        return _fit_maxent(
            flow,
            statistic,
            target,
            parameters,
            mixtures,
            progress,
            checkpoint_dir,
            dict(
                steps=steps,
                batch_size=batch_size,
                seed=seed,
                epoch_steps=epoch_steps,
                lr=lr,
                final_lr=final_lr,
                penalty=penalty,
                max_penalty=max_penalty,
                gamma=gamma,
                beta=beta,
                alpha=alpha,
                penalty_test=penalty_test,
                test_batches=test_batches,
                eval_samples=eval_samples,
                temperature_schedule=temperature_schedule,
                max_grad_norm=max_grad_norm,
                stop_early=stop_early,
                metric=metric,
                stationarity_tolerance=stationarity_tolerance,
                entropy_tolerance=entropy_tolerance,
            ),
        )
    finally:
        for mixture, original in switched:
            mixture.estimator = original


def _training_estimators(mixtures: list[MixtureOfGaussians]) -> list[tuple[MixtureOfGaussians, str]]:
    """estimator="auto": a diagonal mixture base whose estimator is "exact" (its gradient misses how the component
    choice depends on the weights, so the weights' gradient is biased) trains with "pathwise" (exact samples,
    unbiased gradients to every parameter); the development sweep (`studies.maxent_tuning`) chose it. Returns what
    to restore afterwards."""
    switched = []
    for mixture in mixtures:
        if mixture.estimator == "exact" and mixture.covariance == "diagonal":
            switched.append((mixture, mixture.estimator))
            mixture.estimator = "pathwise"
    return switched


def _fit_maxent(flow, statistic, target, parameters, mixtures, progress, checkpoint_dir, arguments) -> MaxEntResult:
    temperature_schedule = arguments.pop("temperature_schedule")
    settings = MaxEntSettings(
        **arguments,
        temperature_schedule=check_temperature_schedule(temperature_schedule, mixtures, auto=FINAL_TEMPERATURE),
    )
    conditional = [m.context_features for m in mixtures if m.context_features is not None]
    if conditional:
        raise ValueError(
            f"fit_maxent needs an unconditional flow; its MixtureOfGaussians base has context_features={conditional[0]}"
        )
    reference = parameters[0]
    target = _check_target(target, reference.dtype, reference.device)
    directory = check_checkpoint_dir(checkpoint_dir)
    with forked_rng(reference.device), InterruptGuard():
        _probe(flow, statistic, target)  # before seeding: the probe's draws do not enter the run
        config = {
            "format": CHECKPOINT_FORMAT,
            **settings.config(),
            "target": target.tolist(),
            "statistic": getattr(statistic, "__qualname__", type(statistic).__qualname__),
            "model": {
                "class": f"{type(flow).__module__}.{type(flow).__qualname__}",
                "parameters": sum(p.numel() for p in flow.parameters()),
                "dtype": str(reference.dtype),
            },
        }
        run = _Run(flow, statistic, target, parameters, mixtures, settings, config, directory)
        run.start()
        run.train(progress)
        result = run.result()
    if not result.converged:
        warnings.warn(_not_converged_message(result, settings), MaxEntNotConvergedWarning, stacklevel=3)
    return result


def _not_converged_message(result: MaxEntResult, settings: MaxEntSettings, shown: int = 6) -> str:
    """Which parts of the last stopping test failed: the constraints outside their tolerance, with their standardised
    violations, tolerances and p-values, the stationarity of log q in T and the violations' effect on the entropy."""
    history = result.history
    m = result.violation.numel()
    level = settings.alpha / m
    failed = [j for j, p in enumerate(history.constraint_p_values[-1]) if not p > level]
    lines = [
        f"constraint {j}: standardised violation {history.constraint_violation[-1][j]:+.3g} "
        f"(tolerance ±{history.constraint_tolerance[-1][j]:.3g}, p = {history.constraint_p_values[-1][j]:.2g}); "
        f"{result.standardized_violation[j].item():+.3g} on the delivered flow's exact samples, "
        f"{result.violation[j].item():+.4g} in the statistic's units"
        for j in failed[:shown]
    ]
    if len(failed) > shown:
        lines.append(f"and {len(failed) - shown} more")
    samples = settings.test_batches * settings.batch_size
    parts = []
    if failed:
        parts.append(
            f"{len(failed)} of {m} constraints are outside their tolerance in the last test ({samples} samples, level "
            f"α/m = {level:.3g}): "
            + "; ".join(lines)
            + ". Standardised violations are (E[T_j] - t_j) / s_j, s_j = result.scale[j] the statistic's standard "
            "deviation under the initial flow"
        )
    tolerance = settings.stationarity_tolerance
    if tolerance is not None and not history.stationarity[-1] < tolerance:
        parts.append(
            f"log q is not yet an affine function of T: half the residual variance of log q regressed on T is "
            f"{history.stationarity[-1]:.3g} nats in the last test (tolerance {tolerance:g}; "
            f"{result.stationarity:.3g} on the delivered flow's exact samples), so the entropy may still be short of "
            "the maximum by about that much"
        )
    tolerance = settings.entropy_tolerance
    if tolerance is not None and not abs(history.entropy_excess[-1]) < tolerance:
        parts.append(
            f"the remaining violations still move the entropy by λᵀR̂ = {history.entropy_excess[-1]:+.3g} nats "
            f"(± {history.entropy_excess_std_error[-1]:.2g}) to first order in the last test (tolerance {tolerance:g})"
        )
    if not parts:
        parts.append("the temperature had not reached the end of its schedule")
    return (
        f"fit_maxent took all {result.steps} steps without passing its stopping test: "
        + "; and ".join(parts)
        + ". More steps (or a more flexible flow) may let the run converge."
    )


class _Run:
    """The state of one maximum-entropy run and the steps that change it."""

    def __init__(self, flow, statistic, target, parameters, mixtures, settings: MaxEntSettings, config, directory):
        self.flow, self.statistic, self.target = flow, statistic, target
        self.parameters, self.mixtures, self.settings = parameters, mixtures, settings
        self.schedule = settings.temperature_schedule
        self.config, self.directory = config, directory
        self.steps, self.batch_size, self.epoch_steps = settings.steps, settings.batch_size, settings.epoch_steps
        self.device = target.device
        self.optimizer = torch.optim.Adam(parameters, lr=settings.lr)
        self.multipliers = torch.zeros_like(target)  # λ of the standardised problem
        self.scale = torch.ones(target.shape, dtype=torch.float64, device=self.device)  # s, set by `start` or `_resume`
        m = target.numel()
        self.whitening = torch.eye(m, dtype=torch.float64, device=self.device)  # W of the penalty ‖W R‖², on R = r / s
        self.gram = self.whitening.to(target.dtype)  # WᵀW, in the flow's dtype
        self.penalty = settings.penalty  # c
        self.reference = torch.empty(0, dtype=torch.float64)  # the last test batches' penalty-test statistics
        self.history = MaxEntHistory()
        self.step = 0
        self.converged = False
        self.saved_step: int | None = None  # step of the latest.pt on disk
        # a run whose training is exact (no Gumbel-relaxed base) has its exact estimates in its training-time ones
        self.exact_training = not any(m.estimator.startswith("gumbel") for m in mixtures)

    # ---------------------------------------------------------------- start: fresh or resumed
    def start(self) -> None:
        latest = None if self.directory is None else self.directory / "latest.pt"
        if latest is not None and latest.exists():
            self._resume(latest)
            return
        torch.manual_seed(self.settings.seed)
        if self.schedule is not None:
            self._set_temperature(0)
        began = time.perf_counter()
        residuals, _, _ = self._test_batches()  # in the caller's units: they set the scale
        self.scale = _constraint_scale(residuals, self.target.dtype)
        standardized = residuals / self.scale.to(residuals)
        self._set_whitening(standardized)
        # the initial model's statistics: the reference of the first epoch's penalty test
        self.reference = penalty_statistics(standardized @ self.whitening.T, self.settings.penalty_test)
        self.history.wall_time = time.perf_counter() - began
        if self.directory is not None:
            write_config(self.directory, self.config)
            self._save()

    def _resume(self, path: Path) -> None:
        checkpoint = _read_checkpoint(path)
        check_resume_config(checkpoint["config"], self.config, list(self.config), path, "fit_maxent")
        # under a schedule τ is set at every step (and the schedule's ends are compared above)
        check_mixture_settings(self.flow, checkpoint["model"], path, temperature=self.schedule is None)
        step = checkpoint["step"]
        if not 0 <= step <= self.steps or len(checkpoint["history"]["steps"]) != math.ceil(step / self.epoch_steps):
            raise ValueError(
                f"checkpoint {path} is inconsistent: step {step}, {len(checkpoint['history']['steps'])} recorded "
                f"epochs of {self.epoch_steps} steps, a run of {self.steps} steps"
            )
        m = self.target.numel()
        if checkpoint["whitening"].shape != (m, m):
            raise ValueError(
                f"checkpoint {path} is inconsistent: whitening of shape {tuple(checkpoint['whitening'].shape)} "
                f"for {m} constraints"
            )
        for name in ("multipliers", "scale"):
            if checkpoint[name].shape != self.target.shape:
                raise ValueError(
                    f"checkpoint {path} is inconsistent: {name} of shape {tuple(checkpoint[name].shape)} "
                    f"for {self.target.numel()} constraints"
                )
        # the RNG first: a state that cannot be restored must leave the flow untouched
        restore_rng(checkpoint["rng"], self.device, path, seed=self.settings.seed)
        load_training_state(self.flow, self.optimizer, checkpoint, path)
        self.multipliers = checkpoint["multipliers"].to(self.device, self.target.dtype)
        self.penalty = float(checkpoint["penalty"])
        self.scale = checkpoint["scale"].to(self.device, torch.float64)
        self.whitening = checkpoint["whitening"].to(self.device, torch.float64)
        self.gram = (self.whitening.T @ self.whitening).to(self.target.dtype)
        self.reference = checkpoint["reference"].to(torch.float64)
        self.history = MaxEntHistory.from_state_dict(checkpoint["history"])
        self.step, self.converged = step, checkpoint["converged"]
        self.saved_step = self.step

    def _save(self) -> None:
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "converged": self.converged,
            "config": self.config,
            "model": self.flow.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "multipliers": self.multipliers.detach().cpu(),
            "penalty": self.penalty,
            "scale": self.scale.cpu(),
            "whitening": self.whitening.cpu(),
            "reference": self.reference.cpu(),
            "history": self.history.state_dict(),
            "rng": capture_rng(self.device),
        }
        write_atomic(self.directory / "latest.pt", lambda f: torch.save(checkpoint, f))
        self.saved_step = self.step

    # ---------------------------------------------------------------- the loop
    def train(self, progress: bool) -> None:
        began, previous_time = time.perf_counter(), self.history.wall_time
        modes = [(module, module.training) for module in self.flow.modules()]
        bar = tqdm(
            total=self.steps, initial=self.step, desc="fit_maxent", unit="step", disable=None if progress else True
        )
        try:
            self.flow.train()
            while self.step < self.steps and not (self.converged and self.settings.stop_early):
                end = min(self.step + self.epoch_steps, self.steps)
                while self.step < end:
                    entropy, violation = self._sgd_step()
                    self.step += 1
                    bar.set_postfix({"H": f"{entropy:.4f}", "|R|": f"{violation:.3g}", "c": f"{self.penalty:.3g}"})
                    bar.update()
                self._end_epoch()
                self.history.wall_time = previous_time + time.perf_counter() - began
                if self.directory is not None:
                    self._save()
        except BaseException as error:
            if self.directory is not None and hasattr(error, "add_note"):
                saved = self.saved_step
                error.add_note(
                    f"mog_flows.fit_maxent keeps the state after step {saved} (the last completed epoch) in "
                    f"{self.directory / 'latest.pt'}; call fit_maxent again with the same arguments to resume."
                )
            raise
        finally:
            bar.close()
            for module, training in modes:
                module.training = training
        if self.schedule is not None:
            self._set_temperature(self.steps - 1)

    def _sgd_step(self) -> tuple[float, float]:
        if self.schedule is not None:
            self._set_temperature(self.step)
        batch, half = self.batch_size, self.batch_size // 2
        self._set_learning_rate(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        x, log_q = self.flow.sample_and_log_prob(batch)
        values = self._statistic(x, f"at step {self.step + 1} of {self.steps}")  # (B, m)
        standardized = (values - self.target) / self.scale.to(values)  # (B, m) - (m,) -> (B, m)
        residual = standardized.mean(0)
        first, second = standardized[:half].mean(0), standardized[half:].mean(0)
        entropy = -log_q.mean()
        loss = -entropy + self.multipliers @ residual + 0.5 * self.penalty * (first @ (self.gram @ second))
        if not torch.isfinite(loss):
            self._diverged(f"the objective is {loss.item()} (entropy estimate {entropy.item()})")
        loss.backward()
        max_norm = math.inf if self.settings.max_grad_norm is None else self.settings.max_grad_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, max_norm).item()
        if not math.isfinite(grad_norm):
            self._diverged(f"the gradient norm is {grad_norm}")
        self.optimizer.step()
        return entropy.item(), residual.detach().norm().item()

    def _set_learning_rate(self, step: int) -> None:
        """A function of the step alone, so that a resumed run continues the same schedule."""
        lr, final = self.settings.lr, self.settings.final_lr
        if final is not None:
            progress = step / max(self.steps - 1, 1)
            lr = final + (lr - final) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _end_epoch(self) -> None:
        bad = non_finite_parameters(self.flow)
        if bad:
            self._diverged(f"parameters {bad[:5]} became non-finite")
        residuals, entropy, neg_log_q = self._test_batches()  # (E, B, m), the training-time entropy estimate, (E·B,)
        residuals = residuals / self.scale.to(residuals)  # standardised
        if self.exact_training:
            exact_entropy, exact_violation = entropy, residuals.mean((0, 1)).norm().item()
            stationarity = _stationarity(neg_log_q, residuals.flatten(0, 1))
        else:
            neg_log_q, values = _exact_samples(
                self.flow,
                lambda x: self._statistic(x, f"of the exact samples after step {self.step}"),
                residuals[:, :, 0].numel(),
            )
            exact_entropy = neg_log_q.mean().item()
            exact_violation = ((values.mean(0) - self.target.to(values)) / self.scale.to(values)).norm().item()
            stationarity = _stationarity(neg_log_q, values / self.scale.to(values))
        update = augmented_lagrangian_update(
            residuals,
            self.multipliers,
            self.penalty,
            self.reference,
            gamma=self.settings.gamma,
            beta=self.settings.beta,
            alpha=self.settings.alpha,
            penalty_test=self.settings.penalty_test,
            max_penalty=self.settings.max_penalty,
            metric=self.whitening,
        )
        history = self.history
        history.steps.append(self.step)
        history.entropy.append(entropy)
        history.exact_entropy.append(exact_entropy)
        history.violation_norm.append(update.violation.norm().item())
        history.exact_violation_norm.append(exact_violation)
        history.penalty.append(self.penalty)
        history.multipliers.append((self.multipliers.to(self.scale) / self.scale).tolist())
        history.welch_p_value.append(update.welch_p_value)
        history.constraint_p_value.append(update.constraint_p_values.min().item())
        history.constraint_violation.append(update.violation.tolist())
        history.constraint_p_values.append(update.constraint_p_values.tolist())
        m, n = residuals.shape[-1], residuals[:, :, 0].numel()
        quantile = _student_t_isf(self.settings.alpha / (2 * m), n - 1)
        history.constraint_tolerance.append((quantile * update.violation_std_error).tolist())
        history.temperature.append(self.mixtures[0].temperature if self.mixtures else math.nan)
        history.stationarity.append(stationarity)
        # λᵀ(T(x) - t)/s per test sample, λ the epoch's (pre-update) multipliers: its mean is the first-order effect
        # of the violations on the entropy, and its spread gives the standard error directly
        excess = residuals.flatten(0, 1) @ self.multipliers.to(residuals)  # (E·B,)
        history.entropy_excess.append(excess.mean().item())
        history.entropy_excess_std_error.append((excess.std() / math.sqrt(n)).item())
        self.multipliers, self.penalty, self.reference = update.multipliers, update.penalty, update.statistics
        if self.settings.metric == "whiten":  # the next epoch's metric, and its test's reference in that metric
            self._set_whitening(residuals)
            self.reference = penalty_statistics(residuals @ self.whitening.T, self.settings.penalty_test)
        annealed = self.schedule is None or self.step >= self.steps
        tolerance = self.settings.stationarity_tolerance
        stationary = tolerance is None or stationarity < tolerance
        entropy_tolerance = self.settings.entropy_tolerance
        small_excess = entropy_tolerance is None or abs(history.entropy_excess[-1]) < entropy_tolerance
        self.converged = update.converged and annealed and stationary and small_excess

    def _set_whitening(self, standardized: Tensor) -> None:
        """W = Cov(R)^-1/2 (symmetric) of the standardised residuals (E, B, m) of the test batches, for "whiten"."""
        if self.settings.metric != "whiten":
            return
        self.whitening = _inverse_square_root(standardized.flatten(0, 1))
        self.gram = (self.whitening.T @ self.whitening).to(self.target.dtype)

    @torch.no_grad()
    def _test_batches(self) -> tuple[Tensor, float, Tensor]:
        """Residuals T(x) - t (E, B, m) in float64 and the caller's units, of E fresh training-time batches, their
        entropy estimate and their -log q (E·B,)."""
        residuals, neg_log_q = [], []
        where = (
            f"in the test batches after step {self.step}" if self.step else "in the test batches before the first step"
        )
        with eval_mode(self.flow):
            for _ in range(self.settings.test_batches):
                x, log_q = self.flow.sample_and_log_prob(self.batch_size)
                values = self._statistic(x, where)
                residuals.append((values - self.target).to(torch.float64))
                neg_log_q.append(-log_q.to(torch.float64))
        neg_log_q = torch.cat(neg_log_q)
        entropy = neg_log_q.mean().item()
        if not math.isfinite(entropy):
            self._diverged(f"the test batches' entropy estimate is {entropy}")
        return torch.stack(residuals), entropy, neg_log_q

    def _set_temperature(self, step: int) -> None:
        set_temperature(self.mixtures, geometric_temperature(self.schedule, step, self.steps))

    def _statistic(self, x: Tensor, where: str) -> Tensor:
        """statistic(x) (n, m), checked: of the right shape and finite. Non-finite values on non-finite samples are
        the flow's divergence; on finite samples the statistic's fault."""
        values = _apply_statistic(self.statistic, x, self.target)
        if not torch.isfinite(values.detach()).all():
            bad_samples = int((~torch.isfinite(x.detach()).all(-1)).sum())
            if bad_samples:
                self._diverged(f"{bad_samples} of {x.shape[0]} samples {where} are NaN or infinite")
            _check_statistic_finite(x, values, where, self._kept())
        return values

    def _kept(self) -> str:
        if self.directory is None:
            return "No checkpoint_dir was given."
        return f"The last good state is in {self.directory / 'latest.pt'} (step {self.saved_step})."

    def _diverged(self, what: str) -> None:
        raise diverged(
            "fit_maxent",
            what,
            step=self.step + 1,
            steps=self.steps,
            latest=None if self.directory is None else self.directory / "latest.pt",
            saved_step=self.saved_step,
            applied=False,
            advice="Try a smaller lr or penalty, or a tighter max_grad_norm.",
        )

    # ---------------------------------------------------------------- the result
    def result(self) -> MaxEntResult:
        neg_log_q, values = _exact_samples(
            self.flow, lambda x: self._statistic(x, "in the final evaluation"), self.settings.eval_samples
        )
        n, dtype, scale = values.shape[0], self.target.dtype, self.scale.to(values)
        violation = values.mean(0) - self.target.to(values)  # (m,), float64
        return MaxEntResult(
            entropy=neg_log_q.mean().item(),
            entropy_std_error=neg_log_q.std().item() / math.sqrt(n),
            violation=violation.to(dtype),
            violation_std_error=(values.std(0) / math.sqrt(n)).to(dtype),
            history=self.history,
            multipliers=(self.multipliers.detach().to(scale) / scale).to(dtype),
            penalty=self.penalty,
            converged=self.converged,
            steps=self.step,
            scale=self.scale.to(self.device, dtype),
            standardized_violation=(violation / scale).to(dtype),
            constraint_p_values=torch.tensor(self.history.constraint_p_values[-1], dtype=torch.float64),
            stationarity=_stationarity(neg_log_q, values / scale),
        )


@torch.no_grad()
def _exact_samples(flow, statistic: Statistic, num_samples: int) -> tuple[Tensor, Tensor]:
    """-flow.log_prob(x) (n,) and statistic(x) (n, m), in float64, of n fresh x ~ flow.sample: exact whatever the
    base's `estimator`, which neither `sample` nor `log_prob` consults. `statistic` is the checked one."""
    neg_log_q, values = [], []
    with eval_mode(flow):
        for start in range(0, num_samples, _EVAL_CHUNK):
            x = flow.sample(min(_EVAL_CHUNK, num_samples - start))
            neg_log_q.append(-flow.log_prob(x).to(torch.float64))
            values.append(statistic(x).to(torch.float64))
    return torch.cat(neg_log_q), torch.cat(values)


# ----------------------------------------------------------------------------------------------- checks
def _apply_statistic(statistic: Statistic, x: Tensor, target: Tensor) -> Tensor:
    values = statistic(x)
    expected = (x.shape[0], target.shape[0])
    if not isinstance(values, Tensor) or values.shape != expected:
        got = f"shape {tuple(values.shape)}" if isinstance(values, Tensor) else f"a {type(values).__name__}"
        raise ValueError(
            f"statistic must map samples x of shape {tuple(x.shape)} to a tensor of shape {expected} "
            f"(one row of m = {target.shape[0]} statistics per sample, m = len(target)); got {got}"
        )
    return values


def _check_statistic_finite(x: Tensor, values: Tensor, where: str, kept: str = "") -> None:
    """A statistic that returns NaN or inf on samples is at fault, not the optimisation: say so, and where."""
    bad = ~torch.isfinite(values.detach()).all(-1)  # (n,)
    if bad.any():
        first = int(bad.nonzero()[0, 0])
        example = f"statistic(x) = {_short(values[first])} at x = {_short(x[first])}"
        message = (
            f"statistic returned NaN or inf for {int(bad.sum())} of {x.shape[0]} samples {where} (e.g. {example}): "
            "it must be finite wherever the flow can put its samples; guard or clamp it, or map the flow onto the "
            f"statistic's domain (e.g. simplex_flow). {kept}"
        )
        raise ValueError(message.strip())


def _short(row: Tensor, shown: int = 6) -> str:
    """A vector (k,) as a short list: the first `shown` entries, then how many more."""
    values = [float(f"{v:.4g}") for v in row.detach().tolist()[:shown]]
    return str(values) if row.numel() <= shown else f"{str(values)[:-1]}, ... ({row.numel() - shown} more)]"


def _probe(flow: Distribution, statistic: Statistic, target: Tensor) -> None:
    """Refuse a flow that cannot sample unconditionally, or a statistic that does not fit, before any step."""
    try:
        x, log_q = flow.sample_and_log_prob(_PROBE_ROWS)
    except Exception as error:
        raise ValueError(
            f"flow.sample_and_log_prob({_PROBE_ROWS}) fails ({type(error).__name__}: {first_line(error)}); "
            "fit_maxent needs an unconditional flow that can sample"
        ) from error
    if x.dim() != 2 or log_q.shape != (x.shape[0],):
        raise ValueError(
            f"flow.sample_and_log_prob({_PROBE_ROWS}) must return samples (n, D) and log-densities (n,); got "
            f"{tuple(x.shape)} and {tuple(log_q.shape)}"
        )
    values = _apply_statistic(statistic, x, target)
    _check_statistic_finite(x, values, "of the initial flow")
    if x.requires_grad and not values.requires_grad:
        raise ValueError(
            "statistic must be differentiable in x (built from torch operations on x): its output carries no "
            "gradient, so the constraints could not steer the flow"
        )
    if values.dtype != target.dtype:
        raise ValueError(f"statistic must return the flow's dtype {target.dtype}; got {values.dtype}")


def _stationarity(neg_log_q: Tensor, values: Tensor) -> float:
    """Half the residual variance of the least-squares fit of log q (n,) on [1, T] (n, m): at the answer log q =
    -λᵀT - A exactly, so this is 0 there; near it, ½ Var of the residual is KL(q ‖ p) to second order for the member p
    of the exponential family that the fit picks."""
    y = -neg_log_q.to(torch.float64)
    features = values.to(torch.float64)
    features = (features - features.mean(0)) / features.std(0).clamp_min(torch.finfo(torch.float64).tiny)
    design = torch.cat([torch.ones_like(y)[:, None], features], dim=1)  # (n, m + 1)
    coefficients = torch.linalg.lstsq(design, y[:, None]).solution
    residual = y - (design @ coefficients).squeeze(-1)
    return 0.5 * residual.var().item()


def _inverse_square_root(values: Tensor) -> Tensor:
    """Cov^-1/2 (m, m), symmetric, of the rows of values (n, m), float64; eigenvalues floored at `_EIGENVALUE_FLOOR`
    times the largest, so that nearly redundant constraints do not turn the estimate's noise into huge steps."""
    covariance = torch.cov(values.to(torch.float64).T).reshape(values.shape[1], values.shape[1])
    eigenvalues, vectors = torch.linalg.eigh(covariance)
    eigenvalues = eigenvalues.clamp_min(_EIGENVALUE_FLOOR * eigenvalues.max())
    return (vectors * eigenvalues.rsqrt()) @ vectors.T


def _constraint_scale(residuals: Tensor, dtype: torch.dtype) -> Tensor:
    """s (m,), float64 on the residuals' device: the standard deviation of each column of residuals (E, B, m) of
    the initial flow. A column that takes one value on every sample, to `dtype`'s rounding, is refused: it has no
    scale and no gradient."""
    values = residuals.flatten(0, 1)  # (E·B, m)
    scale = values.std(0)
    constant = scale <= 4 * torch.finfo(dtype).eps * values.abs().amax(0)  # zero, or rounding noise on a constant
    if constant.any():
        j = int(constant.nonzero()[0, 0])
        raise ValueError(
            f"statistic column {j} (of {values.shape[1]}) has zero variance under the initial flow: T_{j}(x) - t_{j} "
            f"= {values[0, j].item():.6g} on all {values.shape[0]} samples of its first test batches "
            f"({int(constant.sum())} such column(s)). fit_maxent standardises each constraint by its statistic's "
            "standard deviation there, and a statistic that is constant where the flow puts its mass can neither be "
            "standardised nor steer the flow: drop the constraint, or use a statistic that varies under the initial "
            "flow."
        )
    return scale


def _check_target(target: Any, dtype: torch.dtype, device: torch.device) -> Tensor:
    try:
        target = torch.as_tensor(target)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"target must be a tensor of shape (m,); got {type(target).__name__}") from error
    if target.dim() != 1 or target.numel() == 0:
        raise ValueError(f"target must have shape (m,) with m ≥ 1, one entry per constraint; got {tuple(target.shape)}")
    if target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must hold real numbers; got dtype {target.dtype}")
    check_finite("target", target)
    return target.detach().to(device, dtype)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    entries = {
        "converged": bool,
        "multipliers": Tensor,
        "penalty": (float, int),
        "scale": Tensor,
        "whitening": Tensor,
        "reference": Tensor,
        "history": dict,
    }
    return read_checkpoint(
        path, CHECKPOINT_FORMAT, "mog_flows.fit_maxent", entries, _checkpoint_problem, older=_OLD_FORMATS
    )


def _checkpoint_problem(checkpoint: dict[str, Any]) -> str | None:
    history = checkpoint["history"]
    for key in (*MaxEntHistory._FLOATS, *MaxEntHistory._VECTORS, "steps"):
        if not isinstance(history.get(key), Tensor):
            return f"history entry {key!r} is missing or not a tensor"
    if "wall_time" not in history:
        return "history entry 'wall_time' is missing"
    return None

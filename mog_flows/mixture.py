"""`MixtureOfGaussians`: a learnable mixture-of-Gaussians base distribution for nflows, with exact densities,
exact and Gumbel-softmax relaxed sampling, and the estimators that score relaxed samples.

Shapes: N batch, K components, D features, C context features, M inner (nested) samples.

    p(z) = Σ_k α_k N(z; μ_k, Σ_k)
"""

from __future__ import annotations

import math

import torch
from nflows.distributions import Distribution
from torch import Tensor, nn

from . import relaxed
from .checks import (
    check_choice,
    check_context,
    check_features,
    check_finite,
    check_like,
    check_num_samples,
    check_positive_int,
    check_temperature,
)
from .components import (
    GaussianComponents,
    covariance_from_precision_factor,
    pack_precision_factor,
    packed_size,
    precision_factor_from_covariance,
    unpack_precision_factor,
)
from .nflows_adapters import sample_in_batches

__all__ = ["MixtureOfGaussians", "COVARIANCES", "ESTIMATORS"]

COVARIANCES = ("diagonal", "full")
ESTIMATORS = ("exact", "gumbel-nested", "gumbel-exact", "gumbel-joint", "pathwise")
INIT_RESTARTS = 8  # k-means++ seedings `initialize_from_data` tries; the most likely EM fit is kept


class MixtureOfGaussians(Distribution):
    """Mixture of K Gaussians on ℝᴰ, optionally conditioned on a context (a mixture density network base).

    Args:
        features: D.
        num_components: K ≥ 1.
        covariance: "diagonal" (per-component log standard deviations) or "full" (per-component upper-triangular
            Cholesky factor U of the precision, Σ⁻¹ = UᵀU, with exponentiated diagonal; seed 001).
        temperature: Gumbel-softmax τ > 0 used by `rsample`, `nested_log_prob` and the "gumbel-*" estimators;
            settable (`base.temperature = 0.1`) so training can anneal it.
        estimator: how `sample_and_log_prob` samples and scores (see `sample_and_log_prob`).
        context_features: C; when set, a context network maps the context to the mixture parameters.
        hidden_features: width of the context network.
        num_inner: M, inner samples of the "gumbel-nested" estimator.

    Parameters (unconditional): `logits` (K,), `loc` (K, D), and `log_scale` (K, D) or `precision_factor`
    (K, D(D+1)/2) packed raw entries of U. Conditional: `context_net` outputs all of them per context row.
    """

    def __init__(
        self,
        features: int,
        num_components: int,
        *,
        covariance: str = "diagonal",
        temperature: float = 0.5,
        estimator: str = "exact",
        context_features: int | None = None,
        hidden_features: int = 64,
        num_inner: int = 1024,
    ) -> None:
        super().__init__()
        self.features = check_positive_int("features", features)
        self.num_components = check_positive_int("num_components", num_components)
        self.covariance = check_choice("covariance", covariance, COVARIANCES)
        self.context_features = (
            None if context_features is None else check_positive_int("context_features", context_features)
        )
        self.temperature = temperature
        self.num_inner = check_positive_int("num_inner", num_inner)
        self.estimator = estimator

        K, D = num_components, features
        self._scale_size = D if covariance == "diagonal" else packed_size(D)
        logits, loc, scale = torch.zeros(K), torch.randn(K, D), torch.zeros(K, self._scale_size)
        if context_features is None:
            self.logits = nn.Parameter(logits)
            self.loc = nn.Parameter(loc)
            self._scale_name = "log_scale" if covariance == "diagonal" else "precision_factor"
            self.register_parameter(self._scale_name, nn.Parameter(scale))
            self.context_net = None
        else:
            hidden = check_positive_int("hidden_features", hidden_features)
            self.context_net = nn.Sequential(
                nn.Linear(context_features, hidden),
                nn.SiLU(),
                nn.Linear(hidden, hidden),
                nn.SiLU(),
                nn.Linear(hidden, K * (1 + D + self._scale_size)),
            )
            # the output layer starts small around an unconditional mixture, so components start apart
            last = self.context_net[-1]
            with torch.no_grad():
                last.weight.mul_(1e-2)
                last.bias.copy_(torch.cat([logits, loc.flatten(), scale.flatten()]))

    # ------------------------------------------------------------------ settings
    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature = check_temperature(value, self._parameter_dtype())

    def _parameter_dtype(self) -> torch.dtype:
        # the dtype relaxed sampling runs in (torch's default before the parameters exist)
        parameter = next(self.parameters(), None)
        return torch.get_default_dtype() if parameter is None else parameter.dtype

    @property
    def estimator(self) -> str:
        return self._estimator

    @estimator.setter
    def estimator(self, value: str) -> None:
        check_choice("estimator", value, ESTIMATORS)
        if value == "pathwise" and self.covariance != "diagonal":
            raise ValueError(
                "estimator='pathwise' needs covariance='diagonal' (its implicit gradients use per-coordinate "
                "conditional CDFs); got covariance='full'. Use 'exact' or a 'gumbel-*' estimator instead."
            )
        self._estimator = value

    def get_extra_state(self) -> dict:
        # saved in state_dict so a checkpoint restores the (possibly annealed) temperature and the estimator
        return {"temperature": self.temperature, "estimator": self.estimator, "num_inner": self.num_inner}

    def set_extra_state(self, state: dict) -> None:
        self.temperature = state["temperature"]
        self.estimator = state["estimator"]
        self.num_inner = check_positive_int("num_inner", state["num_inner"])

    # ------------------------------------------------------------------ parameters
    @classmethod
    def from_parameters(cls, weights: Tensor, means: Tensor, covariances: Tensor, **kwargs) -> MixtureOfGaussians:
        """An unconditional mixture with the given weights (K,), means (K, D) and covariances: variances (K, D)
        for covariance="diagonal" (the default), SPD matrices (K, D, D) for covariance="full"."""
        if kwargs.get("context_features") is not None:
            raise ValueError("from_parameters builds an unconditional mixture; context_features must be None")
        means = _real_tensor("means", means)
        if means.dim() != 2:
            raise ValueError(f"means must have shape (K, D); got {tuple(means.shape)}")
        base = cls(means.shape[1], means.shape[0], **kwargs)
        base.to(means.dtype if means.is_floating_point() else torch.get_default_dtype())
        base.set_parameters(weights, means, covariances)
        return base

    @torch.no_grad()
    def set_parameters(self, weights: Tensor, means: Tensor, covariances: Tensor) -> None:
        """Overwrite an unconditional mixture's parameters (shapes as in `from_parameters`), validating them."""
        if self.context_net is not None:
            raise ValueError("set_parameters needs an unconditional mixture (context_features=None)")
        K, D = self.num_components, self.features
        weights = _real_tensor("weights", weights)
        means = _real_tensor("means", means)
        covariances = _real_tensor("covariances", covariances)
        # the sum of K weights rounded to their own dtype may be off by about K ulps
        weights_tolerance = max(1e-6, 2 * K * _epsilon(weights))
        covariance_epsilon = _epsilon(covariances)
        weights, means, covariances = weights.double(), means.double(), covariances.double()
        if weights.shape != (K,):
            raise ValueError(f"weights must have shape ({K},); got {tuple(weights.shape)}")
        if means.shape != (K, D):
            raise ValueError(f"means must have shape ({K}, {D}); got {tuple(means.shape)}")
        for name, value in (("weights", weights), ("means", means), ("covariances", covariances)):
            check_finite(name, value)
        if (weights <= 0).any():
            raise ValueError(f"weights must be positive; got {weights.tolist()}")
        if abs(weights.sum().item() - 1) > weights_tolerance:
            raise ValueError(
                f"weights must sum to 1 (within {weights_tolerance:.2g}); they sum to {weights.sum().item():.8g}"
            )
        self.logits.copy_((weights / weights.sum()).log())
        self.loc.copy_(means)
        if self.covariance == "diagonal":
            if covariances.shape != (K, D):
                raise ValueError(
                    f"diagonal covariances are variances of shape ({K}, {D}); got {tuple(covariances.shape)}"
                )
            if (covariances <= 0).any():
                raise ValueError("diagonal covariances (variances) must be positive")
            self.log_scale.copy_(0.5 * covariances.log())
        else:
            if covariances.shape != (K, D, D):
                raise ValueError(f"full covariances must have shape ({K}, {D}, {D}); got {tuple(covariances.shape)}")
            # symmetric up to rounding: asymmetry within 8 ulps of the input's dtype, relative to each matrix's scale
            scale = covariances.abs().amax(dim=(-2, -1))
            asymmetry = (covariances - covariances.mT).abs().amax(dim=(-2, -1))
            tolerance = 8 * max(covariance_epsilon, 2.0**-23) * scale
            if (asymmetry > tolerance).any():
                bad = (asymmetry > tolerance).nonzero().flatten().tolist()
                worst = (asymmetry / scale).max().item()
                relative = tolerance.max().item() / scale.max().item()
                raise ValueError(
                    f"covariances must be symmetric positive definite; components {bad} are not symmetric "
                    f"(largest |Σ - Σᵀ| / max|Σ| = {worst:.3g}, tolerance {relative:.3g})"
                )
            covariances = 0.5 * (covariances + covariances.mT)
            factor = precision_factor_from_covariance(covariances)  # Σ⁻¹ = UᵀU, raises if not positive definite
            self.precision_factor.copy_(pack_precision_factor(factor))

    def _mixture(self, context: Tensor | None) -> tuple[Tensor, GaussianComponents]:
        """(log α, components) with batch shape () or, given a context (N, C), (N,)."""
        if self.context_net is None:
            log_weights, loc, scale = torch.log_softmax(self.logits, -1), self.loc, getattr(self, self._scale_name)
        else:
            K, D = self.num_components, self.features
            out = self.context_net(context)
            logits, loc, scale = out.split([K, K * D, K * self._scale_size], dim=-1)
            log_weights = torch.log_softmax(logits, -1)
            loc, scale = loc.unflatten(-1, (K, D)), scale.unflatten(-1, (K, self._scale_size))
        if self.covariance == "diagonal":
            return log_weights, GaussianComponents(loc, log_scale=scale)
        return log_weights, GaussianComponents(loc, factor=unpack_precision_factor(scale, self.features))

    def mixture_parameters(self, context: Tensor | None = None, *, by_weight: bool = False) -> dict[str, Tensor]:
        """{"weights": (K,), "means": (K, D), "covariances": (K, D) variances or (K, D, D)}, each with a leading N
        given a context (N, C). `by_weight=True` lists components in canonical order, heaviest first."""
        context = self._check_context(context, rows=None)
        log_weights, components = self._mixture(context)
        if components.is_diagonal:
            covariances = torch.exp(2 * components.log_scale)
        else:
            covariances = covariance_from_precision_factor(components.factor)  # (UᵀU)⁻¹
        params = {"weights": log_weights.exp(), "means": components.loc, "covariances": covariances}
        if by_weight:
            order = torch.argsort(params["weights"], dim=-1, descending=True)
            params = {
                name: torch.take_along_dim(
                    value, order.view(*order.shape, *([1] * (value.dim() - order.dim()))), dim=order.dim() - 1
                )
                for name, value in params.items()
            }
        return params

    # ------------------------------------------------------------------ validation
    def _check_inputs(self, inputs: Tensor, name: str = "inputs") -> Tensor:
        inputs = check_features(name, torch.as_tensor(inputs), self.features)
        return check_like(name, inputs, self._reference_parameter(), "the distribution")

    def _check_context(self, context: Tensor | None, rows: int | None) -> Tensor | None:
        if context is not None:
            context = torch.as_tensor(context)
        check_context(context, self.context_features, rows)
        if context is not None:
            check_like("context", context, self._reference_parameter(), "the distribution")
        return context

    def _reference_parameter(self) -> Tensor:
        return self.loc if self.context_net is None else self.context_net[-1].weight

    def _temperature_or_default(self, temperature: float | None) -> float:
        # checked against the dtype the parameters have now (the model may have been moved since τ was set)
        return check_temperature(self.temperature if temperature is None else temperature, self._parameter_dtype())

    # ------------------------------------------------------------------ densities
    def log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """Exact log density log Σ_k α_k N(x; μ_k, Σ_k) of inputs (N, D) -> (N,), given a context (N, C) if
        conditional."""
        inputs = self._check_inputs(inputs)
        context = self._check_context(context, rows=inputs.shape[0])
        return self._log_prob(inputs, context)

    def _log_prob(self, inputs: Tensor, context: Tensor | None) -> Tensor:
        log_weights, components = self._mixture(context)
        if context is None:
            return self._mixture_log_prob(inputs, log_weights, components)
        return self._mixture_log_prob(inputs.unsqueeze(-2), log_weights, components).squeeze(-1)

    @staticmethod
    def _mixture_log_prob(z: Tensor, log_weights: Tensor, components: GaussianComponents) -> Tensor:
        # log Σ_k α_k N(z; μ_k, Σ_k): z B + (n, D) -> B + (n,)
        return torch.logsumexp(log_weights.unsqueeze(-2) + components.log_prob(z), dim=-1)

    def nested_log_prob(
        self, z: Tensor, *, num_inner: int = 1024, temperature: float | None = None, context: Tensor | None = None
    ) -> Tensor:
        """Nested-minibatch estimate of the relaxed density at z (N, D): log (1/M) Σ_j p(z | c_j) -> (N,)."""
        z = self._check_inputs(z, "z")
        context = self._check_context(context, rows=z.shape[0])
        check_positive_int("num_inner", num_inner)
        tau = self._temperature_or_default(temperature)
        log_weights, components = self._mixture(context)
        if context is None:
            return relaxed.nested_log_prob(z, log_weights, components, num_inner=num_inner, temperature=tau)
        return relaxed.nested_log_prob(
            z.unsqueeze(-2), log_weights, components, num_inner=num_inner, temperature=tau
        ).squeeze(-1)

    # ------------------------------------------------------------------ sampling
    def sample(self, num_samples: int, context: Tensor | None = None, batch_size: int | None = None) -> Tensor:
        """Exact ancestral samples (n, D), or (N, n, D) given a context (N, C); drawn `batch_size` at a time if set."""
        context = self._check_context(context, rows=None)
        return sample_in_batches(self._sample, num_samples, context, batch_size)

    def _mean(self, context: Tensor | None) -> Tensor:
        # nflows' Distribution.mean: Σ_k α_k μ_k, (D,) or (N, D)
        context = self._check_context(context, rows=None)
        log_weights, components = self._mixture(context)
        return (log_weights.exp().unsqueeze(-1) * components.loc).sum(-2)

    def _sample(self, num_samples: int, context: Tensor | None) -> Tensor:
        context = self._check_context(context, rows=None)
        log_weights, components = self._mixture(context)
        return self._exact_sample(num_samples, log_weights, components)

    def _exact_sample(self, num_samples: int, log_weights: Tensor, components: GaussianComponents) -> Tensor:
        # ancestral: k ~ Categorical(α), z ~ N(μ_k, Σ_k); reparameterised in μ and Σ, not in α
        index = torch.multinomial(log_weights.exp().detach(), num_samples, replacement=True)  # B + (n,)
        noise = torch.randn(*index.shape, self.features, dtype=components.loc.dtype, device=components.loc.device)
        return components.select(index).sample(noise)

    def rsample(
        self, num_samples: int, *, temperature: float | None = None, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Gumbel-softmax relaxed sample (z, c): c (n, K) on the simplex, z = cᵀμ + ε ⊙ cᵀσ (n, D); with a
        context (N, C), shapes (N, n, K) and (N, n, D). Differentiable w.r.t. every parameter, weights included.
        Full covariance soft-selects the precision factor, z = cᵀμ + U(c)⁻¹ ε (see `GaussianComponents.soft_select`)."""
        num_samples = check_num_samples(num_samples)
        context = self._check_context(context, rows=None)
        tau = self._temperature_or_default(temperature)
        log_weights, components = self._mixture(context)
        z, c, _, _ = self._relaxed_sample(num_samples, log_weights, components, tau)
        return z, c

    def _relaxed_sample(self, num_samples, log_weights, components, tau):
        c, log_c = relaxed.gumbel_softmax(log_weights, tau, num_samples)
        selected = components.soft_select(c)
        noise = torch.randn(*c.shape[:-1], self.features, dtype=c.dtype, device=c.device)
        return selected.sample(noise), c, log_c, selected

    def sample_and_log_prob(self, num_samples: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Samples (n, D) and their log-densities (n,) (with a context (N, C): (N, n, D) and (N, n)), as set by
        `estimator`:

        - "exact": hard ancestral sample, exact log density; no gradient through the component choice.
        - "gumbel-nested": relaxed sample scored by `nested_log_prob` with `num_inner` inner samples (seed 003).
        - "gumbel-exact": relaxed sample scored by the exact mixture density (a biased baseline).
        - "gumbel-joint": relaxed sample scored by log p(z | c) + log Concrete(c) (seed 003, eq. 2 variant).
        - "pathwise": exact sample carrying unbiased implicit-reparameterisation gradients to weights, means
          and scales, scored by the exact density (diagonal covariance).
        """
        num_samples = check_num_samples(num_samples)
        context = self._check_context(context, rows=None)
        log_weights, components = self._mixture(context)
        estimator = self.estimator
        tau = self._temperature_or_default(None) if estimator.startswith("gumbel") else self.temperature
        if estimator in ("exact", "pathwise"):
            z = self._exact_sample(num_samples, log_weights, components)
            if estimator == "pathwise":
                z = relaxed.pathwise_sample(z, log_weights, components.loc, components.log_scale)
            return z, self._mixture_log_prob(z, log_weights, components)
        z, c, log_c, selected = self._relaxed_sample(num_samples, log_weights, components, tau)
        if estimator == "gumbel-nested":
            log_p = relaxed.nested_log_prob(z, log_weights, components, num_inner=self.num_inner, temperature=tau)
        elif estimator == "gumbel-exact":
            log_p = self._mixture_log_prob(z, log_weights, components)
        else:  # gumbel-joint
            log_p = selected.paired_log_prob(z) + relaxed.concrete_log_prob(log_c, log_weights.unsqueeze(-2), tau)
        return z, log_p

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def initialize_from_data(
        self,
        data: Tensor,
        *,
        method: str = "em",
        num_iterations: int = 20,
        num_restarts: int = INIT_RESTARTS,
        seed: int | None = None,
        scale_factor: float = 1.0,
    ) -> None:
        """Fit the mixture to data (N, D) by k-means++ seeding followed by `num_iterations` of EM ("em") or
        Lloyd's k-means ("kmeans"), keeping the most likely of `num_restarts` seedings (`fit_mixture`), then
        widen every component's scales by `scale_factor` (covariances by its square; 1 keeps the fit). A
        conditional base is initialised at the marginal fit (its output bias).

        An affine flow (MAF, RealNVP) trained from an exact fit starts near a stationary point of its likelihood and
        barely moves; wider components leave it something to contract, which is why `fit(init_base=True)` uses
        `scale_factor=training.AFFINE_FLOW_INIT_SCALE_FACTOR` under such flows."""
        from .initialization import fit_mixture

        if not (isinstance(scale_factor, (int, float)) and math.isfinite(scale_factor) and scale_factor > 0):
            raise ValueError(f"scale_factor must be a finite number > 0; got {scale_factor!r}")
        data = check_features("data", torch.as_tensor(data), self.features)
        weights, means, covariances = fit_mixture(
            data.to(torch.float64),
            self.num_components,
            covariance=self.covariance,
            method=method,
            num_iterations=num_iterations,
            num_restarts=num_restarts,
            seed=seed,
        )
        covariances = covariances * float(scale_factor) ** 2
        if self.context_net is None:
            self.set_parameters(weights, means, covariances)
            return
        helper = MixtureOfGaussians.from_parameters(weights, means, covariances, covariance=self.covariance)
        scale = getattr(helper, helper._scale_name)
        last = self.context_net[-1]
        last.weight.zero_()
        last.bias.copy_(torch.cat([helper.logits, helper.loc.flatten(), scale.flatten()]).to(last.bias))

    def extra_repr(self) -> str:
        conditional = "" if self.context_features is None else f", context_features={self.context_features}"
        return (
            f"features={self.features}, num_components={self.num_components}, covariance={self.covariance!r}, "
            f"temperature={self.temperature:g}, estimator={self.estimator!r}{conditional}"
        )


def _real_tensor(name: str, value) -> Tensor:
    tensor = torch.as_tensor(value)
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must be real numbers; got a tensor of dtype {tensor.dtype}")
    return tensor


def _epsilon(tensor: Tensor) -> float:
    return torch.finfo(tensor.dtype).eps if tensor.is_floating_point() else 0.0

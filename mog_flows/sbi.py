"""Mixture-base flows as sbi density estimators (neural posterior estimation, NPE), behind the optional `sbi` extra.

Shapes: N simulations, D parameters θ (the flow's features), C observations x (the context), E the embedding's
output. NPE fits q(θ | x) to simulated pairs; `posterior_estimator` returns the builder that sbi's
`NPE(density_estimator=...)` calls on the training simulations:

    from sbi.inference import NPE
    from mog_flows.sbi import posterior_estimator

    inference = NPE(prior, density_estimator=posterior_estimator(num_components=32))
    estimator = inference.append_simulations(theta, x).train()
    posterior = inference.build_posterior(estimator)
    samples = posterior.sample((1000,), x=x_o)

The builder makes a `build_flow` conditional flow over a `MixtureOfGaussians` base with θ and x z-scored on the
training simulations (sbi's `z_score_theta` / `z_score_x`), an optional embedding net for x, and the base fitted to
the training θ pushed through the new flow (`initialize_base`), which sbi's own training loop would never do.

sbi 0.27's nflows wrapper (`NFlowsFlow`) reshapes the samples of `sample_and_log_prob` without moving nflows'
condition axis behind the sample axis, which scrambles samples across conditions when there are several, and its
`inverse_transform` skips the embedding net; the estimator returned here corrects both (sbi is not patched).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .checks import check_positive_int
from .flows import build_flow
from .nflows_adapters import embed_context, flow_transform
from .training import initialize_base

__all__ = ["posterior_estimator", "MixtureFlowEstimator"]

_INIT_ROWS = 5000  # training simulations the base is fitted to


def _sbi_wrapper():
    try:
        from sbi.neural_nets.estimators import NFlowsFlow
    except ImportError as error:  # the optional extra is missing
        raise ImportError(
            "mog_flows.sbi needs the sbi package: pip install 'mog-flows[sbi]' (or pip install sbi)"
        ) from error
    return NFlowsFlow


def posterior_estimator(
    *,
    num_components: int = 32,
    transform: str = "nsf",
    num_layers: int = 4,
    hidden_features: int = 64,
    z_score_theta: bool = True,
    z_score_x: bool = True,
    embedding_net: nn.Module | None = None,
    seed: int = 0,
    **base_kwargs: Any,
) -> Callable[[Tensor, Tensor], nn.Module]:
    """A density-estimator builder for sbi's `NPE(density_estimator=...)`: a conditional flow q(θ | x) over a
    mixture-of-Gaussians base.

    Args:
        num_components: K of the base.
        transform: as in `build_flow`.
        num_layers: as in `build_flow`.
        hidden_features: as in `build_flow`.
        z_score_theta: z-score θ with the training simulations' mean and standard deviation (a fixed affine first
            transform; log q stays in θ's units).
        z_score_x: z-score x the same way (in front of the embedding net).
        embedding_net: a module (N, C) -> (N, E) for the observations, trained with the flow.
        seed: seeds the base's k-means++ initialisation (the networks' initial weights follow torch's global RNG,
            as sbi's own builders do).
        **base_kwargs: for the `MixtureOfGaussians` (covariance, temperature, estimator, num_inner).

    Returns:
        build(theta (N, D), x (N, C)) -> a `MixtureFlowEstimator` (sbi calls it once, on the training simulations).
    """
    _sbi_wrapper()  # fail here, not inside sbi's training loop, when the extra is missing
    check_positive_int("num_components", num_components)
    for name, value in (("z_score_theta", z_score_theta), ("z_score_x", z_score_x)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False; got {value!r}")

    def build(theta: Tensor, x: Tensor) -> nn.Module:
        theta, x = _as_rows("theta", theta), _as_rows("x", x)
        if theta.shape[0] != x.shape[0]:
            raise ValueError(f"theta and x must have the same rows; got {theta.shape[0]} and {x.shape[0]}")
        flow = build_flow(
            theta.shape[1],
            transform=transform,
            num_layers=num_layers,
            hidden_features=hidden_features,
            num_components=num_components,
            context_features=x.shape[1],
            standardize=(theta if z_score_theta else None, x if z_score_x else None),
            embedding_net=embedding_net,
            **base_kwargs,
        )
        rows = torch.randperm(theta.shape[0], generator=torch.Generator().manual_seed(seed))[:_INIT_ROWS]
        initialize_base(flow, theta[rows], x[rows], seed=seed)
        return MixtureFlowEstimator(flow, theta.shape[1:], x.shape[1:])

    return build


def _as_rows(name: str, value: Tensor) -> Tensor:
    if not isinstance(value, Tensor) or value.dim() != 2 or value.shape[0] < 2:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a tensor (N, features) with N ≥ 2 simulations; got {shape}")
    return value.to(torch.get_default_dtype())


def MixtureFlowEstimator(flow: nn.Module, input_shape: torch.Size, condition_shape: torch.Size) -> nn.Module:
    """sbi's `NFlowsFlow` around `flow`, with `sample_and_log_prob` and `inverse_transform` corrected (module
    docstring). A function returning an instance of a subclass built on first use, so that importing this module
    does not import sbi."""
    return _estimator_class()(flow, input_shape, condition_shape)


_CLASS: type | None = None


def _estimator_class() -> type:
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    NFlowsFlow = _sbi_wrapper()

    class _MixtureFlowEstimator(NFlowsFlow):
        def sample_and_log_prob(self, sample_shape, condition: Tensor, **kwargs) -> tuple[Tensor, Tensor]:
            # nflows: (N conditions, n, D) and (N, n); sbi: (*sample_shape, N, D) and (*sample_shape, N)
            num_samples = torch.Size(sample_shape).numel()
            samples, log_probs = self.net.sample_and_log_prob(num_samples, context=condition)
            samples = samples.transpose(0, 1).reshape((*sample_shape, condition.shape[0], *self.input_shape))
            return samples, log_probs.transpose(0, 1).reshape((*sample_shape, condition.shape[0]))

        def inverse_transform(self, input: Tensor, condition: Tensor) -> Tensor:
            batch_shape = torch.broadcast_shapes(input.shape[:-1], condition.shape[: -len(self.condition_shape)])
            input = input.expand(batch_shape + input.shape[-1:]).reshape(-1, input.shape[-1])
            condition = condition.expand(batch_shape + self.condition_shape).reshape(-1, *self.condition_shape)
            noise = flow_transform(self.net)(input, context=embed_context(self.net, condition))[0]
            return noise.reshape(batch_shape + noise.shape[-1:])

    _MixtureFlowEstimator.__name__ = _MixtureFlowEstimator.__qualname__ = "MixtureFlowEstimator"
    _CLASS = _MixtureFlowEstimator
    return _CLASS

"""Tests of `mog_flows.sbi`: the NPE density-estimator builder (skipped where sbi is not installed).

Shapes: N simulations, D = 2 parameters θ, C = 3 observations x, n samples.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("sbi")
from sbi.inference import NPE  # noqa: E402
from sbi.utils import BoxUniform  # noqa: E402

from mog_flows import MixtureOfGaussians  # noqa: E402
from mog_flows.nflows_adapters import flow_base  # noqa: E402
from mog_flows.sbi import posterior_estimator  # noqa: E402

PRIOR = BoxUniform(low=-torch.ones(2), high=torch.ones(2))


def simulate(theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x (N, 3) = (θ₁², θ₂, θ₁ + θ₂) · 100 + noise: two posterior modes in θ₁ (its sign), unscaled observations."""
    clean = torch.stack([theta[:, 0] ** 2, theta[:, 1], theta.sum(-1)], -1)
    return 100 * (clean + 0.05 * torch.randn(clean.shape, generator=generator))


def simulations(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    theta = PRIOR.sample((n,))
    return theta, simulate(theta, torch.Generator().manual_seed(seed))


def test_npe_trains_a_mixture_base_flow_and_samples_the_posterior():
    theta, x = simulations()
    torch.manual_seed(0)
    builder = posterior_estimator(num_components=4, num_layers=2, hidden_features=16)
    inference = NPE(prior=PRIOR, density_estimator=builder, show_progress_bars=False)
    with pytest.warns(UserWarning, match="max_num_epochs"):  # sbi: not converged in 3 epochs, as intended
        estimator = inference.append_simulations(theta, x).train(max_num_epochs=3, training_batch_size=100)
    base = flow_base(estimator.net)
    assert isinstance(base, MixtureOfGaussians) and base.num_components == 4
    losses = inference.summary["validation_loss"]
    assert len(losses) >= 3 and losses[-1] < losses[0]  # it learns (sbi also records the untrained loss)
    posterior = inference.build_posterior(estimator)
    x_o = simulate(torch.tensor([[0.5, 0.2]]), torch.Generator().manual_seed(5))
    samples = posterior.sample((50,), x=x_o, show_progress_bars=False)
    assert samples.shape == (50, 2) and torch.isfinite(samples).all()
    assert torch.isfinite(posterior.log_prob(samples, x=x_o)).all()


def test_the_base_is_fitted_to_the_training_thetas():
    theta, x = simulations()
    torch.manual_seed(0)
    estimator = posterior_estimator(num_components=3, num_layers=1, hidden_features=8)(theta, x)
    base = flow_base(estimator.net)
    # a new flow is the identity after the z-scoring, so the base fits the z-scored θ: mean 0, variance 1 overall
    parameters = base.mixture_parameters(torch.zeros(1, base.context_features))
    weights, means = parameters["weights"][0].detach(), parameters["means"][0].detach()
    torch.testing.assert_close((weights[:, None] * means).sum(0), torch.zeros(2), atol=0.05, rtol=0)
    fresh = MixtureOfGaussians(2, 3, context_features=base.context_features, hidden_features=8)
    assert not torch.allclose(fresh.mixture_parameters(torch.zeros(1, base.context_features))["means"], means)


def test_sample_and_log_prob_keeps_samples_with_their_conditions():
    theta, x = simulations()
    torch.manual_seed(0)
    estimator = posterior_estimator(num_components=3, num_layers=1, hidden_features=8)(theta, x)
    with torch.no_grad():  # a flow that depends on the condition
        for parameter in estimator.net.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape))
    conditions = x[:4]
    samples, log_probs = estimator.sample_and_log_prob(torch.Size([5]), condition=conditions)
    assert samples.shape == (5, 4, 2) and log_probs.shape == (5, 4)
    with torch.no_grad():
        torch.testing.assert_close(estimator.log_prob(samples, conditions), log_probs, rtol=1e-4, atol=1e-4)
        noise = estimator.inverse_transform(samples, conditions)
        expected = estimator.net.transform_to_noise(samples.reshape(-1, 2), conditions.repeat(5, 1)).reshape(5, 4, 2)
        torch.testing.assert_close(noise, expected, rtol=1e-5, atol=1e-5)


def test_an_embedding_net_and_bad_simulations():
    theta, x = simulations(200)
    estimator = posterior_estimator(num_layers=1, hidden_features=8, embedding_net=nn.Linear(3, 5))(theta, x)
    assert flow_base(estimator.net).context_features == 5
    assert estimator.log_prob(theta[:7].unsqueeze(0), x[:7]).shape == (1, 7)
    with pytest.raises(ValueError, match=r"theta and x must have the same rows; got 200 and 199"):
        posterior_estimator()(theta, x[:199])
    with pytest.raises(ValueError, match=r"embedding_net fails on a context of shape \(2, 3\)"):
        posterior_estimator(embedding_net=nn.Linear(4, 5))(theta, x)
    with pytest.raises(ValueError, match="z_score_x must be True or False"):
        posterior_estimator(z_score_x="independent")

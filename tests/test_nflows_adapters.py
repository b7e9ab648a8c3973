"""`mog_flows.nflows_adapters`: the accessors of nflows' private parts, and batched sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nflows.distributions import Distribution, StandardNormal
from nflows.flows import Flow
from nflows.transforms import (
    CompositeTransform,
    MaskedAffineAutoregressiveTransform,
    Permutation,
    RandomPermutation,
    ReversePermutation,
)
from torch import nn

from mog_flows import MixtureOfGaussians, build_flow
from mog_flows.nflows_adapters import (
    distribution_features,
    embed_context,
    flow_base,
    flow_embedding_net,
    flow_transform,
    permutation_indices,
    sample_in_batches,
)

DOUBLE = torch.float64


class _Shapeless(Distribution):
    """A distribution that says nothing about its dimension."""

    def _log_prob(self, inputs, context):
        return inputs.new_zeros(inputs.shape[0])


def _conditional_parts(features: int = 3, context_features: int = 2):
    transform = MaskedAffineAutoregressiveTransform(features, hidden_features=8, context_features=context_features)
    base = MixtureOfGaussians(features, 2, context_features=context_features)
    return transform, base


# ------------------------------------------------------------------------------------------------ flow parts
def test_flow_base_and_transform_are_the_objects_the_flow_was_built_from():
    transform, base = CompositeTransform([ReversePermutation(3)]), StandardNormal([3])
    flow = Flow(transform, base)
    assert flow_base(flow) is base
    assert flow_transform(flow) is transform
    given = MixtureOfGaussians(2, 3)
    built = build_flow(2, base=given, transform="maf", num_layers=1, hidden_features=8)
    assert flow_base(built) is given
    assert isinstance(flow_transform(built), CompositeTransform)
    # the transform is what the flow applies: its log_prob is the base's at the transformed point plus log|det|
    x = torch.randn(5, 2)
    z, logabsdet = flow_transform(built)(x)
    torch.testing.assert_close(built.log_prob(x), flow_base(built).log_prob(z) + logabsdet)


def test_embed_context_goes_through_the_flow_embedding_net():
    transform, base = _conditional_parts()
    torch.manual_seed(0)
    embedding = nn.Linear(5, 2)
    flow = Flow(transform, base, embedding_net=embedding)
    assert flow_embedding_net(flow) is embedding
    context = torch.randn(4, 5)
    torch.testing.assert_close(embed_context(flow, context), embedding(context), rtol=0, atol=0)
    assert embed_context(flow, None) is None
    # the embedded context is what the base sees
    x = torch.randn(4, 3)
    z, logabsdet = flow_transform(flow)(x, context=embed_context(flow, context))
    torch.testing.assert_close(
        flow.log_prob(x, context=context), flow_base(flow).log_prob(z, context=embed_context(flow, context)) + logabsdet
    )


def test_without_an_embedding_net_the_context_passes_unchanged():
    flow = Flow(*_conditional_parts())
    context = torch.randn(4, 2)
    torch.testing.assert_close(embed_context(flow, context), context, rtol=0, atol=0)
    torch.testing.assert_close(flow_embedding_net(flow)(context), context, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ permutations
@pytest.mark.parametrize(
    "layer",
    [
        pytest.param(lambda: ReversePermutation(5), id="reverse"),
        pytest.param(lambda: RandomPermutation(5), id="random"),
        pytest.param(lambda: Permutation(torch.tensor([2, 0, 4, 1, 3])), id="given"),
    ],
)
def test_permutation_indices_is_the_index_the_layer_applies(layer):
    torch.manual_seed(1)
    layer = layer()
    p = permutation_indices(layer)
    assert sorted(p.tolist()) == list(range(5))
    x = torch.randn(6, 5, dtype=DOUBLE)
    outputs, logabsdet = layer(x)
    torch.testing.assert_close(outputs, x[:, p], rtol=0, atol=0)
    torch.testing.assert_close(logabsdet, torch.zeros(6, dtype=DOUBLE), rtol=0, atol=0)
    torch.testing.assert_close(layer.inverse(outputs)[0], x, rtol=0, atol=0)


def test_given_permutation_index_is_returned():
    p = torch.tensor([2, 0, 4, 1, 3])
    assert permutation_indices(Permutation(p)).tolist() == p.tolist()
    assert permutation_indices(ReversePermutation(4)).tolist() == [3, 2, 1, 0]


# ------------------------------------------------------------------------------------------------ features
@pytest.mark.parametrize(
    "distribution, expected",
    [
        pytest.param(lambda: StandardNormal([3]), 3, id="standard-normal"),
        pytest.param(lambda: MixtureOfGaussians(4, 2), 4, id="mixture"),
        pytest.param(lambda: MixtureOfGaussians(2, 3, covariance="full", context_features=5), 2, id="mixture-full"),
        pytest.param(lambda: StandardNormal([2, 3]), None, id="two-dimensional-shape"),
        pytest.param(lambda: _Shapeless(), None, id="shapeless"),
    ],
)
def test_distribution_features(distribution, expected):
    features = distribution_features(distribution())
    assert features == expected
    assert features is None or type(features) is int


def test_distribution_features_ignores_a_features_attribute_that_is_not_an_int():
    distribution = _Shapeless()
    distribution.features = True  # a bool is no count
    assert distribution_features(distribution) is None
    distribution.features = 7
    assert distribution_features(distribution) == 7


# ------------------------------------------------------------------------------------------------ batches
def _counting_draw(features: int = 2):
    """draw(n, context) returning consecutive numbers, so the order of the batches shows in the result."""
    calls: list[int] = []

    def draw(n, context):
        start = sum(calls)
        calls.append(n)
        values = torch.arange(start, start + n, dtype=DOUBLE)[:, None].expand(n, features)  # (n, D)
        if context is None:
            return values.clone()
        return values.expand(context.shape[0], n, features).clone()  # (N, n, D)

    return draw, calls


@pytest.mark.parametrize("batch_size, sizes", [(None, [10]), (3, [3, 3, 3, 1]), (5, [5, 5]), (20, [10])])
def test_sample_in_batches_without_context(batch_size, sizes):
    draw, calls = _counting_draw()
    samples = sample_in_batches(draw, 10, None, batch_size)
    assert samples.shape == (10, 2)
    assert calls == sizes
    torch.testing.assert_close(samples[:, 0], torch.arange(10, dtype=DOUBLE), rtol=0, atol=0)


@pytest.mark.parametrize("batch_size, sizes", [(None, [7]), (2, [2, 2, 2, 1]), (7, [7])])
def test_sample_in_batches_with_context_joins_along_the_sample_dimension(batch_size, sizes):
    draw, calls = _counting_draw(features=3)
    context = torch.zeros(4, 5)
    samples = sample_in_batches(draw, 7, context, batch_size)
    assert samples.shape == (4, 7, 3)
    assert calls == sizes
    torch.testing.assert_close(samples[:, :, 0], torch.arange(7, dtype=DOUBLE).expand(4, 7), rtol=0, atol=0)


def test_sample_in_batches_takes_integer_like_counts_and_refuses_bad_ones():
    draw, calls = _counting_draw()
    assert sample_in_batches(draw, np.int64(4), None, torch.tensor(3)).shape == (4, 2)
    assert calls == [3, 1]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_samples must be a positive integer"):
            sample_in_batches(draw, bad, None, None)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        sample_in_batches(draw, 4, None, 0)


def test_sample_in_batches_with_a_real_conditional_mixture():
    base = MixtureOfGaussians(3, 2, context_features=2)
    context = torch.randn(5, 2)
    assert base.sample(7, context=context, batch_size=3).shape == (5, 7, 3)
    unconditional = MixtureOfGaussians(3, 2)
    assert unconditional.sample(7, batch_size=3).shape == (7, 3)

"""Tests of `mog_flows.studies.budgets`: trainable-parameter counts and the narrowest width that reaches a budget.

Shapes: D features, K components.
"""

from __future__ import annotations

import pytest
import torch

from mog_flows import build_flow
from mog_flows.baselines import RAD
from mog_flows.studies.budgets import (
    closest_width,
    count_parameters,
    matched_hidden_features,
    matched_rad_hidden_features,
    narrowest_width,
)


def test_count_parameters_counts_trainable_scalars_only():
    layer = torch.nn.Linear(3, 2)  # 3 * 2 weights + 2 biases
    assert count_parameters(layer) == 8
    layer.bias.requires_grad_(False)
    assert count_parameters(layer) == 6


@pytest.mark.parametrize("start", [1, 2, 7, 40, 41, 100])
@pytest.mark.parametrize("budget", [0, 1, 40, 1600, 1601, 10_000])
def test_narrowest_width_is_the_smallest_width_at_or_over_the_budget(start, budget):
    def square(width):
        return width * width

    expected = next(h for h in range(start, 10_000) if square(h) >= budget)
    assert narrowest_width(square, budget, start=start) == expected


@pytest.mark.parametrize("start", [1, 2, 7, 40])
@pytest.mark.parametrize("budget", [0, 1, 40, 1600, 1601, 1640, 1641, 10_000])
def test_closest_width_is_the_width_whose_count_is_nearest_the_budget(start, budget):
    def square(width):
        return width * width

    widths = range(start, 10_000)
    nearest = min(abs(square(h) - budget) for h in widths)
    expected = max(h for h in widths if abs(square(h) - budget) == nearest)  # a tie goes to the wider
    assert closest_width(square, budget, start=start) == expected


def test_narrowest_width_refuses_a_start_below_one():
    with pytest.raises(ValueError, match="start must be a positive integer"):
        narrowest_width(lambda width: width, 5, start=0)


@pytest.mark.parametrize(("features", "transform", "components"), [(2, "nsf", 8), (2, "realnvp", 25), (10, "maf", 10)])
def test_matched_hidden_features_is_the_smallest_width_at_or_over_the_budget(features, transform, components):
    hidden, count, budget = matched_hidden_features(
        features, transform, num_layers=2, hidden_features=8, num_components=components
    )

    def parameters(base, width):
        flow = build_flow(
            features, base=base, transform=transform, num_layers=2, hidden_features=width, num_components=components
        )
        return count_parameters(flow)

    # a diagonal mixture adds K logits, K·D means and K·D scales
    assert budget == parameters("mog", 8) == parameters("gaussian", 8) + components * (1 + 2 * features)
    assert count == parameters("gaussian", hidden) >= budget
    assert hidden > 8 and parameters("gaussian", hidden - 1) < budget


@pytest.mark.parametrize(("transform", "pieces"), [("nsf", 5), ("maf", 3)])
def test_matched_rad_hidden_features_is_the_smallest_width_at_or_over_the_budget(transform, pieces):
    hidden, count, budget = matched_rad_hidden_features(
        2, transform, num_layers=2, hidden_features=8, num_components=8, num_pieces=pieces
    )
    flow = build_flow(2, base="mog", transform=transform, num_layers=2, hidden_features=8, num_components=8)

    def parameters(width):
        return count_parameters(RAD(2, num_pieces=pieces, num_layers=2, hidden_features=width))

    assert budget == count_parameters(flow)
    assert count == parameters(hidden) >= budget
    assert hidden == 1 or parameters(hidden - 1) < budget

"""Equal parameter budgets: the trainable parameters of a model and the narrowest width that reaches a budget.

Shapes: D features, K mixture components.

A study compares models at equal budgets: the model with a mixture base sets the budget (a diagonal MoG base adds
K(1 + 2D) parameters to its flow) and every other model gets the narrowest conditioner width whose parameter count
is at least that budget, so that no advantage of the mixture is bought with parameters. Where one step of width
changes the count by more than the tolerance a study allows, `closest_width` gives the width whose count is nearest
the budget instead (the RAD study: every model within ±5 % of one budget).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..baselines import RAD
from ..checks import check_positive_int
from ..flows import build_flow

__all__ = [
    "count_parameters",
    "narrowest_width",
    "closest_width",
    "flow_parameters",
    "matched_hidden_features",
    "matched_rad_hidden_features",
]


def count_parameters(module: torch.nn.Module) -> int:
    """Number of trainable scalars (`requires_grad`) of `module`."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def narrowest_width(parameters: Callable[[int], int], budget: int, *, start: int = 1) -> int:
    """The smallest width h ≥ `start` with `parameters(h)` ≥ `budget`, for a count that does not decrease with h
    (true of every conditioner network here): doubling from `start`, then bisection."""
    check_positive_int("start", start)
    if parameters(start) >= budget:
        return start
    low, high = start + 1, 2 * start
    while parameters(high) < budget:
        low, high = high + 1, 2 * high
    while low < high:  # the smallest h in [low, high] with parameters(h) ≥ budget
        middle = (low + high) // 2
        if parameters(middle) >= budget:
            high = middle
        else:
            low = middle + 1
    return low


def closest_width(parameters: Callable[[int], int], budget: int, *, start: int = 1) -> int:
    """The width h ≥ `start` whose `parameters(h)` is nearest `budget` (a count that does not decrease with h): the
    narrowest width at or over the budget, or the one below it when that is nearer (a tie goes to the wider)."""
    wide = narrowest_width(parameters, budget, start=start)
    if wide == start:
        return wide
    return wide - 1 if budget - parameters(wide - 1) < parameters(wide) - budget else wide


def flow_parameters(
    features: int, base: str, transform: str, *, num_layers: int, hidden_features: int, num_components: int
) -> int:
    """Trainable parameters of `build_flow(features, base=base, transform=transform, ...)` (diagonal MoG base with
    `num_components` components for base "mog"; a Gaussian base ignores it)."""
    flow = build_flow(
        features,
        base=base,
        transform=transform,
        num_layers=num_layers,
        hidden_features=hidden_features,
        num_components=num_components,
    )
    return count_parameters(flow)


def matched_hidden_features(
    features: int, transform: str, *, num_layers: int, hidden_features: int, num_components: int
) -> tuple[int, int, int]:
    """The Gaussian-base flow's width for an equal budget: the smallest h ≥ `hidden_features` whose Gaussian-base
    flow has at least as many parameters as the MoG-base flow of width `hidden_features`.

    Returns (h, parameters of that Gaussian-base flow, parameters of the MoG-base flow)."""
    widths = dict(num_layers=num_layers, num_components=num_components)
    budget = flow_parameters(features, "mog", transform, hidden_features=hidden_features, **widths)

    def gaussian(width: int) -> int:
        return flow_parameters(features, "gaussian", transform, hidden_features=width, **widths)

    hidden = narrowest_width(gaussian, budget, start=hidden_features)
    return hidden, gaussian(hidden), budget


def matched_rad_hidden_features(
    features: int, transform: str, *, num_layers: int, hidden_features: int, num_components: int, num_pieces: int
) -> tuple[int, int, int]:
    """RAD's width for an equal budget: the smallest h ≥ 1 whose `RAD(features, num_pieces=num_pieces,
    num_layers=num_layers, hidden_features=h)` has at least as many parameters as the MoG-base flow of `transform`
    and width `hidden_features`.

    Returns (h, parameters of that RAD, parameters of the MoG-base flow)."""
    widths = dict(num_layers=num_layers, hidden_features=hidden_features, num_components=num_components)
    budget = flow_parameters(features, "mog", transform, **widths)

    def rad(width: int) -> int:
        return count_parameters(RAD(features, num_pieces=num_pieces, num_layers=num_layers, hidden_features=width))

    hidden = narrowest_width(rad, budget)
    return hidden, rad(hidden), budget

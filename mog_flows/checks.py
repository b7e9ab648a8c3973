"""Validation at the public boundary: clear `ValueError`s that say what was expected and what came."""

from __future__ import annotations

import math

import torch

__all__ = [
    "check_choice",
    "check_finite",
    "check_positive_int",
    "check_positive_number",
    "check_temperature",
    "check_features",
    "check_context",
]


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return value


def check_positive_number(name: str, value: float) -> float:
    """A finite real number > 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    return value


def check_temperature(value: float) -> float:
    value = float(value)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"temperature must be a finite number > 0; got {value!r}")
    return value


def check_finite(name: str, tensor: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(tensor).all():
        bad = (~torch.isfinite(tensor)).sum().item()
        raise ValueError(f"{name} must be finite; got {bad} NaN or infinite value(s) in shape {tuple(tensor.shape)}")
    return tensor


def check_features(name: str, tensor: torch.Tensor, features: int) -> torch.Tensor:
    """`tensor` must have shape (N, features) and finite values."""
    if tensor.dim() != 2 or tensor.shape[-1] != features:
        raise ValueError(f"{name} must have shape (N, {features}); got {tuple(tensor.shape)}")
    return check_finite(name, tensor)


def check_context(context: torch.Tensor | None, context_features: int | None, rows: int | None) -> None:
    """Context must be given exactly when the model is conditional, with `context_features` columns."""
    if context_features is None:
        if context is not None:
            raise ValueError(
                "this model is unconditional (context_features=None) but a context of shape "
                f"{tuple(context.shape)} was given"
            )
        return
    if context is None:
        raise ValueError(f"this model is conditional: pass a context of shape (N, {context_features})")
    if context.dim() != 2 or context.shape[-1] != context_features:
        raise ValueError(f"context must have shape (N, {context_features}); got {tuple(context.shape)}")
    if rows is not None and context.shape[0] != rows:
        raise ValueError(f"context must have one row per input: {rows} inputs, {context.shape[0]} context rows")
    check_finite("context", context)

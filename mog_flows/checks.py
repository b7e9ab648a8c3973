"""Validation at the public boundary: clear `ValueError`s that say what was expected and what came."""

from __future__ import annotations

import math
import operator

import torch

__all__ = [
    "check_choice",
    "check_finite",
    "check_positive_int",
    "check_positive_number",
    "check_optional_positive_number",
    "check_number_in",
    "check_seed",
    "check_bool",
    "check_temperature",
    "temperature_limits",
    "check_num_samples",
    "check_like",
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


def check_optional_positive_number(name: str, value: float | None) -> float | None:
    """None, or a real number > 0 (not a bool), +inf included (e.g. "no limit"); returned as a float."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0 or None; got {value!r}")
    return float(value)


def check_number_in(name: str, value: float, low: float, high: float, *, closed_high: bool = False) -> float:
    """A real number (not a bool) in (low, high), or in (low, high] with `closed_high`."""
    inside = isinstance(value, (int, float)) and not isinstance(value, bool) and low < value
    inside = inside and (value <= high if closed_high else value < high) and math.isfinite(value)
    if not inside:
        interval = f"({low:g}, {high:g}{']' if closed_high else ')'}"
        what = f"> {low:g}" if math.isinf(high) else f"in {interval}"
        raise ValueError(f"{name} must be a finite number {what}; got {value!r}")
    return value


def check_seed(value: int, name: str = "seed") -> int:
    """An integer in [0, 2**63) (not a bool): what torch.manual_seed and the derived seeds can take."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValueError(f"{name} must be an integer in [0, 2**63); got {value!r}")
    return value


def check_bool(name: str, value: bool) -> bool:
    """True or False (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return value


def temperature_limits(dtype: torch.dtype) -> tuple[float, float]:
    """(τ_min, τ_max) that relaxed sampling and scoring in `dtype` can hold: √tiny and √max of the dtype, so
    that 1/τ, τ·|log c| and their products with O(1) logits stay finite (float32: about 1.1e-19 and 1.8e19)."""
    info = torch.finfo(dtype)
    return math.sqrt(info.tiny), math.sqrt(info.max)


def check_temperature(value: float, dtype: torch.dtype | None = None, name: str = "temperature") -> float:
    """A real τ > 0 (not a bool or a string), within `temperature_limits(dtype)` when a dtype is given."""
    if isinstance(value, (bool, str, bytes)) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    if dtype is not None:
        low, high = temperature_limits(dtype)
        if not low <= value <= high:
            raise ValueError(
                f"{name} must lie in [{low:.3g}, {high:.3g}] for {dtype} parameters (Gumbel-softmax logits divided "
                f"by τ must stay finite); got {value!r}"
            )
    return value


def check_num_samples(value, name: str = "num_samples") -> int:
    """A positive integer; integer-like values (numpy integers, 0-d integer tensors) are accepted as ints."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a positive integer; got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be a positive integer; got {number}")
    return number


def check_like(name: str, tensor: torch.Tensor, reference: torch.Tensor, owner: str = "the model") -> torch.Tensor:
    """`tensor` must have `reference`'s dtype and device (no silent casts or transfers at the boundary)."""
    if tensor.dtype != reference.dtype or tensor.device != reference.device:
        raise ValueError(
            f"{name} has dtype {tensor.dtype} on {tensor.device} but {owner}'s parameters are {reference.dtype} on "
            f"{reference.device}; convert it with .to(dtype=..., device=...) or move the model with .to(...)"
        )
    return tensor


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

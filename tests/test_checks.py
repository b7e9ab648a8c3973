"""mog_flows.checks: each validator accepts what it documents, returns it, and refuses the rest with a ValueError
that names the argument, what was expected and what came."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mog_flows.checks import (
    check_bool,
    check_choice,
    check_context,
    check_features,
    check_finite,
    check_like,
    check_num_samples,
    check_number_in,
    check_optional_positive_number,
    check_positive_int,
    check_positive_number,
    check_seed,
    check_temperature,
    temperature_limits,
)


def test_choice():
    assert check_choice("mode", "b", ("a", "b")) == "b"
    with pytest.raises(ValueError, match=r"mode must be one of 'a', 'b'; got 'c'"):
        check_choice("mode", "c", ("a", "b"))


@pytest.mark.parametrize("value", [1, 7, 2**40])
def test_positive_int_accepts(value):
    assert check_positive_int("steps", value) == value


@pytest.mark.parametrize("value", [0, -3, 1.0, True, "2", None])
def test_positive_int_refuses(value):
    with pytest.raises(ValueError, match=r"steps must be a positive integer; got"):
        check_positive_int("steps", value)


@pytest.mark.parametrize("value", [1e-300, 0.5, 3])
def test_positive_number_accepts(value):
    assert check_positive_number("lr", value) == value


@pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan, True, "1e-3", None])
def test_positive_number_refuses(value):
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0; got"):
        check_positive_number("lr", value)


def test_optional_positive_number():
    assert check_optional_positive_number("cap", None) is None
    assert check_optional_positive_number("cap", math.inf) == math.inf
    result = check_optional_positive_number("cap", 4)
    assert result == 4.0 and isinstance(result, float)
    for bad in (0, -2.0, math.nan, False, "5"):
        with pytest.raises(ValueError, match=r"cap must be a number > 0 or None; got"):
            check_optional_positive_number("cap", bad)


def test_number_in_open_and_closed():
    assert check_number_in("gamma", 0.5, 0.0, 1.0) == 0.5
    assert check_number_in("gamma", 1.0, 0.0, 1.0, closed_high=True) == 1.0
    with pytest.raises(ValueError, match=r"gamma must be a finite number in \(0, 1\); got 1\.0"):
        check_number_in("gamma", 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"gamma must be a finite number in \(0, 1\]; got 0"):
        check_number_in("gamma", 0, 0.0, 1.0, closed_high=True)
    for bad in (math.nan, True, "0.5", None):
        with pytest.raises(ValueError, match=r"gamma must be a finite number in"):
            check_number_in("gamma", bad, 0.0, 1.0)


def test_number_in_unbounded_above_says_greater_than():
    assert check_number_in("factor", 4.0, 1.0, math.inf) == 4.0
    with pytest.raises(ValueError, match=r"factor must be a finite number > 1; got 1\.0"):
        check_number_in("factor", 1.0, 1.0, math.inf)
    with pytest.raises(ValueError, match=r"factor must be a finite number > 1; got inf"):
        check_number_in("factor", math.inf, 1.0, math.inf)


def test_seed():
    assert check_seed(0) == 0
    assert check_seed(2**63 - 1) == 2**63 - 1
    for bad in (-1, 2**63, 1.0, True, "3"):
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63\); got"):
            check_seed(bad)
    with pytest.raises(ValueError, match=r"^data_seed must be"):
        check_seed(-1, name="data_seed")


def test_bool():
    assert check_bool("flag", True) is True
    assert check_bool("flag", False) is False
    for bad in (0, 1, "yes", None, np.bool_(True)):
        with pytest.raises(ValueError, match=r"flag must be True or False; got"):
            check_bool("flag", bad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_temperature_limits_are_square_roots_of_the_dtype_range(dtype):
    low, high = temperature_limits(dtype)
    info = torch.finfo(dtype)
    assert low == pytest.approx(math.sqrt(info.tiny), rel=1e-12)
    assert high == pytest.approx(math.sqrt(info.max), rel=1e-12)
    # what the limit protects: 1/τ and τ · (an O(1) logit) stay finite in the dtype at both ends
    for tau in (low, high):
        t = torch.tensor(tau, dtype=dtype)
        assert torch.isfinite(1 / t) and torch.isfinite(t * 2.0)


def test_temperature():
    assert check_temperature(0.5) == 0.5
    assert check_temperature(np.float32(0.25)) == 0.25
    assert check_temperature(torch.tensor(2.0)) == 2.0
    for bad in (0.0, -1.0, math.inf, math.nan, True, "0.5", None, torch.tensor(True)):
        with pytest.raises(ValueError, match=r"temperature must be a finite number > 0; got"):
            check_temperature(bad)
    low, high = temperature_limits(torch.float32)
    assert check_temperature(low, torch.float32) == low
    with pytest.raises(ValueError, match=r"tau must lie in \[.*\] for torch\.float32 parameters"):
        check_temperature(low / 10, torch.float32, name="tau")
    with pytest.raises(ValueError, match=r"for torch\.float32 parameters"):
        check_temperature(high * 10, torch.float32)
    # the same τ is fine where the dtype holds it
    assert check_temperature(high * 10, torch.float64) == high * 10


def test_num_samples():
    assert check_num_samples(5) == 5
    assert check_num_samples(np.int64(3)) == 3
    assert check_num_samples(torch.tensor(4)) == 4
    for bad in (0, -2):
        with pytest.raises(ValueError, match=r"num_samples must be a positive integer; got -?\d"):
            check_num_samples(bad)
    for bad in (2.0, "3", None, True, torch.tensor(True), torch.tensor(2.5)):
        with pytest.raises(ValueError, match=r"num_samples must be a positive integer; got"):
            check_num_samples(bad)


def test_like():
    reference = torch.zeros(3)
    x = torch.ones(2)
    assert check_like("x", x, reference) is x
    with pytest.raises(
        ValueError, match=r"x has dtype torch\.float64 on cpu but the base's parameters are torch\.float32"
    ):
        check_like("x", x.double(), reference, owner="the base")


def test_finite_counts_the_bad_values():
    x = torch.tensor([[0.0, math.nan], [math.inf, 1.0]])
    with pytest.raises(ValueError, match=r"inputs must be finite; got 2 NaN or infinite value\(s\) in shape \(2, 2\)"):
        check_finite("inputs", x)
    good = torch.ones(2, 2)
    assert check_finite("inputs", good) is good


def test_features():
    x = torch.zeros(4, 3)
    assert check_features("inputs", x, 3) is x
    for bad in (torch.zeros(4, 2), torch.zeros(3), torch.zeros(2, 4, 3)):
        with pytest.raises(ValueError, match=r"inputs must have shape \(N, 3\); got"):
            check_features("inputs", bad, 3)
    with pytest.raises(ValueError, match=r"must be finite"):
        check_features("inputs", torch.full((2, 3), math.nan), 3)


def test_context():
    check_context(None, None, 5)
    check_context(torch.zeros(5, 2), 2, 5)
    check_context(torch.zeros(5, 2), 2, None)
    with pytest.raises(ValueError, match=r"unconditional \(context_features=None\) but a context of shape \(5, 2\)"):
        check_context(torch.zeros(5, 2), None, 5)
    with pytest.raises(ValueError, match=r"this model is conditional: pass a context of shape \(N, 2\)"):
        check_context(None, 2, 5)
    with pytest.raises(ValueError, match=r"context must have shape \(N, 2\); got \(5, 3\)"):
        check_context(torch.zeros(5, 3), 2, 5)
    with pytest.raises(ValueError, match=r"5 inputs, 4 context rows"):
        check_context(torch.zeros(4, 2), 2, 5)
    with pytest.raises(ValueError, match=r"context must be finite"):
        check_context(torch.full((5, 2), math.inf), 2, 5)

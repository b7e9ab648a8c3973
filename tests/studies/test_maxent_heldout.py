"""Tests of `mog_flows.studies.maxent_heldout`: every held-out answer is the maximum-entropy density of its
constraints (exponential-family form on samples, targets and entropy by Monte Carlo from the exact sampler), the
suite is disjoint from the development problems, and the validation run works end to end with smoke settings."""

from __future__ import annotations

import math

import pytest
import torch

from mog_flows.nflows_adapters import flow_base, flow_transform, transform_layers
from mog_flows.studies import maxent_heldout
from mog_flows.studies.maxent_heldout import HELDOUT, heldout_flow, heldout_problem
from mog_flows.studies.maxent_problems import bimodal_problem, dirichlet_problem

DOUBLE = torch.float64


@pytest.mark.parametrize("name", list(HELDOUT))
def test_each_answer_meets_its_constraints_and_is_their_maximum_entropy_density(name):
    problem = heldout_problem(name)
    torch.manual_seed(0)
    x = problem.sample(200_000)
    assert x.shape == (200_000, problem.features) and x.dtype == DOUBLE
    values = problem.statistic(x)
    assert values.shape == (200_000, problem.target.numel())
    error = values.std(0) / math.sqrt(x.shape[0])
    assert ((values.mean(0) - problem.target).abs() < 5 * error).all()
    log_p = problem.log_prob(x)
    assert abs(-log_p.mean().item() - problem.entropy) < 5 * log_p.std().item() / math.sqrt(x.shape[0]) + 1e-4
    # log p(x) - θᵀT(x) is the same constant -A for every x: p is in the exponential family of T
    residual = log_p - values @ problem.parameters
    assert (residual - residual.mean()).abs().max() < 1e-6 * (1 + values.abs().max().item())


def test_one_dimensional_answers_integrate_to_one():
    for name in ("asymmetric-bimodal-1d",):
        x = torch.linspace(-8, 8, 160_001, dtype=DOUBLE)[:, None]
        mass = torch.trapezoid(heldout_problem(name).log_prob(x).exp(), x[:, 0]).item()
        assert mass == pytest.approx(1.0, abs=1e-8)
    y = torch.linspace(1e-9, 1 - 1e-9, 200_001, dtype=DOUBLE)[:, None]
    assert torch.trapezoid(heldout_problem("beta-bounded").log_prob(y).exp(), y[:, 0]).item() == pytest.approx(
        1.0, abs=1e-3
    )


def test_the_suite_is_disjoint_from_the_development_problems():
    development = [dirichlet_problem(), bimodal_problem(1), bimodal_problem(2)]
    for name in HELDOUT:
        problem = heldout_problem(name)
        for other in development:
            assert problem.name != other.name
            same_shape = problem.target.shape == other.target.shape
            assert not (same_shape and torch.allclose(problem.target, other.target, rtol=1e-3))


def test_the_protocol_flow_is_the_default_build_flow():
    flow = heldout_flow("gaussian-3d", seed=0)
    assert flow_base(flow).num_components == 32
    couplings = [layer for layer in transform_layers(flow_transform(flow)) if hasattr(layer, "tail_bound")]
    assert len(couplings) == 4
    assert flow.sample(5).shape == (5, 3)
    assert heldout_flow("dirichlet-4", seed=0).sample(5).sum(-1).lt(1).all()  # on the simplex
    with pytest.raises(ValueError, match="unknown held-out problem 'slcp'"):
        heldout_problem("slcp")


def test_the_validation_run_works_end_to_end_with_smoke_settings(tmp_path):
    rows = maxent_heldout.main(["--quick", "--problems", "beta-bounded", "mixed-scales-2d", "--out", str(tmp_path)])
    assert [row["problem"] for row in rows] == ["beta-bounded", "mixed-scales-2d"]
    assert all(row["steps_taken"] == 4 and math.isfinite(row["entropy_gap"]) for row in rows)
    text = (tmp_path / "maxent_heldout_quick.md").read_text()
    assert "| beta-bounded | 0 |" in text and "not on: beta-bounded, mixed-scales-2d" in text


def test_the_row_measures_the_delivered_flow_on_the_studys_own_samples():
    """H(q), its standard error and the violations come from `eval_samples` fresh samples (seeded 10 000 + seed),
    not from fit_maxent's own 2¹⁵: recomputed here from the same samples they agree to rounding."""
    problem = heldout_problem("beta-bounded")
    flow = heldout_flow("beta-bounded", seed=0)
    settings = dict(epoch_steps=2, batch_size=16, test_batches=2)
    row, result = maxent_heldout.fit_and_measure(flow, problem, steps=4, seed=0, eval_samples=4096, **settings)
    torch.manual_seed(10_000)
    with torch.no_grad():
        x = flow.sample(4096)
        log_q = flow.log_prob(x).double()
        violation = (problem.statistic(x.double()).mean(0) - problem.target) / result.scale.double()
    assert row["eval_samples"] == 4096
    assert row["entropy"] == pytest.approx(-log_q.mean().item(), rel=1e-12)
    assert row["entropy_std_error"] == pytest.approx(log_q.std().item() / 64, rel=1e-12)
    assert row["entropy_gap"] == pytest.approx(abs(row["entropy"] - problem.entropy), rel=1e-12)
    assert row["max_standardized_violation"] == pytest.approx(violation.abs().max().item(), rel=1e-12)
    assert row["entropy"] != result.entropy  # fit_maxent measures its own 2¹⁵ samples

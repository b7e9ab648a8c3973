"""Tests of `mog_flows.studies.kernel_costs`: the sampler against p's moments, the common start shared with EM,
the ML objective against the library's log-likelihood, the implied weights, that no cost prefers centres on data
points to p in the study's setting, that every method improves on the start on an easy case, and the study end to
end with --quick settings (its report follows from its csv, as the committed one does)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from mog_flows import kernels
from mog_flows.initialization import mixture_log_likelihood
from mog_flows.studies import kernel_costs as kc

DOUBLE = torch.float64
RESULTS = Path(__file__).parents[2] / "experiments" / "results"


@pytest.mark.parametrize("problem", sorted(kc.PROBLEMS))
def test_draws_match_the_moments_of_p(problem):
    p = kc.true_parameters(problem)
    x = kc.sample(p, 200_000, torch.Generator().manual_seed(0))
    mean = (p["weights"][:, None] * p["means"]).sum(0)
    second = (p["weights"][:, None, None] * (p["covariances"] + p["means"][:, :, None] * p["means"][:, None, :])).sum(0)
    covariance = second - mean[:, None] * mean[None, :]
    torch.testing.assert_close(x.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(x.T).reshape(covariance.shape), covariance, atol=0.05, rtol=0.02)


def test_the_common_start_is_em_with_no_iterations_and_the_draws_do_not_depend_on_the_method():
    spec = kc.KernelCostSpec("blobs2d", 3, 4, "init", n_train=200, n_test=100)
    start = kc.run_spec(spec)
    em0 = kc.run_spec(kc.KernelCostSpec("blobs2d", 3, 4, "em", n_train=200, n_test=100, em_iterations=0))
    assert em0["l2"] == start["l2"] and em0["means"] == start["means"] and em0["nll"] == start["nll"]
    em = kc.run_spec(kc.KernelCostSpec("blobs2d", 3, 4, "em", n_train=200, n_test=100, em_iterations=20))
    assert em["train_nll"] < start["train_nll"]
    train, test = kc._draws(spec)
    again, _ = kc._draws(kc.KernelCostSpec("blobs2d", 3, 4, "nuclear_norm", n_train=200, n_test=100))
    assert torch.equal(train, again) and train.shape == (200, 2) and test.shape == (100, 2)


def test_the_ml_objective_is_the_exact_log_likelihood():
    p = kc.true_parameters("blobs2d")
    x = kc.sample(p, 500, torch.Generator().manual_seed(1))
    ours = torch.logsumexp(kc._log_joint(x, p), dim=-1).mean().item()
    assert ours == pytest.approx(
        mixture_log_likelihood(x, p["weights"], p["means"], p["covariances"], "full"), abs=1e-12
    )


def test_implied_weights_are_a_better_l2_fit_of_the_kernel_estimate_than_uniform_weights():
    p = kc.true_parameters("blobs2d")
    x = kc.sample(p, 400, torch.Generator().manual_seed(2))
    s = kc.cross_validated_variance(x)
    weights, clipped = kc.implied_weights(p, x, s)
    assert clipped == 0.0 and (weights > 0).all() and weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    q = kc._kde(x, s)
    uniform = {**p, "weights": torch.full((3,), 1 / 3, dtype=DOUBLE)}
    assert kernels.l2_distance({**p, "weights": weights}, q) < kernels.l2_distance(uniform, q)
    assert (weights - p["weights"]).abs().max() < 0.1  # near p's weights: the centres are p's


def test_the_cross_validated_bandwidth_is_smaller_than_silvermans_on_multimodal_draws():
    x = kc.sample(kc.true_parameters("blobs2d"), 300, torch.Generator().manual_seed(0))
    s = kc.cross_validated_variance(x)
    assert 0.05 * kc.silverman_variance(x) < s < 0.5 * kc.silverman_variance(x)


@pytest.mark.parametrize("problem", sorted(kc.PROBLEMS))
@pytest.mark.parametrize("name", list(kc.COSTS))
def test_no_cost_prefers_centres_on_data_points_to_p_in_the_study_setting(problem, name):
    # the normalisation check: a cost that is optimal whenever the centres sit on data points does not
    # measure density fit. With the study's bandwidth each cost scores p better than K data points taken as
    # centres, narrow or as wide as the data kernels.
    cost = kc.COSTS[name]
    p = kc.true_parameters(problem)
    x, _ = kc._draws(kc.KernelCostSpec(problem, 3, 0, name))
    s = kc.cross_validated_variance(x)
    at_truth = cost(p, x, data_variance=s).item()
    d = x.shape[1]
    for variance in (1e-4, s):
        points = {
            "weights": p["weights"],
            "means": x[:3],
            "covariances": variance * torch.eye(d, dtype=DOUBLE).expand(3, d, d),
        }
        assert cost(points, x, data_variance=s).item() > at_truth + 0.05


def test_every_method_improves_on_the_start_on_an_easy_case():
    # blobs2d with the truth's K: k-means++ leaves the start far from p (L2 0.094 at seed 0)
    rows = {
        method: kc.run_spec(kc.KernelCostSpec("blobs2d", 3, 0, method, n_test=500, steps=150, em_iterations=50))
        for method in kc.METHODS
    }
    for method in kc.FITTED:
        assert rows[method]["l2"] < 0.7 * rows["init"]["l2"], method
        if method not in ("em",):
            assert rows[method]["objective_last"] < rows[method]["objective_first"]
            assert rows[method]["steps"] == 150
    assert rows["ml"]["nll"] < rows["init"]["nll"] and rows["em"]["nll"] < rows["init"]["nll"]


@pytest.mark.slow
def test_maximum_likelihood_by_adam_reaches_em_on_the_full_settings():
    ml = kc.run_spec(kc.KernelCostSpec("blobs2d", 3, 0, "ml"))
    em = kc.run_spec(kc.KernelCostSpec("blobs2d", 3, 0, "em"))
    assert ml["train_nll"] == pytest.approx(em["train_nll"], abs=2e-3)


def test_the_study_runs_end_to_end_with_quick_settings(tmp_path, capsys):
    rows = kc.main(["--quick", "--out", str(tmp_path)])
    capsys.readouterr()
    text = (tmp_path / "kernel_costs_quick.md").read_text()
    assert "python experiments/kernel_costs.py --quick`" in text
    assert (
        "## blobs2d, K = 3" in text and "## Bandwidth sweep" in text and "## Verdict on 'the SVD cost is best'" in text
    )
    main_rows = len(kc.CONFIGS) * 2 * len(kc.METHODS)
    assert len(rows) == main_rows + len(kc.SWEEP_CONFIGS) * 2 * len(kc.BANDWIDTHS) * (1 + len(kc.COSTS))
    assert all(math.isfinite(r["l2"]) and r["l2"] >= 0 and math.isfinite(r["nll"]) for r in rows)
    assert (tmp_path / "kernel_costs_quick.csv").exists() and (tmp_path / "kernel_costs_quick.png").stat().st_size > 0
    kc.main(["--quick", "--report-only", "--out", str(tmp_path)])
    capsys.readouterr()
    assert (tmp_path / "kernel_costs_quick.md").read_text() == text


@pytest.mark.skipif(not (RESULTS / "kernel_costs.csv").exists(), reason="no committed kernel_costs results")
def test_the_committed_report_follows_from_its_rows(tmp_path, capsys):
    shutil.copy(RESULTS / "kernel_costs.csv", tmp_path / "kernel_costs.csv")
    kc.main(["--report-only", "--out", str(tmp_path)])
    capsys.readouterr()
    assert (tmp_path / "kernel_costs.md").read_text() == (RESULTS / "kernel_costs.md").read_text()

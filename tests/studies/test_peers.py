"""Tests of `mog_flows.studies.peers`: every peer adapter builds, trains under `fit`, scores and samples with the
right shapes, has a normalised density on 2-D, and meets the parameter budget; a missing package is named.

Shapes: D features, N rows, K components. Tiny models throughout (seconds).
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
import torch

from mog_flows import fit
from mog_flows.studies import peers
from mog_flows.studies.budgets import count_parameters

TINY = dict(hidden_features=8, num_layers=2, num_components=4)


def needs(name: str) -> None:
    """Skip when the peer's package is not installed. glasflow is an nflows Distribution only when imported
    with GLASFLOW_USE_NFLOWS=True (the builder sets it for its import; a plain first import here would not)."""
    package = peers.PEER_PACKAGES[name]
    if package != "glasflow" or "glasflow" in sys.modules:
        pytest.importorskip(package)
        return
    previous = os.environ.get("GLASFLOW_USE_NFLOWS")
    os.environ["GLASFLOW_USE_NFLOWS"] = "True"
    try:
        pytest.importorskip(package)
    finally:
        if previous is None:
            del os.environ["GLASFLOW_USE_NFLOWS"]
        else:
            os.environ["GLASFLOW_USE_NFLOWS"] = previous


def two_blobs(n: int = 400, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = 0.5 * torch.randn(n, 2, generator=generator)
    x[: n // 2] += 1.5
    x[n // 2 :] -= 1.5
    return x


@pytest.mark.parametrize("name", list(peers.PEERS))
def test_peer_builds_trains_scores_and_samples(name):
    needs(name)
    torch.manual_seed(0)
    x = two_blobs()
    model = peers.build_peer(name, 2, data=x, **TINY)
    assert isinstance(model, torch.nn.Module) and model.features == 2
    before = {key: p.detach().clone() for key, p in model.named_parameters() if p.requires_grad}
    history = fit(model, x, steps=5, batch_size=64, progress=False, device="cpu")
    assert len(history.train_loss) == 5 and all(math.isfinite(loss) for loss in history.train_loss)
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[key], after[key].detach()) for key in before)
    with torch.no_grad():
        log_p = model.log_prob(x[:17])
        samples = model.sample(11)
    assert log_p.shape == (17,) and torch.isfinite(log_p).all()
    assert samples.shape == (11, 2) and torch.isfinite(samples).all()


@pytest.mark.parametrize("name", list(peers.PEERS))
def test_peer_density_integrates_to_one_on_2d(name):
    """exp(log_prob) of a briefly trained tiny model, summed over a midpoint grid on [-6, 6]², is 1 within 0.02.
    glasflow's resampled base is exactly normalised for the exact Z = E[a(z)]; `finish_peer` estimates Z by
    Monte Carlo (10^6 draws, relative error ~1e-3), so the same tolerance holds."""
    needs(name)
    torch.manual_seed(1)
    x = two_blobs(seed=1)
    model = peers.build_peer(name, 2, data=x, **TINY)
    fit(model, x, steps=30, batch_size=128, lr=3e-3, progress=False, device="cpu")
    peers.finish_peer(model, name)
    cells = 240
    width = 12.0 / cells
    centres = torch.linspace(-6 + width / 2, 6 - width / 2, cells)
    grid = torch.cartesian_prod(centres, centres)
    model.eval()
    with torch.no_grad():
        log_p = model.log_prob(grid).double()
    assert torch.isfinite(log_p).all()
    mass = float(log_p.exp().sum() * width**2)
    assert mass == pytest.approx(1.0, abs=0.02)


def test_normflows_build_repeats_under_a_torch_seed_and_leaves_numpy_alone():
    needs("normflows_nsf_gmm")
    state = np.random.get_state()[1].copy()
    torch.manual_seed(3)
    first = peers.build_peer("normflows_nsf_gmm", 2, **TINY).state_dict()
    torch.manual_seed(3)
    second = peers.build_peer("normflows_nsf_gmm", 2, **TINY).state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert np.array_equal(np.random.get_state()[1], state)
    assert all(p.dtype == torch.get_default_dtype() for p in first.values() if p.is_floating_point())


def test_zuko_gmm_is_initialised_from_the_data_under_the_transform():
    needs("zuko_nsf_gmm")
    torch.manual_seed(0)
    x = two_blobs()
    initialised = peers.build_peer("zuko_nsf_gmm", 2, data=x, **TINY)
    torch.manual_seed(0)
    plain = peers.build_peer("zuko_nsf_gmm", 2, **TINY)
    with torch.no_grad():
        assert initialised.log_prob(x).mean() > plain.log_prob(x).mean() + 0.5
    assert initialised.initialization.startswith("kmeans") and plain.initialization is None
    with pytest.raises(ValueError, match="more data points than components"):
        peers.build_peer("zuko_nsf_gmm", 2, data=x[:4], **TINY)


def test_zuko_gmm_initialisation_retries_and_then_says_why_it_failed():
    """zuko's full-covariance initialiser fails on clusters of one or two points: 100 points for 32 components
    fail on every try (measured), 1000 points on some kmeans++ draws, which the retries get past."""
    needs("zuko_nsf_gmm")
    torch.manual_seed(1)
    model = peers.build_peer("zuko_nsf_gmm", 2, data=torch.randn(1000, 2), num_layers=1, hidden_features=8)
    assert model.initialization.startswith("kmeans")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="failed on all 10 tries.*use more data or fewer components"):
        peers.build_peer("zuko_nsf_gmm", 2, data=torch.randn(100, 2), num_layers=1, hidden_features=8)


def test_nflows_mademog_zero_context_adds_no_trainable_parameters():
    needs("nflows_maf_mog")
    from nflows.distributions import MADEMoG

    model = peers.build_peer("nflows_maf_mog", 3, **TINY)
    unconditional = MADEMoG(3, TINY["hidden_features"], None, num_mixture_components=TINY["num_components"])
    assert count_parameters(model) == count_parameters(model.transform) + count_parameters(unconditional)


def test_builders_refuse_bad_sizes_and_data():
    needs("nflows_maf_mog")
    with pytest.raises(ValueError, match="hidden_features must be a positive integer"):
        peers.build_peer("nflows_maf_mog", 2, hidden_features=0)
    with pytest.raises(ValueError, match=r"data must have shape \(N, 2\)"):
        peers.build_peer("nflows_maf_mog", 2, data=torch.zeros(10, 3), **TINY)
    with pytest.raises(ValueError, match="unknown peer 'flowjax'"):
        peers.build_peer("flowjax", 2)
    if "normflows" in sys.modules or peers.peer_versions()["normflows"]:
        with pytest.raises(ValueError, match="needs features >= 2"):
            peers.build_peer("normflows_nsf_gmm", 1, **TINY)


@pytest.mark.parametrize("name", list(peers.PEERS))
def test_matched_peer_is_the_narrowest_width_at_the_default_budget_and_within_5_percent_on_2d(name):
    needs(name)
    state = torch.random.get_rng_state()
    match = peers.matched_peer(name, 2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert match.budget == peers.default_budget(2)
    assert match.below < match.budget <= match.parameters
    rebuilt = peers.build_peer(name, 2, hidden_features=match.hidden_features)
    assert count_parameters(rebuilt) == match.parameters
    assert match.relative_difference == pytest.approx((match.parameters - match.budget) / match.budget)
    assert match.within_tolerance  # at D = 2 one step of width is well under 5 % of ~73 000 parameters


def test_matched_peer_reports_a_budget_it_cannot_meet():
    needs("nflows_maf_mog")
    match = peers.matched_peer("nflows_maf_mog", 2, budget=10)
    assert match.hidden_features == 1 and match.below is None
    assert match.parameters > 10 * 1.05 and not match.within_tolerance
    assert match.relative_difference == pytest.approx(match.parameters / 10 - 1)


@pytest.mark.parametrize("name", list(peers.PEERS))
def test_a_missing_package_names_the_pip_package_and_the_bench_extra(name, monkeypatch):
    package = peers.PEER_PACKAGES[name]
    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(ImportError, match=rf"needs the package '{package}'.*pip install {package}.*\[bench\]"):
        peers.build_peer(name, 2, **TINY)


def test_peer_versions_names_every_package():
    versions = peers.peer_versions()
    assert set(versions) == {"torch", *peers.PEER_PACKAGES.values()}
    assert versions["torch"] == torch.__version__


def test_budget_table_lists_every_peer():
    table = peers.budget_table(2)
    assert f"budget = {peers.default_budget(2)}" in table
    assert all(name in table for name in peers.PEERS)

"""Tests of `mog_flows.studies.stimper`: their Real NVP against normflows' own flow, the budgets of ours, and the
study end to end with --quick settings (skipped without normflows and glasflow)."""

from __future__ import annotations

import csv
import importlib.util
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("normflows", reason="the Stimper study needs normflows (pip install normflows)")
if importlib.util.find_spec("glasflow") is None:  # not imported here: glasflow must first be imported with nflows
    pytest.skip("the Stimper study's resampled base needs glasflow (pip install glasflow)", allow_module_level=True)

from mog_flows.studies import stimper  # noqa: E402
from mog_flows.studies.budgets import count_parameters  # noqa: E402
from mog_flows.studies.stimper import (  # noqa: E402
    QUICK,
    StimperSpec,
    build_our_model,
    build_protocol_model,
    train_protocol,
)

ROOT = Path(__file__).parents[2]
TINY = {key: value for key, value in QUICK.items() if key != "seeds"}


@pytest.mark.parametrize("model", stimper.THEIRS)
def test_protocol_flow_is_normflows_flow(model):
    import normflows as nf

    flow = build_protocol_model(StimperSpec("stimper_rings", model, **TINY))
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    flow.log_prob(x)  # ActNorm initialises itself on the first batch
    flow.eval()
    reference = nf.NormalizingFlow(flow.base, list(flow.flows))
    torch.testing.assert_close(flow.log_prob(x), reference.log_prob(x))
    samples = flow.sample(10)
    assert samples.shape == (10, 2) and torch.isfinite(samples).all()


def test_their_models_have_the_published_sizes():
    counts = {m: count_parameters(build_protocol_model(StimperSpec("stimper_rings", m))) for m in stimper.THEIRS}
    # 8 blocks × (MLP 1-32-32-2: 1186, ActNorm: 4); + 10 × (2 + 2) + 10 for the GMM; + MLP 2-256-256-1 for resampling
    assert counts == {"realnvp_gaussian": 9520, "realnvp_gmm": 9570, "realnvp_resampled": 9520 + 66817}


@pytest.mark.parametrize("model", stimper.OURS)
def test_ours_has_their_gmm_models_budget_within_five_percent(model):
    flow, width, budget = build_our_model(StimperSpec("stimper_circular_gmm", model))
    assert budget == 9570 and abs(count_parameters(flow) / budget - 1) <= 0.05
    assert flow._distribution.mixture_parameters()["weights"].shape == (32,)


def test_train_protocol_takes_adam_steps_on_fresh_samples():
    from mog_flows.datasets import get_dataset

    spec = StimperSpec("stimper_circular_gmm", "realnvp_gmm", **{**TINY, "steps": 5})
    flow = build_protocol_model(spec)
    before = [p.detach().clone() for p in flow.parameters()]
    seconds, skipped = train_protocol(flow, get_dataset(spec.dataset), spec)
    assert seconds > 0 and skipped == 0
    assert any(not torch.equal(b, p) for b, p in zip(before, flow.parameters()))
    again = build_protocol_model(spec)
    train_protocol(again, get_dataset(spec.dataset), spec)
    for a, b in zip(flow.parameters(), again.parameters()):  # seeded: the same run twice
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_spec_checks_its_fields():
    with pytest.raises(ValueError, match="dataset must be one of"):
        StimperSpec("moons", "ours_nsf")
    with pytest.raises(ValueError, match="model must be one of"):
        StimperSpec("stimper_rings", "maf")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        StimperSpec("stimper_rings", "ours_nsf", steps=0)
    spec = StimperSpec("stimper_rings", "ours_nsf")
    assert stimper.spec_key(spec) != stimper.spec_key(replace(spec, seed=1))


def test_quick_study_writes_its_report_and_resumes(tmp_path):
    args = ["--quick", "--datasets", "stimper_rings", "--out", str(tmp_path)]
    subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "stimper_problems.py"), *args],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    text = (tmp_path / "stimper_problems_quick.md").read_text()
    assert "python experiments/stimper_problems.py --quick --datasets stimper_rings" in text
    assert "could not be read" in text and "## Ours against every base of their protocol" in text
    with open(tmp_path / "stimper_problems_quick.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["model"] for row in rows] == list(stimper.MODELS)
    for row in rows:
        assert row["error"] == "" and math.isfinite(float(row["grid_kl"])) and float(row["grid_kl"]) >= 0
        assert 0.5 < float(row["grid_mass"]) < 1.05
    # the same command again reads every row from the cache: the same numbers, no training
    again = stimper.main(args)
    assert [f"{row['grid_kl']:.8g}" for row in again] == [row["grid_kl"] for row in rows]

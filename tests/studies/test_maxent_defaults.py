"""Tests of `mog_flows.studies.maxent_defaults`: the studies' problems with fit_maxent's defaults only."""

from __future__ import annotations

import math

import pytest

from mog_flows.nflows_adapters import flow_base
from mog_flows.studies import maxent_defaults
from mog_flows.studies.maxent_defaults import PROBLEMS, defaults_flow, defaults_problem, meets


def test_the_problems_are_the_studies_own_unwhitened():
    dirichlet = defaults_problem("dirichlet")
    assert dirichlet.features == 2 and dirichlet.target.shape == (3,)
    bimodal = defaults_problem("bimodal-2d")
    assert bimodal.target.tolist() == pytest.approx([2.0, 2.0, 4.6, 4.6])  # as a user writes them
    assert set(PROBLEMS) == {"dirichlet", "bimodal-1d", "bimodal-2d"}
    with pytest.raises(ValueError, match="unknown problem 'slcp'"):
        defaults_problem("slcp")


def test_the_flows_are_build_flows_defaults():
    flow = defaults_flow("bimodal-2d", seed=0)
    assert flow_base(flow).num_components == 32
    assert defaults_flow("dirichlet", seed=0).sample(5).sum(-1).lt(1).all()  # on the simplex


def test_the_targets_are_the_studies():
    row = dict(problem="dirichlet", entropy_gap=0.009, kl=0.0099)
    assert meets(row) and not meets({**row, "entropy_gap": 0.011}) and not meets({**row, "kl": 0.011})
    assert meets(dict(problem="bimodal-2d", entropy_gap=0.5, kl=0.019))  # no entropy target there
    assert not meets(dict(problem="bimodal-1d", entropy_gap=0.0, kl=0.021))


def test_the_run_works_end_to_end_with_smoke_settings(tmp_path):
    rows = maxent_defaults.main(["--quick", "--problems", "dirichlet", "bimodal-1d", "--out", str(tmp_path)])
    assert [row["problem"] for row in rows] == ["dirichlet", "bimodal-1d"]
    assert all(row["steps_taken"] == 4 and math.isfinite(row["kl"]) for row in rows)
    text = (tmp_path / "maxent_defaults_quick.md").read_text()
    assert "| dirichlet | 0 |" in text and "not on: dirichlet, bimodal-1d" in text
    assert "python experiments/maxent_defaults.py --quick --problems dirichlet bimodal-1d" in text

"""Tests of `mog_flows.studies.maxent_tuning`: the sweep runs end to end with smoke settings, stays on the
development problems, and its chosen candidate is what `fit_maxent` does by default."""

from __future__ import annotations

import inspect
import math

from mog_flows.maxent import FINAL_LR_RATIO, PENALTY_CAP_RATIO, fit_maxent
from mog_flows.studies import maxent_tuning
from mog_flows.studies.maxent_heldout import HELDOUT, heldout_problem
from mog_flows.studies.maxent_tuning import CANDIDATES, CHOSEN, DEVELOPMENT, development_problem


def test_fit_maxent_s_defaults_are_the_chosen_candidate():
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(fit_maxent).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    chosen = dict(CANDIDATES[CHOSEN])
    assert chosen.pop("estimator") == "pathwise" and defaults["estimator"] == "auto"  # "auto": exact -> pathwise
    assert chosen.pop("final_lr") == defaults["lr"] / FINAL_LR_RATIO and defaults["final_lr"] == "auto"
    assert chosen.pop("max_penalty") == PENALTY_CAP_RATIO * defaults["penalty"] and defaults["max_penalty"] == "auto"
    for name, value in chosen.items():
        assert defaults[name] == value, name


def test_the_sweep_never_touches_a_held_out_problem():
    development = {development_problem(name).name for name in DEVELOPMENT}
    assert not development & {heldout_problem(name).name for name in HELDOUT}


def test_the_sweep_runs_end_to_end_with_smoke_settings(tmp_path):
    rows = maxent_tuning.main(
        ["--quick", "--candidates", "paper", CHOSEN, "--problems", "bimodal-1d", "--out", str(tmp_path)]
    )
    assert [(row["candidate"], row["problem"]) for row in rows] == [("paper", "bimodal-1d"), (CHOSEN, "bimodal-1d")]
    assert all(row["steps_taken"] == 4 and math.isfinite(row["entropy_gap"]) for row in rows)
    text = (tmp_path / "maxent_tuning_quick.md").read_text()
    assert f"python experiments/maxent_tuning.py --quick --candidates paper {CHOSEN} --problems bimodal-1d" in text
    assert "| paper | 0/1 |" in text

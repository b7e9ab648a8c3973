"""Tests of `mog_flows.studies.maxent`: the per-problem settings reach `fit_maxent`, the orthant-mass check, and the
reductions over seeds (the script itself runs end to end in tests/test_experiments.py)."""

import dataclasses
import math

import pytest
import torch

from mog_flows.studies import maxent
from mog_flows.studies.maxent import largest_orthant_mass


def testlargest_orthant_mass_counts_sign_patterns():
    class Points:  # "samples" cycling through 3 points in the (+, +) orthant and 1 in (-, +)
        def sample(self, n):
            pattern = torch.tensor([[1.0, 2.0], [0.5, 0.1], [3.0, 1.0], [-1.0, 1.0]])
            return pattern.repeat(n // 4 + 1, 1)[:n]

    assert largest_orthant_mass(Points(), 400, chunk=64) == 0.75


def test_maxent_study_settings_per_problem_reach_fit_maxent(monkeypatch):
    specs = {(s.study, s.problem): s for s in maxent.make_specs("full", seeds=1)}
    for problem in ("dirichlet", "bimodal-1d", "bimodal-2d"):
        spec = specs[("dirichlet" if problem == "dirichlet" else "bimodal", problem)]
        assert (spec.steps, spec.layers, spec.components) == tuple(
            table[problem] for table in (maxent.STEPS, maxent.LAYERS, maxent.COMPONENTS)
        )
        assert spec.max_penalty == maxent.MAX_PENALTY.get(problem)
    # a spec's cap and depth are what the run uses
    smoke = next(s for s in maxent.make_specs("smoke") if s.problem == "bimodal-2d" and s.base == "mog")
    spec = dataclasses.replace(smoke, max_penalty=3.0, layers=2)
    seen = {}
    real = maxent.fit_maxent

    def spy(flow, *args, **kwargs):
        seen["max_penalty"] = kwargs["max_penalty"]
        seen["layers"] = sum("Coupling" in type(m).__name__ for m in flow.modules())
        return real(flow, *args, **kwargs)

    monkeypatch.setattr(maxent, "fit_maxent", spy)
    maxent.run_one(spec)
    assert seen == {"max_penalty": 3.0, "layers": 2}


def test_summaries_follow_the_shared_mean_std_convention():
    spec = maxent.make_specs("smoke")[0]
    row = {**dataclasses.asdict(spec), "label": spec.label, "parameters": 10, "true_entropy": 1.0}
    metrics = ("kl", "entropy", "entropy_gap", "max_violation", "entropy_bias", "grad_var_init", "grad_var_final")
    metrics += ("seconds_per_step", "steps_taken", "mmd2", "mmd_p", "largest_orthant_mass")
    rows = [{**row, **dict.fromkeys(metrics, 0.5), "seed": seed} for seed in range(3)]
    rows[1]["kl"], rows[2]["kl"] = 0.7, 0.9
    rows[2]["mmd_p"] = math.nan  # a NaN seed makes the summary NaN instead of being dropped
    (entry,) = maxent.summarize(rows)
    assert entry["seeds"] == 3 and entry["kl"] == pytest.approx(0.7) and entry["kl_std"] == pytest.approx(0.2)
    assert math.isnan(entry["mmd_p"]) and math.isnan(entry["mmd_p_std"])
    (one,) = maxent.summarize(rows[:1])
    assert one["kl"] == 0.5 and math.isnan(one["kl_std"])  # one seed: no spread
    assert (
        maxent.markdown_tables({"estimators": [one]})["estimators"]
        .splitlines()[2]
        .startswith(f"| {spec.label} | 0.5000 |")
    )

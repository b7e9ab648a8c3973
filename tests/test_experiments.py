"""Experiment scripts and notebooks run end to end with tiny settings (as pyro's test_examples.py does)."""

import csv
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mog_flows.studies.maxent as maxent_study
from mog_flows.studies.maxent import _largest_orthant_mass

ROOT = Path(__file__).resolve().parents[1]


def run_script(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, check=True, capture_output=True, text=True)


def test_benchmark_quick_runs(tmp_path):
    script = ROOT / "benchmarks" / "bench_mixture.py"
    if not script.exists():
        pytest.fail("benchmarks/bench_mixture.py is missing")
    run_script(script, "--quick", "--out", tmp_path)
    table = (tmp_path / "bench_mixture.md").read_text()
    assert "| mog_flows |" in table and "| torch |" in table


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_runs_with_smoke_settings(notebook):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(notebook, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
        "commit notebooks without outputs"
    )
    os.environ.setdefault("SMOKE_TEST", "1")
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(notebook.parent)}}
    ).execute()


def test_maxent_experiment_runs_with_smoke_settings(tmp_path):
    run_script(ROOT / "experiments" / "maxent.py", "--smoke", "--out", tmp_path)
    summary = (tmp_path / "maxent.md").read_text()
    for heading in ("## a. Dirichlet", "## b. Bimodal", "## c. Estimators", "## Targets"):
        assert heading in summary
    # every target is checked from the numbers; tiny runs miss them, and the table says so
    assert "NOT met" in summary
    for study in ("dirichlet", "bimodal", "estimators"):
        assert (tmp_path / f"maxent_{study}.csv").exists() and (tmp_path / f"maxent_{study}.md").exists()
    estimators = (tmp_path / "maxent_estimators.csv").read_text().splitlines()
    assert len(estimators) == 1 + 3 + 4 * 3  # header, τ-free runs, (nested M=8, exact, joint) × 4 temperatures
    assert (tmp_path / "maxent_estimators.png").exists() and (tmp_path / "maxent_bimodal.png").exists()
    assert not (tmp_path / ".maxent_cache").exists()  # removed once every row is in the files
    # seeded: a second call (workers in another order) gives the same numbers; only the timings differ
    first = list(csv.DictReader(open(tmp_path / "maxent_estimators.csv")))
    run_script(ROOT / "experiments" / "maxent.py", "--smoke", "--workers", "1", "--out", tmp_path)
    second = list(csv.DictReader(open(tmp_path / "maxent_estimators.csv")))
    for name in ("label", "seed", "kl", "entropy", "entropy_bias", "violation", "grad_var_init"):
        assert [row[name] for row in second] == [row[name] for row in first], name


def test_largest_orthant_mass_counts_sign_patterns():
    class Points:  # "samples" cycling through 3 points in the (+, +) orthant and 1 in (-, +)
        def sample(self, n):
            pattern = torch.tensor([[1.0, 2.0], [0.5, 0.1], [3.0, 1.0], [-1.0, 1.0]])
            return pattern.repeat(n // 4 + 1, 1)[:n]

    assert _largest_orthant_mass(Points(), 400, chunk=64) == 0.75


def test_maxent_study_settings_per_problem_reach_fit_maxent(monkeypatch):
    specs = {(s.study, s.problem): s for s in maxent_study.make_specs("full", seeds=1)}
    for problem in ("dirichlet", "bimodal-1d", "bimodal-2d"):
        spec = specs[("dirichlet" if problem == "dirichlet" else "bimodal", problem)]
        assert (spec.steps, spec.layers, spec.components) == tuple(
            table[problem] for table in (maxent_study.STEPS, maxent_study.LAYERS, maxent_study.COMPONENTS)
        )
        assert spec.max_penalty == maxent_study.MAX_PENALTY.get(problem)
    # a spec's cap and depth are what the run uses
    smoke = next(s for s in maxent_study.make_specs("smoke") if s.problem == "bimodal-2d" and s.base == "mog")
    spec = dataclasses.replace(smoke, max_penalty=3.0, layers=2)
    seen = {}
    real = maxent_study.fit_maxent

    def spy(flow, *args, **kwargs):
        seen["max_penalty"] = kwargs["max_penalty"]
        seen["layers"] = sum("Coupling" in type(m).__name__ for m in flow.modules())
        return real(flow, *args, **kwargs)

    monkeypatch.setattr(maxent_study, "fit_maxent", spy)
    maxent_study.run_one(spec)
    assert seen == {"max_penalty": 3.0, "layers": 2}

"""Experiment scripts and notebooks run end to end with tiny settings (as pyro's test_examples.py does)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_cuda_benchmark_code_path_runs_on_the_cpu(tmp_path):
    """bench_cuda.py's code path with --device cpu (the GPU rows themselves need a GPU: `make gpu-check`)."""
    run_script(ROOT / "benchmarks" / "bench_cuda.py", "--quick", "--device", "cpu", "--out", tmp_path)
    table = (tmp_path / "bench_cuda.md").read_text()
    assert "| mog_flows |" in table and "MixtureOfGaussians (K = 32, diagonal)" in table
    with open(tmp_path / "bench_cuda.csv") as file:
        assert {row["implementation"] for row in csv.DictReader(file)} >= {"mog_flows", "torch"}


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_benchmark_says_when_there_is_no_gpu(tmp_path):
    done = run_script(ROOT / "benchmarks" / "bench_cuda.py", "--out", tmp_path)
    assert "CUDA is not available" in done.stdout and not (tmp_path / "bench_cuda.md").exists()


@pytest.mark.slow
def test_compile_benchmark_quick_runs(tmp_path):
    """The compiled-step benchmark with a tiny flow and the aot_eager backend (no code generation; still ~30 s of
    tracing and timing on a loaded 2-core machine: slow)."""
    done = run_script(ROOT / "benchmarks" / "bench_compile.py", "--quick", "--backends", "aot_eager", "--out", tmp_path)
    table = (tmp_path / "bench_compile.md").read_text()
    assert "| cpu | mog | eager |" in table and "| cpu | mog | compiled | aot_eager |" in table
    assert "cuda: skipped" in table or "| cuda" in table
    assert "compiled/eager steps per second" in done.stdout
    with open(tmp_path / "bench_compile.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["mode"] for row in rows if row["device"] == "cpu"] == ["eager", "compiled"]
    assert float(rows[1]["grad_rel_error"]) <= 1e-5  # aot_eager computes what eager code computes


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

"""Gaussian base vs mixture-of-Gaussians base: {gaussian, mog} × {nsf, maf, realnvp} × every target, equal
parameter budgets, the same data, steps and optimiser; a thin command line over `mog_flows.studies.comparison`.

Writes experiments/results/compare_bases.{md,csv,png} (the table of mean ± std over seeds, one line per run,
density heatmaps) and compare_bases_densities.npz (learned densities for the notebook); --quick writes
compare_bases_quick.*.

    python experiments/compare_bases.py --quick              # under 3 minutes on 2 CPU cores
    python experiments/compare_bases.py --workers 2          # the full run (about an hour on 2 cores)
    python experiments/compare_bases.py --smoke --out /tmp/compare   # seconds, for tests
"""

from __future__ import annotations

from pathlib import Path

from mog_flows.studies.comparison import main

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    main(default_out=RESULTS)

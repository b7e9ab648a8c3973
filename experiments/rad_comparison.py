"""RAD vs MoG-base NSF vs Gaussian-base NSF on the 2-D targets (the RAD paper's problems and the zoo), equal parameter
budgets, the same data, steps and optimiser; a thin command line over `mog_flows.studies.rad`.

Writes experiments/results/rad_comparison.{md,csv,png} (the table of mean ± std over seeds with the target checked,
one line per run, densities and samples) and rad_comparison_{densities,samples}.npz for the notebook; --quick writes
rad_comparison_quick.* with tiny settings.

    python experiments/rad_comparison.py --workers 1          # the full run: 7 targets × 3 models × 3 seeds
    python experiments/rad_comparison.py --quick --out /tmp/rad   # seconds, for tests
"""

from __future__ import annotations

from pathlib import Path

from mog_flows.studies.rad import main

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    main(default_out=RESULTS)

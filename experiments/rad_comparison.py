"""RAD (K = 1, 3, 5 pieces) against Real NVP and NSF flows with a Gaussian or a mixture-of-Gaussians base on the 2-D
targets, equal parameter budgets (±5 %), the same data, steps and optimiser, each model at its own learning rate; a
thin command line over `mog_flows.studies.rad`.

First the learning rates, on the held-out seed 100 (writes experiments/results/rad_comparison_lr.{md,csv}; the chosen
values are then frozen in `mog_flows.studies.rad.LEARNING_RATES`), then the study on seeds 0, 1, 2 (writes
rad_comparison.{md,csv,png}, rad_comparison_partition.png and rad_comparison_{densities,samples,points,pieces}.npz);
--quick writes rad_comparison_quick* with tiny settings.

    python experiments/rad_comparison.py --select-lr --workers 2   # 7 models x 3 lrs x 2 targets, seed 100
    python experiments/rad_comparison.py --workers 2               # the full run: targets x 7 models x 3 seeds
    python experiments/rad_comparison.py --quick --out /tmp/rad    # seconds, for tests
"""

from __future__ import annotations

from pathlib import Path

from mog_flows.studies.rad import main

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    main(default_out=RESULTS)

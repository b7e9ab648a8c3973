"""Conditional densities with exact references: Bishop's inverse problem (MDN against conditional flows over a
mixture base and a Gaussian base) and correlated 2-D outputs (MDN full against diagonal covariances); a thin
command line over `mog_flows.studies.mdn_inverse`.

Writes experiments/results/mdn_inverse.{md,csv,png}; --quick writes mdn_inverse_quick.* with tiny settings.

    python experiments/mdn_inverse.py --workers 2                 # the full run: 3 seeds, 10 000 steps
    python experiments/mdn_inverse.py --quick --out /tmp/mdn      # seconds, for tests
"""

from __future__ import annotations

from pathlib import Path

from mog_flows.studies.mdn_inverse import main

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    main(default_out=RESULTS)

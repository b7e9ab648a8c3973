"""Neural posterior estimation (sbi's NPE) with the mixture-base flow against sbi's nsf and mdn; a thin command line
over `mog_flows.studies.sbi_posteriors`. Needs the `sbi` extra.

Writes experiments/results/sbi_posteriors.{md,csv,png}; --quick writes sbi_posteriors_quick.* with tiny settings.

    python experiments/sbi_posteriors.py --workers 2                 # the full run: 3 tasks × 3 budgets × 3 seeds
    python experiments/sbi_posteriors.py --quick --out /tmp/sbi      # seconds, for tests
"""

from __future__ import annotations

from pathlib import Path

from mog_flows.studies.sbi_posteriors import main

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    main(default_out=RESULTS)

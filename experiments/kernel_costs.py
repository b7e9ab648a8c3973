"""Kernel costs for mixture centres (seed 002): a thin command line over `mog_flows.studies.kernel_costs`. Writes
experiments/results/kernel_costs.{md,csv,png}; --quick writes kernel_costs_quick.* with tiny settings.

    python experiments/kernel_costs.py                         # the full run: 10 seeds, 3 problems (about 10 min)
    python experiments/kernel_costs.py --quick --out /tmp/kc   # seconds, for tests
    python experiments/kernel_costs.py --report-only           # the md and png again from the committed csv
"""

from __future__ import annotations

from pathlib import Path

from mog_flows.studies.kernel_costs import main

if __name__ == "__main__":
    main(default_out=Path(__file__).resolve().parent / "results")

"""`fit_maxent` with its defaults on the held-out suite (`mog_flows.studies.maxent_heldout`), 3 seeds; writes
experiments/results/maxent_heldout.{md,csv}.

    python experiments/maxent_heldout.py --workers 2
    python experiments/maxent_heldout.py --quick --out /tmp/heldout   # seconds, for tests
"""

from __future__ import annotations

from pathlib import Path

from mog_flows.studies.maxent_heldout import main

if __name__ == "__main__":
    main(default_out=Path(__file__).resolve().parent / "results")

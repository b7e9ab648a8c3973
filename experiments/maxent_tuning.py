"""The development sweep that chose `fit_maxent`'s defaults (`mog_flows.studies.maxent_tuning`): candidate settings
on the development problems, 2 seeds; writes experiments/results/maxent_tuning.{md,csv}.

    python experiments/maxent_tuning.py --workers 2
    python experiments/maxent_tuning.py --quick --out /tmp/tuning   # seconds, for tests
"""

from __future__ import annotations

from pathlib import Path

from mog_flows.studies.maxent_tuning import main

if __name__ == "__main__":
    main(default_out=Path(__file__).resolve().parent / "results")

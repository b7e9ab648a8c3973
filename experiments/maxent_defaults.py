"""The maximum-entropy studies' problems (Dirichlet(1, 2, 3), bimodal 1-D and 2-D) with `fit_maxent`'s defaults only
(`mog_flows.studies.maxent_defaults`), 3 seeds; writes experiments/results/maxent_defaults.{md,csv}.

    python experiments/maxent_defaults.py --workers 2
    python experiments/maxent_defaults.py --quick --out /tmp/defaults   # seconds, for tests
"""

from __future__ import annotations

from pathlib import Path

from mog_flows.studies.maxent_defaults import main

if __name__ == "__main__":
    main(default_out=Path(__file__).resolve().parent / "results")

"""Maximum-entropy flows with a mixture base: the MEFN Dirichlet study, the bimodal x²/x⁴ problems (1-D and 2-D)
against a Gaussian base, and the estimator study; a thin command line over `mog_flows.studies.maxent`.

Writes experiments/results/maxent.md (every table and the targets checked from the numbers) and
maxent_{dirichlet,bimodal,estimators}.{md,csv} with maxent_{bimodal,estimators}.png; --quick writes maxent_quick*.

    python experiments/maxent.py --workers 2      # the full run
    python experiments/maxent.py --quick          # a few minutes
    python experiments/maxent.py --smoke --out /tmp/maxent   # seconds, for tests
"""

from __future__ import annotations

from pathlib import Path

from mog_flows.studies.maxent import main

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    main(default_out=RESULTS, prog="python experiments/maxent.py")

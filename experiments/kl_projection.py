"""Misspecified mixtures and the KL projection (seed 004): a thin command line over
`mog_flows.studies.kl_projection`. Writes experiments/results/kl_projection.{md,csv}; --quick writes
kl_projection_quick.* with tiny settings.

    python experiments/kl_projection.py                         # the full run: n = 1e2 … 1e5, 20 seeds, K = 1, 2
    python experiments/kl_projection.py --quick --out /tmp/klp  # seconds, for tests
"""

from __future__ import annotations

from pathlib import Path

from mog_flows.studies.kl_projection import main

if __name__ == "__main__":
    main(default_out=Path(__file__).resolve().parent / "results")

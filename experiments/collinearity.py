"""Collinear labels (seed 000): an MDN trained with the seed's label-only "collinearity penalty" and with a
differentiable residual-correlation penalty, λ ∈ {0, 0.1, 1}; a thin command line over
`mog_flows.studies.collinearity`.

Writes experiments/results/collinearity.{md,csv,png}; --quick writes collinearity_quick.* with tiny settings.

    python experiments/collinearity.py                          # the full run: 5 arms × 5 seeds, 3000 steps
    python experiments/collinearity.py --quick --out /tmp/col   # seconds, for tests
"""

from __future__ import annotations

from pathlib import Path

from mog_flows.studies.collinearity import main

if __name__ == "__main__":
    main(default_out=Path(__file__).resolve().parent / "results")

"""Jensen warm-up (seed 001): an MDN trained on a Jensen bound first, then on the exact NLL, against the NLL alone,
from a hard start; a thin command line over `mog_flows.studies.jensen_warmup`.

Writes experiments/results/jensen_warmup.{md,csv,png}; --quick writes jensen_warmup_quick.* with tiny settings.

    python experiments/jensen_warmup.py                          # the full run: 5 arms × 5 seeds, 3000 steps
    python experiments/jensen_warmup.py --quick --out /tmp/jw    # seconds, for tests
"""

from __future__ import annotations

from pathlib import Path

from mog_flows.studies.jensen_warmup import main

if __name__ == "__main__":
    main(default_out=Path(__file__).resolve().parent / "results")

"""The published 2-D problems of Stimper et al. 2022 (dual moon, circle of Gaussians, two rings): their Real NVP
over a resampled, a 10-component GMM and a Gaussian base with their protocol (20 000 steps × 1024 fresh samples,
Adam 1e-3), beside our mixture-base flows at equal parameter budget; grid KL and paired KL side by side. A thin
command line over `mog_flows.studies.stimper`. Needs `normflows` and `glasflow` (the `bench` extra).

Writes experiments/results/stimper_problems.{md,csv}; --quick writes stimper_problems_quick.* with tiny settings.

    python experiments/stimper_problems.py --workers 2                 # the full run: 3 targets × 5 models × 3 seeds
    python experiments/stimper_problems.py --quick --out /tmp/stimper   # seconds, for tests
"""

from __future__ import annotations

from pathlib import Path

from mog_flows.studies.stimper import main

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    main(default_out=RESULTS)

"""The benchmark's CUDA rows: `log_prob` throughput against the peers and the training step, on a GPU.

The same measurements as `bench_mixture.py` sections 1 and 4, with the timed models and points on `--device`
(every call followed by a synchronisation): float32 `log_prob` forward and forward+backward for every
implementation at the full shapes and the three kinds of input (each checked on the CPU against scipy in float64
first), and the Adam step of a 2-D NSF over the mixture base against a Gaussian base (target: the mixture adds
≤ 10 %). Without CUDA it writes nothing and says so (exit status 0, so a CPU-only check script can call it).

Writes <out>/bench_cuda.md and <out>/bench_cuda.csv.

    python benchmarks/bench_cuda.py                 # on a machine with a GPU (a few minutes)
    python benchmarks/bench_cuda.py --quick --device cpu --out /tmp/bench   # smoke run of the code path

Shapes: N points, K components, D features.
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from pathlib import Path

import torch
from torch import distributions as td

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mixture import (  # noqa: E402  (a sibling script, not a package)
    CSV_FIELDS,
    FULL_SHAPES,
    OVERHEAD_TARGET_PERCENT,
    QUICK_SHAPES,
    RESULTS,
    markdown_table,
    row_record,
    throughput_rows,
    training_overhead,
)


def device_line(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{name}, CUDA {torch.version.cuda}, torch {torch.__version__}"
    return f"CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the device of the timed calls (default cuda)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results (quick: …/quick)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_cuda: CUDA is not available on this machine; no GPU rows were measured")
        return 0
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    td.Distribution.set_default_validate_args(False)
    repeats = args.repeats or (2 if args.quick else 20)
    warmup = 1 if args.quick else 3
    started = time.perf_counter()
    rows = throughput_rows(QUICK_SHAPES if args.quick else FULL_SHAPES, repeats, warmup, args.seed, device)
    training = training_overhead(3 if args.quick else 300, 1 if args.quick else 20, args.seed, device)
    elapsed = time.perf_counter() - started
    command = " ".join(["python benchmarks/bench_cuda.py", *(sys.argv[1:] if argv is None else argv)])
    met = training["paired_overhead_percent"] <= OVERHEAD_TARGET_PERCENT
    text = "\n".join(
        [
            f"# mog_flows mixture base on {device.type.upper()}: log_prob throughput and the training step",
            "",
            f"Written by `{command}` on {device_line(device)}; {elapsed:.0f} s in all.",
            "",
            "## log_prob throughput (float32)",
            "",
            f"Median of up to {repeats} round-robin calls per implementation after {warmup} warm-up call(s), each "
            "followed by a device synchronisation; ratio = peer time / ours (> 1: ours is faster); the accuracy "
            "columns are the CPU checks of the same float32 models.",
            "",
            markdown_table(rows),
            "",
            "## Training step (2-D NSF, 4 layers, batch 512, Adam)",
            "",
            "| base | median ms / step |",
            "|---|---|",
            f"| MixtureOfGaussians (K = {training['num_components']}, diagonal) | {1e3 * training['mog_s']:.2f} |",
            f"| StandardNormal | {1e3 * training['gaussian_s']:.2f} |",
            "",
            f"The mixture adds {training['paired_overhead_percent']:+.1f} % (median ratio of back-to-back steps over "
            f"{training['steps']} each; ratio of the medians {training['overhead_percent']:+.1f} %): target ≤ "
            f"{OVERHEAD_TARGET_PERCENT:.0f} % {'met' if met else 'NOT met'}.",
            "",
        ]
    )
    print(text)
    (out / "bench_cuda.md").write_text(text)
    with open(out / "bench_cuda.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(row_record(row) for row in rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

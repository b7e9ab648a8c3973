"""The development sweep that chose `fit_maxent`'s defaults: candidate settings on the development problems only.

Shapes: N samples, D features, m constraints.

The development suite is the studies' own family (`maxent_problems`), never the held-out suite (`maxent_heldout`):

- `dirichlet`: E[log y_k] of Dirichlet(1, 2, 3) on the 2-simplex, through `simplex_flow`;
- `bimodal-1d`, `bimodal-2d`: E[x_d²] = 2, E[x_d⁴] = 4.6 per coordinate (2 and 4 modes), in the caller's raw units
  (no whitening by the user: `fit_maxent` standardises internally).

Each run is what a user does: `fit_maxent(build_flow(D), statistic, target, steps=10_000, seed=s, **candidate)` with
the flow's defaults (a 4-layer NSF over the default 32-component mixture) and batch 512; a candidate may also set
the mixture base's `estimator`. Seeds 100 and 101 (the held-out validation uses 0, 1, 2 on other problems).
Candidates are listed in `CANDIDATES`; the winner is frozen into `fit_maxent`'s defaults and then validated on the
held-out suite (`python experiments/maxent_heldout.py`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..checks import check_positive_int
from ..flows import build_flow
from ..mixture import MixtureOfGaussians
from ..simplex import simplex_flow
from . import report
from .maxent_heldout import fit_and_measure
from .maxent_problems import bimodal_problem, dirichlet_problem
from .runner import run_many

__all__ = ["CANDIDATES", "CHOSEN", "DEVELOPMENT", "TuningSpec", "run_tuning", "summarize", "main"]

# The candidates of the sweep: fit_maxent keyword arguments, plus "estimator" for the mixture base (a candidate
# without one trains the base's default "exact"; fit_maxent is called with estimator=None so that it does not
# switch it). "paper" is the defaults before this sweep (the MEFN paper's schedule, per-constraint scaling, no
# stationarity test). The sweep's candidates were run with 32 test batches (then the default), pinned here so that
# the committed table stays reproducible. The winner, `CHOSEN`, is fit_maxent's defaults (a test keeps the two
# equal): the sweep's winner with 128 test batches and the stopping test in entropy units, changes chosen afterwards on
# the development problems of `studies.maxent_defaults` (seeds 0-2; docs/studies/maxent.md), not run in this sweep.
CANDIDATES: dict[str, dict] = {
    "paper": dict(
        metric="scale",
        stationarity_tolerance=None,
        penalty=1.0,
        gamma=0.25,
        beta=4.0,
        lr=1e-3,
        final_lr=None,
        max_penalty=None,
    ),
    "study": dict(
        metric="scale", stationarity_tolerance=None, gamma=0.9, beta=2.0, max_penalty=16.0, lr=1e-3, final_lr=1e-4
    ),
    "whiten": dict(metric="whiten", gamma=0.5, beta=2.0, max_penalty=16.0, lr=1e-3, final_lr=1e-4),
    "whiten-lr3e-3": dict(metric="whiten", gamma=0.5, beta=2.0, max_penalty=16.0, lr=3e-3, final_lr=1e-4),
    "whiten-lr3e-3-e250": dict(
        metric="whiten", gamma=0.5, beta=2.0, max_penalty=16.0, lr=3e-3, final_lr=1e-4, epoch_steps=250
    ),
    "whiten-lr3e-3-pathwise": dict(
        metric="whiten", gamma=0.5, beta=2.0, max_penalty=16.0, lr=3e-3, final_lr=1e-4, estimator="pathwise"
    ),
}
for _settings in CANDIDATES.values():
    _settings.setdefault("test_batches", 32)  # what the sweep ran with
    _settings.setdefault("entropy_tolerance", None)  # the sweep ran without the test in entropy units
del _settings
# the sweep's winner with the two changes chosen after the sweep on the development problems of
# `studies.maxent_defaults`: 128 test batches and the stopping test in entropy units
CANDIDATES["whiten-lr3e-3-pathwise-t128-h005"] = {
    **CANDIDATES["whiten-lr3e-3-pathwise"],
    "test_batches": 128,
    "entropy_tolerance": 0.005,
}
CHOSEN = "whiten-lr3e-3-pathwise-t128-h005"
DEVELOPMENT = ("dirichlet", "bimodal-1d", "bimodal-2d")
SEEDS = (100, 101)
_FORMAT = "maxent-tuning/1"


def development_problem(name: str):
    if name == "dirichlet":
        return dirichlet_problem((1.0, 2.0, 3.0))
    if name in ("bimodal-1d", "bimodal-2d"):
        return bimodal_problem(int(name[-2]))
    raise ValueError(f"problem must be one of {DEVELOPMENT}; got {name!r}")


@dataclass(frozen=True)
class TuningSpec:
    candidate: str
    problem: str
    seed: int
    steps: int = 10_000
    eval_samples: int = 2**16


def spec_key(spec: TuningSpec) -> str:
    settings = CANDIDATES[spec.candidate]
    text = json.dumps({"format": _FORMAT, **asdict(spec), "settings": settings}, sort_keys=True)
    return f"{spec.candidate}-{spec.problem}-{spec.seed}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def run_tuning(spec: TuningSpec) -> dict:
    problem = development_problem(spec.problem)
    settings = dict(CANDIDATES[spec.candidate])
    estimator = settings.pop("estimator", None)
    torch.manual_seed(spec.seed)
    flow = build_flow(problem.features)
    if estimator is not None:
        for module in flow.modules():
            if isinstance(module, MixtureOfGaussians):
                module.estimator = estimator
    if spec.problem == "dirichlet":
        flow = simplex_flow(flow)
    row, result = fit_and_measure(
        flow, problem, steps=spec.steps, seed=spec.seed, eval_samples=spec.eval_samples, estimator=None, **settings
    )
    extra = {"stationarity": result.stationarity, "final_penalty": result.penalty}
    return {"candidate": spec.candidate, "problem": spec.problem, "seed": spec.seed, **row, **extra}


CSV_COLUMNS = [
    "candidate",
    "problem",
    "seed",
    "entropy",
    "true_entropy",
    "entropy_gap",
    "kl",
    "kl_std_error",
    "max_standardized_violation",
    "stationarity",
    "converged",
    "steps_taken",
    "final_penalty",
    "seconds",
]


def summarize(rows: list[dict]) -> list[dict]:
    """Per candidate: the worst |ΔH| and violation over problems and seeds, the mean KL, and how many runs meet the
    held-out targets (|ΔH| < 0.02 and violation < 0.05)."""
    from .maxent_heldout import ENTROPY_TARGET, VIOLATION_TARGET

    summary = []
    for candidate in dict.fromkeys(row["candidate"] for row in rows):
        own = [row for row in rows if row["candidate"] == candidate]
        met = sum(r["entropy_gap"] < ENTROPY_TARGET and r["max_standardized_violation"] < VIOLATION_TARGET for r in own)
        summary.append(
            {
                "candidate": candidate,
                "runs": len(own),
                "met": met,
                "worst_gap": max(r["entropy_gap"] for r in own),
                "mean_gap": sum(r["entropy_gap"] for r in own) / len(own),
                "worst_violation": max(r["max_standardized_violation"] for r in own),
                "mean_kl": sum(r["kl"] for r in own) / len(own),
                "mean_seconds": sum(r["seconds"] for r in own) / len(own),
            }
        )
    return summary


def write_markdown(rows: list[dict], path: Path, *, command: str, steps: int) -> str:
    lines = [
        "# fit_maxent development sweep",
        "",
        f"Written by `{command}`. Each run: `fit_maxent(build_flow(D), statistic, target, steps={steps}, seed=s, "
        "**candidate)`, batch 512, on the development problems only (Dirichlet(1, 2, 3) through `simplex_flow`; "
        "E[x_d²] = 2, E[x_d⁴] = 4.6 in 1-D and 2-D, raw units); seeds "
        f"{', '.join(map(str, sorted({r['seed'] for r in rows})))}. Candidates (`CANDIDATES` in "
        "`mog_flows/studies/maxent_tuning.py`):",
        "",
    ]
    for name in dict.fromkeys(row["candidate"] for row in rows):
        lines.append(f"- `{name}`: {CANDIDATES[name]}")
    lines += [
        "",
        "## Summary (runs meeting |ΔH| < 0.02 and standardised violation < 0.05)",
        "",
        "| candidate | runs met | worst \\|ΔH\\| | mean \\|ΔH\\| | worst violation | mean KL(q‖p) | mean seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in summarize(rows):
        lines.append(
            f"| {entry['candidate']} | {entry['met']}/{entry['runs']} | {entry['worst_gap']:.4f} | "
            f"{entry['mean_gap']:.4f} | {entry['worst_violation']:.3f} | {entry['mean_kl']:.4f} | "
            f"{entry['mean_seconds']:.0f} |"
        )
    lines += [
        "",
        "## Runs",
        "",
        "| candidate | problem | seed | H(q) | H(p) | \\|ΔH\\| | KL(q‖p) | max std. violation | stationarity | "
        "converged | steps | final c |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['candidate']} | {row['problem']} | {row['seed']} | {row['entropy']:.4f} | "
            f"{row['true_entropy']:.4f} | {row['entropy_gap']:.4f} | {row['kl']:.4f} ± {row['kl_std_error']:.4f} | "
            f"{row['max_standardized_violation']:.3f} | {row['stationarity']:.4f} | "
            f"{'yes' if row['converged'] else 'no'} | {row['steps_taken']} | {row['final_penalty']:.3g} |"
        )
    text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


def main(argv: Sequence[str] | None = None, *, default_out: str | os.PathLike = ".") -> list[dict]:
    parser = argparse.ArgumentParser(description="fit_maxent's development sweep (chooses the defaults)")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for tests")
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES))
    parser.add_argument("--problems", nargs="+", choices=list(DEVELOPMENT))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--steps", type=int)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(default_out))
    args = parser.parse_args(argv)
    steps = args.steps if args.steps is not None else (4 if args.quick else 10_000)
    check_positive_int("steps", steps)
    seeds = args.seeds[:1] if args.quick else args.seeds
    specs = [
        TuningSpec(candidate, problem, seed, steps=steps, eval_samples=256 if args.quick else 2**16)
        for candidate in (args.candidates or CANDIDATES)
        for problem in (args.problems or DEVELOPMENT)
        for seed in seeds
    ]
    name = "maxent_tuning_quick" if args.quick else "maxent_tuning"
    args.out.mkdir(parents=True, exist_ok=True)

    def progress(done: int, total: int, row: dict) -> None:
        print(
            f"[{done}/{total}] {row['candidate']} {row['problem']} seed {row['seed']}: |ΔH| {row['entropy_gap']:.4f},"
            f" violation {row['max_standardized_violation']:.3f} ({row['seconds']:.0f} s)",
            flush=True,
        )

    rows = run_many(
        specs,
        run_tuning,
        key=spec_key,
        workers=args.workers,
        on_result=progress,
        cache_dir=args.out / f".{name}_rows",
        cost=lambda spec: spec.steps * (2 if spec.problem == "dirichlet" else 1),
    )
    command = "python experiments/maxent_tuning.py" + (" --quick" if args.quick else "")
    for flag, values, default in (
        ("--candidates", args.candidates, None),
        ("--problems", args.problems, None),
        ("--seeds", None if args.quick or args.seeds == list(SEEDS) else args.seeds, None),
    ):
        if values != default:
            command += f" {flag} " + " ".join(map(str, values))
    if args.steps is not None:
        command += f" --steps {args.steps}"
    report.write_csv(rows, args.out / f"{name}.csv", CSV_COLUMNS)
    text = write_markdown(rows, args.out / f"{name}.md", command=command, steps=steps)
    print(text)
    return rows

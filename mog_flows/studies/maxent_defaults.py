"""The maximum-entropy studies' own problems solved with `fit_maxent`'s defaults only: does a user who calls
`fit_maxent(flow, statistic, target, steps=...)` get what the studies (`studies.maxent`, run with per-problem
schedules, whitened constraints and their own K, depth and steps) report?

Shapes: N samples, D features, m constraints.

Problems (`PROBLEMS`; the development problems of `maxent_problems`, so the defaults were chosen on them — the
held-out validation is `studies.maxent_heldout`):

- `dirichlet`: E[log y_k] = ψ(α_k) - ψ(α₀), α = (1, 2, 3), on the 2-simplex (`simplex_flow` around the flow);
- `bimodal-1d`, `bimodal-2d`: E[x_d²] = 2, E[x_d⁴] = 4.6 per coordinate, the constraints as a user writes them (not
  whitened: `fit_maxent` standardises internally).

Every run is `fit_maxent(build_flow(D), T, t, steps=steps, seed=s)` with every other argument at its default (a
4-layer NSF over the default mixture, batch 512) — exactly `maxent_heldout.fit_and_measure` — and the report checks
the studies' targets (`TARGETS`) on every seed: the Dirichlet |ΔH| < 0.01 and KL(q‖p) < 0.01, the bimodal problems
KL(q‖p) < 0.02.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..checks import check_positive_int
from ..flows import build_flow
from ..simplex import simplex_flow
from . import report
from .maxent_heldout import CSV_COLUMNS, fit_and_measure  # the same row: one writer's columns
from .maxent_problems import MaxEntProblem, bimodal_problem, dirichlet_problem
from .runner import run_many

__all__ = ["PROBLEMS", "TARGETS", "DefaultsSpec", "defaults_problem", "defaults_flow", "run_defaults", "main"]

PROBLEMS: dict[str, tuple[Callable[[], MaxEntProblem], str]] = {
    "dirichlet": (lambda: dirichlet_problem((1.0, 2.0, 3.0)), "simplex"),
    "bimodal-1d": (lambda: bimodal_problem(1), "real"),
    "bimodal-2d": (lambda: bimodal_problem(2), "real"),
}
# the studies' targets: problem -> (largest |ΔH| or None, largest KL(q‖p))
TARGETS = {"dirichlet": (0.01, 0.01), "bimodal-1d": (None, 0.02), "bimodal-2d": (None, 0.02)}
_FORMAT = "maxent-defaults/3"  # 2: H(q) and the violation measured on the study's samples; 3: the entropy test


def defaults_problem(name: str) -> MaxEntProblem:
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; choose among {', '.join(PROBLEMS)}")
    return PROBLEMS[name][0]()


def defaults_flow(name: str, seed: int) -> torch.nn.Module:
    """`build_flow(D)` with every default (torch seeded with `seed`), inside `simplex_flow` on the simplex."""
    problem = defaults_problem(name)
    torch.manual_seed(seed)
    flow = build_flow(problem.features)
    return simplex_flow(flow) if PROBLEMS[name][1] == "simplex" else flow


@dataclass(frozen=True)
class DefaultsSpec:
    problem: str
    seed: int
    steps: int = 10_000
    eval_samples: int = 2**18


def spec_key(spec: DefaultsSpec) -> str:
    text = json.dumps({"format": _FORMAT, **asdict(spec)}, sort_keys=True)
    return f"{spec.problem}-{spec.seed}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def run_defaults(spec: DefaultsSpec) -> dict:
    problem = defaults_problem(spec.problem)
    flow = defaults_flow(spec.problem, spec.seed)
    row, _ = fit_and_measure(flow, problem, steps=spec.steps, seed=spec.seed, eval_samples=spec.eval_samples)
    return {"problem": spec.problem, "seed": spec.seed, **row}


def meets(row: dict) -> bool:
    """The row meets its problem's target (`TARGETS`)."""
    entropy, kl = TARGETS[row["problem"]]
    return (entropy is None or row["entropy_gap"] < entropy) and row["kl"] < kl


def write_markdown(rows: list[dict], path: Path, *, command: str, steps: int) -> str:
    lines = [
        "# The maximum-entropy studies' problems with fit_maxent's defaults only",
        "",
        f"Written by `{command}`: `fit_maxent(flow, statistic, target, steps={steps}, seed=s)` with every other "
        "argument at its default, `flow = build_flow(D)` (a 4-layer NSF over the default mixture; inside "
        "`simplex_flow` on the simplex), batch 512; the bimodal constraints unwhitened. Targets (the studies'): "
        "Dirichlet |H(q) − H(p)| < 0.01 and KL(q‖p) < 0.01; bimodal-1d and bimodal-2d KL(q‖p) < 0.02, on every "
        "seed. H(q) (± its Monte-Carlo standard error), KL(q‖p) and the violations on fresh exact samples of the "
        f"delivered flow ({rows[0]['eval_samples'] if rows else 0} of them).",
        "",
        r"| problem | seed | H(q) | H(p) | \|ΔH\| | KL(q‖p) | max std. violation | converged | steps | meets target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    met: dict[str, list[bool]] = {}
    for row in rows:
        ok = meets(row)
        met.setdefault(row["problem"], []).append(ok)
        lines.append(
            f"| {row['problem']} | {row['seed']} | {row['entropy']:.4f} ± {row['entropy_std_error']:.4f} | "
            f"{row['true_entropy']:.4f} | "
            f"{row['entropy_gap']:.4f} | {row['kl']:.4f} ± {row['kl_std_error']:.4f} | "
            f"{row['max_standardized_violation']:.3f} | {'yes' if row['converged'] else 'no'} | "
            f"{row['steps_taken']} | {'yes' if ok else 'no'} |"
        )
    lines += [
        "",
        "| problem | \\|ΔH\\| mean ± std | KL(q‖p) mean ± std | seeds meeting the target |",
        "|---|---|---|---|",
    ]
    for problem, oks in met.items():
        chosen = [row for row in rows if row["problem"] == problem]
        gap = report.mean_std([row["entropy_gap"] for row in chosen])
        kl = report.mean_std([row["kl"] for row in chosen])
        lines.append(f"| {problem} | {report.pm(*gap, 4)} | {report.pm(*kl, 4)} | {sum(oks)}/{len(oks)} |")
    passed = [p for p, oks in met.items() if all(oks)]
    failed = [p for p, oks in met.items() if not all(oks)]
    lines += [
        "",
        f"Every seed meets the target on: {', '.join(passed) or 'none'}; not on: {', '.join(failed) or 'none'}.",
    ]
    text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


def main(argv: Sequence[str] | None = None, *, default_out: str | os.PathLike = ".") -> list[dict]:
    """The command line; returns the rows."""
    parser = argparse.ArgumentParser(description="the maximum-entropy studies' problems with fit_maxent's defaults")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for tests")
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(default_out))
    args = parser.parse_args(argv)
    steps = args.steps if args.steps is not None else (4 if args.quick else 10_000)
    check_positive_int("steps", steps)
    check_positive_int("workers", args.workers)
    seeds = [0] if args.quick else args.seeds
    specs = [
        DefaultsSpec(problem, seed, steps=steps, eval_samples=256 if args.quick else 2**18)
        for problem in (args.problems or PROBLEMS)
        for seed in seeds
    ]
    name = "maxent_defaults_quick" if args.quick else "maxent_defaults"
    args.out.mkdir(parents=True, exist_ok=True)

    def progress(done: int, total: int, row: dict) -> None:
        print(
            f"[{done}/{total}] {row['problem']} seed {row['seed']}: |ΔH| {row['entropy_gap']:.4f}, KL {row['kl']:.4f} "
            f"({row['seconds']:.0f} s)",
            flush=True,
        )

    rows = run_many(
        specs,
        run_defaults,
        key=spec_key,
        workers=args.workers,
        on_result=progress,
        cache_dir=args.out / f".{name}_rows",
        cost=lambda spec: spec.steps,
    )
    command = "python experiments/maxent_defaults.py" + (" --quick" if args.quick else "")
    if args.problems:
        command += " --problems " + " ".join(args.problems)
    if not args.quick and args.seeds != [0, 1, 2]:
        command += " --seeds " + " ".join(map(str, args.seeds))
    if args.steps is not None:
        command += f" --steps {args.steps}"
    report.write_csv(rows, args.out / f"{name}.csv", CSV_COLUMNS)
    print(write_markdown(rows, args.out / f"{name}.md", command=command, steps=steps))
    return rows

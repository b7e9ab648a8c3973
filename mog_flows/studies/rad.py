"""The RAD study: RAD against the MoG-base and the Gaussian-base flow on 2-D targets at equal parameter budgets.

Shapes: N points, D = 2 features, K mixture components, R grid resolution, S recorded samples.

Three models per target and seed, each one `comparison.RunSpec` (so the same data splits, `fit` settings, steps,
evaluation and resumable cache as the base comparison):

- "mog": an NSF flow over a diagonal mixture-of-Gaussians base (K = `rad_study_components`), width
  `hidden_features`: the budget;
- "gaussian": the same flow over a standard normal base, widened to at least that budget
  (`budgets.matched_hidden_features`);
- "rad": `baselines.RAD(2, num_pieces=..., num_layers=...)` with the smallest width whose parameter count is at least
  that budget (`budgets.matched_rad_hidden_features`).

`rad_specs` lists the runs, `write_rad_markdown` writes the table (test NLL, paired KL, parameters, time per step),
checks "the MoG-base flow at least matches RAD's NLL on every target" against the numbers and says where the
results can be set beside the paper's figures; `plot_rad_grid` draws densities and samples; `main` is the command
line, which writes into the folder given as `--out` (`comparison.read_results` reads it back).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import training
from ..baselines import RAD
from ..checks import check_positive_int
from ..datasets import DATASETS, get_dataset
from ..mixture import INIT_RESTARTS
from . import report
from .comparison import CSV_COLUMNS, RunSpec, paired_differences, read_results, run_study, summarize, write_arrays
from .report import pm

__all__ = [
    "MODELS",
    "ZOO",
    "PAPER_PROBLEMS",
    "rad_specs",
    "target_check",
    "write_rad_markdown",
    "plot_rad_grid",
    "main",
]

MODELS = ("gaussian", "mog", "rad")  # the columns of every table, in this order
MODEL_LABELS = {"gaussian": "Gaussian-base NSF", "mog": "MoG-base NSF", "rad": "RAD"}
ZOO = ("eight_gaussians", "grid", "rings", "checkerboard", "moons", "pinwheel", "spirals")  # the 2-D targets
TRANSFORM = "nsf"  # the flows' transform (the library's best in the base comparison)
RAD_STUDY_MIN_COMPONENTS = 8  # the least K of the study's MoG flows (`rad_study_components`)

# The 2-D problems of Dinh et al. (2019) that coincide with zoo targets: zoo target -> the paper's problem.
# "many moons" is not in the zoo and is not reconstructed.
PAPER_PROBLEMS = {
    "grid": "grid Gaussian mixture",
    "eight_gaussians": "ring Gaussian mixture",
    "moons": "two moons",
    "rings": "two circles (ours: four rings)",
    "spirals": "spiral",
}
NOT_RECONSTRUCTED = ("many moons",)

CSV_COLUMNS_RAD = (*CSV_COLUMNS[:7], "num_pieces", *CSV_COLUMNS[7:])
FULL = dict(datasets=ZOO, seeds=(0, 1, 2), steps=1500, hidden_features=64, num_layers=4, num_pieces=3)
QUICK = dict(
    datasets=("eight_gaussians", "moons"),
    seeds=(0,),
    steps=6,
    hidden_features=8,
    num_layers=2,
    num_pieces=3,
    batch_size=64,
    num_train=400,
    num_val=100,
    num_test=200,
    resolution=24,
)


# ---------------------------------------------------------------------------------------------------- the runs
def rad_study_components(target) -> int:
    """K of the study's MoG flows: max(M, `RAD_STUDY_MIN_COMPONENTS` = 8), M the target's point modes (0 when it
    lists none); fewer than the base comparison's `comparison.default_num_components`."""
    modes = getattr(target, "modes", None)
    return max(RAD_STUDY_MIN_COMPONENTS, 0 if modes is None else int(modes.shape[0]))


def rad_specs(
    datasets: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int,
    hidden_features: int = 64,
    num_layers: int = 4,
    num_pieces: int = 3,
    density_resolution: int | None = 160,
    **spec_kwargs: Any,
) -> list[RunSpec]:
    """One `RunSpec` per seed × target × model, seed-major (an interrupted study has whole seeds), the first seed
    recording densities and samples for the figure. Refuses (ValueError) targets that are not 2-D, an empty list
    of targets or seeds, and repeated seeds."""
    datasets, seeds = list(datasets), list(seeds)
    if not datasets or not seeds:
        raise ValueError(f"need at least one target and one seed; got datasets={datasets}, seeds={seeds}")
    for name in datasets:
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; choose among the 2-D targets {', '.join(ZOO)}")
        if get_dataset(name).features != 2:
            raise ValueError(f"the RAD study is on 2-D targets; {name!r} has {get_dataset(name).features} features")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct; got {seeds}")
    RAD(2, num_pieces=num_pieces, num_layers=1, hidden_features=2)  # a bad num_pieces fails before any run
    return [
        RunSpec(
            dataset,
            model,
            TRANSFORM,
            seed=seed,
            steps=steps,
            hidden_features=hidden_features,
            num_layers=num_layers,
            num_pieces=num_pieces,
            checkpoint_every=min(100, steps),
            density_resolution=density_resolution if seed == seeds[0] else None,
            **{"num_components": rad_study_components(get_dataset(dataset)), **spec_kwargs},
        )
        for seed in seeds
        for dataset in datasets
        for model in MODELS
    ]


# ---------------------------------------------------------------------------------------------------- reductions
def target_check(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The target "the MoG-base flow at least matches RAD's test NLL on every target at equal parameters",
    decided from the rows.

    Returns "targets" (one entry per target with both models: dataset, "mog", "rad" (mean NLL), "mog_std",
    "rad_std", "diff_mean"/"diff_std" (MoG − RAD paired by seed), "wins"/"pairs" (seeds where MoG is lower),
    "matched" (mean MoG ≤ mean RAD), "budget" (RAD's parameters ≥ the MoG flow's)), "met" (every target matched)
    and "equal_budgets" (every target's RAD has at least the MoG flow's parameters)."""
    summaries = {(s["dataset"], s["base"]): s for s in summarize(rows)}
    pairs = {p["dataset"]: p for p in paired_differences(rows, base="mog", reference="rad")}
    entries = []
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        m, r = summaries.get((dataset, "mog")), summaries.get((dataset, "rad"))
        if m is None or r is None:
            continue
        p = pairs.get(dataset, {"pairs": 0, "mog_wins": 0, "diff_mean": math.nan, "diff_std": math.nan})
        entries.append(
            {
                "dataset": dataset,
                "mog": m["nll_mean"],
                "rad": r["nll_mean"],
                "mog_std": m["nll_std"],
                "rad_std": r["nll_std"],
                "diff_mean": p["diff_mean"],
                "diff_std": p["diff_std"],
                "wins": p["mog_wins"],
                "pairs": p["pairs"],
                "matched": bool(m["nll_mean"] <= r["nll_mean"]),  # False when either is NaN (failed runs)
                "budget": r["parameters"] >= m["parameters"],
            }
        )
    return {
        "targets": entries,
        "met": bool(entries) and all(e["matched"] for e in entries),
        "equal_budgets": bool(entries) and all(e["budget"] for e in entries),
    }


# ---------------------------------------------------------------------------------------------------- writers
def write_rad_markdown(
    rows: Sequence[dict[str, Any]],
    path: str | os.PathLike,
    *,
    title: str = "RAD vs MoG-base flow vs Gaussian-base flow",
) -> str:
    """The study's report: settings, the table (mean ± std over seeds), the target checked against the numbers,
    and where the results can be set beside the paper. Writes it to `path` and returns it."""
    summaries = {(s["dataset"], s["base"]): s for s in summarize(rows)}
    check = target_check(rows)
    first = next(row for row in rows if row["base"] == "rad")
    seeds = sorted({row["seed"] for row in rows})
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    lines = [
        f"# {title}",
        "",
        f"{len(rows)} runs: {len(datasets)} targets × 3 models × {len(seeds)} seed{'s' if len(seeds) > 1 else ''} "
        f"({', '.join(map(str, seeds))}). Every run: Adam, lr {first['lr']:g} with cosine decay, batch "
        f"{first['batch_size']}, gradient-norm clipping at 5, {first['steps']} steps for every model; "
        f"{first['num_train']} train / {first['num_val']} validation / {first['num_test']} test points drawn from the "
        "target with the seed (the same points for the three models of a seed). The parameters with the lowest "
        f"validation NLL (checked every {first['checkpoint_every']} steps) are evaluated on the test set.",
        "",
        f"- **MoG**: NSF flow, {first['num_layers']} layers, conditioner width as in *hidden*, over a diagonal "
        f"mixture of K = max(M, {RAD_STUDY_MIN_COMPONENTS}) Gaussians (M: the target's point modes), initialised by EM "
        f"(the most likely of {INIT_RESTARTS} k-means++ seedings) on the training data pushed through the new "
        f"(identity) flow; its parameters learn at {training.BASE_LR_FACTOR:g} × lr (`fit(base_lr_factor=...)`). "
        "Its parameter count is the budget.",
        "- **Gaussian**: the same NSF flow over a standard normal, with the smallest width ≥ the MoG flow's whose "
        "parameter count is ≥ the budget.",
        f"- **RAD**: `RAD(2, num_pieces={first['num_pieces']}, num_layers={first['num_layers']}, "
        "hidden_features=h)` (`mog_flows.baselines`: piecewise-invertible couplings with a gating network, standard "
        "normal base), h the smallest width whose parameter count is ≥ the budget; trained by exact maximum "
        "likelihood with the same `fit` (it has no mixture base to initialise).",
        "- **NLL**: mean test negative log-likelihood in nats (lower is better). **KL** = KL(p‖q) ≈ mean over the "
        "same test points of log p − log q (paired: the test NLL minus the mean of −log p on those points). "
        "**Δ** = MoG − RAD NLL per seed (same data), mean ± std; *MoG lower* = seeds where the MoG flow has the "
        "lower NLL. ± is the sample standard deviation over seeds. **ms/step**: mean training wall time per step "
        "(one torch thread, one run at a time, validation included).",
        "",
        "| target | paper's problem | K | hidden G / M / R | params G / M / R | NLL Gaussian | NLL MoG | NLL RAD "
        "| Δ MoG − RAD | MoG lower | KL Gaussian | KL MoG | KL RAD | ms/step G / M / R |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_dataset = {e["dataset"]: e for e in check["targets"]}
    for dataset in datasets:
        s = [summaries.get((dataset, model)) for model in MODELS]
        if any(x is None for x in s):
            continue
        g, m, r = s
        e = by_dataset[dataset]
        failed = sum(x["failed"] for x in s)
        ms = " / ".join(
            "—" if math.isnan(x["seconds_per_step_mean"]) else f"{x['seconds_per_step_mean'] * 1000:.1f}" for x in s
        )
        lines.append(
            f"| {dataset}{f' ({failed} failed)' if failed else ''} | {PAPER_PROBLEMS.get(dataset, '—')} "
            f"| {m['num_components']} | {' / '.join(str(x['hidden_features']) for x in s)} "
            f"| {' / '.join(str(x['parameters']) for x in s)} | {pm(g['nll_mean'], g['nll_std'])} "
            f"| {pm(m['nll_mean'], m['nll_std'])} | {pm(r['nll_mean'], r['nll_std'])} "
            f"| {pm(e['diff_mean'], e['diff_std'])} | {e['wins']}/{e['pairs']} | {pm(g['kl_mean'], g['kl_std'])} "
            f"| {pm(m['kl_mean'], m['kl_std'])} | {pm(r['kl_mean'], r['kl_std'])} | {ms} |"
        )
    matched = [e for e in check["targets"] if e["matched"]]
    lines += [
        "",
        "## Target: the MoG-base flow at least matches RAD's NLL on every target at equal parameters",
        "",
        f"- Equal parameters: RAD has at least the MoG flow's parameters on "
        f"{sum(e['budget'] for e in check['targets'])} of {len(check['targets'])} targets — "
        f"**{'yes' if check['equal_budgets'] else 'NO'}**.",
        f"- Mean test NLL of the MoG flow ≤ RAD's on {len(matched)} of {len(check['targets'])} targets — "
        f"**{'met' if check['met'] else 'NOT met'}**.",
    ]
    for e in check["targets"]:
        verdict = "matches or beats RAD" if e["matched"] else "worse than RAD"
        noise = ""
        if e["pairs"] > 1 and not math.isnan(e["diff_std"]) and abs(e["diff_mean"]) < e["diff_std"]:
            noise = "; the difference is smaller than its seed-to-seed spread"
        lines.append(
            f"  - {e['dataset']}: MoG {pm(e['mog'], e['mog_std'])} vs RAD {pm(e['rad'], e['rad_std'])} nats "
            f"(Δ {pm(e['diff_mean'], e['diff_std'])}, MoG lower on {e['wins']}/{e['pairs']} seeds): {verdict}{noise}."
        )
    gaussian_vs_rad = {p["dataset"]: p for p in paired_differences(rows, base="gaussian", reference="rad")}
    lines += [
        "",
        "Gaussian-base flow against RAD (Δ = Gaussian − RAD, seeds where the Gaussian flow is lower): "
        + "; ".join(
            f"{d} {pm(p['diff_mean'], p['diff_std'])} ({p['mog_wins']}/{p['pairs']})"
            for d, p in gaussian_vs_rad.items()
        )
        + ".",
    ]
    # rows with an even num_pieces come from the earlier map (increasing pieces with jumps; even K cannot fold)
    lines += _paper_section(datasets, folding=all(int(row["num_pieces"]) % 2 == 1 for row in rows))
    failures = [row for row in rows if row.get("error")]
    if failures:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {r['dataset']}, {r['base']}, seed {r['seed']}: {r['error'].splitlines()[0]}" for r in failures]
    lines.append("")
    text = "\n".join(lines)
    Path(path).write_text(text)
    return text


def _paper_section(datasets: Sequence[str], *, folding: bool = True) -> list[str]:
    """Where these results can be set beside Dinh et al. (2019), and where they differ (documentation: no numbers
    of the paper are used or quoted)."""
    beside = [f"{d} (the paper's {PAPER_PROBLEMS[d]})" for d in datasets if d in PAPER_PROBLEMS]
    others = [d for d in datasets if d not in PAPER_PROBLEMS]
    return [
        "",
        "## Beside the paper (Dinh, Sohl-Dickstein, Larochelle, Pascanu 2019, arXiv:1903.07714)",
        "",
        "- The paper's 2-D problems, as recalled here (the copies of the paper reachable from this project hold only "
        "its abstract and introduction, so neither the list nor the problems' exact parameters could be checked "
        "against its text): " + ", ".join(sorted(set(PAPER_PROBLEMS.values()) | set(NOT_RECONSTRUCTED))) + ". "
        f"They coincide with targets of `mog_flows.datasets`, run here: {', '.join(beside) or 'none in this run'}. "
        f"Not reconstructed: {', '.join(NOT_RECONSTRUCTED)} (not in the zoo; its layout is not known here). "
        f"Targets of this study the paper does not have: {', '.join(others) or 'none'}.",
        "- Set beside the paper's figures: the figure grid (`rad_comparison.png`) shows, per target, the true density "
        "and each model's learned density and samples, as the paper's 2-D figures show a flow's and RAD's samples "
        "and densities on those problems; the qualitative question is the same (does the model put mass in the gaps "
        "between modes, does it separate disconnected pieces).",
        "- Where they differ: (i) the paper's flow baseline is Real NVP (affine couplings, Gaussian base); here both "
        "flows are neural spline flows, one with a learned mixture base, and every model gets the same parameter "
        "budget; (ii) this RAD is a reconstruction (`mog_flows.baselines.rad`: "
        + (
            "continuous piecewise-linear maps whose pieces alternate in slope sign and fold the line, a gate that "
            "fades to zero at the ends of each piece's image, ResidualNet conditioners"
            if folding
            else "increasing affine pieces with downward jumps, ResidualNet conditioners and gates"
        )
        + "), not the paper's code, of which none is public; (iii) "
        "the targets' parameters (number, spacing and width of the modes, ring radii, noise) are the zoo's, not the "
        "paper's, so NLL values are not comparable with the paper's numbers, only the ranking and the pictures are; "
        "(iv) training is short (the *steps* above, on a CPU), and the paper's figures of the inferred "
        "discrete latent (RAD's partition of the plane) are not redrawn"
        + (" (`RAD.assign(x)` gives each point's pieces for such a figure)." if folding else "."),
    ]


def plot_rad_grid(rows: Sequence[dict[str, Any]], path: str | os.PathLike, *, seed: int, bounds: float = 4.5) -> bool:
    """One row per target: the true density, then each model's learned density and its samples (seed `seed`,
    recorded by `run_one` with `density_resolution` on [-bounds, bounds]²; the true density is drawn at the same
    resolution). Returns False (and writes nothing) when no target has all three models recorded."""
    from ..plotting import density_on_grid, plt

    chosen = {(r["dataset"], r["base"]): r for r in rows if r["seed"] == seed and "density" in r and "samples" in r}
    datasets = [d for d in dict.fromkeys(r["dataset"] for r in rows) if all((d, m) in chosen for m in MODELS)]
    if not datasets:
        return False
    columns = 1 + 2 * len(MODELS)
    fig, axes = plt.subplots(len(datasets), columns, figsize=(2.2 * columns, 2.2 * len(datasets)), squeeze=False)
    extent = (-bounds, bounds, -bounds, bounds)
    for i, dataset in enumerate(datasets):
        target = get_dataset(dataset)
        resolution = chosen[(dataset, "mog")]["density"].shape[-1]
        _, true_density = density_on_grid(lambda x, target=target: target.log_prob(x.double()), bounds, resolution)
        axes[i, 0].imshow(true_density.numpy(), extent=extent, origin="lower", cmap="magma")
        axes[i, 0].set_title(f"{dataset}: true density", fontsize=7)
        for j, model in enumerate(MODELS):
            row = chosen[(dataset, model)]
            kl = "" if math.isnan(row["kl"]) else f", KL {row['kl']:.3f}"
            density_ax, sample_ax = axes[i, 1 + 2 * j], axes[i, 2 + 2 * j]
            density_ax.imshow(row["density"].numpy(), extent=extent, origin="lower", cmap="magma")
            density_ax.set_title(f"{MODEL_LABELS[model]}\nNLL {row['nll']:.3f}{kl}", fontsize=7)
            samples = row["samples"].numpy()
            sample_ax.scatter(samples[:, 0], samples[:, 1], s=0.5, alpha=0.5, color=f"C{j}", rasterized=True)
            sample_ax.set_xlim(-bounds, bounds)
            sample_ax.set_ylim(-bounds, bounds)
            sample_ax.set_aspect("equal")
            sample_ax.set_title(f"{MODEL_LABELS[model]}: samples", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------------- command line
def _parser(default_out: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rad_comparison",
        description="RAD vs MoG-base NSF vs Gaussian-base NSF on the 2-D targets, equal parameter budgets. Writes "
        "rad_comparison.{md,csv,png} and rad_comparison_{densities,samples}.npz (rad_comparison_quick.* with "
        "--quick). Finished runs are kept in OUT/.NAME_cache/ until all are done: the same command resumes.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings (seconds), for tests")
    parser.add_argument("--datasets", nargs="+", help=f"2-D targets (default: {' '.join(ZOO)})")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 2")
    parser.add_argument("--steps", type=int, help=f"training steps for every model (default {FULL['steps']})")
    parser.add_argument("--num-pieces", type=int, help=f"RAD's pieces per layer (default {FULL['num_pieces']})")
    parser.add_argument("--hidden-features", type=int, help="conditioner width of the MoG flow (default 64)")
    parser.add_argument("--num-layers", type=int, help="layers of every model (default 4)")
    parser.add_argument("--batch-size", type=int, help="default 512")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=1, help="parallel runs (default 1)")
    shown = "the current directory" if str(default_out) == "." else str(default_out)
    parser.add_argument("--out", type=Path, default=default_out, help=f"results folder (default: {shown})")
    parser.add_argument("--name", help="file stem (default rad_comparison, rad_comparison_quick with --quick)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite NAME.md and NAME.png from NAME.csv and the .npz files already in OUT, without training",
    )
    return parser


def main(argv: Sequence[str] | None = None, *, default_out: str | os.PathLike = ".") -> list[dict]:
    """The study's command line; returns the rows. Bad settings raise ValueError. Results go to `--out`, by default
    `default_out` (the current directory unless the caller names another)."""
    args = _parser(Path(default_out)).parse_args(argv)
    preset = QUICK if args.quick else FULL
    check_positive_int("workers", args.workers)
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise ValueError(f"lr must be a positive finite number; got {args.lr}")
    if args.seeds is not None and any(seed < 0 for seed in args.seeds):
        raise ValueError(f"seeds must be non-negative integers; got {args.seeds}")
    name = args.name or ("rad_comparison_quick" if args.quick else "rad_comparison")
    title = "RAD vs MoG-base flow vs Gaussian-base flow" + (" (--quick)" if args.quick else "")
    if args.report_only:
        if not (args.out / f"{name}.csv").exists():
            raise ValueError(f"--report-only needs the results of a finished study; {args.out / name}.csv is missing")
        rows = read_results(args.out, name)
        text = write_rad_markdown(rows, args.out / f"{name}.md", title=title)
        plot_rad_grid(rows, args.out / f"{name}.png", seed=min(row["seed"] for row in rows))
        print(text)
        return rows
    seeds = list(args.seeds if args.seeds is not None else preset["seeds"])
    sizes = {k: preset[k] for k in ("batch_size", "num_train", "num_val", "num_test") if k in preset}
    if args.batch_size is not None:
        sizes["batch_size"] = args.batch_size
    resolution = preset.get("resolution", 160)
    specs = rad_specs(
        args.datasets or preset["datasets"],
        seeds,
        steps=args.steps if args.steps is not None else preset["steps"],
        hidden_features=args.hidden_features if args.hidden_features is not None else preset["hidden_features"],
        num_layers=args.num_layers if args.num_layers is not None else preset["num_layers"],
        num_pieces=args.num_pieces if args.num_pieces is not None else preset["num_pieces"],
        density_resolution=resolution,
        lr=args.lr,
        **sizes,
    )
    began = time.perf_counter()
    rows, cache_dir = run_study(specs, args.out, name, workers=args.workers)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the figure's true densities: as cheap on one thread
    try:
        report.write_csv(rows, args.out / f"{name}.csv", CSV_COLUMNS_RAD)
        text = write_rad_markdown(rows, args.out / f"{name}.md", title=title)
        plotted = plot_rad_grid(rows, args.out / f"{name}.png", seed=seeds[0])
        write_arrays(rows, args.out, name, ["density", "samples"])
    finally:
        torch.set_num_threads(threads)
    shutil.rmtree(cache_dir)  # every row is in the files now
    print(text)
    written = [f"{name}.md", f"{name}.csv", f"{name}_densities.npz", f"{name}_samples.npz"]
    written += [f"{name}.png"] if plotted else []
    print(f"wrote {', '.join(str(args.out / w) for w in written)} in {time.perf_counter() - began:.0f} s")
    return rows

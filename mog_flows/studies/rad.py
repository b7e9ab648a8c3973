"""The RAD study: RAD against affine and spline flows with a Gaussian or a mixture-of-Gaussians base, on 2-D
targets at equal parameter budgets.

Shapes: N points, D = 2 features, K mixture components, L layers, R grid resolution, S recorded points.

Seven models per target and seed (`MODELS`), each one `comparison.RunSpec` (the same data splits, `fit` settings,
steps, evaluation and resumable cache as the base comparison):

- the affine block: Real NVP over a standard normal ("realnvp_gaussian"), Real NVP over a diagonal mixture of
  K = max(M, 8) Gaussians ("realnvp_mog"), and RAD (`baselines.RAD`, folding piecewise-linear couplings with a
  continuous gate) with K = 1 ("rad1": one increasing affine piece, an affine coupling flow, the ablation),
  K = 3 ("rad3") and K = 5 ("rad5") pieces;
- the spline block: NSF over a standard normal ("nsf_gaussian") and over the mixture ("nsf_mog").

Equal budgets: the budget of a target is the parameter count of its Real NVP + MoG flow of width `BUDGET_WIDTH`;
every model gets the conditioner width whose count is nearest that budget (`budgets.closest_width`), within ±5 % at
the full settings (`model_widths`). Each model trains at its own learning rate (`LEARNING_RATES`), chosen on the
held-out seed `LR_SEED` over `LR_TARGETS` (`lr_specs`, `select_learning_rates`, the command line's --select-lr);
the reported seeds are others.

`rad_specs` lists the runs, `write_rad_markdown` writes the report (the table, the best checkpoint's step, and the
paired comparisons of `COMPARISONS`: RAD's mechanism, mixture base vs RAD, mixture vs Gaussian base, the spline
block), `plot_rad_grid` draws densities and samples, `plot_partition` RAD's inferred partition (`RAD.assign`), and
`main` is the command line, which writes into the folder given as `--out` (`read_rad_results` reads it back).
"""

from __future__ import annotations

import argparse
import functools
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
from .budgets import closest_width, count_parameters, flow_parameters
from .comparison import CSV_COLUMNS, INTEGER_COLUMNS, TEXT_COLUMNS, RunSpec, run_study
from .report import mean_std, pm

__all__ = [
    "MODELS",
    "MODEL_LABELS",
    "TARGETS",
    "LEARNING_RATES",
    "LR_GRID",
    "LR_SEED",
    "LR_TARGETS",
    "COMPARISONS",
    "PAPER_PROBLEMS",
    "model_of",
    "model_widths",
    "rad_specs",
    "lr_specs",
    "summarize_models",
    "paired_by_seed",
    "select_learning_rates",
    "write_rad_markdown",
    "write_lr_markdown",
    "plot_rad_grid",
    "plot_partition",
    "read_rad_results",
    "main",
]

# model -> (RunSpec.base, RunSpec.transform, RAD's num_pieces); the columns of every table, in this order
_KINDS = {
    "realnvp_gaussian": ("gaussian", "realnvp", 3),
    "realnvp_mog": ("mog", "realnvp", 3),
    "rad1": ("rad", "realnvp", 1),
    "rad3": ("rad", "realnvp", 3),
    "rad5": ("rad", "realnvp", 5),
    "nsf_gaussian": ("gaussian", "nsf", 3),
    "nsf_mog": ("mog", "nsf", 3),
}
MODELS = tuple(_KINDS)
MODEL_LABELS = {
    "realnvp_gaussian": "Real NVP + Gaussian",
    "realnvp_mog": "Real NVP + MoG",
    "rad1": "RAD K=1",
    "rad3": "RAD K=3",
    "rad5": "RAD K=5",
    "nsf_gaussian": "NSF + Gaussian",
    "nsf_mog": "NSF + MoG",
}
BUDGET_MODEL = "realnvp_mog"  # its count at width BUDGET_WIDTH is a target's budget
BUDGET_WIDTH = 18
BUDGET_TOLERANCE = 0.05  # every model's count within ±5 % of the budget (the report checks it)
RAD_STUDY_MIN_COMPONENTS = 8  # the least K of the study's MoG bases (`rad_study_components`)
# every 2-D target of the zoo and the mirror target; the runs go target by target in this order, so that an
# interrupted study has whole targets, those the study cannot do without first
TARGETS = (
    "mirror_modes",
    "eight_gaussians",
    "rings",
    "grid",
    "moons",
    "banana_modes",
    "mixed_shapes",
    "checkerboard",
    "pinwheel",
    "spirals",
    "ring_of_rings",
)
PARTITION_TARGETS = ("mirror_modes", "eight_gaussians", "rings", "moons")  # RAD K = 3's partition figure
PARTITION_MODEL = "rad3"

# The learning rate of each model, chosen by `select_learning_rates` on seed LR_SEED over LR_TARGETS from LR_GRID:
# copied from experiments/results/rad_comparison_lr.md (`python experiments/rad_comparison.py --select-lr`). Every
# model chose the grid's largest value.
LEARNING_RATES = {
    "realnvp_gaussian": 3e-3,
    "realnvp_mog": 3e-3,
    "rad1": 3e-3,
    "rad3": 3e-3,
    "rad5": 3e-3,
    "nsf_gaussian": 3e-3,
    "nsf_mog": 3e-3,
}
LR_GRID = (3e-4, 1e-3, 3e-3)
LR_SEED = 100  # held out: never a reported seed
LR_TARGETS = ("eight_gaussians", "mirror_modes")

# (section, title, [(model, reference), ...]): Δ = model − reference test NLL, paired by seed
COMPARISONS = (
    (
        "a",
        "RAD's mechanism: K = 3 and K = 5 pieces against its own K = 1",
        (("rad3", "rad1"), ("rad5", "rad1"), ("rad1", "realnvp_gaussian")),  # the last: two affine coupling flows
    ),
    ("b", "Mixture base vs RAD within the affine family", (("realnvp_mog", "rad3"), ("realnvp_mog", "rad5"))),
    ("c", "Mixture base vs Gaussian base under Real NVP", (("realnvp_mog", "realnvp_gaussian"),)),
    ("d", "The spline block", (("nsf_mog", "nsf_gaussian"), ("nsf_gaussian", "rad3"))),
)
OURS = ("realnvp_mog", "nsf_mog")  # the models with the mixture base, whose losses the report lists

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

# the base comparison's columns with the study's model, RAD's pieces, the budget and the best validation NLL; without
# mog_parameters (here the MoG flow at the model's own width, not the budget)
CSV_COLUMNS_RAD = (
    "dataset",
    "features",
    "model",
    "base",
    "transform",
    "seed",
    "num_components",
    "num_layers",
    "num_pieces",
    "hidden_features",
    "parameters",
    "budget",
    *CSV_COLUMNS[CSV_COLUMNS.index("steps") : CSV_COLUMNS.index("best_step") + 1],
    "val_nll",
    *CSV_COLUMNS[CSV_COLUMNS.index("nll") :],
)
ARRAY_FILES = {"density": "densities", "samples": "samples", "assigned_points": "points", "pieces": "pieces"}
ARRAY_KEY = ("dataset", "model", "seed")  # the names of a row's arrays in the .npz files

FULL = dict(datasets=TARGETS, seeds=(0, 1, 2), steps=1200, budget_width=BUDGET_WIDTH, num_layers=4, resolution=160)
QUICK = dict(
    datasets=("eight_gaussians", "mirror_modes"),
    seeds=(0,),
    steps=6,
    budget_width=8,
    num_layers=2,
    batch_size=64,
    num_train=400,
    num_val=100,
    num_test=200,
    resolution=24,
    lr_grid=(1e-3, 3e-3),
)


# ---------------------------------------------------------------------------------------------------- budgets
def rad_study_components(target) -> int:
    """K of the study's MoG bases: max(M, `RAD_STUDY_MIN_COMPONENTS` = 8), M the target's point modes (0 when it
    lists none); fewer than the base comparison's `comparison.default_num_components`."""
    modes = getattr(target, "modes", None)
    return max(RAD_STUDY_MIN_COMPONENTS, 0 if modes is None else int(modes.shape[0]))


@functools.cache
def _parameters(model: str, num_components: int, num_layers: int, width: int) -> int:
    base, transform, num_pieces = _KINDS[model]
    if base == "rad":
        return count_parameters(RAD(2, num_pieces=num_pieces, num_layers=num_layers, hidden_features=width))
    widths = dict(num_layers=num_layers, hidden_features=width, num_components=num_components)
    return flow_parameters(2, base, transform, **widths)


def study_budget(dataset: str, *, num_layers: int, budget_width: int = BUDGET_WIDTH) -> int:
    """The budget of `dataset`: the parameters of its Real NVP + MoG flow (K = `rad_study_components`) of width
    `budget_width`."""
    return _parameters(BUDGET_MODEL, rad_study_components(get_dataset(dataset)), num_layers, budget_width)


def model_widths(dataset: str, *, num_layers: int, budget_width: int = BUDGET_WIDTH) -> dict[str, tuple[int, int]]:
    """{model: (width, parameters)} for `dataset`: each model of `MODELS` at the width whose count is nearest the
    target's budget (`study_budget`; the budget model keeps `budget_width`)."""
    K = rad_study_components(get_dataset(dataset))
    budget = study_budget(dataset, num_layers=num_layers, budget_width=budget_width)
    out = {}
    for model in MODELS:
        width = (
            budget_width
            if model == BUDGET_MODEL
            else closest_width(lambda h, model=model: _parameters(model, K, num_layers, h), budget)
        )
        out[model] = (width, _parameters(model, K, num_layers, width))
    return out


def model_of(row: dict[str, Any]) -> str:
    """The study's model name of a row or spec (a dict with base, transform and num_pieces)."""
    if row["base"] == "rad":
        return f"rad{int(row['num_pieces'])}"
    return f"{row['transform']}_{row['base']}"


# ---------------------------------------------------------------------------------------------------- the runs
def _check_targets(datasets: Sequence[str], seeds: Sequence[int]) -> None:
    if not datasets or not seeds:
        raise ValueError(f"need at least one target and one seed; got datasets={list(datasets)}, seeds={list(seeds)}")
    for name in datasets:
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; choose among the 2-D targets {', '.join(TARGETS)}")
        if get_dataset(name).features != 2:
            raise ValueError(f"the RAD study is on 2-D targets; {name!r} has {get_dataset(name).features} features")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct; got {list(seeds)}")


def rad_specs(
    datasets: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int,
    num_layers: int = 4,
    budget_width: int = BUDGET_WIDTH,
    learning_rates: dict[str, float] | None = None,
    models: Sequence[str] = MODELS,
    density_resolution: int | None = 160,
    **spec_kwargs: Any,
) -> list[RunSpec]:
    """One `RunSpec` per target × seed × model, target-major (an interrupted study has whole targets), each model at
    its `model_widths` width (`match_budget=False`) and its learning rate (`learning_rates`, default
    `LEARNING_RATES`); the first seed records densities, samples and RAD's partition for the figures. Refuses
    (ValueError) targets that are not 2-D, an empty list of targets or seeds, repeated seeds, unknown models."""
    datasets, seeds = list(datasets), list(seeds)
    _check_targets(datasets, seeds)
    learning_rates = LEARNING_RATES if learning_rates is None else learning_rates
    for model in models:
        if model not in MODELS or model not in learning_rates:
            raise ValueError(f"unknown model {model!r} or no learning rate for it; models are {', '.join(MODELS)}")
    check_positive_int("steps", steps)
    specs = []
    for dataset in datasets:
        widths = model_widths(dataset, num_layers=num_layers, budget_width=budget_width)
        for seed in seeds:
            for model in models:
                base, transform, num_pieces = _KINDS[model]
                specs.append(
                    RunSpec(
                        dataset,
                        base,
                        transform,
                        seed=seed,
                        steps=steps,
                        lr=learning_rates[model],
                        num_components=rad_study_components(get_dataset(dataset)),
                        hidden_features=widths[model][0],
                        num_layers=num_layers,
                        num_pieces=num_pieces,
                        match_budget=False,
                        checkpoint_every=min(100, steps),
                        density_resolution=density_resolution if seed == seeds[0] else None,
                        **spec_kwargs,
                    )
                )
    return specs


def lr_specs(
    datasets: Sequence[str] = LR_TARGETS, *, seed: int = LR_SEED, grid: Sequence[float] = LR_GRID, **kwargs: Any
) -> list[RunSpec]:
    """The learning-rate selection's runs: every model at every lr of `grid` on `datasets`, seed `seed` (held out),
    no figures; `kwargs` as `rad_specs`'."""
    return [
        spec
        for lr in grid
        for spec in rad_specs(
            datasets, [seed], learning_rates={m: lr for m in MODELS}, density_resolution=None, **kwargs
        )
    ]


# ---------------------------------------------------------------------------------------------------- reductions
def _ok(row: dict[str, Any]) -> bool:
    return not row.get("error")


def summarize_models(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds per (dataset, model), in first-seen order: dataset, model, hidden_features,
    parameters, budget, lr, steps, runs, failed, n (rows used), best_steps (per seed, in seed order; NaN for a failed
    run), and nll / kl / seconds_per_step `_mean` and `_std` (`report.mean_std`)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row.get("model") or model_of(row)), []).append(row)
    out = []
    for (dataset, model), group in groups.items():
        group = sorted(group, key=lambda r: r["seed"])
        good = [r for r in group if _ok(r)]
        first = group[0]
        summary = {
            "dataset": dataset,
            "model": model,
            **{k: first.get(k) for k in ("hidden_features", "parameters", "budget", "lr", "steps")},
            "runs": len(group),
            "failed": len(group) - len(good),
            "n": len(good),
            "best_steps": [r["best_step"] for r in group],
        }
        for metric in ("nll", "kl", "seconds_per_step"):
            summary[f"{metric}_mean"], summary[f"{metric}_std"] = mean_std(float(r[metric]) for r in good)
        out.append(summary)
    return out


def paired_by_seed(rows: Sequence[dict[str, Any]], model: str, reference: str) -> list[dict[str, Any]]:
    """`model` minus `reference` test NLL per dataset, paired by seed (the same data), in first-seen order: dataset,
    pairs, wins (seeds where `model` is lower), diff_mean, diff_std (sample std over seeds), diffs (per seed)."""
    values: dict[str, dict[str, dict[int, float]]] = {}
    for row in rows:
        name = row.get("model") or model_of(row)
        if _ok(row) and name in (model, reference):
            values.setdefault(row["dataset"], {model: {}, reference: {}})[name][row["seed"]] = float(row["nll"])
    out = []
    for dataset, by_model in values.items():
        seeds = sorted(set(by_model[model]) & set(by_model[reference]))
        if not seeds:
            continue
        diffs = [by_model[model][s] - by_model[reference][s] for s in seeds]
        mean, std = mean_std(diffs)
        wins = sum(d < 0 for d in diffs)
        out.append(dict(dataset=dataset, pairs=len(seeds), wins=wins, diff_mean=mean, diff_std=std, diffs=diffs))
    return out


def select_learning_rates(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model, the learning rate with the lowest mean best-validation NLL over the targets of the selection's
    rows (a diverged run counts as +∞): {model: {"lr", "score" (that mean), "scores" ({lr: mean})}}."""
    by_model: dict[str, dict[float, list[float]]] = {}
    for row in rows:
        score = float(row["val_nll"]) if _ok(row) else math.inf
        by_model.setdefault(row.get("model") or model_of(row), {}).setdefault(float(row["lr"]), []).append(score)
    out = {}
    for model in [m for m in MODELS if m in by_model]:
        scores = {lr: math.fsum(v) / len(v) for lr, v in sorted(by_model[model].items())}
        best = min(scores, key=lambda lr: (scores[lr], lr))
        out[model] = {"lr": best, "score": scores[best], "scores": scores}
    return out


# ---------------------------------------------------------------------------------------------------- the report
def _settings(rows: Sequence[dict[str, Any]]) -> list[str]:
    first = rows[0]
    seeds = sorted({row["seed"] for row in rows})
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    models = [m for m in MODELS if any(r["model"] == m for r in rows)]
    lrs = {r["model"]: r["lr"] for r in rows}
    frozen = all(lrs[m] == LEARNING_RATES.get(m) for m in models)
    lr_text = ", ".join(f"{MODEL_LABELS[m]} {lrs[m]:g}" for m in models)
    return [
        f"{len(rows)} runs: {len(datasets)} targets × {len(models)} models × {len(seeds)} "
        f"seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))}). Every run: Adam with cosine decay, "
        f"batch {first['batch_size']}, gradient-norm clipping at 5, {first['steps']} steps, {first['num_layers']} "
        f"layers; {first['num_train']} train / {first['num_val']} validation / {first['num_test']} test points drawn "
        "from the target with the seed (the same points for every model of a seed). The parameters with the lowest "
        f"validation NLL (checked every {first['checkpoint_every']} steps) are evaluated on the test set; *best step* "
        "is the step of that checkpoint, per seed.",
        "",
        "- **Affine block**: Real NVP (affine couplings) over a standard normal or over a diagonal mixture of "
        f"K = max(M, {RAD_STUDY_MIN_COMPONENTS}) Gaussians (M: the target's point modes; EM-initialised, the most "
        f"likely of {INIT_RESTARTS} k-means++ seedings, on the training data pushed through the new flow, scales × "
        f"{training.AFFINE_FLOW_INIT_SCALE_FACTOR:g}; learning at {training.BASE_LR_FACTOR:g} × lr); RAD "
        "(`mog_flows.baselines.RAD`: continuous piecewise-linear couplings whose K pieces alternate in slope sign "
        "and fold the line, a gate that fades to 0 at the ends of each piece's image, standard normal base) with "
        "K = 1 (one increasing affine piece: an affine coupling flow, the ablation), K = 3 and K = 5.",
        "- **Spline block**: neural spline flows (NSF) over a standard normal or the same mixture.",
        f"- **Equal budgets**: a target's budget is the parameter count of its Real NVP + MoG flow of width "
        f"{_budget_width(rows)}; every other model gets the conditioner width whose count is nearest the budget "
        "(*width*, *params*; *vs budget* is the relative difference).",
        "- **Learning rates**: "
        + (
            f"each model's own, chosen on the held-out seed {LR_SEED} over {' and '.join(LR_TARGETS)} from "
            f"{', '.join(f'{lr:g}' for lr in LR_GRID)} by the mean best-validation NLL "
            "(`rad_comparison_lr.md`, frozen as `mog_flows.studies.rad.LEARNING_RATES`): "
            if frozen
            else "given on the command line (not the selected `LEARNING_RATES`): "
        )
        + lr_text
        + "."
        + (
            " Every model chose the grid's largest value, so each might do better at a larger one (not tried)."
            if frozen and all(lrs[m] == max(LR_GRID) for m in models)
            else ""
        ),
        "- **NLL**: mean test negative log-likelihood in nats (lower is better). **KL** = KL(p‖q) ≈ mean over the "
        "same test points of log p − log q. ± is the sample standard deviation over seeds. **Δ A − B**: the "
        "difference of test NLLs paired by seed (same data), mean ± std; *A lower*: seeds where A has the lower NLL. "
        "**ms/step**: mean training wall time per step (one torch thread, validation included; two runs shared the "
        "machine's two cores with other work, so these are rough).",
    ]


def _budget_width(rows: Sequence[dict[str, Any]]) -> int:
    widths = {r["hidden_features"] for r in rows if r["model"] == BUDGET_MODEL}
    return min(widths) if widths else BUDGET_WIDTH


def _main_table(rows: Sequence[dict[str, Any]], summaries: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    lines = [
        "| target | model | width | params | vs budget | lr | NLL | KL | best step | ms/step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        for model in MODELS:
            s = summaries.get((dataset, model))
            if s is None:
                continue
            steps = " / ".join("—" if math.isnan(float(b)) else str(int(b)) for b in s["best_steps"])
            failed = f" ({s['failed']} failed)" if s["failed"] else ""
            ms = "—" if math.isnan(s["seconds_per_step_mean"]) else f"{1000 * s['seconds_per_step_mean']:.1f}"
            deviation = 100 * (s["parameters"] / s["budget"] - 1)
            lines.append(
                f"| {dataset}{failed} | {MODEL_LABELS[model]} | {s['hidden_features']} | {s['parameters']} "
                f"| {deviation:+.1f} % | {s['lr']:g} | {pm(s['nll_mean'], s['nll_std'])} "
                f"| {pm(s['kl_mean'], s['kl_std'])} | {steps} | {ms} |"
            )
    return lines


def _budget_and_steps(rows: Sequence[dict[str, Any]]) -> list[str]:
    deviations = [(r["parameters"] / r["budget"] - 1, r) for r in rows]
    worst, at = max(deviations, key=lambda d: abs(d[0]))
    within = all(abs(d) <= BUDGET_TOLERANCE for d, _ in deviations)
    good = [r for r in rows if _ok(r)]
    last = [r for r in good if int(r["best_step"]) == int(r["steps"])]
    by_model = {m: sum(r["model"] == m for r in last) for m in MODELS if any(r["model"] == m for r in good)}
    return [
        f"- **Budgets**: every model within ±{100 * BUDGET_TOLERANCE:g} % of its target's budget — "
        f"**{'yes' if within else 'NO'}** (largest difference {100 * worst:+.1f} %, {MODEL_LABELS[at['model']]} on "
        f"{at['dataset']}).",
        f"- **Best checkpoint at the last step** ({int(rows[0]['steps'])}): {len(last)} of {len(good)} runs ("
        + ", ".join(f"{MODEL_LABELS[m]} {n}" for m, n in by_model.items())
        + "); those models might still have improved with more steps.",
    ]


def _comparison_lines(rows: Sequence[dict[str, Any]], model: str, reference: str) -> list[str]:
    """One paired comparison: a table per target and a summary line."""
    summaries = {(s["dataset"], s["model"]): s for s in summarize_models(rows)}
    pairs = paired_by_seed(rows, model, reference)
    a, b = MODEL_LABELS[model], MODEL_LABELS[reference]
    if not pairs:
        return [f"{a} vs {b}: no paired runs.", ""]
    lines = [
        f"**{a} vs {b}** (Δ = {a} − {b}):",
        "",
        f"| target | NLL {a} | NLL {b} | Δ | {a} lower |",
        "|---|---|---|---|---|",
    ]
    lower_mean = []
    for p in pairs:
        m, r = summaries[(p["dataset"], model)], summaries[(p["dataset"], reference)]
        lines.append(
            f"| {p['dataset']} | {pm(m['nll_mean'], m['nll_std'])} | {pm(r['nll_mean'], r['nll_std'])} "
            f"| {pm(p['diff_mean'], p['diff_std'])} | {p['wins']}/{p['pairs']} |"
        )
        if p["diff_mean"] < 0:
            lower_mean.append(p["dataset"])
    seeds_won = sum(p["wins"] for p in pairs)
    seeds = sum(p["pairs"] for p in pairs)
    mean_diff, std_diff = mean_std(p["diff_mean"] for p in pairs)
    clear = [p["dataset"] for p in pairs if p["wins"] == p["pairs"]]
    clear_loss = [p["dataset"] for p in pairs if all(d > 0 for d in p["diffs"])]  # a tie is neither
    lines += [
        "",
        f"Summary: {a} has the lower mean NLL on {len(lower_mean)} of {len(pairs)} targets and is lower on "
        f"{seeds_won} of {seeds} paired seeds; Δ averaged over targets {pm(mean_diff, std_diff)} nats (± over "
        f"targets). Lower on every seed: {', '.join(clear) or 'none'}; higher on every seed: "
        f"{', '.join(clear_loss) or 'none'}.",
        "",
    ]
    return lines


def _losses(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Where a mixture-base model is not better than what it is compared with."""
    lines = []
    for _, _, pairs in COMPARISONS:
        for model, reference in pairs:
            if model not in OURS:
                continue
            for p in paired_by_seed(rows, model, reference):
                a, b = MODEL_LABELS[model], MODEL_LABELS[reference]
                if p["diff_mean"] >= 0 or math.isnan(p["diff_mean"]):
                    lines.append(
                        f"- {p['dataset']}: {a} is worse than {b} (Δ {pm(p['diff_mean'], p['diff_std'])}, lower on "
                        f"{p['wins']}/{p['pairs']} seeds)."
                    )
                elif p["wins"] < p["pairs"]:
                    lines.append(
                        f"- {p['dataset']}: {a} is lower than {b} on average (Δ {pm(p['diff_mean'], p['diff_std'])}) "
                        f"but not on every seed ({p['wins']}/{p['pairs']})."
                    )
    return lines or ["- Nowhere: every mixture-base model is lower than its comparison on every seed of every target."]


def write_rad_markdown(
    rows: Sequence[dict[str, Any]],
    path: str | os.PathLike,
    *,
    title: str = "RAD vs affine and spline flows with Gaussian and mixture bases",
    figures: Sequence[str] = (),
) -> str:
    """The study's report: settings, the table (mean ± std over seeds, best step per seed), budgets and best steps
    checked, the paired comparisons of `COMPARISONS`, the mixture-base models' losses, the figures (`figures`: file
    names to link) and where the results can be set beside the paper. Writes it to `path` and returns it. Every row
    needs "model" and "budget" (`main` adds them)."""
    summaries = {(s["dataset"], s["model"]): s for s in summarize_models(rows)}
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    lines = [f"# {title}", "", *_settings(rows), "", *_main_table(rows, summaries), "", *_budget_and_steps(rows)]
    for section, heading, pairs in COMPARISONS:
        lines += ["", f"## ({section}) {heading}", ""]
        for model, reference in pairs:
            lines += _comparison_lines(rows, model, reference)
    lines += ["## Where the mixture base loses or does not win on every seed", "", *_losses(rows)]
    if figures:  # named, not linked: the docs include this report from another folder
        lines += ["", "## Figures", ""]
        lines += [f"- `{name}`: {_FIGURE_TEXT['_partition' in name]}" for name in figures]
    lines += _paper_section(datasets)
    failures = [row for row in rows if not _ok(row)]
    if failures:
        lines += ["", "## Failed runs", ""]
        lines += [
            f"- {r['dataset']}, {MODEL_LABELS[r['model']]}, seed {r['seed']}: {r['error'].splitlines()[0]}"
            for r in failures
        ]
    lines.append("")
    text = "\n".join(lines)
    Path(path).write_text(text)
    return text


_FIGURE_TEXT = {
    False: "per target, the true density, then each model's learned density and its samples (the first seed).",
    True: f"{MODEL_LABELS[PARTITION_MODEL]}'s inferred partition (`RAD.assign`): per target, its density, then the "
    "first recorded test points coloured by their piece in the first and in the last layer (the first seed).",
}


def _paper_section(datasets: Sequence[str]) -> list[str]:
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
        f"They coincide with targets run here: {', '.join(beside) or 'none in this run'}. Not reconstructed: "
        f"{', '.join(NOT_RECONSTRUCTED)}. Targets the paper does not have: {', '.join(others) or 'none'}.",
        "- Where they differ: (i) this RAD is a reconstruction (`mog_flows.baselines.rad`: continuous "
        "piecewise-linear maps whose pieces alternate in slope sign and fold the line, a gate that fades to zero at "
        "the ends of each piece's image, ResidualNet conditioners), not the paper's code, of which none is public; "
        "(ii) the targets' parameters are the zoo's, not the paper's, so NLL values are not comparable with the "
        "paper's numbers, only rankings and pictures are; (iii) the budgets are small (a few thousand parameters) "
        "and training is short (the steps above, on a CPU).",
    ]


def write_lr_markdown(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> str:
    """The learning-rate selection's report: best-validation and test NLL per model, lr and target, the mean
    validation NLL that decides, and the chosen lr per model (with the constant to freeze). Writes it to `path`."""
    chosen = select_learning_rates(rows)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    cells = {(r["model"], float(r["lr"]), r["dataset"]): r for r in rows}
    header = " | ".join(f"val / test NLL {d}" for d in datasets)
    lines = [
        "# RAD study: learning rate per model",
        "",
        f"Seed {', '.join(map(str, seeds))} (held out: the study reports other seeds), {rows[0]['steps']} steps, "
        f"every other setting as the study's. Chosen per model: the lr with the lowest mean best-validation NLL over "
        f"{', '.join(datasets)} (a diverged run counts as +∞).",
        "",
        f"| model | lr | {header} | mean val NLL | chosen |",
        "|---|---|" + "---|" * len(datasets) + "---|---|",
    ]
    for model, choice in chosen.items():
        for lr, score in choice["scores"].items():
            values = []
            for d in datasets:
                r = cells.get((model, lr, d))
                values.append("—" if r is None or not _ok(r) else f"{float(r['val_nll']):.3f} / {float(r['nll']):.3f}")
            lines.append(
                f"| {MODEL_LABELS[model]} | {lr:g} | {' | '.join(values)} | {score:.4f} "
                f"| {'**yes**' if lr == choice['lr'] else ''} |"
            )
    lines += ["", "The constant (`mog_flows.studies.rad.LEARNING_RATES`):", "", "```python", "LEARNING_RATES = {"]
    lines += [f'    "{model}": {choice["lr"]:g},' for model, choice in chosen.items()]
    lines += ["}", "```", ""]
    text = "\n".join(lines)
    Path(path).write_text(text)
    return text


# ---------------------------------------------------------------------------------------------------- figures
def plot_rad_grid(rows: Sequence[dict[str, Any]], path: str | os.PathLike, *, seed: int, bounds: float = 4.5) -> bool:
    """One row per target: the true density, then each model's learned density and its samples (seed `seed`,
    recorded by `run_one` with `density_resolution` on [-bounds, bounds]²; the true density is drawn at the same
    resolution). Returns False (and writes nothing) when no target has every model recorded."""
    from ..plotting import density_on_grid, plt

    chosen = {(r["dataset"], r["model"]): r for r in rows if r["seed"] == seed and "density" in r and "samples" in r}
    models = [m for m in MODELS if any(r["model"] == m for r in rows)]
    datasets = [d for d in dict.fromkeys(r["dataset"] for r in rows) if all((d, m) in chosen for m in models)]
    if not datasets:
        return False
    columns = 1 + 2 * len(models)
    fig, axes = plt.subplots(len(datasets), columns, figsize=(1.8 * columns, 1.9 * len(datasets)), squeeze=False)
    extent = (-bounds, bounds, -bounds, bounds)
    for i, dataset in enumerate(datasets):
        target = get_dataset(dataset)
        resolution = chosen[(dataset, models[0])]["density"].shape[-1]
        _, true_density = density_on_grid(lambda x, target=target: target.log_prob(x.double()), bounds, resolution)
        axes[i, 0].imshow(true_density.numpy(), extent=extent, origin="lower", cmap="magma")
        axes[i, 0].set_title(f"{dataset}: true density", fontsize=6)
        for j, model in enumerate(models):
            row = chosen[(dataset, model)]
            density_ax, sample_ax = axes[i, 1 + 2 * j], axes[i, 2 + 2 * j]
            density_ax.imshow(row["density"].numpy(), extent=extent, origin="lower", cmap="magma")
            density_ax.set_title(f"{MODEL_LABELS[model]}\nNLL {row['nll']:.3f}", fontsize=6)
            samples = row["samples"].numpy()
            sample_ax.scatter(samples[:, 0], samples[:, 1], s=0.3, alpha=0.5, color=f"C{j}", rasterized=True)
            sample_ax.set_xlim(-bounds, bounds)
            sample_ax.set_ylim(-bounds, bounds)
            sample_ax.set_aspect("equal")
            sample_ax.set_title(f"{MODEL_LABELS[model]}: samples", fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_partition(
    rows: Sequence[dict[str, Any]],
    path: str | os.PathLike,
    *,
    seed: int,
    model: str = PARTITION_MODEL,
    datasets: Sequence[str] = PARTITION_TARGETS,
    bounds: float = 4.5,
) -> bool:
    """RAD's inferred partition: per target of `datasets` (those recorded), the model's learned density, then the
    recorded test points coloured by their piece in the first and in the last layer (`RAD.assign`, seed `seed`).
    Returns False (and writes nothing) when no such row was recorded."""
    from ..plotting import plt

    chosen = {r["dataset"]: r for r in rows if r["seed"] == seed and r["model"] == model and "pieces" in r}
    shown = [d for d in datasets if d in chosen]
    if not shown:
        return False
    fig, axes = plt.subplots(len(shown), 3, figsize=(7.5, 2.5 * len(shown)), squeeze=False)
    extent = (-bounds, bounds, -bounds, bounds)
    for i, dataset in enumerate(shown):
        row = chosen[dataset]
        points, pieces = row["assigned_points"].numpy(), row["pieces"].numpy()  # (S, 2), (S, L, 1)
        if "density" in row:
            axes[i, 0].imshow(row["density"].numpy(), extent=extent, origin="lower", cmap="magma")
        axes[i, 0].set_title(f"{dataset}: {MODEL_LABELS[model]} density", fontsize=7)
        for j, (layer, name) in enumerate(((0, "first"), (pieces.shape[1] - 1, "last"))):
            ax = axes[i, 1 + j]
            k = pieces[:, layer, 0]
            for piece in range(int(row["num_pieces"])):
                mask = k == piece
                ax.scatter(*points[mask].T, s=1.0, color=f"C{piece}", label=f"piece {piece}", rasterized=True)
            ax.set_xlim(-bounds, bounds)
            ax.set_ylim(-bounds, bounds)
            ax.set_aspect("equal")
            ax.set_title(f"test points by piece, {name} layer ({layer + 1})", fontsize=7)
        axes[i, 2].legend(fontsize=6, markerscale=4, loc="lower right")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------------- files
def _annotate(rows: Sequence[dict[str, Any]], *, budget_width: int) -> list[dict[str, Any]]:
    """The rows with "model" and "budget" (`study_budget` of the row's target and layers)."""
    return [
        {
            **row,
            "model": model_of(row),
            "budget": study_budget(row["dataset"], num_layers=int(row["num_layers"]), budget_width=budget_width),
        }
        for row in rows
    ]


def write_rad_arrays(rows: Sequence[dict[str, Any]], out: str | os.PathLike, name: str) -> list[Path]:
    """The recorded tensors (densities, samples, RAD's recorded points and their pieces) as `out/NAME_<file>.npz`
    (`ARRAY_FILES`), keyed "dataset/model/seed". Returns the paths written."""
    paths = []
    for field, file in ARRAY_FILES.items():
        paths.append(Path(out) / f"{name}_{file}.npz")
        # the densities serve the figures only: float16 (3 digits) keeps 77 grids of 160² under 5 MB
        dtype = "float16" if field == "density" else None
        report.write_arrays(rows, paths[-1], field, key=ARRAY_KEY, dtype=dtype)
    return paths


def read_rad_results(out: str | os.PathLike, name: str) -> list[dict[str, Any]]:
    """The rows a finished study (or --select-lr) wrote to `out`: NAME.csv, with the tensors of the NAME_*.npz files
    that exist."""
    out = Path(out)
    rows = report.read_csv(out / f"{name}.csv", integers=(*INTEGER_COLUMNS, "budget"), texts=(*TEXT_COLUMNS, "model"))
    for field, file in ARRAY_FILES.items():
        if (out / f"{name}_{file}.npz").exists():
            rows = report.read_arrays(rows, out / f"{name}_{file}.npz", field, key=ARRAY_KEY)
    return rows


def _write_reports(rows, out: Path, name: str, *, title: str, select_lr: bool) -> tuple[str, list[str]]:
    """Write NAME.md (and the figures) from the rows; returns the report and the files written."""
    if select_lr:
        return write_lr_markdown(rows, out / f"{name}.md"), [f"{name}.md"]
    seed = min(row["seed"] for row in rows)
    figures = []
    if plot_rad_grid(rows, out / f"{name}.png", seed=seed):
        figures.append(f"{name}.png")
    if plot_partition(rows, out / f"{name}_partition.png", seed=seed):
        figures.append(f"{name}_partition.png")
    return write_rad_markdown(rows, out / f"{name}.md", title=title, figures=figures), [f"{name}.md", *figures]


# ---------------------------------------------------------------------------------------------------- command line
def _parser(default_out: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rad_comparison",
        description="RAD (K = 1, 3, 5) vs Real NVP and NSF with a Gaussian or a MoG base on the 2-D targets, equal "
        "parameter budgets, each model at its own learning rate. Writes rad_comparison.{md,csv,png}, "
        "rad_comparison_partition.png and rad_comparison_*.npz (rad_comparison_quick.* with --quick); --select-lr "
        "writes rad_comparison_lr.{md,csv} (the learning rates on the held-out seed). Finished runs are kept in "
        "OUT/.NAME_cache/ until all are done: the same command resumes.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings (seconds), for tests")
    parser.add_argument(
        "--select-lr",
        action="store_true",
        help=f"choose each model's lr from {' '.join(map(str, LR_GRID))} on seed {LR_SEED} over {' '.join(LR_TARGETS)}",
    )
    parser.add_argument("--datasets", nargs="+", help=f"2-D targets (default: {' '.join(TARGETS)})")
    parser.add_argument("--seeds", nargs="+", type=int, help=f"default: 0 1 2 (never {LR_SEED}, the selection's)")
    parser.add_argument("--steps", type=int, help=f"training steps for every model (default {FULL['steps']})")
    parser.add_argument("--budget-width", type=int, help=f"Real NVP + MoG width that sets the budget ({BUDGET_WIDTH})")
    parser.add_argument("--num-layers", type=int, help="layers of every model (default 4)")
    parser.add_argument("--batch-size", type=int, help="default 512")
    parser.add_argument("--lr", type=float, help="one learning rate for every model (default: LEARNING_RATES)")
    parser.add_argument("--workers", type=int, default=1, help="parallel runs (default 1)")
    shown = "the current directory" if str(default_out) == "." else str(default_out)
    parser.add_argument("--out", type=Path, default=default_out, help=f"results folder (default: {shown})")
    parser.add_argument("--name", help="file stem (default rad_comparison[_quick][_lr])")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite NAME.md and the figures from NAME.csv and the .npz files already in OUT, without training",
    )
    return parser


def main(argv: Sequence[str] | None = None, *, default_out: str | os.PathLike = ".") -> list[dict]:
    """The study's command line; returns the rows. Bad settings raise ValueError. Results go to `--out`, by default
    `default_out` (the current directory unless the caller names another)."""
    args = _parser(Path(default_out)).parse_args(argv)
    preset = QUICK if args.quick else FULL
    check_positive_int("workers", args.workers)
    if args.lr is not None and not (args.lr > 0 and math.isfinite(args.lr)):
        raise ValueError(f"lr must be a positive finite number; got {args.lr}")
    if args.seeds is not None and any(seed < 0 for seed in args.seeds):
        raise ValueError(f"seeds must be non-negative integers; got {args.seeds}")
    if not args.select_lr and args.seeds is not None and LR_SEED in args.seeds:
        raise ValueError(f"seed {LR_SEED} chose the learning rates; report other seeds")
    name = args.name or "rad_comparison" + ("_quick" if args.quick else "") + ("_lr" if args.select_lr else "")
    title = "RAD vs affine and spline flows with Gaussian and mixture bases" + (" (--quick)" if args.quick else "")
    out: Path = args.out
    if args.report_only:
        if not (out / f"{name}.csv").exists():
            raise ValueError(f"--report-only needs the results of a finished study; {out / name}.csv is missing")
        rows = read_rad_results(out, name)
        text, _ = _write_reports(rows, out, name, title=title, select_lr=args.select_lr)
        print(text)
        return rows
    budget_width = args.budget_width or preset["budget_width"]
    settings = dict(
        steps=args.steps if args.steps is not None else preset["steps"],
        num_layers=args.num_layers or preset["num_layers"],
        budget_width=budget_width,
        **{k: preset[k] for k in ("batch_size", "num_train", "num_val", "num_test") if k in preset},
    )
    if args.batch_size is not None:
        settings["batch_size"] = args.batch_size
    if args.select_lr:
        grid = [args.lr] if args.lr is not None else preset.get("lr_grid", LR_GRID)
        specs = lr_specs(args.datasets or LR_TARGETS, seed=(args.seeds or [LR_SEED])[0], grid=grid, **settings)
    else:
        rates = None if args.lr is None else {m: args.lr for m in MODELS}
        seeds = list(args.seeds if args.seeds is not None else preset["seeds"])
        datasets = args.datasets or preset["datasets"]
        specs = rad_specs(datasets, seeds, learning_rates=rates, density_resolution=preset["resolution"], **settings)
    began = time.perf_counter()
    rows, cache_dir = run_study(specs, out, name, workers=args.workers, longest_first=False)
    rows = _annotate(rows, budget_width=budget_width)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the figure's true densities: as cheap on one thread
    try:
        report.write_csv(rows, out / f"{name}.csv", CSV_COLUMNS_RAD)
        text, written = _write_reports(rows, out, name, title=title, select_lr=args.select_lr)
        if not args.select_lr:
            written += [p.name for p in write_rad_arrays(rows, out, name)]
    finally:
        torch.set_num_threads(threads)
    shutil.rmtree(cache_dir)  # every row is in the files now
    print(text)
    print(f"wrote {', '.join(str(out / w) for w in [f'{name}.csv', *written])} in {time.perf_counter() - began:.0f} s")
    return rows

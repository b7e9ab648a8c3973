"""Gaussian base against mixture-of-Gaussians base: the same flows, parameter budgets, data, steps and optimiser.

Shapes: N points, D features, K mixture components, M target modes, R grid resolution.

One run (`RunSpec` -> `run_one`) draws train / validation / test sets from a target with `make_splits(seed)`,
builds a flow with `build_flow` (torch seeded with `seed`), trains it with `fit` (Adam, cosine decay, the MoG base
initialised by EM on the data pushed through the new, identity flow, widened under affine flows) and evaluates
the parameters with the lowest validation NLL (checked every `checkpoint_every` steps) on the test set:

    test NLL   = -(1/N) Σ_n log q(x_n)
    KL(p ‖ q) ≈ (1/N) Σ_n [log p(x_n) - log q(x_n)]     on the same test points x_n ~ p (targets with exact p)

plus mode coverage (targets with point modes) and the parameter count.

Rules that hold for every target and transform:

- K = max(M, `MIN_COMPONENTS` = 32), M the number of point modes the target lists (`target.modes`; 0 for
  rings, spirals and digits, which list none): more Gaussians than modes (`default_num_components`).
- Equal budgets: a diagonal MoG base adds K(1 + 2D) parameters, so the Gaussian-base flow gets the smallest
  width ≥ the MoG flow's `hidden_features` that gives it at least as many parameters as the MoG flow
  (`matched_hidden_features`). Any advantage of the mixture is then not bought with parameters.
- A third model kind, "rad" (`baselines.RAD`, `num_pieces` pieces, `num_layers` layers, standard normal base),
  gets the smallest width whose RAD has at least as many parameters as the MoG flow of the spec's transform
  (`matched_rad_hidden_features`): the RAD study (`studies.rad`) measures it against both flows.

The widths come from `studies.budgets`, the reductions and files from `studies.report`. `run_comparison` runs many
specs (in a process pool with one torch thread each when `workers > 1`); `summarize` and `paired_differences` reduce
the rows over seeds (mean ± sample std, `report.mean_std`); `write_markdown`, `plot_density_grid` and
`write_arrays` write the results, `read_results` reads them back, and `main` is the command line, which writes into
the folder given as `--out`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import training
from ..baselines import RAD
from ..checks import check_choice, check_positive_int
from ..datasets import DATASETS, Digits, Target, get_dataset, make_splits
from ..evaluation import evaluate
from ..flows import TRANSFORMS, build_flow
from ..mixture import INIT_RESTARTS, MixtureOfGaussians
from ..training import TrainingDivergedError, fit, load_checkpoint
from . import report
from .budgets import count_parameters, flow_parameters, matched_hidden_features, matched_rad_hidden_features
from .peers import PEERS, build_peer, finish_peer, matched_peer
from .report import mean_std, pm
from .runner import run_many

__all__ = [
    "BASES",
    "MODELS",
    "MIN_COMPONENTS",
    "DEFAULT_DATASETS",
    "CSV_COLUMNS",
    "ARRAY_FILES",
    "RunSpec",
    "default_num_components",
    "run_one",
    "spec_key",
    "run_comparison",
    "run_study",
    "summarize",
    "paired_differences",
    "write_markdown",
    "plot_density_grid",
    "write_arrays",
    "read_results",
    "main",
]

BASES = ("gaussian", "mog")
# what RunSpec.base may name: a flow's base, the RAD baseline, or "mixture": the MoG base alone (no flow), the
# reference that says what a flow adds to a mixture
MODELS = (*BASES, "rad", "mixture", *PEERS)  # PEERS: other libraries' multimodal flows (`studies.peers`)
_ROW_FORMAT = 3  # bump when run_one's rows change, so that cached rows are not reused
NUM_SAMPLES_RECORDED = 2000  # model samples a row keeps for figures (with density_resolution, D = 2)
MIN_COMPONENTS = 32  # the least K of a MoG base; more when the target lists more point modes
# the full run's targets, named one by one so that a target added to `datasets.DATASETS` joins it only when named
# here (the Stimper et al. 2022 problems, "stimper_*", have their own protocol: `studies.stimper`; "mirror_modes",
# the RAD study's target, was added after the committed full run and is not in it yet)
DEFAULT_DATASETS = (
    "eight_gaussians",
    "grid",
    "rings",
    "checkerboard",
    "moons",
    "pinwheel",
    "spirals",
    "banana_modes",
    "mixed_shapes",
    "ring_of_rings",
    "gaussian_mixture",
    "digits",
)
KL_TARGETS = {"eight_gaussians": 0.02, "grid": 0.02}  # the report checks MoG + NSF KL < threshold (nats) on these
ARRAY_FILES = {"density": "densities", "samples": "samples"}  # a row's arrays -> NAME_<file>.npz
INTEGER_COLUMNS = ("features", "seed", "num_components", "num_layers", "hidden_features", "parameters")
INTEGER_COLUMNS += ("mog_parameters", "steps", "batch_size", "num_train", "num_val", "num_test", "checkpoint_every")
INTEGER_COLUMNS += ("num_pieces",)
TEXT_COLUMNS = ("dataset", "base", "transform", "error")
METRICS = ("nll", "kl", "mode_coverage", "seconds_per_step")
CSV_COLUMNS = (
    "dataset",
    "features",
    "base",
    "transform",
    "seed",
    "num_components",
    "num_layers",
    "hidden_features",
    "parameters",
    "mog_parameters",
    "steps",
    "batch_size",
    "lr",
    "num_train",
    "num_val",
    "num_test",
    "checkpoint_every",
    "best_step",
    "nll",
    "nll_per_dim",
    "kl",
    "mode_coverage",
    "train_seconds",
    "seconds_per_step",
    "error",
)


# ---------------------------------------------------------------------------------------------------- one run
@dataclass(frozen=True)
class RunSpec:
    """Everything that defines one training run.

    Attributes:
        dataset: a name in `datasets.DATASETS`.
        base: "gaussian" or "mog" (the flow's base), "rad" (`baselines.RAD`, no flow) or "mixture" (the
            diagonal `MixtureOfGaussians` with the MoG flow's K alone, EM-initialised by `fit` and trained; its
            `transform` only names the MoG flow it is the reference for).
        transform: "nsf", "maf" or "realnvp"; for "rad", the transform of the MoG flow whose budget it is given.
        seed: seeds the data splits, the flow's initialisation and `fit`.
        steps, batch_size, lr: `fit`'s arguments (Adam with cosine decay from `lr`).
        num_components: K of the MoG base; None: `default_num_components(target)`. A Gaussian-base run uses it
            to compute the budget it is matched to.
        hidden_features: conditioner width of the MoG flow; the Gaussian-base flow gets
            `matched_hidden_features(...)` ≥ this.
        num_layers: flow layers (RAD: coupling layers).
        num_pieces: pieces per RAD layer (used by base "rad" only; not part of the other specs' keys).
        match_budget: True: the widths above (the MoG flow at `hidden_features`, the others matched to its
            budget); False: every model is built at width `hidden_features` as given (a study that matched the
            budgets itself, e.g. `studies.rad`; part of the key only when False).
        num_train, num_val, num_test: split sizes for sampled targets (digits use their fixed splits).
        checkpoint_every: steps between validations; the best validated parameters are evaluated.
        density_resolution: when set and D = 2, also record the learned density on an R × R grid over
            [-density_bounds, density_bounds]² (row key "density", not written to the CSV), and
            `NUM_SAMPLES_RECORDED` samples of the model (row key "samples").
    """

    dataset: str
    base: str
    transform: str
    seed: int = 0
    steps: int = 2000
    batch_size: int = 512
    lr: float = 1e-3
    num_components: int | None = None
    hidden_features: int = 64
    num_layers: int = 4
    num_pieces: int = 3
    match_budget: bool = True
    num_train: int = 50_000
    num_val: int = 5_000
    num_test: int = 10_000
    checkpoint_every: int = 100
    density_resolution: int | None = None
    density_bounds: float = 4.5

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("base", self.base, MODELS)
        check_choice("transform", self.transform, TRANSFORMS)
        positive = ("steps", "batch_size", "hidden_features", "num_layers", "num_pieces", "num_train", "num_val")
        for name in (*positive, "num_test"):
            check_positive_int(name, getattr(self, name))
        if self.num_components is not None:
            check_positive_int("num_components", self.num_components)
        if not isinstance(self.match_budget, bool):
            raise TypeError(f"match_budget must be a bool; got {self.match_budget!r}")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ValueError(f"seed must be a non-negative integer; got {self.seed!r}")


def default_num_components(target: Target) -> int:
    """K = max(M, `MIN_COMPONENTS` = 32), M the number of point modes the target lists (0 when it lists none).

    Not K = M: several Gaussians per mode or piece leave the flow less to bend and fewer ways to get stuck."""
    modes = getattr(target, "modes", None)
    return max(MIN_COMPONENTS, 0 if modes is None else int(modes.shape[0]))


def _build_model(
    spec: RunSpec, features: int, num_components: int, train: torch.Tensor | None = None
) -> tuple[torch.nn.Module, int, int]:
    """The spec's model with torch seeded by `spec.seed`: (model, its width, the MoG flow's parameter count, of
    `spec.transform` at `spec.hidden_features`). `train`: the training data, which a peer initialises its base from
    (its own recommended way)."""
    widths = dict(num_layers=spec.num_layers, hidden_features=spec.hidden_features, num_components=num_components)
    if not spec.match_budget and spec.base in ("rad", *BASES):  # the width as given, the budget the caller's
        mog_count = flow_parameters(features, "mog", spec.transform, **widths)
        torch.manual_seed(spec.seed)
        if spec.base == "rad":
            model = RAD(
                features, num_pieces=spec.num_pieces, num_layers=spec.num_layers, hidden_features=spec.hidden_features
            )
        else:
            model = build_flow(features, base=spec.base, transform=spec.transform, **widths)
        return model, spec.hidden_features, mog_count
    if spec.base in PEERS:  # the smallest width with at least the MoG flow's parameters (±5 % where it can)
        mog_count = flow_parameters(features, "mog", spec.transform, **widths)
        matched = matched_peer(
            spec.base, features, mog_count, num_layers=spec.num_layers, num_components=num_components
        )
        torch.manual_seed(spec.seed)
        model = build_peer(
            spec.base,
            features,
            hidden_features=matched.hidden_features,
            num_layers=spec.num_layers,
            num_components=num_components,
            data=train,
        )
        return model, matched.hidden_features, mog_count
    if spec.base == "mixture":  # K as the flow's; no budget matching: a reference, not a competitor
        mog_count = flow_parameters(features, "mog", spec.transform, **widths)
        torch.manual_seed(spec.seed)
        return MixtureOfGaussians(features, num_components), 0, mog_count
    if spec.base == "rad":
        hidden, _, mog_count = matched_rad_hidden_features(
            features, spec.transform, num_pieces=spec.num_pieces, **widths
        )
        torch.manual_seed(spec.seed)
        model = RAD(features, num_pieces=spec.num_pieces, num_layers=spec.num_layers, hidden_features=hidden)
        return model, hidden, mog_count
    hidden, _, mog_count = matched_hidden_features(features, spec.transform, **widths)
    if spec.base == "mog":
        hidden = spec.hidden_features
    torch.manual_seed(spec.seed)
    flow = build_flow(
        features,
        base=spec.base,
        transform=spec.transform,
        num_layers=spec.num_layers,
        hidden_features=hidden,
        num_components=num_components,
    )
    return flow, hidden, mog_count


def _splits(target: Target, spec: RunSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if isinstance(target, Digits):  # the fixed train / val / test splits
        return make_splits(target, None, None, None, seed=spec.seed)
    return make_splits(target, spec.num_train, spec.num_val, spec.num_test, seed=spec.seed)


def run_one(spec: RunSpec) -> dict[str, Any]:
    """Train and evaluate one model (a flow, or RAD); returns a row: the spec's settings, the model's width and
    parameter count ("parameters", and "mog_parameters", the budget of the MoG flow it is matched to), the test
    metrics ("nll", "nll_per_dim", "kl", "mode_coverage"; NaN where undefined), "best_step", "train_seconds",
    "seconds_per_step", "error" (empty, or the message of a diverged run, whose metrics are NaN) and, with
    `spec.density_resolution` and D = 2, "density" (R, R) float32 on the grid [y, x] and "samples"
    (`NUM_SAMPLES_RECORDED`, D) float32, and for RAD "assigned_points" (S, D), the first
    S = min(N, `NUM_SAMPLES_RECORDED`) test points, with "pieces" (S, L, D_b) int64, their pieces per layer
    (`RAD.assign`)."""
    target = get_dataset(spec.dataset)
    D = target.features
    K = spec.num_components or default_num_components(target)
    train, val, test = _splits(target, spec)
    flow, hidden, mog_count = _build_model(spec, D, K, train)
    row: dict[str, Any] = {
        **{k: v for k, v in dataclasses.asdict(spec).items() if k in CSV_COLUMNS},
        "num_pieces": spec.num_pieces,  # RAD's; the flows' rows carry the spec's unused value
        "features": D,
        "num_components": K,
        "hidden_features": hidden,
        "parameters": count_parameters(flow),
        "mog_parameters": mog_count,
        "num_train": train.shape[0],
        "num_val": val.shape[0],
        "num_test": test.shape[0],
        "error": "",
    }
    with tempfile.TemporaryDirectory(prefix="mog_flows_compare_") as directory:
        start = time.perf_counter()
        try:
            history = fit(
                flow,
                train,
                steps=spec.steps,
                batch_size=spec.batch_size,
                lr=spec.lr,
                seed=spec.seed,
                val_data=val,
                checkpoint_dir=directory,
                checkpoint_every=min(spec.checkpoint_every, spec.steps),
                device="cpu",
                progress=False,
            )
        except TrainingDivergedError as error:
            seconds = time.perf_counter() - start
            nan = {m: math.nan for m in ("nll", "nll_per_dim", "kl", "mode_coverage", "best_step")}
            return {**row, **nan, "train_seconds": seconds, "seconds_per_step": math.nan, "error": str(error)}
        seconds = time.perf_counter() - start
        load_checkpoint(Path(directory) / "best.pt", flow)
    if spec.base in PEERS:
        finish_peer(flow, spec.base)  # glasflow: the resampled base's normalising constant, estimated after training
    flow.eval()
    torch.manual_seed(spec.seed)  # mode coverage samples from the flow
    metrics = evaluate(flow, target, test, num_samples=min(5000, 2 * test.shape[0]))
    row.update(
        metrics,
        best_step=history.best_step,
        val_nll=history.best_val_nll,
        train_seconds=seconds,
        seconds_per_step=history.wall_time / max(history.steps, 1),
    )
    if spec.density_resolution and D == 2 and spec.base == "rad":  # RAD's partition of the recorded test points
        with torch.no_grad():
            row["assigned_points"] = test[:NUM_SAMPLES_RECORDED].float().cpu()
            row["pieces"] = flow.assign(row["assigned_points"])  # (S, L, D_b) int64
    if spec.density_resolution and D == 2:
        from ..plotting import density_on_grid

        with torch.no_grad():
            _, density = density_on_grid(
                lambda x: flow.log_prob(x.float()), spec.density_bounds, spec.density_resolution
            )
        row["density"] = density.float()
        torch.manual_seed(spec.seed)
        with torch.no_grad():
            row["samples"] = flow.sample(NUM_SAMPLES_RECORDED).float().cpu()
    return row


# ---------------------------------------------------------------------------------------------------- many runs
def _cost(spec: RunSpec) -> float:
    """A rough relative cost, to start the longest runs first."""
    features = get_dataset(spec.dataset).features
    return spec.steps * (3.0 if spec.transform == "nsf" or spec.base == "rad" else 1.0) * (1 + features / 16)


def spec_key(spec: RunSpec) -> str:
    """A file-name-safe digest of every field of `spec`, with K resolved (`default_num_components` when None),
    and of the format of the rows; it names the spec's cached row. `num_pieces` counts only for RAD specs."""
    fields = dataclasses.asdict(spec)
    if spec.base != "rad":
        del fields["num_pieces"]
    if spec.match_budget:  # the keys of specs written before the field existed
        del fields["match_budget"]
    if spec.base == "mog":  # how `fit` initialises the MoG base
        fields["affine_init_scale_factor"] = training.AFFINE_FLOW_INIT_SCALE_FACTOR
        fields["init_restarts"] = INIT_RESTARTS
        fields["base_lr_factor"] = training.BASE_LR_FACTOR
    if fields["num_components"] is None:
        fields["num_components"] = default_num_components(get_dataset(spec.dataset))
    text = json.dumps({"row_format": _ROW_FORMAT, **fields}, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def run_comparison(
    specs: Sequence[RunSpec],
    *,
    workers: int = 1,
    on_result: Callable[[int, int, dict[str, Any]], None] | None = None,
    cache_dir: str | os.PathLike | None = None,
    executor: concurrent.futures.Executor | None = None,
    longest_first: bool = True,
) -> list[dict[str, Any]]:
    """`run_one` for every spec, through `study_runner.run_many`: rows in the order of `specs`, one torch thread
    per run, a pool of `workers` spawned processes (longest runs first, or in the order of `specs` with
    `longest_first=False`, so that an interrupted study has the first specs' rows) when `workers > 1`, or any
    `concurrent.futures.Executor` (`executor`, e.g. a dask client's `get_executor()`), `on_result(done, total, row)`
    as each run finishes. With `cache_dir`, each finished row is saved there at once (`<spec_key(spec)>.pt`) and
    specs whose row is already there are not run again: a comparison that was killed resumes where it stopped."""
    return run_many(
        specs,
        run_one,
        key=spec_key,
        workers=workers,
        on_result=on_result,
        cache_dir=cache_dir,
        cost=_cost if longest_first else None,
        executor=executor,
    )


# ---------------------------------------------------------------------------------------------------- reductions
def _ok(row: dict[str, Any]) -> bool:
    return not row.get("error")


def summarize(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per (dataset, base, transform), in first-seen order.

    Each summary has dataset, base, transform, features, num_components, hidden_features, parameters,
    mog_parameters, steps, "runs" (rows), "failed" (diverged rows, left out of the statistics), "n" (rows used)
    and `<metric>_mean`, `<metric>_std` for nll, kl, mode_coverage and seconds_per_step (`report.mean_std`:
    sample std, NaN with one seed; a NaN metric, such as the KL of a target without an exact density, gives NaN)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["base"], row["transform"]), []).append(row)
    summaries = []
    for (dataset, base, transform), group in groups.items():
        good = [row for row in group if _ok(row)]
        first = group[0]
        summary = {
            "dataset": dataset,
            "base": base,
            "transform": transform,
            **{key: first.get(key) for key in ("features", "num_components", "hidden_features", "parameters")},
            **{key: first.get(key) for key in ("mog_parameters", "steps")},
            "runs": len(group),
            "failed": len(group) - len(good),
            "n": len(good),
        }
        for metric in METRICS:
            values = [float(row[metric]) for row in good if metric in row]
            summary[f"{metric}_mean"], summary[f"{metric}_std"] = mean_std(values)
        summaries.append(summary)
    return summaries


def paired_differences(
    rows: Iterable[dict[str, Any]], metric: str = "nll", *, base: str = "mog", reference: str = "gaussian"
) -> list[dict[str, Any]]:
    """`base` minus `reference` `metric` per (dataset, transform), paired by seed (same data for both); `base` and
    `reference` are model kinds of `MODELS` (default: MoG minus Gaussian).

    Each entry: dataset, transform, "pairs", "mog_wins" (seeds where `base`'s value is lower; the name is kept from
    the MoG-vs-Gaussian study), "diff_mean", "diff_std" (sample std over seeds)."""
    check_choice("base", base, MODELS)
    check_choice("reference", reference, MODELS)
    values: dict[tuple[str, str], dict[str, dict[int, float]]] = {}
    for row in rows:
        if _ok(row) and row["base"] in (base, reference):
            key = (row["dataset"], row["transform"])
            values.setdefault(key, {base: {}, reference: {}})[row["base"]][row["seed"]] = float(row[metric])
    out = []
    for (dataset, transform), by_base in values.items():
        seeds = sorted(set(by_base[base]) & set(by_base[reference]))
        diffs = [by_base[base][s] - by_base[reference][s] for s in seeds]
        mean, std = mean_std(diffs)
        out.append(
            {
                "dataset": dataset,
                "transform": transform,
                "pairs": len(seeds),
                "mog_wins": sum(d < 0 for d in diffs),
                "diff_mean": mean,
                "diff_std": std,
            }
        )
    return out


# ---------------------------------------------------------------------------------------------------- writers
def write_markdown(
    rows: Sequence[dict[str, Any]],
    path: str | os.PathLike,
    *,
    title: str = "Gaussian base vs mixture-of-Gaussians base",
    kl_targets: dict[str, float] | None = None,
) -> str:
    """The results table (one line per dataset × transform, both bases side by side, mean ± std over seeds), the
    parameter counts, the settings, the targets checked against the numbers, and the list of cases where the MoG
    base did not lower the test NLL. Writes it to `path` and returns it.

    `kl_targets`: {dataset: threshold} for "MoG + NSF reaches KL < threshold" (default `KL_TARGETS`)."""
    kl_targets = KL_TARGETS if kl_targets is None else kl_targets
    summaries = {(s["dataset"], s["base"], s["transform"]): s for s in summarize(rows)}
    pairs = {(p["dataset"], p["transform"]): p for p in paired_differences(rows)}
    first = rows[0]
    seeds = sorted({row["seed"] for row in rows})
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    transforms = [t for t in TRANSFORMS if any(row["transform"] == t for row in rows)]

    lines = [
        f"# {title}",
        "",
        f"{len(rows)} runs: {len(datasets)} targets × {len(transforms)} transforms × 2 bases × "
        f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})"
        + (", and the mixture alone per target and seed" if any(r["base"] == "mixture" for r in rows) else "")
        + ". "
        f"Every run: {first['num_layers']} flow layers, Adam, lr {first['lr']:g} with cosine decay, batch "
        f"{first['batch_size']}, gradient-norm clipping at 5, the same steps for both bases (column *steps*); "
        f"{first['num_train']} train / {first['num_val']} validation / {first['num_test']} test points drawn from the "
        "target with the seed (digits: the fixed 1257 / 180 / 360 split). The parameters with the lowest validation "
        f"NLL (checked every {first['checkpoint_every']} steps) are "
        "evaluated on the test set.",
        "",
        f"- **MoG base**: diagonal mixture with K = max(M, {MIN_COMPONENTS}) components, M the number of point modes "
        "the target lists (0 for rings, spirals and digits); "
        f"initialised by EM (the most likely of {INIT_RESTARTS} k-means++ seedings) on the training data pushed "
        "through the new (identity) flow, its scales then "
        f"multiplied by {training.AFFINE_FLOW_INIT_SCALE_FACTOR:g} under maf and realnvp (`fit(init_base=True)`; "
        "chosen on the validation NLL of a held-out seed); its parameters learn at "
        f"{training.BASE_LR_FACTOR:g} × lr (`fit(base_lr_factor=...)`, chosen on held-out seeds); conditioner width "
        "as in *hidden* (G / M) below.",
        "- **Equal budgets**: the MoG base adds K(1 + 2D) parameters; the Gaussian-base flow gets the smallest "
        "conditioner width ≥ the MoG flow's whose parameter count is ≥ the MoG flow's (*params* G / M).",
        "- **NLL**: mean test negative log-likelihood in nats (lower is better). **KL** = KL(p‖q) ≈ mean over the "
        "same test points of log p − log q (paired), for targets with an exact density. **ΔNLL** = MoG − Gaussian "
        "per seed (same data), mean ± std; *wins* = seeds where the MoG base has the lower test NLL. "
        "± is the sample standard deviation over seeds.",
    ]
    mixtures = {s["dataset"]: s for (_, base, _), s in summaries.items() if base == "mixture"}
    no_mixture = {"nll_mean": math.nan, "nll_std": math.nan, "kl_mean": math.nan, "kl_std": math.nan}
    if mixtures:
        lines += [
            "- **Mixture alone**: the MoG base without a flow (same K, EM-initialised and trained by `fit` like the "
            "flows); *NLL / KL mixture* repeat it in every transform's row. It tells what the flow adds to a mixture."
        ]
    lines += [
        "",
        "| target | D | K | transform | steps | hidden G / M | params G / M | NLL Gaussian | NLL MoG | ΔNLL | wins "
        "| KL Gaussian | KL MoG | modes G / M |" + (" NLL mixture | KL mixture |" if mixtures else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if mixtures else ""),
    ]
    for dataset in datasets:
        for transform in transforms:
            g, m = summaries.get((dataset, "gaussian", transform)), summaries.get((dataset, "mog", transform))
            if g is None or m is None:
                continue
            p = pairs.get(
                (dataset, transform), {"pairs": 0, "mog_wins": 0, "diff_mean": math.nan, "diff_std": math.nan}
            )
            coverage = (
                "—"
                if math.isnan(g["mode_coverage_mean"])
                else f"{g['mode_coverage_mean']:.2f} / {m['mode_coverage_mean']:.2f}"
            )
            failed = g["failed"] + m["failed"]
            mixture = mixtures.get(dataset, no_mixture)
            lines.append(
                f"| {dataset}{f' ({failed} failed)' if failed else ''} | {m['features']} | {m['num_components']} "
                f"| {transform} | {m['steps']} | {g['hidden_features']} / {m['hidden_features']} "
                f"| {g['parameters']} / {m['parameters']} | {pm(g['nll_mean'], g['nll_std'])} "
                f"| {pm(m['nll_mean'], m['nll_std'])} | {pm(p['diff_mean'], p['diff_std'])} "
                f"| {p['mog_wins']}/{p['pairs']} | {pm(g['kl_mean'], g['kl_std'])} | {pm(m['kl_mean'], m['kl_std'])} "
                f"| {coverage} |"
                + (
                    f" {pm(mixture['nll_mean'], mixture['nll_std'])} | {pm(mixture['kl_mean'], mixture['kl_std'])} |"
                    if mixtures
                    else ""
                )
            )
    lines += _mixture_section(rows, summaries, datasets, transforms)
    lines += _peer_section(rows, summaries, datasets)
    lines += ["", "## Targets of the full run, checked against these numbers", ""]
    for dataset, threshold in kl_targets.items():
        m = summaries.get((dataset, "mog", "nsf"))
        if m is None:
            lines.append(f"- MoG + NSF KL < {threshold} on {dataset}: not run.")
            continue
        met = m["kl_mean"] < threshold
        lines.append(
            f"- MoG + NSF KL < {threshold} nats on {dataset}: {pm(m['kl_mean'], m['kl_std'])} — "
            f"**{'met' if met else 'NOT met'}**"
            + ("" if math.isnan(m["kl_std"]) or not met or m["kl_mean"] + m["kl_std"] < threshold else " (on average)")
            + "."
        )
    multimodal = [d for d in datasets if get_dataset(d).is_multimodal]
    cells = [pairs[(d, t)] for d in multimodal for t in transforms if (d, t) in pairs]
    better = [
        p
        for p in cells
        if summaries[(p["dataset"], "mog", p["transform"])]["nll_mean"]
        < summaries[(p["dataset"], "gaussian", p["transform"])]["nll_mean"]
    ]
    lines.append(
        f"- MoG base lowers the mean test NLL on every multimodal target for every transform: {len(better)} of "
        f"{len(cells)} target × transform cells — **{'met' if len(better) == len(cells) else 'NOT met'}**."
    )
    lines += ["", "## Where the mixture base does not help", ""]
    losses = []
    for p in cells + [pairs[(d, t)] for d in datasets if d not in multimodal for t in transforms if (d, t) in pairs]:
        g = summaries[(p["dataset"], "gaussian", p["transform"])]
        m = summaries[(p["dataset"], "mog", p["transform"])]
        if not m["nll_mean"] < g["nll_mean"]:
            losses.append(
                f"- {p['dataset']}, {p['transform']}: MoG {pm(m['nll_mean'], m['nll_std'])} vs Gaussian "
                f"{pm(g['nll_mean'], g['nll_std'])} nats (ΔNLL {pm(p['diff_mean'], p['diff_std'])}, MoG lower on "
                f"{p['mog_wins']}/{p['pairs']} seeds)."
            )
        elif p["pairs"] > 1 and p["mog_wins"] < p["pairs"]:
            losses.append(
                f"- {p['dataset']}, {p['transform']}: lower on average (ΔNLL {pm(p['diff_mean'], p['diff_std'])}) "
                f"but not on every seed ({p['mog_wins']}/{p['pairs']})."
            )
    lines += losses or ["- Nowhere in this run: the MoG base has the lower test NLL on every seed of every cell."]
    failures = [row for row in rows if not _ok(row)]
    if failures:
        lines += ["", "## Failed runs", ""]
        lines += [
            f"- {r['dataset']}, {r['transform']}, {r['base']} base, seed {r['seed']}: {r['error'].splitlines()[0]}"
            for r in failures
        ]
    seconds = [
        f"{t} {statistics.fmean(r['seconds_per_step'] for r in rows if r['transform'] == t and _ok(r)) * 1000:.0f} ms"
        for t in transforms
        if any(r["transform"] == t and _ok(r) for r in rows)
    ]
    lines += ["", f"Mean training time per step (one CPU thread per run, incl. validation): {', '.join(seconds)}.", ""]
    text = "\n".join(lines)
    Path(path).write_text(text)
    return text


def _mixture_section(rows, summaries, datasets, transforms) -> list[str]:
    """Per target: does the MoG-base flow beat the mixture alone (paired by seed, the mixture's own splits)?"""
    if not any(row["base"] == "mixture" for row in rows):
        return []
    lines = ["", "## What the flow adds to the mixture alone", ""]
    lines += [
        "ΔNLL = MoG-base flow − mixture alone, paired by seed (the same data); *wins* = seeds where the flow is "
        "lower. A target where the flow does not win is one a mixture fits by itself.",
        "",
        "| target | transform | NLL mixture | NLL MoG flow | ΔNLL | wins | flow beats mixture |",
        "|---|---|---|---|---|---|---|",
    ]
    mixture_rows = [row for row in rows if row["base"] == "mixture"]
    for dataset in datasets:
        for transform in transforms:
            m = summaries.get((dataset, "mog", transform))
            alone = [r for r in mixture_rows if r["dataset"] == dataset]
            if m is None or not alone:
                continue
            renamed = [{**r, "base": "gaussian", "transform": transform} for r in alone]  # pair with the flow rows
            flow_rows = [r for r in rows if (r["dataset"], r["base"], r["transform"]) == (dataset, "mog", transform)]
            pair = paired_differences(flow_rows + renamed)[0] if flow_rows else None
            if pair is None:
                continue
            mixture = summarize(alone)[0]
            beats = m["nll_mean"] < mixture["nll_mean"]
            lines.append(
                f"| {dataset} | {transform} | {pm(mixture['nll_mean'], mixture['nll_std'])} "
                f"| {pm(m['nll_mean'], m['nll_std'])} | {pm(pair['diff_mean'], pair['diff_std'])} "
                f"| {pair['mog_wins']}/{pair['pairs']} | {'yes' if beats else '**no**'} |"
            )
    return lines


def _peer_section(rows, summaries, datasets) -> list[str]:
    """Per target: each peer against our NSF + MoG flow, paired by seed, with parameter counts and versions."""
    peers = [name for name in PEERS if any(row["base"] == name for row in rows)]
    if not peers:
        return []
    from .peers import peer_versions

    versions = ", ".join(f"{k} {v}" for k, v in peer_versions().items() if v is not None)
    lines = ["", "## Peers at equal parameter budgets", ""]
    lines += [
        f"Each peer (`mog_flows.studies.peers`; {versions}) gets the smallest width whose parameter count is at least "
        "our NSF + MoG flow's (*params*), the same data, steps, batch, learning rate and `fit` (best validation "
        "checkpoint), and its own recommended initialisation. ΔNLL = peer − ours (NSF + MoG) paired by seed; "
        "*ours lower* = seeds where ours has the lower test NLL.",
        "",
        "| target | model | params | NLL | KL | ΔNLL vs ours | ours lower |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset in datasets:
        ours = summaries.get((dataset, "mog", "nsf"))
        if ours is None:
            continue
        lines.append(
            f"| {dataset} | ours (NSF + MoG) | {ours['parameters']} | {pm(ours['nll_mean'], ours['nll_std'])} "
            f"| {pm(ours['kl_mean'], ours['kl_std'])} | | |"
        )
        for peer in peers:
            summary = summaries.get((dataset, peer, "nsf"))
            if summary is None:
                continue
            pair = next(
                (p for p in paired_differences(rows, base=peer, reference="mog") if p["dataset"] == dataset), None
            )
            diff = "—" if pair is None else pm(pair["diff_mean"], pair["diff_std"])
            ours_lower = "—" if pair is None else f"{pair['pairs'] - pair['mog_wins']}/{pair['pairs']}"
            failed = f" ({summary['failed']} failed)" if summary["failed"] else ""
            lines.append(
                f"| {dataset} | {peer}{failed} | {summary['parameters']} "
                f"| {pm(summary['nll_mean'], summary['nll_std'])} "
                f"| {pm(summary['kl_mean'], summary['kl_std'])} | {diff} | {ours_lower} |"
            )
    return lines


def plot_density_grid(
    rows: Sequence[dict[str, Any]],
    path: str | os.PathLike,
    *,
    transform: str,
    seed: int,
    bounds: float = 4.5,
    resolution: int = 200,
) -> bool:
    """Heatmaps, one row per 2-D target: the true density, then the Gaussian-base and the MoG-base flow of
    `transform` and `seed` (densities recorded by `run_one` with `density_resolution`). Targets with D > 2 are
    skipped. Returns False (and writes nothing) when no row has a density to draw."""
    from ..plotting import plot_density_panels

    chosen = {
        (row["dataset"], row["base"]): row
        for row in rows
        if row["transform"] == transform and row["seed"] == seed and "density" in row
    }
    panels = []
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        if not all((dataset, base) in chosen for base in BASES):
            continue
        target = get_dataset(dataset)
        panels.append((f"{dataset}: true density", lambda x, target=target: target.log_prob(x.double())))
        for base in BASES:
            row = chosen[(dataset, base)]
            kl = "" if math.isnan(row["kl"]) else f", KL {row['kl']:.3f}"
            panels.append((f"{transform}, {base} base (NLL {row['nll']:.3f}{kl})", row["density"]))
    if not panels:
        return False
    plot_density_panels(panels, path, bounds=bounds, resolution=resolution, columns=3)
    return True


def write_arrays(
    rows: Sequence[dict[str, Any]], out: str | os.PathLike, name: str, fields: Sequence[str] = ("density",)
) -> list[Path]:
    """The tensors the rows recorded under each of `fields` ("density" (R, R), "samples" (S, D)) as compressed
    `out/NAME_<ARRAY_FILES[field]>.npz`, keyed "dataset/base/transform/seed" (`report.write_arrays`). Returns the
    paths written."""
    paths = []
    for field in fields:
        paths.append(Path(out) / f"{name}_{ARRAY_FILES[field]}.npz")
        report.write_arrays(rows, paths[-1], field)
    return paths


def read_results(out: str | os.PathLike, name: str) -> list[dict[str, Any]]:
    """The rows a finished study wrote to `out`: NAME.csv (numbers as int / float again, NaN for empty cells), with
    the tensors of NAME_densities.npz ("density" (R, R)) and NAME_samples.npz ("samples" (S, D)) where those files
    exist and hold the row."""
    out = Path(out)
    rows = report.read_csv(out / f"{name}.csv", integers=INTEGER_COLUMNS, texts=TEXT_COLUMNS)
    for field, file in ARRAY_FILES.items():
        if (out / f"{name}_{file}.npz").exists():
            rows = report.read_arrays(rows, out / f"{name}_{file}.npz", field)
    return rows


# ---------------------------------------------------------------------------------------------------- command line
QUICK = dict(datasets=["eight_gaussians", "grid", "rings"], transforms=["nsf", "maf"], seeds=[0], steps=800)
SMOKE = dict(datasets=["eight_gaussians", "gaussian_mixture"], transforms=["nsf", "maf"], seeds=[0], steps=5)


def _parser(default_out: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare_bases",
        description="Gaussian base vs MoG base × {nsf, maf, realnvp} × targets, equal parameter budgets. "
        "Writes compare_bases.{md,csv,png,npz} (compare_bases_quick.* with --quick). Finished runs are kept in "
        "OUT/.NAME_cache/ until all are done: the same command run again after an interruption resumes.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help=f"a small subset: {QUICK}")
    mode.add_argument("--smoke", action="store_true", help="tiny data and steps, for tests")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, help=f"default: {' '.join(DEFAULT_DATASETS)}")
    parser.add_argument("--transforms", nargs="+", choices=TRANSFORMS, help="default: all")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 2")
    parser.add_argument("--steps", type=int, help="training steps for every target (default 2000)")
    parser.add_argument("--digits-steps", type=int, help="steps for digits (default 500 in the full run, else --steps)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden-features", type=int, default=64, help="conditioner width of the MoG flows")
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument(
        "--peers", nargs="*", choices=list(PEERS), help="add these peers (none given: all) at the NSF flow's budget"
    )
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    shown = "the current directory" if str(default_out) == "." else str(default_out)
    parser.add_argument("--out", type=Path, default=default_out, help=f"results folder (default: {shown})")
    parser.add_argument("--name", help="file stem (default compare_bases, compare_bases_quick with --quick)")
    return parser


def run_study(
    specs: Sequence[RunSpec], out: Path, name: str, *, workers: int = 1, longest_first: bool = True
) -> tuple[list[dict[str, Any]], Path]:
    """`run_comparison` for a study's command line: a progress line per finished run, rows cached in
    `out/.NAME_cache/` so that the same command resumes an interrupted study. Returns the rows and the cache folder,
    which the caller removes once every row is in its result files."""
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()

    def progress(done: int, total: int, row: dict[str, Any]) -> None:
        status = row["error"].splitlines()[0] if row["error"] else f"NLL {row['nll']:.4f}, KL {row['kl']:.4f}"
        model = f"rad K={row['num_pieces']}" if row["base"] == "rad" else f"{row['transform']} {row['base']}"
        print(
            f"[{done}/{total} {time.perf_counter() - began:6.0f}s] {row['dataset']} {model} seed {row['seed']}: "
            f"{status} ({row['parameters']} parameters, "
            f"{row['seconds_per_step'] * 1000:.1f} ms/step)",
            flush=True,
        )

    cache_dir = out / f".{name}_cache"
    if any(cache_dir.glob("*.pt")):
        print(f"resuming: runs already in {cache_dir} are not run again")
    rows = run_comparison(specs, workers=workers, on_result=progress, cache_dir=cache_dir, longest_first=longest_first)
    return rows, cache_dir


def main(argv: Sequence[str] | None = None, *, default_out: str | os.PathLike = ".") -> list[dict]:
    """The comparison's command line; returns the rows. Results go to `--out`, by default `default_out` (the current
    directory unless the caller names another)."""
    args = _parser(Path(default_out)).parse_args(argv)
    preset = QUICK if args.quick else SMOKE if args.smoke else dict(seeds=[0, 1, 2], steps=2000, digits_steps=500)
    datasets = args.datasets or preset.get("datasets", list(DEFAULT_DATASETS))
    transforms = args.transforms or preset.get("transforms", list(TRANSFORMS))
    seeds = args.seeds if args.seeds is not None else preset["seeds"]
    steps = args.steps or preset["steps"]
    name = args.name or ("compare_bases_quick" if args.quick else "compare_bases")
    sizes = dict(num_train=500, num_val=100, num_test=200) if args.smoke else {}
    resolution = 30 if args.smoke else 160
    specs = [
        RunSpec(
            dataset,
            base,
            transform,
            seed=seed,
            steps=(args.digits_steps or preset.get("digits_steps", steps)) if dataset == "digits" else steps,
            batch_size=min(args.batch_size, 64) if args.smoke else args.batch_size,
            lr=args.lr,
            hidden_features=8 if args.smoke else args.hidden_features,
            num_layers=2 if args.smoke else args.num_layers,
            checkpoint_every=min(100, steps),
            density_resolution=resolution if seed == seeds[0] else None,
            **sizes,
        )
        for dataset in datasets
        for transform in transforms
        for seed in seeds
        for base in (*BASES, "mixture")
        if base != "mixture" or transform == transforms[0]  # the mixture alone does not depend on the transform
    ]
    peers = [] if args.peers is None else (args.peers or list(PEERS))
    specs += [
        dataclasses.replace(spec, base=peer)
        for spec in specs
        if spec.base == "mog" and spec.transform == "nsf"
        for peer in peers
        if not (peer == "normflows_nsf_gmm" and get_dataset(spec.dataset).features < 2)  # couplings need D ≥ 2
    ]
    began = time.perf_counter()
    rows, cache_dir = run_study(specs, args.out, name, workers=args.workers)
    report.write_csv(rows, args.out / f"{name}.csv", CSV_COLUMNS)
    title = "Gaussian base vs mixture-of-Gaussians base" + (" (--quick)" if args.quick else "")
    text = write_markdown(rows, args.out / f"{name}.md", title=title)
    figure_transform = "nsf" if "nsf" in transforms else transforms[0]
    plotted = plot_density_grid(
        rows, args.out / f"{name}.png", transform=figure_transform, seed=seeds[0], resolution=resolution
    )
    write_arrays(rows, args.out, name, ["density"])
    shutil.rmtree(cache_dir)  # every row is in the files now
    print(text)
    written = [f"{name}.md", f"{name}.csv", f"{name}_densities.npz"] + ([f"{name}.png"] if plotted else [])
    print(f"wrote {', '.join(str(args.out / w) for w in written)} in {time.perf_counter() - began:.0f} s")
    return rows

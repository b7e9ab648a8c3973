"""The published 2-D problems of Stimper et al. 2022 with their protocol, their three bases and ours side by side.

Shapes: N points, D = 2 features, K mixture components, R grid points per axis.

Stimper, Schölkopf and Hernández-Lobato, "Resampling Base Distributions of Normalizing Flows" (AISTATS 2022),
fit three 2-D targets (`datasets.DualMoon` "stimper_two_moons", `datasets.CircularGaussianMixture`
"stimper_circular_gmm", `datasets.RingMixture` "stimper_rings": normflows' `TwoMoons`, `CircularGaussianMixture`
and `RingMixture`, normalised exactly here) with a Real NVP over three bases and score each model by KL(p‖q) on a
300 × 300 grid over [-3, 3]² (`evaluation.grid_kl`, with both densities normalised on the grid).

Their protocol, as the notebook `experiments/2d_toy_problems/rnvp_fkld.ipynb` of their repository
(VincentStimper/resampled-base-flows) builds and trains it with normflows, reproduced by `build_protocol_model`
and `train_protocol`:

- Real NVP of `num_blocks` = 8 blocks, each normflows' `AffineCouplingBlock(MLP([1, 32, 32, 2], init_zeros=True))`
  (an affine coupling: shift and log-scale of one coordinate from the other, exp scale map, last layer zero so
  each block starts as the identity), then `Permute(2, mode="swap")`, then `ActNorm(2)` (data-initialised on the
  first batch).
- Bases (`THEIRS`): "realnvp_resampled", a standard normal resampled by a learned acceptance a(z) =
  `MLP([2, 256, 256, 1], output_fn="sigmoid")`, truncation T = 100, running-average decay ε = 0.1, Gaussian not
  trainable (their `larsflow` ResampledGaussian; here glasflow's port of it, `peers.import_resampled_gaussian`,
  with the same arguments); "realnvp_gmm", normflows' trainable `GaussianMixture` of 10 components, means
  uniform on [-2.5, 2.5]² and scales 0.5; "realnvp_gaussian", normflows' `DiagGaussian(2, trainable=False)`.
- Training: 20 000 steps, each on 1024 fresh samples of the target, loss the mean NLL (their `forward_kld`),
  `torch.optim.Adam(lr=1e-3, weight_decay=1e-3)` (L2 added to the gradient), constant learning rate, no clipping,
  no validation. Choices made here: a step whose loss is not finite is skipped (normflows' examples do so; the
  notebook does not) and counted ("skipped"); their notebook seeds torch with 10 and draws the GMM means with
  numpy's global RNG, here torch is seeded with the run's seed and the means come from a `np.random.RandomState`
  seeded from torch; the resampled base's normalising constant is estimated after training with glasflow's
  `estimate_normalisation_constant` (`normalisation_samples` draws) before anything is evaluated; everything runs
  in float32 on the CPU.

Ours (`OURS`): `build_flow(2, base="mog", transform=..., num_components=32)`, "ours_realnvp" with `num_blocks`
layers and "ours_nsf" with 4, each at the width whose parameter count is closest to the budget of their
"realnvp_gmm" model (`budget_model`; the narrowest width reaching it or the one below, ±5 % where one width step
allows), trained by `fit` as the library recommends: the same steps, fresh batches of 1024 and peak lr, with `fit`'s
cosine decay, gradient clipping and EM initialisation of the mixture, no weight decay and no validation.

Every model is evaluated the same way: `grid_kl` (R = 300 over [-3, 3]²), the paired KL (1/N) Σ [log p(x_n) -
log q(x_n)] and the test NLL on the same N = 10 000 test points drawn from the target (`evaluation.paired_kl`),
and the model's mass on the grid, Σ q(x_i) h² (a check that q is normalised and sits inside the box).

Published numbers: the paper's tables of KL divergences for these problems could not be read here, so none are
cited; the rows of their models in the report are our runs of their protocol and are the reference.

`run_spec` runs one spec; `main` is the command line (`experiments/stimper_problems.py`), which caches finished
rows in OUT/.NAME_rows/ (the same command resumes an interrupted study) and writes NAME.md and NAME.csv.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..checks import check_choice, check_positive_int
from ..datasets import get_dataset, make_splits
from ..evaluation import grid_kl, log_prob_batched, negative_log_likelihood, paired_kl
from ..flows import build_flow
from ..training import TrainingDivergedError, fit
from . import report
from .budgets import count_parameters, narrowest_width
from .peers import GLASFLOW_NORM_SAMPLES, TOLERANCE, import_resampled_gaussian, peer_versions
from .runner import run_many

__all__ = [
    "PROBLEMS",
    "THEIRS",
    "OURS",
    "MODELS",
    "CSV_COLUMNS",
    "StimperSpec",
    "ProtocolFlow",
    "build_protocol_model",
    "build_our_model",
    "train_protocol",
    "run_spec",
    "spec_key",
    "read_results",
    "write_markdown",
    "main",
]

PROBLEMS = ("stimper_two_moons", "stimper_circular_gmm", "stimper_rings")
THEIRS = ("realnvp_resampled", "realnvp_gmm", "realnvp_gaussian")
OURS = ("ours_realnvp", "ours_nsf")
MODELS = (*THEIRS, *OURS)
_OUR_NSF_LAYERS = 4  # build_flow's default
_FORMAT = "stimper/1"  # bump when run_spec's rows change, so that cached rows are not reused
CSV_COLUMNS = (
    "dataset",
    "model",
    "seed",
    "steps",
    "batch_size",
    "lr",
    "weight_decay",
    "num_layers",
    "hidden_features",
    "num_components",
    "parameters",
    "budget",
    "budget_difference",
    "grid_kl",
    "kl",
    "nll",
    "grid_mass",
    "skipped_steps",
    "train_seconds",
    "seconds_per_step",
    "error",
)
INTEGER_COLUMNS = ("seed", "steps", "batch_size", "num_layers", "hidden_features", "num_components", "parameters")
INTEGER_COLUMNS += ("budget", "skipped_steps")
TEXT_COLUMNS = ("dataset", "model", "error")


@dataclass(frozen=True)
class StimperSpec:
    """One run: a model of `MODELS` on a target of `PROBLEMS` with one seed.

    Attributes:
        dataset, model, seed: what runs; the seed seeds torch before the model is built and the training's
            fresh samples, and (with the target) the test set.
        steps, batch_size, lr: the protocol's 20 000 steps of 1024 fresh samples at learning rate 1e-3 (all models).
        weight_decay: their Adam's L2 weight decay (their models only; ours trains with `fit`, which has none).
        num_blocks: Real NVP blocks (theirs; and ours_realnvp's layers).
        hidden_features: width of their coupling MLPs (two hidden layers).
        acceptance_features: width of the resampled base's acceptance MLP (two hidden layers).
        num_modes: components of their GMM base.
        num_components: K of our mixture base.
        budget_model: which of their models sets our flows' parameter budget.
        num_test: N, test points for the paired KL and NLL.
        grid_bounds, grid_resolution: the box [-b, b]² and R of `grid_kl`.
        normalisation_samples: (draws per batch, batches) for the resampled base's normalising constant.
    """

    dataset: str
    model: str
    seed: int = 0
    steps: int = 20_000
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 1e-3
    num_blocks: int = 8
    hidden_features: int = 32
    acceptance_features: int = 256
    num_modes: int = 10
    num_components: int = 32
    budget_model: str = "realnvp_gmm"
    num_test: int = 10_000
    grid_bounds: float = 3.0
    grid_resolution: int = 300
    normalisation_samples: tuple[int, int] = GLASFLOW_NORM_SAMPLES

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, PROBLEMS)
        check_choice("model", self.model, MODELS)
        check_choice("budget_model", self.budget_model, THEIRS)
        for name in ("steps", "batch_size", "num_blocks", "hidden_features", "acceptance_features", "num_modes"):
            check_positive_int(name, getattr(self, name))
        for name in ("num_components", "num_test", "grid_resolution"):
            check_positive_int(name, getattr(self, name))
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ValueError(f"seed must be a non-negative integer; got {self.seed!r}")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.grid_bounds > 0):
            raise ValueError("lr and grid_bounds must be positive and weight_decay non-negative")
        object.__setattr__(self, "normalisation_samples", tuple(self.normalisation_samples))


# ---------------------------------------------------------------------------------------------------- models
class ProtocolFlow(nn.Module):
    """normflows flow layers over a base: log q(x) = log q₀(z) + Σ log|det ∂f⁻¹|, z = f⁻¹(x), going through
    the layers in reverse with their `inverse` (as `normflows.NormalizingFlow.log_prob` does). The base is a
    normflows distribution (`forward(n) -> (z, log q)`) or glasflow's ResampledGaussian (`sample(n)`).

    Args:
        flows: the normflows layers, first applied to base samples first.
        base: the base distribution.
    """

    def __init__(self, flows: Sequence[nn.Module], base: nn.Module) -> None:
        super().__init__()
        self.flows = nn.ModuleList(flows)
        self.base = base
        self.features = 2

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x) (N,) of points x (N, 2)."""
        z, log_q = x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for flow in reversed(self.flows):
            z, log_det = flow.inverse(z)
            log_q = log_q + log_det
        return log_q + self.base.log_prob(z)

    def sample(self, num_samples: int) -> Tensor:
        """`num_samples` draws (n, 2); no gradients are meant to flow through the resampled base's rejections."""
        z = self.base.sample(num_samples) if hasattr(self.base, "acceptance_fn") else self.base(num_samples)[0]
        for flow in self.flows:
            z, _ = flow(z)
        return z


def build_protocol_model(spec: StimperSpec) -> ProtocolFlow:
    """Their Real NVP over the base `spec.model` names (module docstring), seeded with `spec.seed`, float32.
    ImportError naming the package when normflows (or, for the resampled base, glasflow) is missing."""
    check_choice("model", spec.model, THEIRS)
    try:
        import normflows as nf
    except ImportError as error:
        raise ImportError(
            "their models need normflows: pip install normflows (or pip install 'mog-flows[bench]')"
        ) from error
    torch.manual_seed(spec.seed)
    flows = []
    for _ in range(spec.num_blocks):
        coupling = nf.nets.MLP([1, spec.hidden_features, spec.hidden_features, 2], init_zeros=True)
        flows += [nf.flows.AffineCouplingBlock(coupling), nf.flows.Permute(2, mode="swap"), nf.flows.ActNorm(2)]
    if spec.model == "realnvp_resampled":
        resampled, _ = import_resampled_gaussian()
        width = spec.acceptance_features
        acceptance = nf.nets.MLP([2, width, width, 1], output_fn="sigmoid")
        base = resampled(2, acceptance, eps=0.1, truncation=100, trainable=False)
    elif spec.model == "realnvp_gmm":
        # their notebook: loc = (np.random.rand(K, 2) - 0.5) * 5, scale 0.5; the same draw from a seeded RandomState
        state = np.random.RandomState(int(torch.randint(2**31 - 1, ())))
        loc = (state.rand(spec.num_modes, 2) - 0.5) * 5
        base = nf.distributions.GaussianMixture(
            spec.num_modes, 2, trainable=True, loc=loc, scale=0.5 * np.ones((spec.num_modes, 2))
        )
    else:
        base = nf.distributions.DiagGaussian(2, trainable=False)
    return ProtocolFlow(flows, base).float()  # normflows' GaussianMixture holds float64 parameters (from numpy)


def _budget(spec: StimperSpec) -> int:
    """Trainable parameters of their model `spec.budget_model` with the spec's sizes."""
    with torch.random.fork_rng(devices=[]):
        return count_parameters(build_protocol_model(_replace(spec, model=spec.budget_model)))


def _replace(spec: StimperSpec, **changes: Any) -> StimperSpec:
    return StimperSpec(**{**asdict(spec), **changes})


def build_our_model(spec: StimperSpec) -> tuple[nn.Module, int, int]:
    """Our flow `spec.model` at the budget of `spec.budget_model`, seeded with `spec.seed`: (flow, its width, the
    budget). The width is the narrowest whose count reaches the budget, or the one below when that is closer."""
    check_choice("model", spec.model, OURS)
    transform, layers = ("realnvp", spec.num_blocks) if spec.model == "ours_realnvp" else ("nsf", _OUR_NSF_LAYERS)
    budget = _budget(spec)

    def build(width: int) -> nn.Module:
        return build_flow(
            2,
            base="mog",
            transform=transform,
            num_layers=layers,
            hidden_features=width,
            num_components=spec.num_components,
        )

    with torch.random.fork_rng(devices=[]):
        counts = {}

        def parameters(width: int) -> int:
            if width not in counts:
                counts[width] = count_parameters(build(width))
            return counts[width]

        width = narrowest_width(parameters, budget)
        if width > 1 and abs(parameters(width - 1) - budget) < abs(parameters(width) - budget):
            width -= 1
    torch.manual_seed(spec.seed)
    return build(width), width, budget


def train_protocol(model: ProtocolFlow, target, spec: StimperSpec) -> tuple[float, int]:
    """Their training loop (module docstring): `spec.steps` Adam steps (lr, L2 `weight_decay`) on the mean NLL of
    `spec.batch_size` fresh samples from `target` (torch's global RNG, seeded with `spec.seed` here). Returns
    (seconds, skipped steps)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    model.train()
    torch.manual_seed(spec.seed)
    skipped = 0
    began = time.perf_counter()
    for _ in range(spec.steps):
        x = target.sample(spec.batch_size)
        loss = -model.log_prob(x).mean()
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            skipped += 1
            continue
        loss.backward()
        optimizer.step()
    return time.perf_counter() - began, skipped


# ---------------------------------------------------------------------------------------------------- one run
def run_spec(spec: StimperSpec) -> dict[str, Any]:
    """Build, train and evaluate one model; a row with the spec's settings, "parameters", "budget",
    "budget_difference" (parameters / budget - 1), the metrics "grid_kl", "kl" (paired, on the test set), "nll",
    "grid_mass", "skipped_steps", "train_seconds", "seconds_per_step" and "error" (empty, or why the metrics are
    NaN)."""
    target = get_dataset(spec.dataset)
    *_, test = make_splits(target, 1, 1, spec.num_test, seed=spec.seed)
    row: dict[str, Any] = {**asdict(spec), "error": "", "skipped_steps": 0}
    row.pop("normalisation_samples")
    if spec.model in THEIRS:
        model = build_protocol_model(spec)
        row.update(num_layers=spec.num_blocks, hidden_features=spec.hidden_features, num_components=spec.num_modes)
        row["budget"] = count_parameters(model) if spec.model == spec.budget_model else _budget(spec)
    else:
        model, width, budget = build_our_model(spec)
        layers = spec.num_blocks if spec.model == "ours_realnvp" else _OUR_NSF_LAYERS
        row.update(num_layers=layers, hidden_features=width, num_components=spec.num_components, budget=budget)
    row["parameters"] = count_parameters(model)
    row["budget_difference"] = row["parameters"] / row["budget"] - 1
    if spec.model not in THEIRS:
        row["weight_decay"] = 0.0
    nan = dict.fromkeys(("grid_kl", "kl", "nll", "grid_mass"), math.nan)
    try:
        if spec.model in THEIRS:
            seconds, row["skipped_steps"] = train_protocol(model, target, spec)
        else:
            history = fit(
                model,
                lambda n: target.sample(n),
                steps=spec.steps,
                batch_size=spec.batch_size,
                lr=spec.lr,
                seed=spec.seed,
                device="cpu",
                progress=False,
            )
            seconds = history.wall_time
    except (TrainingDivergedError, RuntimeError, ValueError) as error:  # a diverged run is a result: its row says why
        return {**row, **nan, "train_seconds": math.nan, "seconds_per_step": math.nan, "error": repr(error)}
    row.update(train_seconds=seconds, seconds_per_step=seconds / spec.steps)
    model.eval()
    torch.manual_seed(spec.seed)
    if spec.model == "realnvp_resampled":
        n_samples, n_batches = spec.normalisation_samples
        model.base.estimate_normalisation_constant(n_samples=n_samples, n_batches=n_batches)
    try:
        row.update(_metrics(model, target, test, spec))
    except ValueError as error:  # NaN or +inf densities on the grid
        row.update(nan, error=str(error))
    return row


def _metrics(model: nn.Module, target, test: Tensor, spec: StimperSpec) -> dict[str, float]:
    def log_q(x: Tensor) -> Tensor:
        return log_prob_batched(model, x).double()

    kl = grid_kl(target.log_prob, log_q, bounds=spec.grid_bounds, resolution=spec.grid_resolution)
    ticks = torch.linspace(-spec.grid_bounds, spec.grid_bounds, spec.grid_resolution, dtype=torch.float64)
    step = (ticks[1] - ticks[0]).item()
    mass = log_q(torch.cartesian_prod(ticks, ticks)).exp().sum().item() * step**2
    return {
        "grid_kl": kl,
        "kl": paired_kl(model, target, test),
        "nll": negative_log_likelihood(model, test),
        "grid_mass": mass,
    }


def spec_key(spec: StimperSpec) -> str:
    """A file-name-safe digest of every field of `spec` and of the rows' format; it names the spec's cached row."""
    text = json.dumps({"format": _FORMAT, **asdict(spec)}, sort_keys=True)
    return f"{spec.dataset}-{spec.model}-{spec.seed}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


# ---------------------------------------------------------------------------------------------------- report
def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a CSV that `main` wrote (integers as int, NaN for empty cells)."""
    return report.read_csv(path, integers=INTEGER_COLUMNS, texts=TEXT_COLUMNS)


def _ok(row: dict[str, Any]) -> bool:
    return not row["error"] and math.isfinite(row["grid_kl"])


def write_markdown(rows: Sequence[dict[str, Any]], path: str | os.PathLike, *, title: str, command: str) -> str:
    """The report: per target and model the parameter count, grid KL, paired KL, test NLL and grid mass (mean ±
    std over seeds); per target whether each of ours beats every base of their protocol on grid KL, paired by
    seed; the failed runs. Returns the text written to `path`."""
    versions = ", ".join(f"{k} {v}" for k, v in peer_versions().items() if v is not None)
    lines = [f"# {title}", "", f"Written by `{command}` ({versions}).", "", *_preamble(rows), ""]
    lines += [
        "| target | model | params (vs budget) | grid KL | paired KL | test NLL | grid mass | ms / step | runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    datasets = [d for d in PROBLEMS if any(r["dataset"] == d for r in rows)]
    for dataset in datasets:
        for model in MODELS:
            chosen = [r for r in rows if (r["dataset"], r["model"]) == (dataset, model)]
            if not chosen:
                continue
            good = [r for r in chosen if _ok(r)]

            def cell(key: str, digits: int = 3, scale: float = 1.0, good=good) -> str:
                return report.pm(*report.mean_std(r[key] * scale for r in good), digits=digits)

            first = chosen[0]
            params = f"{first['parameters']} ({first['budget_difference']:+.1%})"
            if model in OURS and abs(first["budget_difference"]) > TOLERANCE:
                params += " **outside ±5 %**"
            failed = len(chosen) - len(good)
            lines.append(
                f"| {dataset} | {model} | {params} | {cell('grid_kl', 4)} | {cell('kl', 4)} | {cell('nll')} "
                f"| {cell('grid_mass')} | {cell('seconds_per_step', 1, 1000)} | {len(good)}"
                f"{f' ({failed} failed)' if failed else ''} |"
            )
    lines += ["", "## Ours against every base of their protocol", ""]
    lines += [
        "Grid KL, ours − theirs, paired by seed (the same target samples' seed; negative: ours lower); *wins*: "
        "seeds where ours is lower. Ours beats their protocol on a target when it is lower on average than every "
        "one of their bases.",
        "",
    ]
    for dataset in datasets:
        for ours in OURS:
            mine = {r["seed"]: r["grid_kl"] for r in rows if (r["dataset"], r["model"]) == (dataset, ours) and _ok(r)}
            if not mine:
                continue
            parts, beats = [], True
            for theirs in THEIRS:
                other = {
                    r["seed"]: r["grid_kl"] for r in rows if (r["dataset"], r["model"]) == (dataset, theirs) and _ok(r)
                }
                seeds = sorted(mine.keys() & other.keys())
                if not seeds:
                    continue
                diffs = [mine[s] - other[s] for s in seeds]
                mean, std = report.mean_std(diffs)
                beats &= mean < 0
                wins = sum(d < 0 for d in diffs)
                parts.append(f"{theirs} {report.pm(mean, std, 4)} ({wins}/{len(seeds)})")
            if parts:
                verdict = "beats every base" if beats else "**does not** beat every base"
                lines.append(f"- {dataset}, {ours}: {verdict}. {'; '.join(parts)}.")
    failures = [r for r in rows if not _ok(r)]
    if failures:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {r['dataset']}, {r['model']}, seed {r['seed']}: {r['error'].splitlines()[0]}" for r in failures]
    text = "\n".join(lines) + "\n"
    Path(path).write_text(text, encoding="utf-8")
    return text


def _preamble(rows: Sequence[dict[str, Any]]) -> list[str]:
    """What the table shows, with the sizes the rows were run with."""

    def setting(models: Sequence[str], key: str) -> str:
        values = sorted({r[key] for r in rows if r["model"] in models})
        return "/".join(map(str, values)) or "—"

    blocks, modes = (
        setting(("realnvp_gmm", "realnvp_gaussian", "realnvp_resampled"), "num_layers"),
        setting(("realnvp_gmm",), "num_components"),
    )
    components, steps = setting(OURS, "num_components"), setting(MODELS, "steps")
    return [
        f"The 2-D problems of Stimper et al. 2022 (normalised exactly: `mog_flows.datasets`), {steps} steps of "
        "fresh samples per model. Their models (`realnvp_*`): Real NVP of "
        f"{blocks} normflows affine-coupling blocks over a resampled Gaussian (glasflow's port of their "
        f"ResampledGaussian), a {modes}-component GMM or a Gaussian, trained with their loop (Adam with weight decay "
        "1e-3, constant lr). Ours (`ours_*`): `build_flow` over our "
        f"{components}-component mixture at the parameter budget of their GMM model (*params*: the count and its "
        "difference from that budget), trained by `fit` with the same steps, batch and peak lr. Grid KL: KL(p‖q) "
        "on the R × R grid over [-3, 3]² with both densities normalised on the grid (`evaluation.grid_kl`). Paired "
        "KL and test NLL: on the same test points from the target. Grid mass: Σ q h² over the grid (≈ 1 when q is "
        "normalised and inside the box). ms / step: training only, one thread. Mean ± std over seeds.",
        "",
        "Published numbers are not cited: the paper's tables could not be read where this study was written. The "
        "`realnvp_*` rows are our runs of their protocol, the reference here.",
    ]


# ---------------------------------------------------------------------------------------------------- command line
FULL: dict[str, Any] = dict(seeds=(0, 1, 2))
QUICK: dict[str, Any] = dict(
    seeds=(0,),
    steps=20,
    batch_size=128,
    num_blocks=2,
    hidden_features=8,
    acceptance_features=16,
    num_modes=4,
    num_components=4,
    num_test=500,
    grid_resolution=60,
    normalisation_samples=(2000, 1),
)


def _parser(default_out: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stimper_problems",
        description="Stimper et al. 2022's 2-D problems: their Real NVP over a resampled / GMM / Gaussian base with "
        "their protocol, beside our mixture-base flows at equal budget. Writes NAME.{md,csv}; finished runs are kept "
        "in OUT/.NAME_rows/ (the same command resumes).",
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings (seconds), for tests")
    parser.add_argument("--datasets", nargs="+", choices=PROBLEMS, help="default: all three")
    parser.add_argument("--models", nargs="+", choices=MODELS, help="default: all")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 2 (--quick: 0)")
    parser.add_argument("--steps", type=int, help="training steps of every model (default 20000)")
    parser.add_argument("--workers", type=int, default=1, help="runs in parallel, one thread each")
    shown = "the current directory" if str(default_out) == "." else str(default_out)
    parser.add_argument("--out", type=Path, default=default_out, help=f"results folder (default: {shown})")
    parser.add_argument("--name", help="file stem (default stimper_problems, stimper_problems_quick with --quick)")
    return parser


def main(argv: Sequence[str] | None = None, *, default_out: str | os.PathLike = ".") -> list[dict[str, Any]]:
    """The study's command line; returns the rows (one per target × model × seed)."""
    args = _parser(Path(default_out)).parse_args(argv)
    preset = dict(QUICK if args.quick else FULL)
    seeds = list(args.seeds if args.seeds is not None else preset.pop("seeds"))
    preset.pop("seeds", None)
    if args.steps is not None:
        preset["steps"] = check_positive_int("steps", args.steps)
    check_positive_int("workers", args.workers)
    datasets, models = args.datasets or list(PROBLEMS), args.models or list(MODELS)
    specs = [
        StimperSpec(dataset, model, seed=seed, **preset) for seed in seeds for dataset in datasets for model in models
    ]
    name = args.name or ("stimper_problems_quick" if args.quick else "stimper_problems")
    args.out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()

    def progress(done: int, total: int, row: dict[str, Any]) -> None:
        status = row["error"].splitlines()[0] if row["error"] else f"grid KL {row['grid_kl']:.4f}, KL {row['kl']:.4f}"
        print(
            f"[{done}/{total} {time.perf_counter() - began:6.0f}s] {row['dataset']} {row['model']} seed {row['seed']}: "
            f"{status} ({row['parameters']} parameters, {row['seconds_per_step'] * 1000:.1f} ms/step)",
            flush=True,
        )

    rows = run_many(
        specs,
        run_spec,
        key=spec_key,
        workers=args.workers,
        on_result=progress,
        cache_dir=args.out / f".{name}_rows",
        cost=lambda spec: spec.steps * (8 if spec.model == "realnvp_resampled" else 1),
    )
    shown = list(sys.argv[1:] if argv is None else argv)
    if "--out" in shown:  # where the files went is not part of the run
        at = shown.index("--out")
        del shown[at : at + 2]
    command = " ".join(["python experiments/stimper_problems.py", *map(str, shown)])
    report.write_csv(rows, args.out / f"{name}.csv", CSV_COLUMNS)
    title = "Stimper et al. 2022's 2-D problems: their protocol and ours" + (" (--quick)" if args.quick else "")
    text = write_markdown(read_results(args.out / f"{name}.csv"), args.out / f"{name}.md", title=title, command=command)
    print(text)
    print(f"wrote {args.out / name}.{{md,csv}} in {time.perf_counter() - began:.0f} s")
    return rows

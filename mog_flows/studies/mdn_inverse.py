"""Conditional densities with exact references: Bishop's inverse problem (MDN against conditional flows over a
mixture base and a Gaussian base) and correlated 2-D outputs (MDN with full against diagonal covariances).

Shapes: N pairs, M contexts x, G grid points in y, D output features (1 or 2), one context feature.

Problem 1, `bishop` (Bishop 1994, "Mixture density networks", §5; also PRML §5.6): y ~ U(0, 1),
x = y + 0.3 sin(2πy) + ε, and the task is y | x, which has up to three branches (around x = 0.5: y near 0.19, 0.5
and 0.81). Bishop draws ε ~ U(-0.1, 0.1); here ε ~ N(0, 0.05²) instead, so that p(y | x) is smooth in x (uniform
noise gives a density with jumps wherever |x - f(y)| = 0.1). The exact conditional is a 1-D quadrature,

    p(y | x) = N(x; f(y), σ²) / Z(x) on [0, 1] (0 outside),  Z(x) = ∫₀¹ N(x; f(y), σ²) dy,  f(y) = y + 0.3 sin 2πy,

with Z by the trapezoidal rule on a fine grid in float64. Metrics: E_x KL(p(y | x) ‖ q(y | x)) over test x's drawn
from the marginal of x, each KL = ∫₀¹ p (log p - log q) dy by the trapezoidal rule on a grid of y (p vanishes
outside [0, 1], so the mass q puts there enters only through log q on [0, 1]); and the test NLL -mean log q(y | x)
on test pairs (the true conditional's own NLL on the same pairs is the floor). p(y | x) jumps to 0 at y = 0 and
y = 1, which no smooth model matches: test x's near 0 and 1 carry most of every model's KL (the report shows the
KL over x's in [0.1, 0.9] beside the mean over all).

Models, at equal parameter budgets (the mixture-base flow sets it, the others get the narrowest width reaching it,
`budgets.narrowest_width`): `mdn`, a `MixtureDensityNetwork(1, 1, K, covariance="diagonal")` (in 1-D a full
covariance is a diagonal one: the same density, one raw entry per component); `mog_flow`, a conditional NSF
(`build_flow(1, context_features=1, num_components=K)`) over a conditional mixture base; `gaussian_flow`, the same
NSF over a standard normal base. The flows z-score y and x (`standardize=(y, x)`); the MDN sees raw units (both lie
near [0, 1]).

Problem 2, `correlated`: x ~ U(-1, 1), y | x = ½ N(m(x), Σ) + ½ N(-m(x), Σ) with m(x) = (x, x²) and Σ of standard
deviations 0.3 and correlation 0.9, whose log density is closed-form. Models: `mdn_full` and `mdn_diagonal` with
the same K (the diagonal one widened to the full one's budget). Metrics: test NLL and E_x KL = E_{x, y ~ p}[log p -
log q], a Monte Carlo mean over the test pairs (reported with its standard error).

Every model trains by `mog_flows.fit(model, (y, x), steps, batch_size, val_data=(y_val, x_val))` (Adam with
cosine decay, the validation-best state restored; lr 1e-3, except the Bishop MDN's 3e-3, `LEARNING_RATES`).
Training data change with the seed; the test sets do not. Settings (`FULL`): K ∈ {5, 10} for problem 1 and
K ∈ {2, 4} for problem 2; 10 000 steps of batch 512 on
20 000 training pairs (2 000 validation pairs, 10 000 test pairs, 500 test x's for the quadrature KL on 2 001
points of y), seeds 0, 1, 2. 10 000 steps rather than 3 000: at 3 000 steps the MDN had not converged (seed 0,
E_x KL 0.091 at 3 000 steps and 0.022 at 10 000, its validation NLL still falling), while the mixture-base flow
was at 0.0098 already. K = 10 and the MDN's learning rate were added after the K = 5 MDN missed the 0.02 target
(0.0299 ± 0.0014 over seeds 0-2), chosen on development seed 100 only (`LEARNING_RATES`' comment has the numbers);
the reported seeds 0, 1, 2 played no part in that choice beyond showing the miss.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..checks import check_positive_int
from ..flows import build_flow
from ..mdn import MixtureDensityNetwork
from ..training import fit
from . import report
from .budgets import count_parameters, narrowest_width
from .runner import run_many

__all__ = [
    "PROBLEMS",
    "MODELS",
    "NOISE",
    "CORRELATION",
    "STD",
    "MdnSpec",
    "bishop_forward",
    "simulate_bishop",
    "bishop_log_normalizer",
    "bishop_log_conditional",
    "simulate_correlated",
    "correlated_log_prob",
    "build_model",
    "run_spec",
    "main",
]

PROBLEMS = ("bishop", "correlated")
MODELS = {"bishop": ("mdn", "mog_flow", "gaussian_flow"), "correlated": ("mdn_full", "mdn_diagonal")}
NOISE = 0.05  # σ of ε in problem 1 (Bishop: U(-0.1, 0.1))
CORRELATION = 0.9
STD = 0.3
FLOW_LAYERS = 2
FLOW_WIDTH = 24  # the mixture-base flow's width: it sets problem 1's budget
MDN_WIDTH = 64  # the full-covariance MDN's width: it sets problem 2's budget
NORMALIZER_POINTS = 10_001
TEST_SEED = 10_000
_FORMAT = "mdn-inverse/1"
DOUBLE = torch.float64


# ---------------------------------------------------------------------------------------------- problem 1
def bishop_forward(y: torch.Tensor) -> torch.Tensor:
    """f(y) = y + 0.3 sin(2πy)."""
    return y + 0.3 * torch.sin(2 * math.pi * y)


def simulate_bishop(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n pairs (y (n, 1), x (n, 1)), float64: y ~ U(0, 1), x = f(y) + N(0, NOISE²)."""
    y = torch.rand(n, 1, generator=generator, dtype=DOUBLE)
    return y, bishop_forward(y) + NOISE * torch.randn(n, 1, generator=generator, dtype=DOUBLE)


def _log_likelihood(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log N(x; f(y), σ²), broadcast over y and x."""
    return -0.5 * ((x - bishop_forward(y)) / NOISE) ** 2 - math.log(NOISE) - 0.5 * math.log(2 * math.pi)


def bishop_log_normalizer(x: torch.Tensor, points: int = NORMALIZER_POINTS) -> torch.Tensor:
    """log Z(x) = log ∫₀¹ N(x; f(y), σ²) dy by the trapezoidal rule on `points` points: x (M,) -> (M,), float64."""
    x = x.to(DOUBLE).reshape(-1, 1)
    grid = torch.linspace(0, 1, points, dtype=DOUBLE)
    forward = bishop_forward(grid)
    parts = []
    for i in range(0, x.shape[0], 256):  # (256, G) at a time: memory stays small for many x's
        log_values = -0.5 * ((x[i : i + 256] - forward) / NOISE) ** 2  # the constant of N(x; f(y), σ²) added below
        peak = log_values.amax(-1, keepdim=True)
        parts.append(torch.trapezoid((log_values - peak).exp(), grid, dim=-1).log() + peak.squeeze(-1))
    constant = -math.log(NOISE) - 0.5 * math.log(2 * math.pi)
    return torch.cat(parts) + constant if parts else x.reshape(-1)


def bishop_log_conditional(y: torch.Tensor, x: torch.Tensor, points: int = NORMALIZER_POINTS) -> torch.Tensor:
    """log p(y | x) for y (M, G) or (M,) against x (M,), float64; -inf outside [0, 1]."""
    x = x.to(DOUBLE).reshape(-1)
    y = y.to(DOUBLE)
    column = x.reshape(-1, *([1] * (y.dim() - 1)))
    log_z = bishop_log_normalizer(x, points).reshape(column.shape)
    inside = (y >= 0) & (y <= 1)
    return torch.where(inside, _log_likelihood(y, column) - log_z, -math.inf)


# ---------------------------------------------------------------------------------------------- problem 2
def _correlated_covariance() -> torch.Tensor:
    return STD**2 * torch.tensor([[1.0, CORRELATION], [CORRELATION, 1.0]], dtype=DOUBLE)


def _correlated_means(x: torch.Tensor) -> torch.Tensor:
    """m(x) = (x, x²): x (N, 1) -> (N, 2)."""
    return torch.cat([x, x**2], -1)


def simulate_correlated(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n pairs (y (n, 2), x (n, 1)), float64: x ~ U(-1, 1), y = ±m(x) + L η with a fair sign, LLᵀ = Σ."""
    x = 2 * torch.rand(n, 1, generator=generator, dtype=DOUBLE) - 1
    sign = torch.where(torch.rand(n, 1, generator=generator, dtype=DOUBLE) < 0.5, -1.0, 1.0)
    noise = torch.randn(n, 2, generator=generator, dtype=DOUBLE) @ torch.linalg.cholesky(_correlated_covariance()).T
    return sign * _correlated_means(x) + noise, x


def correlated_log_prob(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Exact log p(y | x) of problem 2: y (N, 2), x (N, 1) -> (N,), float64."""
    y, x = y.to(DOUBLE), x.to(DOUBLE)
    covariance = _correlated_covariance()
    precision = torch.linalg.inv(covariance)
    log_det = torch.logdet(covariance)
    means = _correlated_means(x)
    terms = []
    for sign in (1.0, -1.0):
        r = y - sign * means
        terms.append(-0.5 * ((r @ precision) * r).sum(-1) - 0.5 * log_det - math.log(2 * math.pi) + math.log(0.5))
    return torch.logaddexp(*terms)


# ---------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class MdnSpec:
    """One run: a problem, a model, K and a seed, with the training and evaluation sizes."""

    problem: str
    model: str
    num_components: int
    seed: int
    steps: int = 10_000
    batch_size: int = 512
    lr: float = 1e-3
    train_size: int = 20_000
    val_size: int = 2_000
    test_size: int = 10_000
    kl_contexts: int = 500
    grid_points: int = 2_001
    heat_x: int = 131
    heat_y: int = 141


def spec_key(spec: MdnSpec) -> str:
    text = json.dumps({"format": _FORMAT, **asdict(spec)}, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{spec.problem}-{spec.model}-K{spec.num_components}-{spec.seed}-{digest}"


def _mdn(covariance: str, features: int, num_components: int, width: int) -> MixtureDensityNetwork:
    return MixtureDensityNetwork(1, features, num_components, covariance=covariance, hidden_features=width)


def _flow(base: str, num_components: int, width: int, standardize=None):
    if standardize is None:  # counting parameters only: the z-scoring buffers are not trainable
        standardize = (torch.zeros(2, 1), torch.zeros(2, 1))
    kwargs = {"num_components": num_components} if base == "mog" else {}
    return build_flow(
        1,
        base=base,
        context_features=1,
        num_layers=FLOW_LAYERS,
        hidden_features=width,
        standardize=standardize,
        **kwargs,
    )


def model_width(problem: str, model: str, num_components: int) -> tuple[int, int, int]:
    """(width, parameters, budget): the narrowest width whose model reaches the problem's budget (the
    mixture-base flow for problem 1, the full-covariance MDN for problem 2, each at its fixed width)."""
    K = num_components
    if problem == "bishop":
        budget = count_parameters(_flow("mog", K, FLOW_WIDTH))
        count = {
            "mog_flow": lambda h: count_parameters(_flow("mog", K, h)),
            "gaussian_flow": lambda h: count_parameters(_flow("gaussian", K, h)),
            "mdn": lambda h: count_parameters(_mdn("diagonal", 1, K, h)),
        }[model]
        width = FLOW_WIDTH if model == "mog_flow" else narrowest_width(count, budget)
    else:
        budget = count_parameters(_mdn("full", 2, K, MDN_WIDTH))
        covariance = model.removeprefix("mdn_")
        count = lambda h: count_parameters(_mdn(covariance, 2, K, h))  # noqa: E731
        width = MDN_WIDTH if covariance == "full" else narrowest_width(count, budget)
    return width, count(width), budget


def build_model(spec: MdnSpec, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.nn.Module, int]:
    """The spec's model (float32) and its width; y, x: the training data (the flows z-score with them)."""
    if spec.model not in MODELS.get(spec.problem, ()):
        raise ValueError(f"model {spec.model!r} does not belong to problem {spec.problem!r}: {MODELS}")
    width, _, _ = model_width(spec.problem, spec.model, spec.num_components)
    if spec.model == "mdn":
        return _mdn("diagonal", 1, spec.num_components, width), width
    if spec.model.startswith("mdn_"):
        return _mdn(spec.model.removeprefix("mdn_"), 2, spec.num_components, width), width
    base = "mog" if spec.model == "mog_flow" else "gaussian"
    return _flow(base, spec.num_components, width, standardize=(y.float(), x.float())), width


@torch.no_grad()
def _log_q(model: torch.nn.Module, y: torch.Tensor, x: torch.Tensor, chunk: int = 100_000) -> torch.Tensor:
    """log q(y | x) for y (N, D), x (N, 1), in float32 chunks -> (N,) float64."""
    model.eval()
    parts = [
        model.log_prob(y[i : i + chunk].float(), context=x[i : i + chunk].float()).double()
        for i in range(0, y.shape[0], chunk)
    ]
    return torch.cat(parts)


def _heat_axes(spec: MdnSpec) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.linspace(-0.15, 1.15, spec.heat_x, dtype=DOUBLE), torch.linspace(-0.2, 1.2, spec.heat_y, dtype=DOUBLE)


def _bishop_metrics(model: torch.nn.Module, spec: MdnSpec) -> dict:
    generator = torch.Generator().manual_seed(TEST_SEED)
    y_test, x_test = simulate_bishop(spec.test_size, generator)
    _, x_kl = simulate_bishop(spec.kl_contexts, generator)  # contexts from the marginal of x
    log_q_test = _log_q(model, y_test, x_test)
    log_p_test = bishop_log_conditional(y_test.reshape(-1), x_test.reshape(-1))
    grid = torch.linspace(0, 1, spec.grid_points, dtype=DOUBLE)
    M, G = x_kl.shape[0], grid.numel()
    ys = grid.expand(M, G)
    log_p = bishop_log_conditional(ys, x_kl.reshape(-1))  # (M, G)
    log_q = _log_q(model, ys.reshape(-1, 1), x_kl.expand(M, G).reshape(-1, 1)).reshape(M, G)
    p = log_p.exp()
    integrand = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    kl = torch.trapezoid(integrand, grid, dim=-1)  # (M,)
    interior = ((x_kl.reshape(-1) >= 0.1) & (x_kl.reshape(-1) <= 0.9)).double()
    heat_x, heat_y = _heat_axes(spec)
    density = _log_q(
        model,
        heat_y.repeat(heat_x.numel()).reshape(-1, 1),
        heat_x.repeat_interleave(heat_y.numel()).reshape(-1, 1),
    ).exp()
    return {
        "kl": kl.mean().item(),
        "kl_interior": ((kl * interior).sum() / interior.sum().clamp_min(1)).item(),
        "kl_max": kl.max().item(),
        "nll": -log_q_test.mean().item(),
        "true_nll": -log_p_test.mean().item(),
        "kl_se": math.nan,
        "density": density.reshape(heat_x.numel(), heat_y.numel()).float(),  # q(y | x) on (x, y)
        "kl_per_x": kl.float(),
        "kl_x": x_kl.reshape(-1).float(),
    }


def _correlated_metrics(model: torch.nn.Module, spec: MdnSpec) -> dict:
    generator = torch.Generator().manual_seed(TEST_SEED)
    y_test, x_test = simulate_correlated(spec.test_size, generator)
    log_q = _log_q(model, y_test, x_test)
    log_p = correlated_log_prob(y_test, x_test)
    difference = log_p - log_q
    return {
        "kl": difference.mean().item(),
        "kl_se": (difference.std() / math.sqrt(difference.numel())).item(),
        "kl_interior": math.nan,
        "kl_max": math.nan,
        "nll": -log_q.mean().item(),
        "true_nll": -log_p.mean().item(),
    }


def run_spec(spec: MdnSpec) -> dict:
    """Train the spec's model and measure it against the exact conditional."""
    simulate = simulate_bishop if spec.problem == "bishop" else simulate_correlated
    generator = torch.Generator().manual_seed(1000 + spec.seed)
    y, x = simulate(spec.train_size, generator)
    y_val, x_val = simulate(spec.val_size, generator)
    torch.manual_seed(spec.seed)
    model, width = build_model(spec, y, x)
    began = time.perf_counter()
    history = fit(
        model,
        (y.float(), x.float()),
        steps=spec.steps,
        batch_size=spec.batch_size,
        lr=spec.lr,
        seed=spec.seed,
        val_data=(y_val.float(), x_val.float()),
        device="cpu",
        progress=False,
    )
    seconds = time.perf_counter() - began
    metrics = _bishop_metrics(model, spec) if spec.problem == "bishop" else _correlated_metrics(model, spec)
    return {
        "problem": spec.problem,
        "model": spec.model,
        "num_components": spec.num_components,
        "seed": spec.seed,
        "parameters": count_parameters(model),
        "hidden_features": width,
        "steps": spec.steps,
        "best_step": history.best_step,
        "best_val_nll": history.best_val_nll,
        "train_seconds": seconds,
        **metrics,
    }


# ---------------------------------------------------------------------------------------------- report
CSV_COLUMNS = [
    "problem",
    "model",
    "num_components",
    "seed",
    "parameters",
    "hidden_features",
    "steps",
    "best_step",
    "kl",
    "kl_se",
    "kl_interior",
    "kl_max",
    "nll",
    "true_nll",
    "best_val_nll",
    "train_seconds",
]
# learning rates other than fit's 1e-3, chosen on development seed 100 only (Bishop MDN, E_x KL: K = 10 0.0196 at
# 1e-3 and 0.0176 at 3e-3; K = 5 0.048 at 1e-3, 0.023 with 20 000 steps; K = 16 0.022 at 1e-3); the other models
# were not tuned
LEARNING_RATES = {("bishop", "mdn"): 3e-3}
FULL = dict(
    bishop_components=(5, 10), correlated_components=(2, 4), seeds=(0, 1, 2), steps=10_000, batch_size=512,
    train_size=20_000,
)  # fmt: skip
QUICK = dict(
    bishop_components=(3,), correlated_components=(2,), seeds=(0,), steps=20, batch_size=128, train_size=1000,
    val_size=200, test_size=500, kl_contexts=20, grid_points=201, heat_x=21, heat_y=23,
)  # fmt: skip
KL_TARGET = 0.02


def _cell(rows: list[dict], problem: str, model: str, K: int) -> list[dict]:
    chosen = [r for r in rows if (r["problem"], r["model"], r["num_components"]) == (problem, model, K)]
    return sorted(chosen, key=lambda r: r["seed"])


def _stat(cell: list[dict], field: str, digits: int = 4) -> str:
    return report.pm(*report.mean_std(r[field] for r in cell), digits=digits)


def write_markdown(rows: list[dict], path: Path, *, title: str, command: str, batch_size: int, train_size: int) -> str:
    """Both problems' tables: metrics mean ± std over seeds, parameter counts and widths."""
    seeds = sorted({r["seed"] for r in rows})
    first = rows[0] if rows else {}
    lines = [
        f"# {title}",
        "",
        f"Written by `{command}`. Mean ± std over seeds {seeds}; {first.get('steps')} steps of Adam (lr 1e-3; the",
        "Bishop MDN's 3e-3, chosen on development seed 100; cosine decay)",
        f"with batch {batch_size} on {train_size} training pairs, the validation-best "
        "state restored (`mog_flows.fit`). Nats; lower is better. Models at equal parameter budgets (counts",
        "below: the narrowest width reaching the budget, within 10% of it).",
    ]
    bishop = [r for r in rows if r["problem"] == "bishop"]
    if bishop:
        lines += [
            "",
            "## Problem 1: Bishop's inverse problem, y | x",
            "",
            f"y ~ U(0, 1), x = y + 0.3 sin 2πy + ε, ε ~ N(0, {NOISE}²) (Bishop 1994 uses U(-0.1, 0.1); Gaussian noise",
            "keeps p(y | x) smooth in x). E_x KL(p ‖ q) by quadrature in y on [0, 1] at test x's from the marginal",
            "of x; 'KL, x in [0.1, 0.9]' leaves out the x's whose p(y | x) is cut off at y = 0 or y = 1 (a jump",
            "no smooth q matches). Test NLL on test pairs; the exact conditional's own NLL on them is "
            f'{bishop[0]["true_nll"]:.4f}. `mdn` is `MixtureDensityNetwork(1, 1, K, covariance="diagonal")`:',
            "in 1-D a full covariance is the same model. Flows: conditional NSF, "
            f"{FLOW_LAYERS} layers, y and x z-scored.",
            "",
            "| model | K | parameters | width | E_x KL | KL, x in [0.1, 0.9] | max_x KL | test NLL | "
            f"E_x KL < {KL_TARGET} |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for K in sorted({r["num_components"] for r in bishop}):
            for model in MODELS["bishop"]:
                cell = _cell(bishop, "bishop", model, K)
                if not cell:
                    continue
                mean_kl = report.mean_std(r["kl"] for r in cell)[0]
                lines.append(
                    f"| {model} | {K} | {cell[0]['parameters']} | {cell[0]['hidden_features']} | "
                    f"{_stat(cell, 'kl')} | {_stat(cell, 'kl_interior')} | {_stat(cell, 'kl_max')} | "
                    f"{_stat(cell, 'nll')} | {'yes' if mean_kl < KL_TARGET else 'no'} |"
                )
    correlated = [r for r in rows if r["problem"] == "correlated"]
    if correlated:
        lines += [
            "",
            "## Problem 2: correlated 2-D outputs, MDN full vs diagonal covariance",
            "",
            f"x ~ U(-1, 1), y | x = ½ N((x, x²), Σ) + ½ N(-(x, x²), Σ), Σ: std {STD}, correlation {CORRELATION}.",
            "E_x KL = E_{x, y ~ p}[log p - log q] over the test pairs (Monte Carlo; its standard error, mean over",
            f"seeds, in brackets). The exact conditional's NLL on the test pairs is {correlated[0]['true_nll']:.4f}.",
            "Δ KL: full − diagonal, paired by seed (negative: full better).",
            "",
            "| K | covariance | parameters | width | test NLL | E_x KL | Δ KL (full − diag) | full better |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for K in sorted({r["num_components"] for r in correlated}):
            cells = {m: _cell(correlated, "correlated", m, K) for m in MODELS["correlated"]}
            full = {r["seed"]: r["kl"] for r in cells["mdn_full"]}
            diagonal = {r["seed"]: r["kl"] for r in cells["mdn_diagonal"]}
            paired = report.mean_std(full[s] - diagonal[s] for s in sorted(full.keys() & diagonal.keys()))
            for model, cell in cells.items():
                if not cell:
                    continue
                se = report.mean_std(r["kl_se"] for r in cell)[0]
                delta = report.pm(*paired, digits=4) if model == "mdn_full" else ""
                better = ("yes" if paired[0] < 0 else "no") if model == "mdn_full" and not math.isnan(paired[0]) else ""
                lines.append(
                    f"| {K} | {model.removeprefix('mdn_')} | {cell[0]['parameters']} | {cell[0]['hidden_features']} "
                    f"| {_stat(cell, 'nll')} | {_stat(cell, 'kl')} ({se:.4f}) | {delta} | {better} |"
                )
    lines += [
        "",
        f"Training time per run: {report.pm(*report.mean_std(r['train_seconds'] for r in rows), digits=0)} s "
        "(one CPU thread).",
    ]
    text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


def plot_densities(rows: list[dict], path: Path, *, seed: int) -> bool:
    """The true p(y | x) of problem 1 as a heatmap over (x, y) beside each model's q(y | x), at one seed."""
    chosen = [r for r in rows if r["problem"] == "bishop" and r["seed"] == seed and "density" in r]
    if not chosen:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heat_x = torch.linspace(-0.15, 1.15, chosen[0]["density"].shape[0], dtype=DOUBLE)
    heat_y = torch.linspace(-0.2, 1.2, chosen[0]["density"].shape[1], dtype=DOUBLE)
    true = bishop_log_conditional(heat_y.expand(heat_x.numel(), -1), heat_x).exp()
    panels = [("true p(y | x)", true)] + [(f"{r['model']} (K={r['num_components']})", r["density"]) for r in chosen]
    vmax = torch.quantile(true.flatten().float(), 0.99).item()
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), squeeze=False)
    for axis, (name, density) in zip(axes[0], panels, strict=True):
        axis.pcolormesh(heat_x.numpy(), heat_y.numpy(), density.T.double().numpy(), vmin=0, vmax=vmax, cmap="magma")
        axis.set(title=name, xlabel="x", ylabel="y")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return True


def _parser(default_out: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (seconds), for tests")
    parser.add_argument("--problems", nargs="+", choices=PROBLEMS)
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--name")
    return parser


def main(argv: Sequence[str] | None = None, *, default_out: str | os.PathLike = ".") -> list[dict]:
    """The study's command line; returns the rows."""
    args = _parser(Path(default_out)).parse_args(argv)
    preset = QUICK if args.quick else FULL
    check_positive_int("workers", args.workers)
    seeds = args.seeds if args.seeds is not None else preset["seeds"]
    if any(seed < 0 for seed in seeds):
        raise ValueError(f"seeds must be non-negative integers; got {seeds}")
    steps = check_positive_int("steps", args.steps if args.steps is not None else preset["steps"])
    sizes = {k: v for k, v in preset.items() if k not in ("bishop_components", "correlated_components", "seeds")}
    sizes["steps"] = steps
    specs = [
        MdnSpec(problem, model, K, seed, **sizes, lr=LEARNING_RATES.get((problem, model), 1e-3))
        for problem in (args.problems or PROBLEMS)
        for K in preset[f"{problem}_components"]
        for seed in seeds
        for model in MODELS[problem]
    ]
    name = args.name or ("mdn_inverse_quick" if args.quick else "mdn_inverse")
    args.out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()

    def progress(done: int, total: int, row: dict) -> None:
        print(
            f"[{done}/{total}] {row['problem']} {row['model']} K={row['num_components']} seed {row['seed']}: "
            f"KL {row['kl']:.4f}, NLL {row['nll']:.4f} ({row['train_seconds']:.0f} s)",
            flush=True,
        )

    rows = run_many(
        specs,
        run_spec,
        key=spec_key,
        workers=args.workers,
        on_result=progress,
        cache_dir=args.out / f".{name}_rows",
        cost=lambda spec: (2 if spec.model.endswith("flow") else 1) * spec.steps,
    )
    command = "python experiments/mdn_inverse.py" + (" --quick" if args.quick else "")
    title = "Conditional densities with exact references: MDNs and conditional flows" + (
        " (--quick)" if args.quick else ""
    )
    report.write_csv(rows, args.out / f"{name}.csv", CSV_COLUMNS)
    text = write_markdown(
        rows,
        args.out / f"{name}.md",
        title=title,
        command=command,
        batch_size=preset["batch_size"],
        train_size=preset["train_size"],
    )
    plot_densities(rows, args.out / f"{name}.png", seed=seeds[0])
    print(text)  # the row cache stays: a later run with more seeds reuses its rows
    print(f"wrote {args.out / name}.{{md,csv,png}} in {time.perf_counter() - began:.0f} s")
    return rows

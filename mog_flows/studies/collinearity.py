"""Collinear labels (seed 000): an MDN trained with the seed's "collinearity penalty" and with a differentiable
residual-correlation penalty, against the NLL alone.

Shapes: N pairs, B minibatch rows, K components, D = 3 output features (the labels y), one context feature x.

Problem: x ~ U(-1, 1) and three labels, the third collinear with the first two,

    y₁ = sin πx + s η₁,   y₂ = cos πx + s η₂,   y₃ = a y₁ + b y₂ + s₃ η₃,   η ~ N(0, I₃),

with s = 0.2, a = 0.8, b = -0.6, s₃ = 0.05: y | x is Gaussian, y = M(x) + A η with M = (sin πx, cos πx,
a sin πx + b cos πx) and A lower-triangular, so its exact log density is closed form, and the residuals of the
*true* conditional mean, y - M(x) = A η, are correlated (corr(r₁, r₃) = a s / √((a² + b²) s² + s₃²) ≈ 0.78,
corr(r₂, r₃) ≈ -0.58, corr(r₁, r₂) = 0). Model: `MixtureDensityNetwork(1, 3, K=3, covariance="full")`, Adam
3e-3 with cosine decay, batch 256, gradient clipping at 5 (`mdn_training.train`).

Arms, each loss the minibatch mean NLL plus:
    none        nothing (λ = 0; either penalty at λ = 0 adds exactly 0);
    seed        `collinearity_penalty(y_batch, λ)`, seed 000's term: λ Σ_{i≠j} corr(labels)²_ij. It depends on the
                labels only, so it carries no gradient to the network (the tensor does not even require grad):
                with the same seed, training must end at the same parameters as λ = 0, bit for bit;
    residual    `residual_correlation_penalty(y_batch, model.mean(x_batch), λ)`: λ Σ_{i≠j} corr(r)²_ij over the
                minibatch residuals r = y - E_q[y | x], which does reach the network.
for λ ∈ {0.1, 1}. Metrics on fixed test pairs: the test NLL (the exact conditional's is the floor), the mean
|off-diagonal correlation| of the residuals y - E_q[y | x] (the exact conditional mean gives ≈ 0.45: correlated
residuals are the truth here, not an error), and the RMS distance of E_q[y | x] from M(x). The report checks
each seed-penalty run's final parameters against the λ = 0 run of the same seed.
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
from ..mdn import MixtureDensityNetwork, collinearity_penalty, residual_correlation_penalty
from . import report
from .mdn_training import command_line, flat_parameters, train
from .runner import run_many

__all__ = [
    "PENALTIES",
    "NOISE",
    "COEFFICIENTS",
    "CollinearitySpec",
    "simulate",
    "true_mean",
    "exact_log_prob",
    "residual_correlation",
    "run_spec",
    "compare_to_baseline",
    "write_markdown",
    "plot_lambdas",
    "main",
]

PENALTIES = ("none", "seed", "residual")
NOISE = 0.2  # s, the noise of y₁ and y₂
COEFFICIENTS = (0.8, -0.6)  # a, b
THIRD_NOISE = 0.05  # s₃
TEST_SEED = 10_000
DOUBLE = torch.float64
_FORMAT = "collinearity/1"


# ---------------------------------------------------------------------------------------------- problem
def _scale_tril() -> torch.Tensor:
    """A (3, 3), lower-triangular: y = M(x) + A η."""
    a, b = COEFFICIENTS
    s = NOISE
    return torch.tensor([[s, 0.0, 0.0], [0.0, s, 0.0], [a * s, b * s, THIRD_NOISE]], dtype=DOUBLE)


def true_mean(x: torch.Tensor) -> torch.Tensor:
    """M(x) = (sin πx, cos πx, a sin πx + b cos πx): x (N, 1) -> (N, 3), float64."""
    a, b = COEFFICIENTS
    x = x.to(DOUBLE)
    first, second = torch.sin(math.pi * x), torch.cos(math.pi * x)
    return torch.cat([first, second, a * first + b * second], -1)


def simulate(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n pairs (y (n, 3), x (n, 1)), float64."""
    x = 2 * torch.rand(n, 1, generator=generator, dtype=DOUBLE) - 1
    noise = torch.randn(n, 3, generator=generator, dtype=DOUBLE)
    return true_mean(x) + noise @ _scale_tril().T, x


def exact_log_prob(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Exact log p(y | x): y (N, 3), x (N, 1) -> (N,), float64."""
    normal = torch.distributions.MultivariateNormal(true_mean(x), scale_tril=_scale_tril())
    return normal.log_prob(y.to(DOUBLE))


def residual_correlation(y: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """The correlation matrix (D, D) of the residuals y - mean over the rows: y, mean (N, D), float64."""
    return torch.corrcoef((y.to(DOUBLE) - mean.to(DOUBLE)).T)


def _mean_abs_off_diagonal(correlation: torch.Tensor) -> float:
    mask = ~torch.eye(correlation.shape[0], dtype=torch.bool)
    return correlation[mask].abs().mean().item()


# ---------------------------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class CollinearitySpec:
    """One run: a penalty, its λ, a seed, and the settings every run shares."""

    penalty: str
    lam: float
    seed: int
    steps: int = 3000
    lr: float = 3e-3
    batch_size: int = 256
    num_components: int = 3
    hidden_features: int = 64
    max_grad_norm: float = 5.0
    train_size: int = 10_000
    test_size: int = 5_000

    def __post_init__(self) -> None:
        if self.penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {PENALTIES}; got {self.penalty!r}")
        if (self.penalty == "none") != (self.lam == 0):
            raise ValueError(f"λ = 0 is the penalty 'none', and 'none' has λ = 0; got {self.penalty!r}, {self.lam}")


SETTINGS = (
    "steps",
    "lr",
    "batch_size",
    "num_components",
    "hidden_features",
    "max_grad_norm",
    "train_size",
    "test_size",
)


def spec_key(spec: CollinearitySpec) -> str:
    text = json.dumps({"format": _FORMAT, **asdict(spec)}, sort_keys=True)
    return f"{spec.penalty}-{spec.lam:g}-{spec.seed}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _loss(spec: CollinearitySpec, flags: dict):
    def loss(model: MixtureDensityNetwork, y: torch.Tensor, x: torch.Tensor, step: int) -> torch.Tensor:
        value = -model.log_prob(y, x).mean()
        if spec.penalty == "seed":
            term = collinearity_penalty(y, spec.lam)
            flags["requires_grad"] = flags.get("requires_grad", False) or term.requires_grad
            value = value + term
        elif spec.penalty == "residual":
            value = value + residual_correlation_penalty(y, model.mean(x), spec.lam)
        return value

    return loss


def run_spec(spec: CollinearitySpec) -> dict:
    """Train one arm and measure it on the test pairs; the row keeps the final parameters (for the λ = 0 check)."""
    y, x = simulate(spec.train_size, torch.Generator().manual_seed(1000 + spec.seed))
    y_test, x_test = simulate(spec.test_size, torch.Generator().manual_seed(TEST_SEED))
    torch.manual_seed(spec.seed)
    model = MixtureDensityNetwork(1, 3, spec.num_components, covariance="full", hidden_features=spec.hidden_features)
    flags: dict = {}
    began = time.perf_counter()
    outcome = train(
        model,
        (y.float(), x.float()),
        _loss(spec, flags),
        steps=spec.steps,
        lr=spec.lr,
        batch_size=spec.batch_size,
        seed=spec.seed,
        max_grad_norm=spec.max_grad_norm,
    )
    seconds = time.perf_counter() - began
    parameters = flat_parameters(model)
    row = {
        **asdict(spec),
        "status": "diverged" if outcome.diverged else "ok",
        "reason": outcome.reason,
        "test_nll": math.nan,
        "exact_nll": -exact_log_prob(y_test, x_test).mean().item(),
        "residual_corr": math.nan,
        "exact_residual_corr": _mean_abs_off_diagonal(residual_correlation(y_test, true_mean(x_test))),
        "corr_12": math.nan,
        "corr_13": math.nan,
        "corr_23": math.nan,
        "mean_rms_error": math.nan,
        "label_penalty": collinearity_penalty(y.float(), 1.0).item(),  # Σ_{i≠j} corr(labels)², the seed's term / λ
        "penalty_requires_grad": int(flags.get("requires_grad", False)),
        "parameter_digest": hashlib.sha256(parameters.numpy().tobytes()).hexdigest()[:16],
        "train_seconds": seconds,
        "parameters": parameters,
    }
    if outcome.diverged:
        return row
    with torch.no_grad():
        test_nll = -model.log_prob(y_test.float(), x_test.float()).double().mean().item()
        mean = model.mean(x_test.float()).double()
    correlation = residual_correlation(y_test, mean)
    row.update(
        test_nll=test_nll,
        residual_corr=_mean_abs_off_diagonal(correlation),
        corr_12=correlation[0, 1].item(),
        corr_13=correlation[0, 2].item(),
        corr_23=correlation[1, 2].item(),
        mean_rms_error=(mean - true_mean(x_test)).square().sum(-1).mean().sqrt().item(),
    )
    return row


def compare_to_baseline(rows: list[dict]) -> list[dict]:
    """Add to each row `identical` (1 when its final parameters equal, bit for bit, those of the λ = 0 run of the
    same seed) and `max_parameter_change` (the largest |Δθ| against that run); NaN where there is none."""
    baseline = {r["seed"]: r["parameters"] for r in rows if r["penalty"] == "none" and "parameters" in r}
    for row in rows:
        reference = baseline.get(row["seed"])
        if reference is None or "parameters" not in row:
            row["identical"], row["max_parameter_change"] = math.nan, math.nan
            continue
        row["identical"] = int(torch.equal(row["parameters"], reference))
        row["max_parameter_change"] = (row["parameters"].double() - reference.double()).abs().max().item()
    return rows


# ---------------------------------------------------------------------------------------------- report
CSV_COLUMNS = [
    "penalty",
    "lam",
    "seed",
    "status",
    "reason",
    "test_nll",
    "exact_nll",
    "residual_corr",
    "exact_residual_corr",
    "corr_12",
    "corr_13",
    "corr_23",
    "mean_rms_error",
    "label_penalty",
    "penalty_requires_grad",
    "identical",
    "max_parameter_change",
    "parameter_digest",
    "train_seconds",
    *SETTINGS,
]
INTEGERS = ("seed", "steps", "batch_size", "num_components", "hidden_features", "train_size", "test_size")
TEXTS = ("penalty", "status", "reason", "parameter_digest")
LAMBDAS = (0.1, 1.0)
FULL = dict(seeds=(0, 1, 2, 3, 4))
QUICK = dict(seeds=(0, 1), steps=30, train_size=500, test_size=300)
ARM_LABELS = {"none": "NLL only", "seed": "seed 000 penalty", "residual": "residual-correlation penalty"}


def _arms(rows: list[dict]) -> list[tuple[str, float]]:
    order = {name: i for i, name in enumerate(PENALTIES)}
    return sorted({(r["penalty"], float(r["lam"])) for r in rows}, key=lambda a: (order[a[0]], a[1]))


def _mean_se(values: Sequence[float], digits: int = 4) -> str:
    values = [v for v in values if math.isfinite(v)]
    mean, std = report.mean_std(values)
    return report.pm(mean, std / math.sqrt(len(values)) if len(values) > 1 else math.nan, digits=digits)


def _identity(cell: list[dict]) -> str:
    if cell[0]["penalty"] == "none":
        return "(the reference)"
    same = sum(1 for r in cell if r["identical"] == 1)
    change = max((r["max_parameter_change"] for r in cell), default=math.nan)
    return f"{same}/{len(cell)} bitwise; max abs change {change:.3g}"


def write_markdown(rows: list[dict], path: Path, *, command: str) -> str:
    """The report, from the CSV's rows alone (so a committed report follows from its committed CSV)."""
    first = rows[0]
    seeds = sorted({int(r["seed"]) for r in rows})
    a, b = COEFFICIENTS
    title = "# Collinear labels: seed 000's penalty against a residual-correlation penalty"
    lines = [
        title + (" (--quick)" if "--quick" in command else ""),
        "",
        f"Written by `{command}`. x ~ U(-1, 1); y₁ = sin πx + {NOISE} η₁, y₂ = cos πx + {NOISE} η₂, y₃ = {a} y₁ "
        f"{'+' if b >= 0 else '-'} {abs(b)} y₂ + {THIRD_NOISE} η₃ (η ~ N(0, I)). Model: full-covariance "
        f"`MixtureDensityNetwork(1, 3, {int(first['num_components'])})` (width {int(first['hidden_features'])}), "
        f"Adam, peak lr {first['lr']:g}, cosine decay over {int(first['steps'])} steps, batch "
        f"{int(first['batch_size'])}, clipping at {first['max_grad_norm']:g}, {int(first['train_size'])} training "
        f"pairs; loss = minibatch NLL + the penalty. Seeds {seeds}; mean ± standard error over seeds on "
        f"{int(first['test_size'])} fixed test pairs. The exact conditional's test NLL is {first['exact_nll']:.4f} "
        f"and the mean |off-diagonal correlation| of its residuals y - M(x) is {first['exact_residual_corr']:.4f} "
        "(the residuals of the true mean are correlated). 'residual abs corr': the same for y - E_q[y | x]; 'RMS "
        "mean error': √E‖E_q[y | x] - M(x)‖². The seed's term on the training labels, Σ_{i≠j} corr², is "
        f"{first['label_penalty']:.4f} (× λ is all it adds to the loss).",
        "",
        "## Summary",
        "",
        "| penalty | λ | runs | diverged | test NLL | residual abs corr | RMS mean error | parameters vs λ = 0 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    cells = {}
    for penalty, lam in _arms(rows):
        cell = sorted((r for r in rows if (r["penalty"], float(r["lam"])) == (penalty, lam)), key=lambda r: r["seed"])
        cells[penalty, lam] = cell
        ok = [r for r in cell if r["status"] == "ok"]
        lines.append(
            f"| {ARM_LABELS[penalty]} | {lam:g} | {len(cell)} | {len(cell) - len(ok)} | "
            f"{_mean_se([r['test_nll'] for r in ok])} | {_mean_se([r['residual_corr'] for r in ok])} | "
            f"{_mean_se([r['mean_rms_error'] for r in ok])} | {_identity(cell)} |"
        )
    lines += [
        "",
        "## Every run",
        "",
        "| penalty | λ | seed | test NLL | residual abs corr | corr(r₁, r₂) | corr(r₁, r₃) | corr(r₂, r₃) | RMS mean "
        "error | parameter digest | identical to λ = 0 | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells.values():
        for r in cell:
            identical = "" if r["penalty"] == "none" else ("yes" if r["identical"] == 1 else "no")
            lines.append(
                f"| {r['penalty']} | {float(r['lam']):g} | {int(r['seed'])} | {r['test_nll']:.4f} | "
                f"{r['residual_corr']:.4f} | {r['corr_12']:.3f} | {r['corr_13']:.3f} | {r['corr_23']:.3f} | "
                f"{r['mean_rms_error']:.4f} | `{r['parameter_digest']}` | {identical} | {r['train_seconds']:.0f} |"
            )
    lines += ["", "## What the numbers say", ""]
    seed_cells = [c for (p, _), c in cells.items() if p == "seed"]
    if seed_cells:
        same = sum(1 for c in seed_cells for r in c if r["identical"] == 1)
        total = sum(len(c) for c in seed_cells)
        grad = sum(int(r["penalty_requires_grad"]) for c in seed_cells for r in c)
        lines.append(
            f"- Seed 000's penalty: {same} of {total} runs end at parameters bitwise identical to the λ = 0 run of "
            f"their seed; the penalty tensor required grad in {grad} of them. It adds a constant to the loss and "
            "changes nothing that is learnt."
        )
    base = cells.get(("none", 0.0))
    if base:
        base_nll = report.mean_std(r["test_nll"] for r in base)[0]
        base_corr = report.mean_std(r["residual_corr"] for r in base)[0]
        for (penalty, lam), cell in cells.items():
            if penalty != "residual":
                continue
            nll_mean = report.mean_std(r["test_nll"] for r in cell)[0]
            corr_mean = report.mean_std(r["residual_corr"] for r in cell)[0]
            lines.append(
                f"- Residual-correlation penalty, λ = {lam:g}: residual abs corr {corr_mean:.4f} against "
                f"{base_corr:.4f} at λ = 0 ({'lower' if corr_mean < base_corr else 'not lower'}), test NLL "
                f"{nll_mean:.4f} against {base_nll:.4f} ({nll_mean - base_nll:+.4f} nats)."
            )
    text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


def plot_lambdas(rows: list[dict], path: Path) -> bool:
    """Test NLL and residual |corr| against λ for both penalties (one point per seed, the mean as a line), with
    the exact conditional's values dashed."""
    rows = [r for r in rows if r["status"] == "ok"]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lambdas = (0.0, *LAMBDAS)
    figure, axes = plt.subplots(1, 2, figsize=(8.5, 3.3))
    for axis, field, exact, label in (
        (axes[0], "test_nll", "exact_nll", "test NLL (nats)"),
        (axes[1], "residual_corr", "exact_residual_corr", "mean |off-diagonal corr| of y - E_q[y|x]"),
    ):
        for shift, penalty, marker in ((-0.08, "seed", "o"), (0.08, "residual", "s")):
            means = []
            for position, lam in enumerate(lambdas):
                chosen = [
                    r
                    for r in rows
                    if (r["penalty"] == "none" if lam == 0 else (r["penalty"], r["lam"]) == (penalty, lam))
                ]
                values = [r[field] for r in chosen]
                axis.scatter([position + shift] * len(values), values, marker=marker, s=14, alpha=0.6)
                means.append(report.mean_std(values)[0])
            axis.plot([p + shift for p in range(len(lambdas))], means, marker=marker, label=ARM_LABELS[penalty])
        axis.axhline(rows[0][exact], color="k", ls="--", lw=0.8, label="exact conditional")
        axis.set(xticks=range(len(lambdas)), xticklabels=[f"{lam:g}" for lam in lambdas], xlabel="λ", ylabel=label)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return True


def _parser(default_out: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (seconds), for tests")
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=default_out)
    return parser


def main(argv: Sequence[str] | None = None, *, default_out: str | os.PathLike = ".") -> list[dict]:
    """The study's command line; returns the rows (with their final parameters)."""
    args = _parser(Path(default_out)).parse_args(argv)
    check_positive_int("workers", args.workers)
    preset = QUICK if args.quick else FULL
    seeds = args.seeds if args.seeds is not None else preset["seeds"]
    if any(seed < 0 for seed in seeds):
        raise ValueError(f"seeds must be non-negative integers; got {seeds}")
    settings = {k: v for k, v in preset.items() if k != "seeds"}
    arms = [("none", 0.0)] + [(penalty, lam) for penalty in ("seed", "residual") for lam in LAMBDAS]
    specs = [CollinearitySpec(penalty, lam, seed, **settings) for penalty, lam in arms for seed in seeds]
    name = "collinearity_quick" if args.quick else "collinearity"
    args.out.mkdir(parents=True, exist_ok=True)

    def progress(done: int, total: int, row: dict) -> None:
        print(
            f"[{done}/{total}] {row['penalty']} λ={row['lam']:g} seed {row['seed']}: NLL {row['test_nll']:.4f}, "
            f"residual |corr| {row['residual_corr']:.4f} ({row['train_seconds']:.0f} s)",
            flush=True,
        )

    rows = run_many(specs, run_spec, key=spec_key, workers=args.workers, on_result=progress,
                    cache_dir=args.out / f".{name}_rows")  # fmt: skip
    rows = compare_to_baseline(rows)
    report.write_csv(rows, args.out / f"{name}.csv", CSV_COLUMNS)
    written = report.read_csv(args.out / f"{name}.csv", integers=INTEGERS, texts=TEXTS)
    text = write_markdown(written, args.out / f"{name}.md", command=command_line("experiments/collinearity.py", argv))
    plot_lambdas(written, args.out / f"{name}.png")
    print(text)
    return rows

"""Maximum-entropy flows with a mixture base: three studies over `maxent.fit_maxent` and the problems with known
answers of `studies.maxent_problems`.

a. dirichlet   the MEFN Dirichlet study: α = (1, 2, 3), E[log y_k] = ψ(α_k) - ψ(α₀), an NSF on ℝ² followed by the
               additive logistic map onto the simplex; entropy gap, KL(q ‖ Dirichlet), constraint violations, MMD test.
b. bimodal     E[x_d²] = 2, E[x_d⁴] = 4.6 per coordinate (answer ∝ exp(θ₁x² - θ₂x⁴), bimodal), in 1-D and 2-D: the
               mixture base against a Gaussian base with at least as many parameters, equal steps.
c. estimators  the 1-D bimodal problem with {Gaussian base; MoG "exact", "gumbel-nested" (M = 64, 256, 1024),
               "gumbel-exact", "gumbel-joint", "pathwise"} × τ ∈ {1, 0.5, 0.1, annealed 1 → 0.05} (τ-free ones once)
               × seeds: KL to the answer, bias of the training-time entropy estimate, gradient variance, time per step.

A Gaussian base gets the narrowest width whose flow has at least the mixture-base flow's parameters
(`budgets.matched_hidden_features`); every run takes the same number of steps. Summaries are mean ± sample std over
seeds (`report.mean_std`: std NaN with one seed, NaN where a seed's value is NaN).

`main` (the command line) writes OUT/NAME_{dirichlet,bimodal,estimators}.{md,csv}, OUT/NAME.md (all tables and the
target checks), OUT/NAME_bimodal.png and OUT/NAME_estimators.png, NAME = "maxent" ("maxent_quick" with --quick),
OUT the folder given as `--out`. Each finished run is cached in OUT/.NAME_cache/ (`runner.run_many`, keyed by its
settings), so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..flows import build_flow
from ..maxent import FINAL_TEMPERATURE, MaxEntNotConvergedWarning, MaxEntResult, fit_maxent
from ..mixture import MixtureOfGaussians
from ..simplex import simplex_flow
from . import report
from .budgets import count_parameters, matched_hidden_features
from .maxent_problems import bimodal_problem, dirichlet_problem, kl_from_samples, mmd_test
from .report import mean_std, pm
from .runner import run_many

__all__ = [
    "TARGETS",
    "SCHEDULE",
    "COMPONENTS",
    "STEPS",
    "LAYERS",
    "MAX_PENALTY",
    "SETTINGS",
    "Spec",
    "make_specs",
    "run_one",
    "run_all",
    "largest_orthant_mass",
    "summarize",
    "check_targets",
    "markdown_tables",
    "write_results",
    "main",
]

GUMBEL = ("gumbel-nested", "gumbel-exact", "gumbel-joint")
TEMPERATURES = ("1", "0.5", "0.1", "annealed")
TARGETS = {"dirichlet_entropy_gap": 0.01, "dirichlet_kl": 0.01, "bimodal_kl": 0.02}  # thresholds the report checks

# the augmented-Lagrangian schedule per study (penalty c, gamma, beta of fit_maxent): c doubles only when ‖R‖ did not
# fall below 0.9 times its previous value, so that the noise of λ ← λ + c R̂ stays small. The bimodal problems use
# whitened constraints (unit covariance under the answer) and start at c = 1; the Dirichlet constraints, less well
# conditioned, at c = 4.
SCHEDULE = {
    "dirichlet": dict(penalty=4.0, gamma=0.9, beta=2.0),
    "bimodal": dict(penalty=1.0, gamma=0.9, beta=2.0),
    "estimators": dict(penalty=1.0, gamma=0.9, beta=2.0),
}

# the keys of the per-problem settings below: each problem of the Dirichlet and bimodal studies, and the estimator study
RUNS = ("dirichlet", "bimodal-1d", "bimodal-2d", "estimators")

# K of the mixture bases: per problem in the Dirichlet and bimodal studies, one K for the estimator study (chosen on
# seeds the study does not report)
COMPONENTS = {"dirichlet": 8, "bimodal-1d": 4, "bimodal-2d": 128, "estimators": 4}

# Steps, flow layers and the cap on c (fit_maxent's max_penalty) of the full study, per problem: bimodal-2d needs
# longer runs of a deeper flow, and a cap on c (without one, c keeps doubling in runs this long and the entropy
# collapses)
STEPS = {"dirichlet": 5000, "bimodal-1d": 4000, "bimodal-2d": 16000, "estimators": 1000}
LAYERS = {"dirichlet": 2, "bimodal-1d": 2, "bimodal-2d": 4, "estimators": 2}
MAX_PENALTY = {"bimodal-2d": 16.0}

SETTINGS = {
    "full": dict(
        steps=STEPS,
        epoch_steps=200,
        batch_size=256,
        test_batches=64,
        eval_samples={"dirichlet": 2**18, "bimodal": 2**18, "estimators": 2**17},
        seeds={"dirichlet": 3, "bimodal": 3, "estimators": 3},
        gradient_repeats=16,
        lr=2e-3,
        final_lr=1e-4,
        mmd_samples=1000,
        permutations=200,
        layers=LAYERS,
        max_penalty=MAX_PENALTY,
        hidden=32,
        components=COMPONENTS,
        inner=(64, 256, 1024),
    ),
    "quick": dict(
        steps={"dirichlet": 1500, **dict.fromkeys(("bimodal-1d", "bimodal-2d"), 1000), "estimators": 300},
        epoch_steps=100,
        batch_size=256,
        test_batches=16,
        eval_samples={"dirichlet": 2**14, "bimodal": 2**14, "estimators": 2**13},
        seeds={"dirichlet": 1, "bimodal": 1, "estimators": 1},
        gradient_repeats=8,
        lr=2e-3,
        final_lr=1e-4,
        mmd_samples=500,
        permutations=100,
        layers=dict.fromkeys(RUNS, 2),
        hidden=32,
        components=COMPONENTS,
        inner=(64, 256, 1024),
    ),
    "smoke": dict(
        steps={**dict.fromkeys(RUNS, 6), "estimators": 4},
        epoch_steps=3,
        batch_size=16,
        test_batches=2,
        eval_samples={"dirichlet": 256, "bimodal": 256, "estimators": 256},
        seeds={"dirichlet": 1, "bimodal": 1, "estimators": 1},
        gradient_repeats=3,
        lr=2e-3,
        final_lr=1e-3,
        mmd_samples=40,
        permutations=20,
        layers=dict.fromkeys(RUNS, 1),
        hidden=8,
        components=dict.fromkeys(RUNS, 2),
        inner=(8,),
    ),
}


@dataclass(frozen=True)
class Spec:
    """One fit_maxent run."""

    study: str
    problem: str  # "dirichlet" | "bimodal-1d" | "bimodal-2d"
    base: str  # "gaussian" | "mog"
    estimator: str  # "-" for the Gaussian base
    num_inner: int  # M of "gumbel-nested" (0 otherwise)
    temperature: str  # "1" | "0.5" | "0.1" | "annealed" | "-" (τ-free)
    seed: int
    steps: int
    epoch_steps: int
    batch_size: int
    test_batches: int
    eval_samples: int
    layers: int
    hidden: int
    components: int
    gradient_repeats: int
    lr: float
    final_lr: float | None
    penalty: float
    gamma: float
    beta: float
    mmd_samples: int
    permutations: int
    max_penalty: float | None = None  # fit_maxent's cap on c (None: no cap)

    @property
    def label(self) -> str:
        if self.base == "gaussian":
            return "Gaussian base"
        name = f"MoG {self.estimator}" + (f" M={self.num_inner}" if self.estimator == "gumbel-nested" else "")
        return name if self.temperature == "-" else f"{name} τ={self.temperature}"

    @property
    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return f"{self.study}-{self.problem}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"


# ----------------------------------------------------------------------------------------------- one run
_FEATURES = {"bimodal-1d": 1, "bimodal-2d": 2}  # D of the bimodal problems


def _problem(name: str):
    if name == "dirichlet":
        return dirichlet_problem((1.0, 2.0, 3.0))
    features = _FEATURES.get(name)
    if features is None:
        raise ValueError(f"unknown problem {name!r}")
    return bimodal_problem(features, whiten=True)  # the same solution; conditions the augmented Lagrangian


def _build(spec: Spec, features: int):
    """The flow of a run and the parameters of the mixture-base flow of the same spec (the budget); a Gaussian base
    gets the narrowest conditioner width whose flow has at least that many parameters."""
    common = dict(transform="nsf", num_layers=spec.layers)
    mog_kwargs = dict(base="mog", hidden_features=spec.hidden, num_components=spec.components)
    hidden, _, reference = matched_hidden_features(
        features, "nsf", num_layers=spec.layers, hidden_features=spec.hidden, num_components=spec.components
    )
    torch.manual_seed(spec.seed)
    if spec.base == "gaussian":
        flow = build_flow(features, base="gaussian", hidden_features=hidden, **common)
    else:
        extra = {"num_inner": spec.num_inner} if spec.estimator == "gumbel-nested" else {}
        start = 1.0 if spec.temperature == "annealed" else float(spec.temperature) if spec.temperature != "-" else 0.5
        flow = build_flow(features, **common, **mog_kwargs, estimator=spec.estimator, temperature=start, **extra)
    return (simplex_flow(flow) if spec.problem == "dirichlet" else flow), reference


def _schedule(spec: Spec):
    if spec.temperature == "-":
        return None
    if spec.temperature == "annealed":
        return (1.0, FINAL_TEMPERATURE)
    tau = float(spec.temperature)
    return (tau, tau)


def _gradient_variance(flow, repeats: int, batch_size: int, seed: int) -> float:
    """tr Cov of the gradient of the training-time entropy estimate -mean log q (all parameters), over `repeats`
    independent batches at the current parameters and τ."""
    gradients = []
    parameters = [p for p in flow.parameters() if p.requires_grad]
    with torch.random.fork_rng():
        torch.manual_seed(10_000 + seed)
        for _ in range(repeats):
            flow.zero_grad(set_to_none=True)
            _, log_q = flow.sample_and_log_prob(batch_size)
            log_q.mean().backward()
            gradients.append(
                torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in parameters])
            )
    flow.zero_grad(set_to_none=True)
    return torch.stack(gradients).to(torch.float64).var(0).sum().item()


@torch.no_grad()
def _training_entropy(flow, num_samples: int, chunk: int = 1024) -> float:
    """-mean log q from the training-time sampler and scorer (`sample_and_log_prob`) at the current τ."""
    values = []
    for start in range(0, num_samples, chunk):
        _, log_q = flow.sample_and_log_prob(min(chunk, num_samples - start))
        values.append(-log_q.to(torch.float64))
    return torch.cat(values).mean().item()


@torch.no_grad()
def largest_orthant_mass(flow, num_samples: int, chunk: int = 8192) -> float:
    """The largest share of `num_samples` exact samples that falls in one orthant (one sign pattern of x)."""
    counts = None
    for start in range(0, num_samples, chunk):
        x = flow.sample(min(chunk, num_samples - start))
        powers = 2 ** torch.arange(x.shape[1], device=x.device)
        index = ((x > 0).long() * powers).sum(-1)  # the sign pattern as a binary number
        batch = torch.bincount(index, minlength=2 ** x.shape[1])
        counts = batch if counts is None else counts + batch
    return counts.max().item() / num_samples


@torch.no_grad()
def _exact_check(flow, problem, num_samples: int, chunk: int = 8192):
    log_q, log_p = [], []
    for start in range(0, num_samples, chunk):
        x = flow.sample(min(chunk, num_samples - start))
        log_q.append(flow.log_prob(x).to(torch.float64))
        log_p.append(problem.log_prob(x))
    log_q, log_p = torch.cat(log_q), torch.cat(log_p)
    finite = torch.isfinite(log_q) & torch.isfinite(log_p)
    kl, kl_se = kl_from_samples(log_q[finite], log_p[finite])
    return kl, kl_se, int((~finite).sum())


def _fit(spec: Spec, flow, problem) -> MaxEntResult:
    return fit_maxent(
        flow,
        problem.statistic,
        problem.target.float(),
        steps=spec.steps,
        batch_size=spec.batch_size,
        epoch_steps=spec.epoch_steps,
        test_batches=spec.test_batches,
        eval_samples=spec.eval_samples,
        temperature_schedule=_schedule(spec),
        lr=spec.lr,
        final_lr=spec.final_lr,
        penalty=spec.penalty,
        gamma=spec.gamma,
        beta=spec.beta,
        max_penalty=spec.max_penalty,
        seed=spec.seed,
        progress=False,
        stop_early=False,  # equal steps for every run
        # the schedule these studies were run with (before the development sweep chose fit_maxent's defaults):
        # per-constraint scaling, no stationarity test nor test in entropy units, each base trained with its own
        # estimator
        metric="scale",
        stationarity_tolerance=None,
        entropy_tolerance=None,
        estimator=None,
    )


def run_one(spec: Spec) -> dict:
    problem = _problem(spec.problem)
    flow, reference_parameters = _build(spec, problem.features)
    mixture = next((m for m in flow.modules() if isinstance(m, MixtureOfGaussians)), None)
    row = {**asdict(spec), "label": spec.label, "parameters": count_parameters(flow), "true_entropy": problem.entropy}
    row["grad_var_init"] = _gradient_variance(flow, spec.gradient_repeats, spec.batch_size, spec.seed)
    began = time.perf_counter()
    with warnings.catch_warnings():  # runs of equal steps need not converge; the row records `converged`
        warnings.simplefilter("ignore", MaxEntNotConvergedWarning)
        result = _fit(spec, flow, problem)
    row["train_seconds"] = time.perf_counter() - began
    row["steps_taken"] = result.steps
    row["seconds_per_step"] = result.history.wall_time / max(result.steps, 1)
    row["converged"] = result.converged
    row["entropy"] = result.entropy
    row["entropy_se"] = result.entropy_std_error
    row["entropy_gap"] = result.entropy - problem.entropy
    row["max_violation"] = result.violation.abs().max().item()
    row["violation"] = " ".join(f"{v:.5f}" for v in result.violation.tolist())
    with torch.random.fork_rng():
        torch.manual_seed(20_000 + spec.seed)
        row["kl"], row["kl_se"], row["nonfinite"] = _exact_check(flow, problem, spec.eval_samples)
        row["final_temperature"] = mixture.temperature if mixture is not None else math.nan
        row["training_entropy"] = _training_entropy(flow, min(spec.eval_samples, 2**16))
        row["entropy_bias"] = row["training_entropy"] - row["entropy"]
        row["grad_var_final"] = _gradient_variance(flow, spec.gradient_repeats, spec.batch_size, spec.seed)
        if spec.problem == "dirichlet":
            x = flow.sample(spec.mmd_samples).to(torch.float64)
            test = mmd_test(x, problem.sample(spec.mmd_samples), num_permutations=spec.permutations, seed=spec.seed)
            row["mmd2"], row["mmd_p"] = test.mmd2, test.p_value
        else:
            row["mmd2"], row["mmd_p"] = math.nan, math.nan
        # the bimodal answers put 2^-D of their mass in each orthant; a flow that favours some modes does not
        row["largest_orthant_mass"] = (
            largest_orthant_mass(flow, min(spec.eval_samples, 2**16)) if spec.problem != "dirichlet" else math.nan
        )
        if problem.features == 1:
            grid = torch.linspace(-3.5, 3.5, 141).unsqueeze(-1)
            row["density"] = flow.log_prob(grid).exp().tolist()
    return row


def _spec_key(spec: Spec) -> str:
    return spec.key


def run_all(specs: Sequence[Spec], cache: Path | None, *, workers: int = 1, log=print) -> list[dict]:
    """`run_one` for every spec (`runner.run_many`: a pool of `workers` processes, rows cached in `cache`)."""
    began = time.perf_counter()

    def report(done: int, total: int, row: dict) -> None:
        log(
            f"[{done}/{total} {time.perf_counter() - began:5.0f}s] {row['study']} {row['problem']} {row['label']} "
            f"seed {row['seed']}: KL {row['kl']:.4f}, ΔH {row['entropy_gap']:+.4f}, {row['train_seconds']:.1f} s"
        )

    return run_many(specs, run_one, key=_spec_key, workers=workers, on_result=report, cache_dir=cache, cost=_cost)


def _cost(spec: Spec) -> float:
    return spec.steps * (2.0 if spec.problem == "dirichlet" else 1.0)


# ----------------------------------------------------------------------------------------------- the studies
def make_specs(mode: str, seeds: int | None = None) -> list[Spec]:
    s = SETTINGS[mode]
    shared = {k: s[k] for k in ("epoch_steps", "batch_size", "test_batches", "hidden")}
    shared |= {k: s[k] for k in ("gradient_repeats", "lr", "final_lr", "mmd_samples", "permutations")}
    specs = []

    def add(study, problem, base, estimator="-", inner=0, tau="-"):
        for seed in range(s["seeds"][study] if seeds is None else seeds):
            run = "estimators" if study == "estimators" else problem  # the key of the per-problem settings
            evaluation = s["eval_samples"][study]
            specs.append(
                Spec(
                    study,
                    problem,
                    base,
                    estimator,
                    inner,
                    tau,
                    seed,
                    s["steps"][run],
                    eval_samples=evaluation,
                    layers=s["layers"][run],
                    components=s["components"][run],
                    max_penalty=s.get("max_penalty", {}).get(run),
                    **SCHEDULE[study],
                    **shared,
                )
            )

    for base in ("mog", "gaussian"):
        add("dirichlet", "dirichlet", base, "pathwise" if base == "mog" else "-")
    for problem in ("bimodal-1d", "bimodal-2d"):
        for base in ("mog", "gaussian"):
            add("bimodal", problem, base, "pathwise" if base == "mog" else "-")
    add("estimators", "bimodal-1d", "gaussian")
    add("estimators", "bimodal-1d", "mog", "exact")
    add("estimators", "bimodal-1d", "mog", "pathwise")
    for tau in TEMPERATURES:
        for inner in s["inner"]:
            add("estimators", "bimodal-1d", "mog", "gumbel-nested", inner, tau)
        add("estimators", "bimodal-1d", "mog", "gumbel-exact", tau=tau)
        add("estimators", "bimodal-1d", "mog", "gumbel-joint", tau=tau)
    return specs


def summarize(rows: list[dict], keys=("problem", "label")) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    summary = []
    for group, members in groups.items():
        entry = dict(zip(keys, group))
        entry["seeds"] = len(members)
        entry["base"], entry["estimator"], entry["temperature"] = (
            members[0][k] for k in ("base", "estimator", "temperature")
        )
        entry["num_inner"], entry["parameters"] = members[0]["num_inner"], members[0]["parameters"]
        entry["components"] = members[0]["components"]
        entry["layers"] = members[0]["layers"]
        entry["true_entropy"] = members[0]["true_entropy"]
        for name in (
            "kl", "entropy", "entropy_gap", "max_violation", "entropy_bias", "grad_var_init", "grad_var_final",
            "seconds_per_step", "steps_taken", "mmd2", "mmd_p", "largest_orthant_mass",
        ):  # fmt: skip
            entry[name], entry[f"{name}_std"] = mean_std(m[name] for m in members)
        entry["abs_entropy_gap"] = mean_std(abs(m["entropy_gap"]) for m in members)[0]
        entry["mmd_rejections"] = sum(m["mmd_p"] < 0.05 for m in members if math.isfinite(m["mmd_p"]))
        summary.append(entry)
    return summary


def check_targets(summary: list[dict]) -> list[tuple[str, str, bool]]:
    """(what, the numbers, met) for each threshold of `TARGETS`, from the summarised numbers."""
    checks = []
    for entry in summary:
        if entry["problem"] == "dirichlet" and entry["base"] == "mog":
            gap, kl = entry["abs_entropy_gap"], entry["kl"]
            limit_gap, limit_kl = TARGETS["dirichlet_entropy_gap"], TARGETS["dirichlet_kl"]
            checks.append((f"Dirichlet, {entry['label']}: mean abs ΔH < {limit_gap}", f"{gap:.4f}", gap < limit_gap))
            checks.append((f"Dirichlet, {entry['label']}: mean KL < {limit_kl}", f"{kl:.4f}", kl < limit_kl))
    bimodal = [e for e in summary if e["problem"].startswith("bimodal") and e.get("study") == "bimodal"]
    for problem in sorted({e["problem"] for e in bimodal}):
        mog = [e for e in bimodal if e["problem"] == problem and e["base"] == "mog"]
        gaussian = [e for e in bimodal if e["problem"] == problem and e["base"] == "gaussian"]
        if mog:
            kl, limit = mog[0]["kl"], TARGETS["bimodal_kl"]
            checks.append((f"{problem}, {mog[0]['label']}: mean KL < {limit}", f"{kl:.4f}", kl < limit))
        if mog and gaussian:
            a, b = mog[0]["kl"], gaussian[0]["kl"]
            checks.append((f"{problem}: MoG KL < Gaussian-base KL", f"{a:.4f} vs {b:.4f}", a < b))
    return checks


# ----------------------------------------------------------------------------------------------- output
CSV_SKIP = ("density",)


CSV_DIGITS = 6  # significant digits of the floats in the CSV files


def _pm(entry: dict, name: str, digits: int = 4) -> str:
    return pm(entry[name], entry[f"{name}_std"], digits)


def _components(entry) -> str:
    return str(entry["components"]) if entry["base"] == "mog" else "–"


def _sci(entry, name):
    mean = entry[name]
    return "–" if not math.isfinite(mean) else f"{mean:.3g}"


def markdown_tables(summaries: dict[str, list[dict]]) -> dict[str, str]:
    tables = {}
    if summaries.get("dirichlet"):
        lines = [
            "| base | K | parameters | H(q) | ΔH = H(q) − H(p) | KL(q‖p) | max abs violation | MMD² "
            "| MMD p (rejections) | steps |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for e in summaries["dirichlet"]:
            lines.append(
                f"| {e['label']} | {_components(e)} | {e['parameters']} | {_pm(e, 'entropy')} "
                f"| {_pm(e, 'entropy_gap')} | {_pm(e, 'kl')} "
                f"| {_pm(e, 'max_violation')} | {_sci(e, 'mmd2')} "
                f"| {e['mmd_p']:.3f} ({e['mmd_rejections']}/{e['seeds']}) | {e['steps_taken']:.0f} |"
            )
        true = summaries["dirichlet"][0]["true_entropy"]
        tables["dirichlet"] = f"Dirichlet(1, 2, 3), true entropy H(p) = {true:.4f} nats.\n\n" + "\n".join(lines)
    if summaries.get("bimodal"):
        lines = [
            "| problem | base | K | flow layers | parameters | H(p) | H(q) | KL(q‖p) | max abs violation "
            "| largest orthant mass (answer) | steps |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for e in summaries["bimodal"]:
            lines.append(
                f"| {e['problem']} | {e['label']} | {_components(e)} | {e['layers']} | {e['parameters']} "
                f"| {e['true_entropy']:.4f} "
                f"| {_pm(e, 'entropy')} "
                f"| {_pm(e, 'kl')} | {_pm(e, 'max_violation')} "
                f"| {_pm(e, 'largest_orthant_mass', 3)} ({0.5 ** _FEATURES[e['problem']]:g}) | {e['steps_taken']:.0f} |"
            )
        tables["bimodal"] = "\n".join(lines)
    if summaries.get("estimators"):
        lines = [
            "| estimator | KL(q‖p) | entropy bias (training estimate − exact) | grad. variance at init | at end "
            "| ms / step | steps |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in summaries["estimators"]:
            lines.append(
                f"| {e['label']} | {_pm(e, 'kl')} | {_pm(e, 'entropy_bias')} | {_sci(e, 'grad_var_init')} "
                f"| {_sci(e, 'grad_var_final')} | {1000 * e['seconds_per_step']:.1f} | {e['steps_taken']:.0f} |"
            )
        tables["estimators"] = "\n".join(lines)
    return tables


def plot_estimators(summary: list[dict], path: Path) -> None:
    from ..plotting import plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    labels = [e["label"] for e in summary]
    positions = range(len(summary))
    for ax, (name, title) in zip(
        axes, [("kl", "KL(q ‖ p) [nats]"), ("entropy_bias", "entropy bias [nats]"), ("grad_var_init", "grad. variance")]
    ):
        values = [e[name] for e in summary]
        errors = [e[f"{name}_std"] if math.isfinite(e[f"{name}_std"]) else 0 for e in summary]
        ax.barh(list(positions), values, xerr=errors, color="tab:blue")
        ax.set_yticks(list(positions), labels, fontsize=7)
        ax.set_title(title)
        if name != "entropy_bias":
            ax.set_xscale("log")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bimodal(rows: list[dict], path: Path) -> None:
    problem = bimodal_problem(1)
    grid = torch.linspace(-3.5, 3.5, 141)
    from ..plotting import plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(grid, problem.log_prob(grid.unsqueeze(-1)).exp(), "k", lw=2, label="exact max-ent solution")
    for base, colour in (("mog", "tab:blue"), ("gaussian", "tab:orange")):
        members = [r for r in rows if r["problem"] == "bimodal-1d" and r["base"] == base and "density" in r]
        for i, row in enumerate(members):
            ax.plot(grid, row["density"], color=colour, alpha=0.7, label=row["label"] if i == 0 else None)
    ax.set_xlabel("x")
    ax.set_title("1-D bimodal problem: learned densities")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(rows: list[dict], out: Path, name: str, command: str, wall: float) -> list[tuple[str, str, bool]]:
    out.mkdir(parents=True, exist_ok=True)
    summaries, by_study = {}, {}
    for study in ("dirichlet", "bimodal", "estimators"):
        by_study[study] = [r for r in rows if r["study"] == study]
        if by_study[study]:
            summaries[study] = summarize(by_study[study])
            for entry in summaries[study]:
                entry["study"] = study
            columns = [k for k in by_study[study][0] if k not in CSV_SKIP]
            report.write_csv(by_study[study], out / f"{name}_{study}.csv", columns, digits=CSV_DIGITS)
    tables = markdown_tables(summaries)
    for study, table in tables.items():
        (out / f"{name}_{study}.md").write_text(table + "\n")
    checks = check_targets([e for s in summaries.values() for e in s])
    text = [
        f"# Maximum-entropy flows\n\n`{command}` ({len(rows)} runs, {wall / 60:.1f} min of training summed over runs)\n"
    ]
    titles = {"dirichlet": "## a. Dirichlet (MEFN)", "bimodal": "## b. Bimodal", "estimators": "## c. Estimators"}
    for study, table in tables.items():
        text.append(f"{titles[study]}\n\n{table}\n")
    text.append("## Targets\n\n| target | measured | met |\n|---|---|---|")
    text.extend(f"| {what} | {value} | {'met' if ok else 'NOT met'} |" for what, value, ok in checks)
    (out / f"{name}.md").write_text("\n".join(text) + "\n")
    if summaries.get("estimators"):
        plot_estimators(summaries["estimators"], out / f"{name}_estimators.png")
    if by_study.get("bimodal"):
        plot_bimodal(by_study["bimodal"], out / f"{name}_bimodal.png")
    return checks


def main(
    argv: Sequence[str] | None = None, *, default_out: str | os.PathLike = ".", prog: str = "maxent"
) -> list[dict]:
    """The studies' command line; returns the rows. Results go to `--out`, by default `default_out` (the current
    directory unless the caller names another); `prog` names the command in the help and in NAME.md."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="short runs, one seed")
    mode.add_argument("--smoke", action="store_true", help="tiny settings, for tests")
    shown = "the current directory" if str(default_out) == "." else str(default_out)
    parser.add_argument("--out", type=Path, default=Path(default_out), help=f"results folder (default: {shown})")
    parser.add_argument("--seeds", type=int, default=None, help="override the number of seeds")
    parser.add_argument("--studies", default="dirichlet,bimodal,estimators", help="comma-separated subset")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="parallel runs")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the run cache")
    args = parser.parse_args(argv)
    setting = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds must be ≥ 1; got {args.seeds}")
    if args.workers < 1:
        parser.error(f"--workers must be ≥ 1; got {args.workers}")
    studies = set(args.studies.split(","))
    unknown = studies - {"dirichlet", "bimodal", "estimators"}
    if unknown:
        parser.error(f"unknown studies {sorted(unknown)}")
    specs = [s for s in make_specs(setting, args.seeds) if s.study in studies]
    name = "maxent_quick" if setting == "quick" else "maxent"
    cache = None if args.no_cache else args.out / f".{name}_cache"
    if cache is not None and any(cache.glob("*.pt")):
        print(f"resuming: runs already in {cache} are not run again")
    began = time.perf_counter()
    rows = run_all(specs, cache, workers=args.workers, log=lambda text: print(text, flush=True))
    command = prog + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    checks = write_results(rows, args.out, name, command, sum(r["train_seconds"] for r in rows))
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)  # every row is in the files now
    for what, value, ok in checks:
        print(f"{'met    ' if ok else 'NOT met'}  {what}: {value}")
    print(f"wall time of this call: {(time.perf_counter() - began) / 60:.1f} min")
    return rows

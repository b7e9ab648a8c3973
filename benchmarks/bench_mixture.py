"""Speed, accuracy and memory of the mixture base against peer implementations, all measured in one run.

1. `log_prob` throughput, forward (under `torch.no_grad`) and forward+backward (gradients w.r.t. the mixture
   parameters), float32, at (N, K, D) in {(65536, 8, 2), (65536, 16, 8), (16384, 64, 16)}, diagonal and full
   covariance, for mog_flows `MixtureOfGaussians`, `torch.distributions.MixtureSameFamily`, zuko `GMM`,
   pyro `MixtureOfDiagNormals` (diagonal) and normflows `GaussianMixture` (diagonal), on three kinds of input
   (`INPUTS`): benign (points drawn from a mixture of unit-scale components), spread (the same mixture, points
   drawn 4× wider than the components) and narrow (trained-like components of scales 0.03 … 0.09, points spread
   0.5 around them, far from most). Every implementation holds the same mixture and is checked against an
   independent float64 reference (scipy).
2. float32 accuracy on the adversarial suite of `mog_flows.testing` (the one the tests use): log_prob and its
   gradients w.r.t. the points and the means, each implementation against its own float64 evaluation of the same
   float32 parameters; target: ours within 2× torch.distributions' error + 1e-6 on every case.
3. Extra peak CPU memory of `nested_log_prob` forward+backward (N = 512, M = 4096, K = 8, D = 2, τ = 0.5),
   against a naive unchunked (N, M, D) implementation; target ≤ 64 MiB.
4. Training-step time of a 2-D neural spline flow with a mixture base against a standard normal base
   (batch 512, Adam); target: the mixture adds ≤ 10 %.

Writes <out>/bench_mixture.md and <out>/bench_mixture.csv and prints the same table.

    python benchmarks/bench_mixture.py            # full run, a few minutes on 2 CPU cores
    python benchmarks/bench_mixture.py --quick    # smoke run in seconds (writes to benchmarks/results/quick)

Shapes: N points, K components, D features, M inner (nested) samples.
Timings are medians over repeats taken round-robin across implementations (so that load from other
processes hits every implementation alike), after warm-up, with torch's default thread count.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch import distributions as td

try:
    from mog_flows import MixtureOfGaussians, build_flow
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mog_flows import MixtureOfGaussians, build_flow
from mog_flows.nflows_adapters import flow_base
from mog_flows.testing import MixtureCase, adversarial_suite, spread_case

RESULTS = Path(__file__).resolve().parent / "results"
FULL_SHAPES = ((65536, 8, 2), (65536, 16, 8), (16384, 64, 16))
QUICK_SHAPES = ((512, 4, 2), (256, 8, 4))
INPUTS = ("benign", "spread", "narrow")
ACCURACY_POINTS = (4, 8192)  # N of the adversarial suite (both in the full run, the first with --quick)
SPREADS = (1.0, 4.0, 30.0)  # trained-like components, points this much wider
NESTED_TARGET_MIB = 64.0
OVERHEAD_TARGET_PERCENT = 10.0
MIB = 2**20
MIN_ROUNDS = 3
ROW_BUDGET_S = 20.0  # per (shape, covariance, forward or forward+backward) group of round-robin calls
TRAINING_BUDGET_S = 60.0


# ---------------------------------------------------------------------------------------------- the mixture
@dataclass
class MixtureSpec:
    """One mixture in float64: weights (K,), means (K, D), and per covariance type
    scales (K, D) standard deviations (diagonal) or scale_tril (K, D, D) lower Cholesky factors of Σ (full)."""

    covariance: str
    weights: Tensor
    means: Tensor
    scales: Tensor | None = None
    scale_tril: Tensor | None = None

    @property
    def covariances(self) -> Tensor:
        if self.covariance == "diagonal":
            return self.scales.square()
        return self.scale_tril @ self.scale_tril.mT

    def sample(self, num_samples: int, generator: torch.Generator, spread: float = 1.0, jitter: float = 0.0) -> Tensor:
        """μ_k + spread · L_k ε + jitter · ε', k ~ α: draws from the mixture when spread = 1 and jitter = 0."""
        index = torch.multinomial(self.weights, num_samples, replacement=True, generator=generator)
        noise = torch.randn(num_samples, self.means.shape[1], dtype=torch.float64, generator=generator)
        extra = jitter * torch.randn(num_samples, self.means.shape[1], dtype=torch.float64, generator=generator)
        if self.covariance == "diagonal":
            return self.means[index] + spread * self.scales[index] * noise + extra
        return self.means[index] + spread * (self.scale_tril[index] @ noise.unsqueeze(-1)).squeeze(-1) + extra

    @classmethod
    def from_case(cls, case: MixtureCase) -> MixtureSpec:
        if case.covariance == "diagonal":
            return cls("diagonal", case.weights, case.means, scales=case.covariances.sqrt())
        return cls("full", case.weights, case.means, scale_tril=case.scale_tril)


def make_mixture(num_components: int, features: int, covariance: str, seed: int, inputs: str = "benign") -> MixtureSpec:
    """Means ~ N(0, I) and scales uniform in [0.5, 1.5] (benign, spread), or means ~ N(0, 2² I) and scales uniform
    in [0.03, 0.09] (narrow); random weights (softmax of N(0, 1) logits); full covariance adds off-diagonal Cholesky
    entries ~ N(0, 0.3² / D) times the row's scale."""
    generator = torch.Generator().manual_seed(seed)
    K, D = num_components, features
    weights = torch.softmax(torch.randn(K, dtype=torch.float64, generator=generator), 0)
    means = torch.randn(K, D, dtype=torch.float64, generator=generator)
    scales = 0.5 + torch.rand(K, D, dtype=torch.float64, generator=generator)
    if inputs == "narrow":
        means, scales = 2 * means, 0.03 + 0.06 * (scales - 0.5)
    if covariance == "diagonal":
        return MixtureSpec(covariance, weights, means, scales=scales)
    off = torch.randn(K, D, D, dtype=torch.float64, generator=generator) * 0.3 / math.sqrt(D)
    if inputs == "narrow":
        off = off * scales.unsqueeze(-1)
    scale_tril = torch.tril(off, diagonal=-1) + torch.diag_embed(scales)
    return MixtureSpec(covariance, weights, means, scale_tril=scale_tril)


def make_points(spec: MixtureSpec, inputs: str, num_points: int, generator: torch.Generator) -> Tensor:
    if inputs == "benign":
        return spec.sample(num_points, generator)
    if inputs == "spread":
        return spec.sample(num_points, generator, spread=4.0)
    return spec.sample(num_points, generator, jitter=0.5)


def scipy_log_prob(spec: MixtureSpec, x: Tensor) -> Tensor:
    """Independent float64 reference: log Σ_k α_k N(x; μ_k, Σ_k) by scipy."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    points = x.double().numpy()
    covariances = spec.covariances.numpy()
    per_component = np.stack(
        [
            math.log(spec.weights[k]) + multivariate_normal(spec.means[k].numpy(), covariances[k]).logpdf(points)
            for k in range(len(spec.weights))
        ],
        axis=-1,
    ).reshape(len(points), -1)
    return torch.from_numpy(logsumexp(per_component, axis=-1))


# ---------------------------------------------------------------------------------------------- implementations
class TorchMixture(nn.Module):
    """torch.distributions.MixtureSameFamily over Independent(Normal) or MultivariateNormal(scale_tril)."""

    def __init__(self, spec: MixtureSpec) -> None:
        super().__init__()
        self.logits = nn.Parameter(spec.weights.log())
        self.loc = nn.Parameter(spec.means.clone())
        if spec.covariance == "diagonal":
            self.log_scale = nn.Parameter(spec.scales.log())
            self.scale_tril = None
        else:
            self.scale_tril = nn.Parameter(spec.scale_tril.clone())  # raw lower factor: no transform, favours torch

    def log_prob(self, x: Tensor) -> Tensor:
        if self.scale_tril is None:
            component = td.Independent(td.Normal(self.loc, self.log_scale.exp()), 1)
        else:
            component = td.MultivariateNormal(self.loc, scale_tril=self.scale_tril)
        return td.MixtureSameFamily(td.Categorical(logits=self.logits), component).log_prob(x)


class PyroMixture(nn.Module):
    """pyro.distributions.MixtureOfDiagNormals (diagonal only)."""

    def __init__(self, spec: MixtureSpec) -> None:
        super().__init__()
        self.logits = nn.Parameter(spec.weights.log())
        self.loc = nn.Parameter(spec.means.clone())
        self.log_scale = nn.Parameter(spec.scales.log())

    def log_prob(self, x: Tensor) -> Tensor:
        import pyro.distributions as pd

        return pd.MixtureOfDiagNormals(self.loc, self.log_scale.exp(), self.logits).log_prob(x)


class ZukoMixture(nn.Module):
    """zuko.mixtures.GMM, its parameters set to the mixture (scale = exp(diag) + ε, as zuko parameterises it)."""

    def __init__(self, spec: MixtureSpec) -> None:
        super().__init__()
        from zuko.mixtures import GMM

        K, D = spec.means.shape
        self.gmm = GMM(D, components=K, covariance_type=spec.covariance).double()
        diagonal = spec.scales if spec.covariance == "diagonal" else spec.scale_tril.diagonal(dim1=-2, dim2=-1)
        values = [spec.weights.log(), spec.means, (diagonal - self.gmm.epsilon).log()]
        if spec.covariance == "full":
            rows, cols = torch.tril_indices(D, D, offset=-1)
            values.append(spec.scale_tril[:, rows, cols])  # zuko fills the strict lower triangle row by row
        with torch.no_grad():
            for parameter, value in zip(self.gmm.phi, values, strict=True):
                parameter.copy_(value)

    def log_prob(self, x: Tensor) -> Tensor:
        return self.gmm().log_prob(x)


class NormflowsMixture(nn.Module):
    """normflows.distributions.GaussianMixture (diagonal only), given loc, scale and weights explicitly so that
    its constructor does not draw from np.random."""

    def __init__(self, spec: MixtureSpec) -> None:
        super().__init__()
        from normflows.distributions import GaussianMixture

        K, D = spec.means.shape
        self.mixture = GaussianMixture(
            K, D, loc=spec.means.numpy(), scale=spec.scales.numpy(), weights=spec.weights.numpy()
        ).double()

    def log_prob(self, x: Tensor) -> Tensor:
        return self.mixture.log_prob(x)


def ours(spec: MixtureSpec) -> nn.Module:
    return MixtureOfGaussians.from_parameters(spec.weights, spec.means, spec.covariances, covariance=spec.covariance)


def means_parameter(model: nn.Module) -> Tensor:
    """The parameter that holds an implementation's component means (for the accuracy of ∂ log p / ∂ means)."""
    if isinstance(model, ZukoMixture):
        return model.gmm.phi[1]
    if isinstance(model, NormflowsMixture):
        return model.mixture.loc
    return model.loc


def _available(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def implementations(covariance: str) -> dict[str, Callable[[MixtureSpec], nn.Module]]:
    """Name -> factory (float64 spec -> float64 module with a `log_prob`); ours first."""
    found = {"mog_flows": ours, "torch": TorchMixture}
    if _available("zuko"):
        found["zuko"] = ZukoMixture
    if covariance == "diagonal":
        if _available("pyro"):
            found["pyro"] = PyroMixture
        if _available("normflows"):
            found["normflows"] = NormflowsMixture
    return found


# ---------------------------------------------------------------------------------------------- timing
def round_robin_times(
    functions: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    budget_s: float = float("inf"),
    device: torch.device | str = "cpu",
) -> dict[str, list[float]]:
    """Seconds per call of each function, `repeats` calls each after `warmup` untimed ones; calls alternate between
    functions (rotating the order each round) so that background load is shared fairly. Rounds stop early once
    `budget_s` seconds have passed, after at least `MIN_ROUNDS` (so that a loaded machine still finishes). On a
    CUDA `device` every call is followed by a synchronisation, so that a time covers the kernels it launched."""
    names = list(functions)
    if torch.device(device).type == "cuda":
        functions = {name: _synchronized(function, torch.device(device)) for name, function in functions.items()}
    for name in names:
        for _ in range(warmup):
            functions[name]()
    times = {name: [] for name in names}
    started = time.perf_counter()
    for round_index in range(repeats):
        if round_index >= MIN_ROUNDS and time.perf_counter() - started > budget_s:
            break
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - start)
    return times


def _synchronized(function: Callable[[], object], device: torch.device) -> Callable[[], object]:
    def run():
        result = function()
        torch.cuda.synchronize(device)
        return result

    return run


def forward_call(model: nn.Module, x: Tensor) -> Callable[[], object]:
    def run():
        with torch.no_grad():
            return model.log_prob(x)

    return run


def backward_call(model: nn.Module, x: Tensor) -> Callable[[], object]:
    parameters = [p for p in model.parameters() if p.requires_grad]

    def run():
        return torch.autograd.grad(model.log_prob(x).sum(), parameters)

    return run


@dataclass
class Row:
    """One implementation at one (covariance, N, K, D): median and best seconds per call, ratios, accuracy."""

    covariance: str
    N: int
    K: int
    D: int
    implementation: str
    inputs: str = "benign"
    forward_s: float = float("nan")
    backward_s: float = float("nan")
    forward_ratio: float = float("nan")  # peer time / our time (> 1: ours is faster)
    backward_ratio: float = float("nan")
    diff_vs_ours_f64: float = float("nan")  # max |log p - ours| in float64
    diff_vs_scipy_f64: float = float("nan")  # max |log p - scipy| in float64
    error_f32: float = float("nan")  # max |log p float32 - same model in float64|
    forward_best_s: float = float("nan")  # fastest call: less sensitive to background load than the median
    backward_best_s: float = float("nan")
    forward_calls: int = 0
    backward_calls: int = 0

    @property
    def flops(self) -> float:
        return 4.0 * self.N * self.K * self.D


def throughput_rows(shapes, repeats: int, warmup: int, seed: int, device: torch.device | str = "cpu") -> list[Row]:
    """Time and check every implementation on data sampled from one random mixture per (shape, covariance). The
    checks run on the CPU; the timed float32 models and points are then moved to `device`."""
    rows = []
    for index, (N, K, D) in enumerate(shapes):
        for covariance, inputs in ((c, i) for i in INPUTS for c in ("diagonal", "full")):
            spec = make_mixture(K, D, covariance, seed + index, inputs)
            x64 = make_points(spec, inputs, N, torch.Generator().manual_seed(seed + 100 + index))
            x32 = x64.float()
            x64 = x32.double()  # score the very points the float32 models see
            reference = scipy_log_prob(spec, x64)
            models32, group = {}, []
            for name, factory in implementations(covariance).items():
                model64 = factory(spec)
                model32 = copy.deepcopy(model64).float()
                upcast = copy.deepcopy(model32).double()  # float64 evaluation of the float32 parameters
                row = Row(covariance, N, K, D, name, inputs)
                with torch.no_grad():
                    log_p64 = model64.log_prob(x64)
                    if name == "mog_flows":
                        ours64 = log_p64
                    row.diff_vs_ours_f64 = (log_p64 - ours64).abs().max().item()
                    row.diff_vs_scipy_f64 = (log_p64 - reference).abs().max().item()
                    row.error_f32 = (model32.log_prob(x32).double() - upcast.log_prob(x64)).abs().max().item()
                models32[name] = model32
                group.append(row)
            models32 = {n: m.to(device) for n, m in models32.items()}
            x32 = x32.to(device)
            forward = round_robin_times(
                {n: forward_call(m, x32) for n, m in models32.items()}, repeats, warmup, ROW_BUDGET_S, device
            )
            backward = round_robin_times(
                {n: backward_call(m, x32) for n, m in models32.items()}, repeats, warmup, ROW_BUDGET_S, device
            )
            for row in group:
                row.forward_s = statistics.median(forward[row.implementation])
                row.backward_s = statistics.median(backward[row.implementation])
                row.forward_calls, row.backward_calls = (
                    len(forward[row.implementation]),
                    len(backward[row.implementation]),
                )
                row.forward_best_s = min(forward[row.implementation])
                row.backward_best_s = min(backward[row.implementation])
                row.forward_ratio = row.forward_s / statistics.median(forward["mog_flows"])
                row.backward_ratio = row.backward_s / statistics.median(backward["mog_flows"])
            rows.extend(group)
            print(f"  measured {covariance:8s} {inputs:6s} N={N} K={K} D={D}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- accuracy
@dataclass
class AccuracyRow:
    """float32 errors of one implementation on one case, against its own float64 evaluation of the same float32
    parameters: log_prob max |error| (nats), gradients max |error| / max |reference| (w.r.t. points and means)."""

    case: str
    covariance: str
    implementation: str
    log_prob: float
    grad_x: float
    grad_means: float


def float32_errors(model32: nn.Module, x: Tensor) -> tuple[float, float, float]:
    upcast = copy.deepcopy(model32).double()
    results = []
    for model, points in ((model32, x.float()), (upcast, x.double())):
        points = points.clone().requires_grad_()
        log_p = model.log_prob(points)
        grad_x, grad_means = torch.autograd.grad(log_p.mean(), (points, means_parameter(model)))
        results.append((log_p.double(), grad_x.double(), grad_means.double()))
    (lp32, gx32, gm32), (lp64, gx64, gm64) = results

    def relative(a: Tensor, reference: Tensor) -> float:
        return (a - reference).abs().max().item() / max(reference.abs().max().item(), 1e-300)

    return (lp32 - lp64).abs().max().item(), relative(gx32, gx64), relative(gm32, gm64)


def accuracy_rows(point_counts, spread_points: int, seed: int) -> list[AccuracyRow]:
    rows = []
    for covariance in ("diagonal", "full"):
        cases = [case for n in point_counts for case in adversarial_suite(covariance, n, seed)]
        cases += [spread_case(covariance, spread, spread_points) for spread in SPREADS]
        for case in cases:
            spec = MixtureSpec.from_case(case)
            for name, factory in implementations(covariance).items():
                model32 = factory(spec).float()
                errors = float32_errors(model32, case.points)
                rows.append(AccuracyRow(case.name, covariance, name, *errors))
        print(f"  accuracy {covariance}: {len(cases)} cases", flush=True)
    return rows


def accuracy_failures(rows: list[AccuracyRow]) -> tuple[list[str], int]:
    """Cases and quantities where ours exceeds 2× torch's float32 error + 1e-6, and how many were compared."""
    by_case = {}
    for row in rows:
        by_case.setdefault((row.case, row.covariance), {})[row.implementation] = row
    failures, compared = [], 0
    for (case, covariance), found in by_case.items():
        ours, torch_row = found["mog_flows"], found["torch"]
        for quantity in ("log_prob", "grad_x", "grad_means"):
            compared += 1
            mine, theirs = getattr(ours, quantity), getattr(torch_row, quantity)
            if not mine <= 2 * theirs + 1e-6:
                failures.append(f"{covariance} {case} {quantity}: ours {mine:.1e}, torch {theirs:.1e}")
    return failures, compared


def accuracy_table(rows: list[AccuracyRow]) -> str:
    lines = [
        "| cov | case | implementation | log_prob error | ∂/∂x rel. error | ∂/∂means rel. error |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.covariance} | {r.case} | {r.implementation} | {r.log_prob:.1e} | {r.grad_x:.1e} "
            f"| {r.grad_means:.1e} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- memory
def peak_extra_memory(function: Callable[[], object]) -> float:
    """Peak CPU memory (bytes) allocated by `function` above the level at its start.

    torch's profiler with `profile_memory=True` records every allocation and free of torch's CPU allocator as a
    `[memory]` event with a signed size; their running sum in time order is the allocated memory relative to
    the start, and its maximum the extra peak."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        function()
    events = [e for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    level = peak = 0
    for event in events:
        level += event.nbytes()
        peak = max(peak, level)
    return float(peak)


def calibrate_memory_probe() -> tuple[float, float]:
    """(expected, measured) MiB for a deliberate pattern: 48 MiB allocated and freed, then 8 + 16 MiB live."""

    def pattern():
        big = torch.ones(48 * MIB // 4)
        del big
        small = torch.ones(8 * MIB // 4)
        other = torch.ones(16 * MIB // 4)
        return small, other

    return 48.0, peak_extra_memory(pattern) / MIB


def naive_nested_log_prob(base: MixtureOfGaussians, z: Tensor, num_inner: int, temperature: float) -> Tensor:
    """Unchunked nested estimate log (1/M) Σ_j N(z; cⱼᵀμ, diag(cⱼᵀσ)²) with (N, M, D) intermediates."""
    log_weights = torch.log_softmax(base.logits, -1)
    exponential = torch.empty(num_inner, base.num_components).exponential_()
    gumbel = -exponential.clamp(min=torch.finfo(z.dtype).tiny).log()
    c = torch.softmax((log_weights + gumbel) / temperature, dim=-1)  # (M, K)
    loc, scale = c @ base.loc, c @ base.log_scale.exp()  # (M, D)
    standardized = (z.unsqueeze(-2) - loc) / scale  # (N, 1, D) - (M, D) -> (N, M, D)
    log_p = -0.5 * standardized.square().sum(-1) - scale.log().sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)
    return torch.logsumexp(log_p, dim=-1) - math.log(num_inner)


def nested_memory(num_points: int, num_inner: int, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    base = MixtureOfGaussians(2, 8, temperature=0.5)
    z = torch.randn(num_points, 2, requires_grad=True)

    def ours_step():
        base.nested_log_prob(z, num_inner=num_inner, temperature=0.5).sum().backward()

    def naive_step():
        naive_nested_log_prob(base, z, num_inner, 0.5).sum().backward()

    ours_step(), naive_step()  # allocate .grad buffers before measuring
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        value_ours = base.nested_log_prob(z, num_inner=num_inner, temperature=0.5)
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        value_naive = naive_nested_log_prob(base, z, num_inner, 0.5)
    expected, measured = calibrate_memory_probe()
    return {
        "ours_mib": peak_extra_memory(ours_step) / MIB,
        "naive_mib": peak_extra_memory(naive_step) / MIB,
        "max_abs_diff_same_seed": (value_ours - value_naive).abs().max().item(),
        "calibration_expected_mib": expected,
        "calibration_measured_mib": measured,
        "N": num_points,
        "M": num_inner,
    }


# ---------------------------------------------------------------------------------------------- training step
def training_overhead(steps: int, warmup: int, seed: int, device: torch.device | str = "cpu") -> dict[str, float]:
    """Median seconds per Adam step (batch 512) of a 2-D NSF with a mixture base (`build_flow`'s default K) and
    with a Gaussian base, on `device`."""
    torch.manual_seed(seed)
    data = make_mixture(8, 2, "diagonal", seed).sample(512 * 16, torch.Generator().manual_seed(seed)).float()
    batches = data.to(device).split(512)
    steppers = {}
    components = None
    for base in ("mog", "gaussian"):
        torch.manual_seed(seed)
        flow = build_flow(2, base=base, transform="nsf").to(device)
        if base == "mog":
            components = flow_base(flow).num_components
        optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
        counter = iter(range(10**9))

        def step(flow=flow, optimizer=optimizer, counter=counter):
            batch = batches[next(counter) % len(batches)]
            optimizer.zero_grad(set_to_none=True)
            loss = -flow.log_prob(batch).mean()
            loss.backward()
            optimizer.step()

        steppers[base] = step
    times = round_robin_times(steppers, steps, warmup, TRAINING_BUDGET_S, device)
    mog, gaussian = statistics.median(times["mog"]), statistics.median(times["gaussian"])
    # robustness check: the median ratio of steps taken back to back, which bursts of background load hit alike
    paired = statistics.median(a / b for a, b in zip(times["mog"], times["gaussian"]))
    return {
        "mog_s": mog,
        "gaussian_s": gaussian,
        "overhead_percent": 100.0 * (mog / gaussian - 1.0),
        "paired_overhead_percent": 100.0 * (paired - 1.0),
        "steps": len(times["mog"]),
        "num_components": components,
    }


# ---------------------------------------------------------------------------------------------- report
CSV_FIELDS = [
    "covariance",
    "inputs",
    "N",
    "K",
    "D",
    "implementation",
    "forward_ms",
    "forward_Mpoints_per_s",
    "forward_GFLOPs",
    "forward_ratio",
    "forward_best_ms",
    "forward_calls",
    "fwd_bwd_ms",
    "fwd_bwd_Mpoints_per_s",
    "fwd_bwd_GFLOPs",
    "fwd_bwd_ratio",
    "fwd_bwd_best_ms",
    "fwd_bwd_calls",
    "max_abs_diff_vs_ours_f64",
    "max_abs_diff_vs_scipy_f64",
    "max_abs_error_f32",
]


def row_record(row: Row) -> dict[str, object]:
    return {
        "covariance": row.covariance,
        "inputs": row.inputs,
        "N": row.N,
        "K": row.K,
        "D": row.D,
        "implementation": row.implementation,
        "forward_ms": 1e3 * row.forward_s,
        "forward_Mpoints_per_s": row.N / row.forward_s / 1e6,
        "forward_GFLOPs": row.flops / row.forward_s / 1e9,
        "forward_ratio": row.forward_ratio,
        "forward_best_ms": 1e3 * row.forward_best_s,
        "forward_calls": row.forward_calls,
        "fwd_bwd_ms": 1e3 * row.backward_s,
        "fwd_bwd_Mpoints_per_s": row.N / row.backward_s / 1e6,
        "fwd_bwd_GFLOPs": 3 * row.flops / row.backward_s / 1e9,
        "fwd_bwd_ratio": row.backward_ratio,
        "fwd_bwd_best_ms": 1e3 * row.backward_best_s,
        "fwd_bwd_calls": row.backward_calls,
        "max_abs_diff_vs_ours_f64": row.diff_vs_ours_f64,
        "max_abs_diff_vs_scipy_f64": row.diff_vs_scipy_f64,
        "max_abs_error_f32": row.error_f32,
    }


THROUGHPUT_NOTE = (
    "fwd: `log_prob` under `torch.no_grad`; fwd+bwd: `log_prob(x).sum()` and its gradient w.r.t. every mixture "
    "parameter. ratio = peer time / mog_flows time (> 1: mog_flows is faster). GFLOP/s counts a nominal 4·N·K·D "
    "operations per forward and 3× that per forward+backward, for both covariance types. f64 Δ: max |log p| "
    "difference in float64 against mog_flows and against scipy (`multivariate_normal.logpdf` + `logsumexp`), all on "
    "the same mixture; f32 error: max |float32 log p − the same model's float64 log p| on the same float32 "
    "parameters. torch.distributions argument validation is off."
)


def markdown_table(rows: list[Row]) -> str:
    header = (
        "| cov | inputs | N | K | D | implementation | fwd ms | fwd Mpt/s | fwd GFLOP/s | fwd ratio | fwd+bwd ms | "
        "fwd+bwd Mpt/s | fwd+bwd GFLOP/s | fwd+bwd ratio | f64 Δ vs ours | f64 Δ vs scipy | f32 error |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        r = row_record(row)
        lines.append(
            f"| {r['covariance']} | {r['inputs']} | {r['N']} | {r['K']} | {r['D']} | {r['implementation']} "
            f"| {r['forward_ms']:.2f} | {r['forward_Mpoints_per_s']:.2f} | {r['forward_GFLOPs']:.2f} "
            f"| {r['forward_ratio']:.2f} | {r['fwd_bwd_ms']:.2f} | {r['fwd_bwd_Mpoints_per_s']:.2f} "
            f"| {r['fwd_bwd_GFLOPs']:.2f} | {r['fwd_bwd_ratio']:.2f} | {r['max_abs_diff_vs_ours_f64']:.1e} "
            f"| {r['max_abs_diff_vs_scipy_f64']:.1e} | {r['max_abs_error_f32']:.1e} |"
        )
    return "\n".join(lines)


def summary_lines(
    rows: list[Row],
    accuracy: list[AccuracyRow],
    nested: dict,
    training: dict,
    load_before: tuple,
    load_after: tuple,
    quick: bool = False,
) -> list[str]:
    lines = (
        ["- [info] smoke run (--quick): tiny sizes and two calls each, so the verdicts below mean nothing"]
        if quick
        else []
    )
    peers = [r for r in rows if r.implementation != "mog_flows"]
    slower = [r for r in peers if not (r.forward_ratio > 1 and r.backward_ratio > 1)]
    verdict = "PASS" if not slower else "FAIL"
    worst_fwd = min((r.forward_ratio for r in peers), default=float("nan"))
    worst_bwd = min((r.backward_ratio for r in peers), default=float("nan"))
    misses = [
        f"{r.implementation} ({r.covariance} {r.inputs} N={r.N} K={r.K} D={r.D}: "
        f"{r.forward_ratio:.2f}/{r.backward_ratio:.2f})"
        for r in slower
    ]
    lines.append(
        f"- [{verdict}] faster than every peer on every row: smallest peer/ours time ratio "
        f"{worst_fwd:.2f} forward, {worst_bwd:.2f} forward+backward"
        + ("; not faster against " + ", ".join(misses) if misses else "")
    )
    agree = max((r.diff_vs_scipy_f64 for r in rows), default=float("nan"))
    lines.append(
        f"- [{'PASS' if agree < 1e-8 else 'FAIL'}] every implementation agrees with scipy in float64: "
        f"max |Δ| = {agree:.1e} (threshold 1e-8)"
    )
    ours_error = max((r.error_f32 for r in rows if r.implementation == "mog_flows"), default=float("nan"))
    peer_error = max((r.error_f32 for r in peers), default=float("nan"))
    lines.append(
        f"- [info] float32 max |error| vs float64 on the timed inputs: ours {ours_error:.1e}, peers up to "
        f"{peer_error:.1e}"
    )
    failures, compared = accuracy_failures(accuracy)
    lines.append(
        f"- [{'FAIL' if failures else 'PASS'}] float32 accuracy on the adversarial suite: ours within 2× "
        f"torch.distributions' error + 1e-6 on {compared - len(failures)} of {compared} (case, quantity) pairs"
        + ("; not on " + "; ".join(failures) if failures else "")
    )
    worst = {}
    for row in accuracy:
        worst[row.implementation] = max(worst.get(row.implementation, 0.0), row.log_prob)
    lines.append(
        "- [info] largest float32 log_prob error on the adversarial suite: "
        + ", ".join(f"{name} {value:.1e}" for name, value in worst.items())
    )
    ok = nested["ours_mib"] <= NESTED_TARGET_MIB
    lines.append(
        f"- [{'PASS' if ok else 'FAIL'}] nested_log_prob N={nested['N']} M={nested['M']} forward+backward extra peak "
        f"memory {nested['ours_mib']:.1f} MiB (target ≤ {NESTED_TARGET_MIB:.0f} MiB; naive unchunked (N, M, D): "
        f"{nested['naive_mib']:.1f} MiB)"
    )
    ok = training["paired_overhead_percent"] <= OVERHEAD_TARGET_PERCENT
    lines.append(
        f"- [{'PASS' if ok else 'FAIL'}] NSF training step, mixture base vs Gaussian base adds "
        f"{training['paired_overhead_percent']:+.1f} % (median ratio of back-to-back steps; ratio of the median step "
        f"times {1e3 * training['mog_s']:.2f} / {1e3 * training['gaussian_s']:.2f} ms: "
        f"{training['overhead_percent']:+.1f} %) (target ≤ {OVERHEAD_TARGET_PERCENT:.0f} %)"
    )
    load = max(load_before[0], load_after[0])
    if load > (os.cpu_count() or 1):
        lines.append(
            f"- [warn] load average {load:.1f} exceeded the {os.cpu_count()} CPUs during the run: other processes "
            "competed for the cores, so timings are noisy (medians most, best times in the CSV least)"
        )
    return lines


def environment_line(load_before: tuple, load_after: tuple) -> str:
    import importlib.metadata as metadata

    versions = []
    for package in ("torch", "nflows", "zuko", "pyro-ppl", "normflows"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} absent")
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}, Python {platform.python_version()}; {', '.join(versions)}; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: a smoke run in seconds")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default benchmarks/results, or benchmarks/results/quick with --quick)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per implementation and row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for the whole run (default: leave torch's default); 1 sidesteps the stalls that "
        "multi-threaded operations suffer when other processes hold the cores",
    )
    args = parser.parse_args(argv)
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    td.Distribution.set_default_validate_args(False)  # peers at their fastest: no argument validation
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    repeats = args.repeats or (2 if args.quick else 9)
    warmup = 1 if args.quick else 2
    started = time.perf_counter()
    print("log_prob throughput", flush=True)
    rows = throughput_rows(shapes, repeats, warmup, args.seed)
    print("float32 accuracy", flush=True)
    accuracy = accuracy_rows(
        ACCURACY_POINTS[:1] if args.quick else ACCURACY_POINTS, 64 if args.quick else 4096, args.seed
    )
    print("nested_log_prob memory", flush=True)
    nested = nested_memory(64, 256, args.seed) if args.quick else nested_memory(512, 4096, args.seed)
    print("training step", flush=True)
    training = training_overhead(3 if args.quick else 400, 1 if args.quick else 20, args.seed)
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()

    table = markdown_table(rows)
    summary = summary_lines(rows, accuracy, nested, training, load_before, load_after, args.quick)
    text = "\n".join(
        [
            "# mog_flows mixture base: speed, accuracy and memory against peers",
            "",
            f"{'Smoke run (--quick). ' if args.quick else ''}{environment_line(load_before, load_after)}; "
            f"{elapsed:.0f} s in all.",
            "",
            "## log_prob throughput (float32)",
            "",
            f"Median of up to {repeats} round-robin calls per implementation after {warmup} warm-up call(s) (at "
            f"least {MIN_ROUNDS}: a group stops early after {ROW_BUDGET_S:.0f} s; the CSV gives the counts and the "
            f"fastest calls). {THROUGHPUT_NOTE}",
            "",
            table,
            "",
            "## float32 accuracy on the adversarial suite",
            "",
            "Cases from `mog_flows.testing` (the suite `tests/test_components.py` runs): `K…-sep…-D…-N…` mixtures with "
            "scales from 1e-4 to 1e4 and separations to 1e4, points near every component, between pairs and far from "
            "all; `trained-like-spread…` 16 narrow components (scales 0.03 … 0.5) in 8-D with points spread 1×, 4×, "
            "30×. Each implementation's float32 result against its own float64 evaluation of the same float32 "
            "parameters: log_prob max |error| in nats, gradients (of the mean log p) max |error| / max |reference|.",
            "",
            accuracy_table(accuracy),
            "",
            "## nested_log_prob memory (float32, K = 8, D = 2, τ = 0.5)",
            "",
            f"Extra peak CPU memory of forward+backward above the starting level, from torch.profiler memory events "
            f"(probe check: a deliberate {nested['calibration_expected_mib']:.0f} MiB peak measures "
            f"{nested['calibration_measured_mib']:.2f} MiB).",
            "",
            "| implementation | N | M | extra peak MiB |",
            "|---|---|---|---|",
            f"| mog_flows (chunked, checkpointed) | {nested['N']} | {nested['M']} | {nested['ours_mib']:.2f} |",
            f"| naive unchunked (N, M, D) | {nested['N']} | {nested['M']} | {nested['naive_mib']:.2f} |",
            "",
            f"Same-seed values of both agree to {nested['max_abs_diff_same_seed']:.1e}.",
            "",
            "## Training step (2-D NSF, 4 layers, batch 512, Adam)",
            "",
            "| base | median ms / step |",
            "|---|---|",
            f"| MixtureOfGaussians (K = {training['num_components']}, diagonal) | {1e3 * training['mog_s']:.2f} |",
            f"| StandardNormal | {1e3 * training['gaussian_s']:.2f} |",
            "",
            f"Median over {training['steps']} interleaved steps each; the median ratio of back-to-back steps gives "
            f"{training['paired_overhead_percent']:+.1f} %.",
            "",
            "## Summary",
            "",
            *summary,
            "",
        ]
    )
    print()
    print(text)
    (out / "bench_mixture.md").write_text(text)
    with open(out / "bench_mixture.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row_record(row))
    with open(out / "bench_mixture_accuracy.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(AccuracyRow.__dataclass_fields__))
        writer.writeheader()
        for row in accuracy:
            writer.writerow(row.__dict__)
    print(f"wrote {out / 'bench_mixture.md'}, {out / 'bench_mixture.csv'} and {out / 'bench_mixture_accuracy.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

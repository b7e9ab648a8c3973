"""Peer models: the flows over learnable or non-Gaussian bases that a user would pick instead of ours, built from
their own packages and wrapped so that `mog_flows.fit` trains them as it trains our flows.

Shapes: D features, K mixture components, N rows, h the width (`hidden_features`) of every network in a model.

Every adapter is an `nn.Module` with `log_prob(x (N, D)) -> (N,)`, `sample(n) -> (n, D)` and a `features`
attribute (D), which is all `fit` needs. `fit` EM-initialises only our own `MixtureOfGaussians` bases; a peer gets
its own package's initialisation, done inside its builder from `data` where the package offers one. Each builder is

    build(features, *, hidden_features=64, num_layers=4, num_components=32, data=None) -> nn.Module

(`data` (N, D): the training points, used for initialisation only; None skips data initialisation, as
`matched_peer` does when it only counts parameters). The peers (`PEERS`):

    zuko_nsf_gmm        zuko's `NSF(D, transforms=num_layers, hidden_features=(h, h))` (its default: fully
                        autoregressive rational-quadratic splines, 8 bins on [-5, 5], MLP conditioners) with its
                        transforms put over a `zuko.mixtures.GMM(D, components=K)` (its default full covariance) in a
                        `zuko.flows.Flow`. Initialisation: the GMM's own `initialize(z, "kmeans++")` (k-means++
                        centres, hard assignment, per-cluster weights, means and covariances) on up to 5000 data
                        points pushed through the new flow's transform z = T(x), as `fit` does for our base.
                        That initialiser often fails: a cluster with too few points for a covariance makes its
                        Cholesky factorisation raise, or (diagonal covariance) leaves non-finite parameters.
                        Measured over 20 seeds, K = 32, full covariance, kmeans++: 2-D N(0, I), 2/20 failed at
                        5000 points and 10/20 at 1000; a 10-D two-blob mixture 15/20 at 5000 and 20/20 at 1000.
                        Its "kmeans" strategy (the same seeds, then 7 Lloyd iterations) failed 0/20 at 5000
                        points in both. So the adapter tries "kmeans++" up to 5 times (fresh draws), then
                        "kmeans" up to 5 times, and records what succeeded in `model.initialization` (studies
                        should report it); RuntimeError if all 10 fail.
    normflows_nsf_gmm   normflows' `NormalizingFlow` of num_layers × [`CoupledRationalQuadraticSpline(D,
                        num_blocks=2, num_hidden_channels=h)` (its defaults: 8 bins, linear tails at ±3), then
                        `LULinearPermute(D)`], the block its examples stack, over
                        `normflows.distributions.GaussianMixture(K, D, trainable=True)`. Initialisation: the
                        package's own (means standard normal, unit scales, equal weights); it draws the means with
                        the global `np.random`, so the adapter passes means drawn the same way from a
                        `np.random.RandomState` seeded from torch's RNG (builds repeat under `torch.manual_seed`,
                        numpy's global state is untouched). Needs D ≥ 2 (a coupling splits the features).
    nflows_maf_mog      MAF-MoG (Papamakarios et al. 2017) from nflows: num_layers × [`ReversePermutation`,
                        `MaskedAffineAutoregressiveTransform(D, h)` (its defaults: 2 residual blocks)] over
                        `nflows.distributions.MADEMoG(D, h, num_mixture_components=K)`, a MADE whose conditionals
                        are K-component 1-D mixtures. Initialisation: the MADE-MoG's own `custom_initialization`
                        (near-uniform weights, scales near 1: `MixtureOfGaussiansMADE`'s default, which the
                        `MADEMoG` wrapper turns off by default); no data initialisation exists.
    glasflow_resampled  our `build_flow(D, base=..., num_layers, hidden_features=h)` NSF (identity at the start)
                        over glasflow's `ResampledGaussian` (learned accept/reject base, Stimper et al. 2022):
                        a standard normal resampled by an acceptance network a(z) ∈ (0, 1): glasflow's `MLP`
                        with a sigmoid output, as its tests build it, here with two hidden layers of width h
                        (`MLP(D, 1, [h, h], activate_output=torch.sigmoid)`). glasflow documents no settings beyond
                        its constructor's defaults, which are used: truncation T = 100 rejection steps, eps = 0.05
                        (decay of the running estimate of Z = E[a(z)]), a fixed (not trainable) Gaussian.
                        Its density is normalised exactly only for the exact Z: after training call
                        `finish_peer(model, name)`, which runs glasflow's documented
                        `estimate_normalisation_constant` (Monte Carlo, `GLASFLOW_NORM_SAMPLES` draws); until
                        then eval-mode log_prob uses the running estimate (measured on a tiny 2-D model: grid
                        mass 1.0024 before, 1.0000 after).

Workarounds, none of which patch the packages:

    - nflows' `MADEMoG` cannot sample without a context (`MixtureOfGaussiansMADE.sample` reads `context.shape`), and
      an unconditional nflows `Flow` cannot pass one to it. The adapter builds the MADE-MoG with a context of width
      1, always feeds it a zero context internally, and zeroes and freezes its context layers (weights and biases,
      in the input layer and each residual block), so the model is exactly the unconditional MADE-MoG and its
      trainable parameters are those of one. The MADE's sampler allocates on the default device and dtype: the
      adapter sets the device from the model's parameters (not run on CUDA yet); sampling a float64 model is not
      supported.
    - normflows' `GaussianMixture` holds float64 parameters (built from numpy arrays); the adapter casts the model
      to torch's default dtype, since `fit` casts batches to the dtype of the first parameter it finds.
    - glasflow is an nflows `Distribution` only when `GLASFLOW_USE_NFLOWS=True` is set before its first import
      (otherwise it uses a vendored fork of nflows); the builder sets it for that import and restores the
      environment, and refuses (RuntimeError) when glasflow was already imported with its fork.

Each peer's package is imported inside its builder; a missing one raises ImportError naming the pip package and
the `bench` extra (`pip install 'mog-flows[bench]'`). The library never depends on the peers: only the studies use
this module.

`matched_peer` finds a peer's width for an equal parameter budget (by default the budget of our `build_flow(D)`
NSF + MoG flow, `default_budget`); `peer_versions` records the installed versions beside a study's results.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import numpy as np
import torch
from torch import Tensor, nn

from ..checks import check_positive_int
from ..flows import build_flow
from .budgets import count_parameters, flow_parameters, narrowest_width

__all__ = [
    "PEERS",
    "PEER_PACKAGES",
    "GLASFLOW_NORM_SAMPLES",
    "MatchedPeer",
    "budget_table",
    "build_peer",
    "default_budget",
    "finish_peer",
    "import_resampled_gaussian",
    "matched_peer",
    "peer_versions",
]

# peer -> the pip package it needs (each is in pyproject's `bench` extra)
PEER_PACKAGES = {
    "zuko_nsf_gmm": "zuko",
    "normflows_nsf_gmm": "normflows",
    "nflows_maf_mog": "nflows",
    "glasflow_resampled": "glasflow",
}
_INIT_POINTS = 5000  # data points for a peer's data initialisation (as `fit` uses for ours)
# Monte Carlo draws for glasflow's normalisation constant in `finish_peer`: 10 batches of 100 000; the relative
# standard error of Z is about std(a) / (Z · 1000), below 1e-3 for any acceptance network with Z > 0.5.
GLASFLOW_NORM_SAMPLES = (100_000, 10)
# zuko's GMM initialisation, tried in this order until one completes with finite parameters (`_initialize_gmm`)
_GMM_STRATEGIES = ("kmeans++",) * 5 + ("kmeans",) * 5
TOLERANCE = 0.05  # `matched_peer` reports whether the count lies within ±5 % of the budget


def _require(module: str, peer: str):
    """Import `module` for `peer`, or an ImportError naming the pip package and the bench extra."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = PEER_PACKAGES[peer]
        raise ImportError(
            f"the peer model {peer!r} needs the package {package!r}, which is not installed: "
            f"pip install {package} (or pip install 'mog-flows[bench]', the extra with every peer's package)"
        ) from error


def _init_points(data: Tensor | None, features: int) -> Tensor | None:
    if data is None:
        return None
    data = torch.as_tensor(data, dtype=torch.get_default_dtype())
    if data.ndim != 2 or data.shape[1] != features:
        raise ValueError(f"data must have shape (N, {features}); got {tuple(data.shape)}")
    if not torch.isfinite(data).all():
        raise ValueError("data must be finite")
    if data.shape[0] > _INIT_POINTS:
        data = data[torch.randperm(data.shape[0])[:_INIT_POINTS]]
    return data


def _check_sizes(features, hidden_features, num_layers, num_components):
    for name, value in (
        ("features", features),
        ("hidden_features", hidden_features),
        ("num_layers", num_layers),
        ("num_components", num_components),
    ):
        check_positive_int(name, value)


# -------------------------------------------------------------------------------------------------- zuko
class ZukoFlow(nn.Module):
    """A `zuko.flows.Flow` (a lazy distribution) as a module with `log_prob` and `sample`."""

    def __init__(self, flow: nn.Module, features: int, initialization: str | None = None):
        super().__init__()
        self.flow = flow
        self.features = features
        self.initialization = initialization  # which zuko strategy initialised the GMM (None: not from data)

    def log_prob(self, x: Tensor) -> Tensor:
        return self.flow().log_prob(x)

    def sample(self, num_samples: int) -> Tensor:
        return self.flow().sample((num_samples,))


def build_zuko_nsf_gmm(
    features: int,
    *,
    hidden_features: int = 64,
    num_layers: int = 4,
    num_components: int = 32,
    data: Tensor | None = None,
) -> ZukoFlow:
    """zuko NSF transforms over a zuko GMM base, the GMM initialised by its own k-means++ from the data pushed
    through the flow's transform (module docstring)."""
    _check_sizes(features, hidden_features, num_layers, num_components)
    zuko = _require("zuko", "zuko_nsf_gmm")
    _require("zuko.mixtures", "zuko_nsf_gmm")
    points = _init_points(data, features)
    nsf = zuko.flows.NSF(features, transforms=num_layers, hidden_features=(hidden_features, hidden_features))
    base = zuko.mixtures.GMM(features, components=num_components)
    flow = zuko.flows.Flow(nsf.transform, base)
    if points is not None:
        if points.shape[0] <= num_components:
            raise ValueError(
                f"zuko's GMM.initialize needs more data points than components: got {points.shape[0]} points for "
                f"{num_components} components"
            )
        with torch.no_grad():
            initialization = _initialize_gmm(base, flow.transform()(points))
    else:
        initialization = None
    return ZukoFlow(flow, features, initialization)


def _initialize_gmm(base: nn.Module, z: Tensor) -> str:
    """zuko's `GMM.initialize(z, strategy)` for each strategy of `_GMM_STRATEGIES` in turn until one completes with
    finite parameters; returns what was used. RuntimeError when every try fails."""
    failures: dict[str, int] = {}
    for strategy in _GMM_STRATEGIES:
        try:
            with warnings.catch_warnings():  # torch.cov's "degrees of freedom <= 0" from a failing try
                warnings.simplefilter("ignore", UserWarning)
                base.initialize(z, strategy)
            finite = all(torch.isfinite(p).all() for p in base.parameters())
        except (RuntimeError, ValueError, AssertionError):  # torch.linalg.LinAlgError is a RuntimeError
            finite = False
        if finite:
            tried = ", ".join(f"{count} failed {name!r}" for name, count in failures.items())
            return strategy if not failures else f"{strategy} (after {tried})"
        failures[strategy] = failures.get(strategy, 0) + 1
    raise RuntimeError(
        f"zuko's GMM.initialize failed on all {len(_GMM_STRATEGIES)} tries ({', '.join(sorted(failures))}): "
        f"clusters with too few of the {z.shape[0]} points for a {z.shape[1]}-D covariance; use more data or "
        "fewer components"
    )


# -------------------------------------------------------------------------------------------------- normflows
class NormflowsFlow(nn.Module):
    """A `normflows.NormalizingFlow` whose `sample(n)` returns the samples only (normflows returns (x, log q))."""

    def __init__(self, flow: nn.Module, features: int):
        super().__init__()
        self.flow = flow
        self.features = features

    def log_prob(self, x: Tensor) -> Tensor:
        return self.flow.log_prob(x)

    def sample(self, num_samples: int) -> Tensor:
        return self.flow.sample(num_samples)[0]


def build_normflows_nsf_gmm(
    features: int,
    *,
    hidden_features: int = 64,
    num_layers: int = 4,
    num_components: int = 32,
    data: Tensor | None = None,
) -> NormflowsFlow:
    """normflows coupling-spline + LU-permutation blocks over its trainable GaussianMixture (module docstring);
    `data` is checked but unused (normflows has no data initialisation)."""
    _check_sizes(features, hidden_features, num_layers, num_components)
    if features < 2:
        raise ValueError(
            f"normflows_nsf_gmm needs features >= 2 (its coupling layers split the features); got {features}"
        )
    nf = _require("normflows", "normflows_nsf_gmm")
    _init_points(data, features)
    flows = []
    for _ in range(num_layers):
        flows.append(nf.flows.CoupledRationalQuadraticSpline(features, 2, hidden_features))
        flows.append(nf.flows.LULinearPermute(features))
    # GaussianMixture's own default draws loc = np.random.randn(K, D); the same draw from a seeded RandomState
    seed = int(torch.randint(2**31 - 1, ()))
    loc = np.random.RandomState(seed).randn(num_components, features)
    base = nf.distributions.GaussianMixture(num_components, features, loc=loc, trainable=True)
    model = NormflowsFlow(nf.NormalizingFlow(base, flows), features)
    return model.to(torch.get_default_dtype())  # the mixture's parameters are float64 (from numpy)


# -------------------------------------------------------------------------------------------------- nflows
class NflowsMafMog(nn.Module):
    """MAF layers over nflows' MADE-MoG, unconditional: the MADE-MoG is fed a zero context of width 1 (module
    docstring)."""

    def __init__(self, transform: nn.Module, base: nn.Module, features: int):
        super().__init__()
        self.transform = transform
        self.base = base
        self.features = features

    def _zero_context(self, rows: int, like: Tensor) -> Tensor:
        return torch.zeros(rows, 1, dtype=like.dtype, device=like.device)

    def log_prob(self, x: Tensor) -> Tensor:
        z, log_det = self.transform(x)
        return self.base.log_prob(z, context=self._zero_context(x.shape[0], x)) + log_det

    def sample(self, num_samples: int) -> Tensor:
        parameter = next(self.parameters())
        with torch.device(parameter.device):  # the MADE's sampler allocates with torch.zeros / torch.randn
            z = self.base.sample(num_samples, context=self._zero_context(1, parameter))
        x, _ = self.transform.inverse(z.reshape(num_samples, self.features))
        return x


def build_nflows_maf_mog(
    features: int,
    *,
    hidden_features: int = 64,
    num_layers: int = 4,
    num_components: int = 32,
    data: Tensor | None = None,
) -> NflowsMafMog:
    """MAF-MoG from nflows (module docstring); `data` is checked but unused (no data initialisation exists)."""
    _check_sizes(features, hidden_features, num_layers, num_components)
    _require("nflows", "nflows_maf_mog")
    distributions = _require("nflows.distributions", "nflows_maf_mog")
    transforms = _require("nflows.transforms", "nflows_maf_mog")
    _init_points(data, features)
    layers = []
    for _ in range(num_layers):
        layers.append(transforms.ReversePermutation(features))
        layers.append(transforms.MaskedAffineAutoregressiveTransform(features, hidden_features))
    base = distributions.MADEMoG(
        features,
        hidden_features,
        context_features=1,
        num_mixture_components=num_components,
        custom_initialization=True,
    )
    for name, module in base._made.named_modules():  # the MADE's input layer and each residual block have one
        if name.split(".")[-1] == "context_layer":
            with torch.no_grad():
                module.weight.zero_()
                module.bias.zero_()
            module.requires_grad_(False)
    return NflowsMafMog(transforms.CompositeTransform(layers), base, features)


# -------------------------------------------------------------------------------------------------- glasflow
def import_resampled_gaussian():
    """glasflow's ResampledGaussian as an nflows Distribution (GLASFLOW_USE_NFLOWS=True at its first import) and
    glasflow's MLP: (ResampledGaussian, MLP). ImportError naming the package when glasflow is missing; RuntimeError
    when glasflow was already imported with its own fork of nflows."""
    peer = "glasflow_resampled"
    if sys.modules.get("glasflow") is None:
        previous = os.environ.get("GLASFLOW_USE_NFLOWS")
        os.environ["GLASFLOW_USE_NFLOWS"] = "True"
        try:
            _require("glasflow", peer)
        finally:
            if previous is None:
                del os.environ["GLASFLOW_USE_NFLOWS"]
            else:
                os.environ["GLASFLOW_USE_NFLOWS"] = previous
    resampled = _require("glasflow.distributions", peer).ResampledGaussian
    mlp = _require("glasflow.nets", peer).MLP
    from nflows.distributions import Distribution

    if not issubclass(resampled, Distribution):
        raise RuntimeError(
            "glasflow was imported with its own fork of nflows, so its ResampledGaussian is no nflows Distribution: "
            "set the environment variable GLASFLOW_USE_NFLOWS=True before glasflow is first imported"
        )
    return resampled, mlp


def build_glasflow_resampled(
    features: int,
    *,
    hidden_features: int = 64,
    num_layers: int = 4,
    num_components: int = 32,
    data: Tensor | None = None,
) -> nn.Module:
    """Our NSF over glasflow's ResampledGaussian (module docstring). `num_components` does not apply (the base has
    no components) and `data` is checked but unused (the base has no data initialisation)."""
    _check_sizes(features, hidden_features, num_layers, num_components)
    resampled, mlp = import_resampled_gaussian()
    _init_points(data, features)
    acceptance = mlp(features, 1, [hidden_features, hidden_features], activate_output=torch.sigmoid)
    base = resampled(features, acceptance, eps=0.05, truncation=100, trainable=False)
    flow = build_flow(features, base=base, num_layers=num_layers, hidden_features=hidden_features)
    flow.features = features
    return flow


def finish_peer(model: nn.Module, name: str) -> nn.Module:
    """What a peer's package asks for after training: for "glasflow_resampled", glasflow's
    `estimate_normalisation_constant` (`GLASFLOW_NORM_SAMPLES`), which makes eval-mode log_prob normalised up to
    Monte Carlo error; nothing for the others. Returns the model."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; the peers are {', '.join(PEERS)}")
    if name == "glasflow_resampled":
        n_samples, n_batches = GLASFLOW_NORM_SAMPLES
        model._distribution.estimate_normalisation_constant(n_samples=n_samples, n_batches=n_batches)
    return model


# -------------------------------------------------------------------------------------------------- registry
PEERS: dict[str, Callable[..., nn.Module]] = {
    "zuko_nsf_gmm": build_zuko_nsf_gmm,
    "normflows_nsf_gmm": build_normflows_nsf_gmm,
    "nflows_maf_mog": build_nflows_maf_mog,
    "glasflow_resampled": build_glasflow_resampled,
}


def build_peer(name: str, features: int, **settings) -> nn.Module:
    """`PEERS[name](features, **settings)`, with a clear error for an unknown name."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; the peers are {', '.join(PEERS)}")
    return PEERS[name](features, **settings)


def peer_versions() -> dict[str, str | None]:
    """Installed versions of the peers' packages and of torch (None: not installed)."""
    versions = {}
    for package in ("torch", "nflows", "zuko", "normflows", "glasflow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def default_budget(features: int, *, num_layers: int = 4, hidden_features: int = 64, num_components: int = 32) -> int:
    """Trainable parameters of our `build_flow(features)` NSF flow over a K-component MoG base: the budget a peer
    is matched to."""
    return flow_parameters(
        features, "mog", "nsf", num_layers=num_layers, hidden_features=hidden_features, num_components=num_components
    )


@dataclass(frozen=True)
class MatchedPeer:
    """A peer's width for a parameter budget.

    Attributes:
        name: the peer.
        hidden_features: the smallest width whose model has at least `budget` trainable parameters.
        parameters: that model's trainable parameters.
        budget: the budget.
        relative_difference: (parameters - budget) / budget.
        within_tolerance: |relative_difference| ≤ `tolerance`; False where one step of width overshoots it (or
            the narrowest model is already above it), which the study should report.
        below: trainable parameters at hidden_features - 1 (None at width 1): the count just under the budget.
    """

    name: str
    hidden_features: int
    parameters: int
    budget: int
    relative_difference: float
    within_tolerance: bool
    below: int | None


def matched_peer(
    name: str,
    features: int,
    budget: int | None = None,
    *,
    num_layers: int = 4,
    num_components: int = 32,
    tolerance: float = TOLERANCE,
) -> MatchedPeer:
    """The smallest `hidden_features` whose peer `name` (with `num_layers`, `num_components`) has at least `budget`
    trainable parameters (`narrowest_width` over `count_parameters`), and whether its count lies within
    ±`tolerance` of the budget. `budget` None: `default_budget(features, num_layers=num_layers,
    num_components=num_components)`. Builds the models without data and leaves torch's RNG as it was."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; the peers are {', '.join(PEERS)}")
    if budget is None:
        with torch.random.fork_rng(devices=[]):  # build_flow draws random permutations
            budget = default_budget(features, num_layers=num_layers, num_components=num_components)
    check_positive_int("budget", budget)

    counts: dict[int, int] = {}

    def parameters(width: int) -> int:
        if width not in counts:
            model = build_peer(
                name, features, hidden_features=width, num_layers=num_layers, num_components=num_components
            )
            counts[width] = count_parameters(model)
        return counts[width]

    with torch.random.fork_rng(devices=[]):
        hidden = narrowest_width(parameters, budget)
        below = parameters(hidden - 1) if hidden > 1 else None
    count = counts[hidden]
    relative = (count - budget) / budget
    return MatchedPeer(name, hidden, count, budget, relative, abs(relative) <= tolerance, below)


def budget_table(features: int, budget: int | None = None, **settings) -> str:
    """`matched_peer` for every installed peer as a plain-text table (the others listed as not installed)."""
    if budget is None:
        widths = {key: settings[key] for key in ("num_layers", "num_components") if key in settings}
        with torch.random.fork_rng(devices=[]):
            budget = default_budget(features, **widths)
    lines = [
        f"D = {features}, budget = {budget} trainable parameters",
        f"{'peer':<20} {'width':>6} {'parameters':>11} {'at width-1':>11} {'difference':>11} {'within 5 %':>11}",
    ]
    for name in PEERS:
        try:
            match = matched_peer(name, features, budget, **settings)
        except ImportError:
            lines.append(f"{name:<20} not installed ({PEER_PACKAGES[name]})")
            continue
        below = "-" if match.below is None else str(match.below)
        lines.append(
            f"{name:<20} {match.hidden_features:>6} {match.parameters:>11} {below:>11} "
            f"{match.relative_difference:>+11.2%} {'yes' if match.within_tolerance else 'NO':>11}"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # python -m mog_flows.studies.peers [D ...]: the matched widths at the default budget
    for argument in sys.argv[1:] or ["2"]:
        print(budget_table(int(argument)), end="\n\n")
    print(peer_versions())

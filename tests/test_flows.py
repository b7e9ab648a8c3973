"""Tests of `mog_flows.build_flow`: invertibility, log-determinants against autograd Jacobians, normalisation on a
grid, identity initialisation, conditional flows, dtypes, save/load, D = 1, argument errors, gradients and CUDA.

Every flow is perturbed away from its identity initialisation first (`perturb`), so that the checks are not
satisfied trivially by the identity map. Shapes: N batch, n samples per context row, D features, C context.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nflows.flows import Flow
from nflows.transforms.coupling import CouplingTransform
from torch import nn

from mog_flows import MixtureOfGaussians, build_flow
from mog_flows.flows import TRANSFORMS
from mog_flows.nflows_adapters import flow_base, flow_transform

# Small networks keep the whole file fast on two cores.
SMALL = dict(num_layers=2, hidden_features=16, num_components=3)
# "mog" with each covariance, and the standard normal
BASES = [
    pytest.param(("mog", "diagonal"), id="mog-diagonal"),
    pytest.param(("mog", "full"), id="mog-full"),
    pytest.param(("gaussian", None), id="gaussian"),
]
MOG_BASES = BASES[:2]
CONTEXT = 3  # C


def make_flow(
    transform: str,
    base: tuple[str, str | None] = ("mog", "diagonal"),
    *,
    features: int = 2,
    context_features: int | None = None,
    dtype: torch.dtype = torch.float64,
    perturbation: float | None = 0.1,
    seed: int = 0,
    **kwargs,
) -> Flow:
    """A small flow in `dtype`, its parameters perturbed by N(0, perturbation²) noise unless perturbation=None."""
    name, covariance = base
    if covariance is not None:
        kwargs["covariance"] = covariance
    torch.manual_seed(seed)  # RandomPermutation and the mixture's initial means use the global RNG
    flow = build_flow(
        features, base=name, transform=transform, context_features=context_features, **{**SMALL, **kwargs}
    ).to(dtype)
    if perturbation is not None:
        perturb(flow, perturbation, seed=seed)
    return flow


@torch.no_grad()
def perturb(module: nn.Module, scale: float, *, seed: int = 0) -> None:
    """Add seeded N(0, scale²) noise to every parameter (the conditioners' zeroed last layers included)."""
    generator = torch.Generator().manual_seed(seed + 1234)
    for parameter in module.parameters():
        noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
        parameter.add_(scale * noise.to(parameter))


def make_context(rows: int, columns: int = CONTEXT, *, dtype=torch.float64, seed: int = 1) -> torch.Tensor:
    return torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def make_inputs(rows: int, features: int, *, scale: float = 2.5, dtype=torch.float64, seed: int = 2) -> torch.Tensor:
    """Points spread wide enough that some fall outside the splines' [-5, 5] tail bound (the linear tails)."""
    x = torch.randn(rows, features, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (scale * x).to(dtype)


def transform_cases(features: int = 3):
    """(transform, features) pairs; "realnvp" needs D >= 2."""
    return [pytest.param(t, features, id=f"{t}-D{features}") for t in TRANSFORMS] + [
        pytest.param(t, 1, id=f"{t}-D1") for t in TRANSFORMS if t != "realnvp"
    ]


# ----------------------------------------------------------------------------------------------- sanity of the setup
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_perturbation_moves_the_flow_away_from_the_identity(transform):
    # the other tests are only meaningful if the perturbed transform is far from the identity
    flow = make_flow(transform, features=3)
    x = make_inputs(64, 3)
    z, logabsdet = flow_transform(flow)(x)
    assert (z - x).abs().max() > 0.05
    assert logabsdet.abs().max() > 0.05


@pytest.mark.parametrize("transform", ["nsf", "realnvp"])
@pytest.mark.parametrize("features", [2, 3, 4, 5])
def test_each_pair_of_coupling_layers_transforms_every_feature_once(transform, features):
    # Perturb one coupling at a time (the others stay the identity, up to ~1e-9): the features of x it changes are
    # the ones it transforms. Masks by position alone, behind random permutations, left a feature untransformed by
    # every layer in a quarter of the 2-D flows.
    x = make_inputs(32, features)
    for seed in range(12):
        torch.manual_seed(seed)
        flow = build_flow(features, transform=transform, num_layers=4, hidden_features=8, num_components=2)
        flow = flow.to(torch.float64)
        couplings = [layer for layer in flow_transform(flow)._transforms if isinstance(layer, CouplingTransform)]
        assert len(couplings) == 4
        changed = []
        for layer in couplings:
            state = {key: value.clone() for key, value in layer.state_dict().items()}
            perturb(layer, 0.5, seed=seed)
            with torch.no_grad():
                z, _ = flow_transform(flow)(x)
            changed.append({d for d in range(features) if (z[:, d] - x[:, d]).abs().max() > 1e-4})
            layer.load_state_dict(state)
        for first, second in zip(changed[::2], changed[1::2]):
            assert first and second and not first & second, (seed, changed)
            assert first | second == set(range(features)), (seed, changed)
        if features == 2:
            assert [sorted(c) for c in changed[::2]] == [sorted(changed[0])] * 2, (seed, changed)


# --------------------------------------------------------------------------------------------------- invertibility
@pytest.mark.parametrize("context_features", [None, CONTEXT], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("transform, features", transform_cases())
def test_inverse_of_forward_is_identity_and_logdets_cancel(transform, features, context_features):
    flow = make_flow(transform, features=features, context_features=context_features)
    x = make_inputs(128, features)
    context = None if context_features is None else make_context(128)
    z, forward_logdet = flow_transform(flow)(x, context=context)
    x_back, inverse_logdet = flow_transform(flow).inverse(z, context=context)
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-8)
    torch.testing.assert_close(forward_logdet + inverse_logdet, torch.zeros_like(forward_logdet), rtol=0, atol=1e-8)
    # and the other way round, from noise to data and back
    x_from_z, _ = flow_transform(flow).inverse(x, context=context)
    z_back, _ = flow_transform(flow)(x_from_z, context=context)
    torch.testing.assert_close(z_back, x, rtol=0, atol=1e-8)


# ------------------------------------------------------------------------------------- log-det against autograd
@pytest.mark.parametrize("context_features", [None, CONTEXT], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("transform, features", transform_cases())
def test_logdet_matches_autograd_jacobian(transform, features, context_features):
    flow = make_flow(transform, features=features, context_features=context_features)
    x = make_inputs(6, features)
    x[0] = 6.0  # beyond the spline tail bound in every coordinate
    context = None if context_features is None else make_context(6)
    _, logabsdet = flow_transform(flow)(x, context=context)
    _, inverse_logabsdet = flow_transform(flow).inverse(x, context=context)
    for i in range(x.shape[0]):
        row_context = None if context is None else context[i : i + 1]

        def forward(point, row_context=row_context):
            return flow_transform(flow)(point.unsqueeze(0), context=row_context)[0].squeeze(0)

        def inverse(point, row_context=row_context):
            return flow_transform(flow).inverse(point.unsqueeze(0), context=row_context)[0].squeeze(0)

        for function, expected in ((forward, logabsdet[i]), (inverse, inverse_logabsdet[i])):
            jacobian = torch.autograd.functional.jacobian(function, x[i])  # (D, D)
            sign, log_abs = torch.linalg.slogdet(jacobian)
            assert sign != 0
            torch.testing.assert_close(expected, log_abs, rtol=0, atol=1e-8)


# ------------------------------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_density_integrates_to_one_on_a_grid(transform, base):
    # Why [-10, 10]², spacing h = 0.05 and a tolerance of 1e-3:
    # - discretisation: the density is continuous with at most kinks in its derivative (the rational-quadratic
    #   spline is C¹), so the midpoint rule errs by O(h²) ~ 1e-5; smooth densities that vanish at the box edges
    #   converge much faster still (Euler–Maclaurin). Halving h changes the sums here by < 2e-5.
    # - truncation: the mass outside the box is a tail of the base (means ~N(0, 1), scales ~exp(±0.3)) pushed
    #   through transforms that stay near the identity (max |T(x) - x| ~ 1-4 on typical points). Measured against
    #   a [-14, 14]² box with h = 0.025 it is < 3e-5 for every case here (on [-8, 8]² it would be up to 5e-4).
    # - power: dropping the log-det term or flipping its sign moves the sums by 3e-2 to 0.7 for these
    #   perturbations, 30 times the tolerance or more.
    flow = make_flow(transform, base)
    h = 0.05
    axis = torch.arange(-10 + h / 2, 10, h, dtype=torch.float64)  # cell midpoints
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        log_p = flow.log_prob(grid)
    total = torch.logsumexp(log_p, 0).exp().item() * h**2
    assert total == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("transform", ["nsf", "maf"])
def test_one_dimensional_density_integrates_to_one(transform, base):
    flow = make_flow(transform, base, features=1)
    h = 1e-3
    grid = torch.arange(-12 + h / 2, 12, h, dtype=torch.float64).unsqueeze(-1)
    with torch.no_grad():
        total = torch.logsumexp(flow.log_prob(grid), 0).exp().item() * h
    assert total == pytest.approx(1.0, abs=1e-4)


# ------------------------------------------------------------------------------------------ identity initialisation
@pytest.mark.parametrize("context_features", [None, CONTEXT], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("transform, features", transform_cases())
def test_new_flow_is_the_identity(transform, features, base, context_features):
    flow = make_flow(transform, base, features=features, context_features=context_features, perturbation=None)
    x = make_inputs(64, features)
    context = None if context_features is None else make_context(64)
    # exact up to the float32 rounding of the identity biases, set before the flow was cast to float64
    tolerance = dict(rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        z, logabsdet = flow_transform(flow)(x, context=context)
        torch.testing.assert_close(z, x, **tolerance)
        torch.testing.assert_close(logabsdet, torch.zeros_like(logabsdet), **tolerance)
        base_log_prob = flow_base(flow).log_prob(x, context=context)
        torch.testing.assert_close(flow.log_prob(x, context=context), base_log_prob, **tolerance)
    # the transforms use no randomness, so with the same seed the flow's samples are the base's samples
    context = None if context_features is None else make_context(4)
    torch.manual_seed(5)
    flow_samples = flow.sample(16, context=context)
    torch.manual_seed(5)
    base_samples = flow_base(flow).sample(16, context=context)
    torch.testing.assert_close(flow_samples, base_samples, **tolerance)


def test_new_flow_is_the_identity_in_float32():
    flow = make_flow("nsf", features=3, dtype=torch.float32, perturbation=None)
    x = make_inputs(64, 3, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(flow.log_prob(x), flow_base(flow).log_prob(x), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------- conditional
def with_embedding(flow: Flow) -> Flow:
    """The same transform and base behind an embedding net (N, 5) -> (N, C)."""
    torch.manual_seed(3)
    embedding = nn.Linear(5, CONTEXT).to(next(flow.parameters()))
    return Flow(flow_transform(flow), flow_base(flow), embedding_net=embedding)


@pytest.mark.parametrize("embedding", [False, True], ids=["plain", "embedding"])
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_conditional_flow_shapes_and_consistency(transform, base, embedding):
    D, N, n = 2, 5, 7
    flow = make_flow(transform, base, features=D, context_features=CONTEXT)
    if embedding:
        flow = with_embedding(flow)
    context = make_context(N, 5 if embedding else CONTEXT)
    x = make_inputs(N, D)

    log_prob = flow.log_prob(x, context=context)
    assert log_prob.shape == (N,)
    assert torch.isfinite(log_prob).all()
    # the context matters: the same points under other contexts have other densities
    other = flow.log_prob(x, context=context.flip(0))
    assert (other - log_prob).abs().max() > 1e-3

    samples = flow.sample(n, context=context)
    assert samples.shape == (N, n, D)
    assert torch.isfinite(samples).all()

    if base[0] == "mog":
        assert flow_base(flow).estimator == "exact"
    samples, sample_log_prob = flow.sample_and_log_prob(n, context=context)
    assert samples.shape == (N, n, D)
    assert sample_log_prob.shape == (N, n)
    # the returned log-densities are the flow's log-densities of the returned samples, each under its own context
    repeated_context = context.repeat_interleave(n, dim=0)  # (N * n, C): row i of context for samples i*n ... i*n+n-1
    recomputed = flow.log_prob(samples.reshape(N * n, D), context=repeated_context).reshape(N, n)
    torch.testing.assert_close(sample_log_prob, recomputed, rtol=0, atol=1e-8)


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_unconditional_sample_and_log_prob_is_consistent(transform, base):
    flow = make_flow(transform, base, features=3)
    samples, log_prob = flow.sample_and_log_prob(50)
    assert samples.shape == (50, 3)
    assert log_prob.shape == (50,)
    torch.testing.assert_close(log_prob, flow.log_prob(samples), rtol=0, atol=1e-8)


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_conditional_mog_base_is_a_conditional_mixture(covariance):
    flow = make_flow("nsf", ("mog", covariance), context_features=CONTEXT)
    assert isinstance(flow_base(flow), MixtureOfGaussians)
    assert flow_base(flow).context_features == CONTEXT


# ------------------------------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("context_features", [None, CONTEXT], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_flows_work_end_to_end_in_the_module_dtype(transform, base, context_features, dtype):
    flow = make_flow(transform, base, context_features=context_features, dtype=dtype)
    N = 4
    context = None if context_features is None else make_context(N, dtype=dtype)
    x = make_inputs(N, 2, dtype=dtype)

    log_prob = flow.log_prob(x, context=context)
    assert log_prob.dtype == dtype
    samples = flow.sample(3, context=context)
    assert samples.dtype == dtype
    samples, sample_log_prob = flow.sample_and_log_prob(3, context=context)
    assert samples.dtype == dtype and sample_log_prob.dtype == dtype
    assert torch.isfinite(samples).all() and torch.isfinite(sample_log_prob).all()
    (-log_prob.mean()).backward()
    assert all(p.grad is None or p.grad.dtype == dtype for p in flow.parameters())


# ---------------------------------------------------------------------------------------------------- save/load
@pytest.mark.parametrize("context_features", [None, CONTEXT], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_state_dict_round_trip_gives_identical_log_prob(transform, base, context_features, tmp_path):
    D = 3
    flow = make_flow(transform, base, features=D, context_features=context_features, seed=0)
    x = make_inputs(32, D)
    context = None if context_features is None else make_context(32)
    path = tmp_path / "flow.pt"
    torch.save(flow.state_dict(), path)

    # another seed: other random permutations, mixture means and perturbation
    fresh = make_flow(transform, base, features=D, context_features=context_features, seed=1)
    with torch.no_grad():
        assert not torch.equal(fresh.log_prob(x, context=context), flow.log_prob(x, context=context))
        fresh.load_state_dict(torch.load(path, weights_only=True))
        assert torch.equal(fresh.log_prob(x, context=context), flow.log_prob(x, context=context))


# ------------------------------------------------------------------------------------------------------- D = 1
@pytest.mark.parametrize("context_features", [None, CONTEXT], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("transform", ["nsf", "maf"])
def test_one_dimensional_flows_work(transform, base, context_features):
    flow = make_flow(transform, base, features=1, context_features=context_features)
    x = make_inputs(10, 1)
    context = None if context_features is None else make_context(10)
    log_prob = flow.log_prob(x, context=context)
    assert log_prob.shape == (10,) and torch.isfinite(log_prob).all()
    samples = flow.sample(4, context=context)
    assert samples.shape == ((4, 1) if context is None else (10, 4, 1))
    (-log_prob.mean()).backward()


@pytest.mark.parametrize("base", ["mog", "gaussian"])
def test_realnvp_needs_two_features(base):
    with pytest.raises(ValueError, match="realnvp.*features >= 2"):
        build_flow(1, base=base, transform="realnvp")


# ---------------------------------------------------------------------------------------------- argument errors
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(transform="glow"), r"transform must be one of .*'nsf'.*got 'glow'"),
        (dict(base="laplace"), r"base must be one of .*'mog'.*got 'laplace'"),
        (dict(num_layers=0), r"num_layers must be a positive integer; got 0"),
        (dict(num_layers=2.0), r"num_layers must be a positive integer"),
        (dict(hidden_features=0), r"hidden_features must be a positive integer"),
        (dict(base="gaussian", covariance="full"), r"only apply to base='mog'"),
        (dict(covariance="spherical"), r"covariance must be one of"),
    ],
    ids=["transform", "base", "num_layers", "num_layers-float", "hidden_features", "gaussian-kwargs", "covariance"],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_flow(2, **kwargs)


@pytest.mark.parametrize("features", [0, -1])
def test_bad_features_raise(features):
    with pytest.raises(ValueError, match="features must be a positive integer"):
        build_flow(features)


def test_a_distribution_base_is_used_as_given():
    base = MixtureOfGaussians(2, 3)
    flow = build_flow(2, base=base, **{k: v for k, v in SMALL.items() if k != "num_components"})
    assert flow_base(flow) is base
    with pytest.raises(ValueError, match="only apply to base='mog'"):
        build_flow(2, base=base, covariance="full")


# ------------------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("context_features", [None, CONTEXT], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("base", MOG_BASES)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_every_parameter_gets_a_finite_gradient(transform, base, context_features):
    flow = make_flow(transform, base, context_features=context_features)
    x = make_inputs(64, 2)
    context = None if context_features is None else make_context(64)
    loss = -flow.log_prob(x, context=context).mean()
    loss.backward()
    for name, parameter in flow.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"
        assert parameter.grad.abs().max() > 0, f"{name} has an all-zero gradient"
    base_parameters = list(flow_base(flow).named_parameters())
    assert base_parameters
    for name, parameter in base_parameters:
        assert parameter.grad.abs().max() > 1e-8, f"base parameter {name} has a vanishing gradient"


# ------------------------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("context_features", [None, CONTEXT], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_flow_on_cuda_agrees_with_cpu(transform, base, context_features):
    cpu = make_flow(transform, base, context_features=context_features)
    gpu = make_flow(transform, base, context_features=context_features).to("cuda")
    x = make_inputs(32, 2)
    context = None if context_features is None else make_context(32)
    gpu_context = None if context is None else context.cuda()

    cpu_log_prob = cpu.log_prob(x, context=context)
    gpu_log_prob = gpu.log_prob(x.cuda(), context=gpu_context)
    assert gpu_log_prob.device.type == "cuda"
    torch.testing.assert_close(gpu_log_prob.cpu(), cpu_log_prob, rtol=1e-7, atol=1e-7)

    (-cpu_log_prob.mean()).backward()
    (-gpu_log_prob.mean()).backward()
    for (name, p_cpu), (_, p_gpu) in zip(cpu.named_parameters(), gpu.named_parameters()):
        assert p_gpu.grad is not None and p_gpu.grad.device.type == "cuda", name
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, rtol=1e-6, atol=1e-7, msg=name)

    sample_context = None if gpu_context is None else gpu_context[:3]
    samples = gpu.sample(5, context=sample_context)
    assert samples.device.type == "cuda" and samples.dtype == torch.float64
    assert torch.isfinite(samples).all()
    samples, log_prob = gpu.sample_and_log_prob(5, context=sample_context)
    assert samples.device.type == "cuda" and log_prob.device.type == "cuda"
    flat_context = None if sample_context is None else sample_context.repeat_interleave(5, dim=0)
    recomputed = gpu.log_prob(samples.reshape(-1, 2), context=flat_context).reshape(log_prob.shape)
    torch.testing.assert_close(log_prob, recomputed, rtol=0, atol=1e-8)


# ------------------------------------------------------------------------------- hostile input (issue 13 §2)
@pytest.mark.parametrize("context_features", [None, CONTEXT], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_an_empty_batch_gives_an_empty_result_and_zero_gradients(transform, base, context_features):
    flow = make_flow(transform, base, context_features=context_features)
    x = torch.zeros(0, 2, dtype=torch.float64, requires_grad=True)
    context = None if context_features is None else make_context(0)
    log_p = flow.log_prob(x, context=context)
    assert log_p.shape == (0,)
    log_p.sum().backward()
    assert x.grad.shape == (0, 2)
    for parameter in flow.parameters():
        assert parameter.grad is None or not parameter.grad.any()
    assert flow.transform_to_noise(x.detach(), context=context).shape == (0, 2)


def _conditional_flow():
    return make_flow("nsf", context_features=CONTEXT, dtype=torch.float32)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda f: f.log_prob(torch.zeros(4, 2)), r"conditional: pass a context of shape \(N, 3\)"),
        (lambda f: f.log_prob(torch.zeros(4, 2), context=torch.zeros(4, 5)), r"context must have shape \(N, 3\)"),
        (lambda f: f.log_prob(torch.zeros(4, 2), context=torch.zeros(3, 3)), "one row per input"),
        (lambda f: f.log_prob(torch.zeros(4, 2), context=torch.zeros(4, 3, dtype=torch.float64)), "context has dtype"),
        (lambda f: f.log_prob(torch.zeros(4, 2), context=torch.zeros(4, 3, dtype=torch.int64)), "context has dtype"),
        (lambda f: f.log_prob(torch.zeros(4, 2, dtype=torch.float64), context=torch.zeros(4, 3)), "inputs has dtype"),
        (lambda f: f.log_prob(torch.zeros(4, 3), context=torch.zeros(4, 3)), r"inputs must have shape \(N, 2\)"),
        (lambda f: f.log_prob(torch.full((4, 2), float("nan")), context=torch.zeros(4, 3)), "inputs must be finite"),
        (lambda f: f.sample(4), "conditional: pass a context"),
        (lambda f: f.sample(4, context=torch.zeros(2, 3, dtype=torch.float64)), "context has dtype"),
        (lambda f: f.sample_and_log_prob(4, context=torch.zeros(2, 5)), r"context must have shape \(N, 3\)"),
        (lambda f: f.sample(0, context=torch.zeros(2, 3)), "num_samples must be a positive integer"),
        (lambda f: f.transform_to_noise(torch.zeros(4, 2)), "conditional: pass a context"),
    ],
)
def test_bad_input_to_a_conditional_flow(call, match):
    with pytest.raises(ValueError, match=match):
        call(_conditional_flow())


@pytest.mark.parametrize("base", BASES)
def test_bad_input_to_an_unconditional_flow(base):
    flow = make_flow("maf", base, dtype=torch.float32)
    with pytest.raises(ValueError, match="unconditional .* but a context of shape"):
        flow.log_prob(torch.zeros(4, 2), context=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="inputs has dtype torch.float64"):
        flow.log_prob(torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="unconditional"):
        flow.sample(3, context=torch.zeros(2, 3))


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_conditional_sample_in_batches_and_integer_like_counts(transform, base):
    flow = make_flow(transform, base, context_features=CONTEXT)
    context = make_context(4)
    for batch_size in (1, 3, 7):
        assert flow.sample(7, context=context, batch_size=batch_size).shape == (4, 7, 2)
    assert flow.sample(np.int64(5), context=context).shape == (4, 5, 2)
    assert make_flow(transform, base).sample(torch.tensor(5), batch_size=2).shape == (5, 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(base=MixtureOfGaussians(3, 2)), "the base distribution has 3 features but build_flow got features=2"),
        (dict(base="gaussian"), None),
        (dict(base=MixtureOfGaussians(2, 2), context_features=CONTEXT), "needs a conditional base"),
        (dict(base=MixtureOfGaussians(2, 2, context_features=CONTEXT)), "=3 .* got context_features=None"),
        (dict(base=MixtureOfGaussians(2, 2, context_features=4), context_features=CONTEXT), "context_features=4"),
        (dict(tail_bound=0.0), "tail_bound must be a finite number > 0"),
        (dict(tail_bound=-1.0), "tail_bound must be a finite number > 0"),
        (dict(tail_bound=float("nan")), "tail_bound must be a finite number > 0"),
        (dict(tail_bound=float("inf")), "tail_bound must be a finite number > 0"),
        (dict(num_bins=0), "num_bins must be a positive integer"),
        (dict(context_features=0), "context_features must be a positive integer"),
    ],
    ids=[
        "wrong-D",
        "gaussian-ok",
        "uncond-base",
        "cond-base",
        "C-mismatch",
        "tail-0",
        "tail-neg",
        "tail-nan",
        "tail-inf",
        "bins-0",
        "context-0",
    ],
)
def test_build_flow_refuses_what_cannot_work(kwargs, match):
    if match is None:
        build_flow(2, **kwargs)
        return
    with pytest.raises(ValueError, match=match):
        build_flow(2, **kwargs)


def test_a_given_standard_normal_base_of_the_wrong_size_is_refused():
    from nflows.distributions import StandardNormal

    with pytest.raises(ValueError, match="has 3 features but build_flow got features=2"):
        build_flow(2, base=StandardNormal([3]))


# ------------------------------------------------------------------------------------------------- standardize
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_standardize_is_a_z_scoring_first_transform_in_the_data_units(transform):
    # data far from unit scale, one constant feature (scale 1 there)
    generator = torch.Generator().manual_seed(5)
    data = torch.randn(200, 3, generator=generator, dtype=torch.float64) * torch.tensor([100.0, 0.01, 0.0])
    data = data + torch.tensor([1e3, -5.0, 7.0], dtype=torch.float64)
    mean, std = data.mean(0), data.std(0, correction=0)
    std[2] = 1.0
    flow = make_flow(transform, features=3, standardize=data.float())
    plain = make_flow(transform, features=3)  # the same seed: the same layers and base, without the map
    x = data[:16]
    expected = plain.log_prob((x - mean) / std) - std.log().sum()
    torch.testing.assert_close(flow.log_prob(x), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # sampling maps the plain flow's samples back to the data's units
        torch.manual_seed(3)
        samples = flow.sample(64)
        torch.manual_seed(3)
        expected_samples = plain.sample(64) * std + mean
    torch.testing.assert_close(samples, expected_samples, rtol=1e-5, atol=1e-5)


def test_a_standardized_flow_rebuilt_from_a_placeholder_loads_its_state():
    data = torch.randn(50, 2) * 30 + 100
    torch.manual_seed(0)
    flow = build_flow(2, standardize=data, **SMALL)
    perturb(flow, 0.1)
    torch.manual_seed(0)
    rebuilt = build_flow(2, standardize=torch.zeros(1, 2), **SMALL)
    rebuilt.load_state_dict(flow.state_dict())
    torch.testing.assert_close(rebuilt.log_prob(data), flow.log_prob(data), rtol=0, atol=0)


@pytest.mark.parametrize(
    "standardize, error, match",
    [
        (
            [[1.0, 2.0]],
            TypeError,
            r"standardize must be None, a data tensor \(N, 2\) or a tuple \(x, context\); got list",
        ),
        (torch.zeros(4, 3), ValueError, r"standardize must have shape \(N, 2\); got \(4, 3\)"),
        (torch.zeros(0, 2), ValueError, r"standardize must have at least one row"),
        (torch.tensor([[0.0, float("nan")]]), ValueError, r"standardize must be finite"),
    ],
)
def test_bad_standardize_data_is_refused(standardize, error, match):
    with pytest.raises(error, match=match):
        build_flow(2, standardize=standardize)


# ---------------------------------------------------------------------------- embedding nets, base keywords
def test_an_embedding_net_conditions_the_layers_and_the_base_on_its_output():
    torch.manual_seed(0)
    embedding = nn.Sequential(nn.Linear(5, 7), nn.Tanh())
    flow = build_flow(2, num_layers=2, hidden_features=8, num_components=3, context_features=5, embedding_net=embedding)
    assert flow_base(flow).context_features == 7  # the embedding's output width, found by a probe
    x, context = torch.randn(6, 2), torch.randn(6, 5)
    log_p = flow.log_prob(x, context=context)
    assert log_p.shape == (6,) and flow.sample(4, context=context).shape == (6, 4, 2)
    log_p.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in embedding.parameters())
    with pytest.raises(
        ValueError, match=r"context must have shape \(N, 5\) \(the embedding net's input\); got \(6, 7\)"
    ):
        flow.log_prob(x, context=torch.randn(6, 7))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            dict(embedding_net=nn.Linear(4, 3), context_features=5),
            ValueError,
            r"embedding_net fails on a context of shape \(2, 5\)",
        ),
        (dict(embedding_net=nn.Linear(4, 3)), ValueError, r"embedding_net needs context_features"),
        (dict(embedding_net=lambda c: c, context_features=4), TypeError, r"embedding_net must be an nn.Module"),
        (dict(embedding_net=nn.Flatten(0), context_features=4), ValueError, r"on \(2, 4\) it returned \(8,\)"),
        (
            dict(embedding_net=nn.Linear(4, 3), context_features=4, foo=1),
            TypeError,
            r"build_flow got unexpected keyword argument\(s\) 'foo'.*covariance, temperature, estimator",
        ),
        (
            dict(embeding_net=nn.Linear(4, 3)),
            TypeError,
            r"build_flow got unexpected keyword argument\(s\) 'embeding_net'",
        ),
    ],
)
def test_bad_embedding_nets_and_keywords_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        build_flow(2, num_layers=1, **kwargs)


def test_base_keywords_reach_the_mixture():
    flow = build_flow(2, num_layers=1, covariance="full", estimator="gumbel-nested", temperature=0.3)
    base = flow_base(flow)
    assert (base.covariance, base.estimator, base.temperature, base.num_components) == (
        "full",
        "gumbel-nested",
        0.3,
        32,
    )


def test_standardize_with_a_context_z_scores_the_context():
    generator = torch.Generator().manual_seed(0)
    x = 100 + 10 * torch.randn(50, 2, generator=generator)
    context = -5 + 3 * torch.randn(50, 3, generator=generator)
    torch.manual_seed(0)
    flow = build_flow(
        2, num_layers=2, hidden_features=8, num_components=3, context_features=3, standardize=(x, context)
    )
    torch.manual_seed(0)
    plain = build_flow(2, num_layers=2, hidden_features=8, num_components=3, context_features=3)
    plain.load_state_dict(
        {
            k: v
            for k, v in flow.state_dict().items()
            if not k.startswith(("_embedding_net", "_transform._transforms.0."))
        },
        strict=False,
    )
    with torch.no_grad():  # give the conditioners something to do with the context
        for p, q in zip(flow.parameters(), plain.parameters()):
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
            q.copy_(p)
    mean_x, std_x = x.mean(0), x.std(0, correction=0)
    mean_c, std_c = context.mean(0), context.std(0, correction=0)
    with torch.no_grad():
        expected = plain.log_prob((x - mean_x) / std_x, context=(context - mean_c) / std_c) - std_x.log().sum()
        torch.testing.assert_close(flow.log_prob(x, context=context), expected, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match=r"standardize=\(x, context\) needs a conditional flow"):
        build_flow(2, standardize=(x, context))

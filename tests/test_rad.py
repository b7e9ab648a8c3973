"""Tests of `mog_flows.baselines.RAD`: normalisation on a grid (random and briefly trained parameters), exact
inversion of every piece, the gate's support, log-determinants against autograd, samples against the model's own
density (moments and a binned chi-square), a closed-form check of a new layer, gradients, dtypes, save/load and
errors.

Models are perturbed away from their initialisation (`perturb`) so that no check is passed by a special case; the
gating networks' last layers get a larger perturbation, so that p(k | z) is far from uniform on the overlaps and a
sampler that got the gate wrong would be caught. Shapes: N rows, D features, L layers, K pieces, D_b transformed
features per layer.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chi2, norm
from torch import nn

from mog_flows import fit
from mog_flows.baselines import RAD, RADCoupling

SMALL = dict(num_layers=3, hidden_features=16)
PIECES = [1, 2, 3]


@torch.no_grad()
def perturb(module: nn.Module, scale: float = 0.05, *, gate_scale: float = 1.5, seed: int = 0) -> None:
    """Add seeded N(0, scale²) noise to every parameter, N(0, gate_scale²) to the gating networks' last layers."""
    generator = torch.Generator().manual_seed(seed + 1234)
    for name, parameter in module.named_parameters():
        size = gate_scale if ".gate.final_layer." in f".{name}" else scale
        noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
        parameter.add_(size * noise.to(parameter))


def make_rad(features: int = 2, num_pieces: int = 2, *, dtype=torch.float64, seed: int = 0, **kwargs) -> RAD:
    torch.manual_seed(seed)
    model = RAD(features, num_pieces=num_pieces, **{**SMALL, **kwargs}).to(dtype)
    perturb(model, seed=seed)
    return model


def make_inputs(rows: int, features: int, *, scale: float = 2.0, dtype=torch.float64, seed: int = 2) -> torch.Tensor:
    x = torch.randn(rows, features, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (scale * x).to(dtype)


def grid_2d(half_width: float, h: float) -> torch.Tensor:
    """Cell midpoints of [-half_width, half_width]² with spacing h, (M², 2) float64."""
    axis = torch.arange(-half_width + h / 2, half_width, h, dtype=torch.float64)
    return torch.cartesian_prod(axis, axis)


@torch.no_grad()
def grid_log_prob(model: RAD, points: torch.Tensor) -> torch.Tensor:
    """model.log_prob over many points, in chunks (2.5 times faster than one call: the activations stay in cache)."""
    return torch.cat([model.log_prob(chunk) for chunk in points.split(16384)])


def mixture_data(n: int, seed: int = 3) -> torch.Tensor:
    """n points of an equal-weight mixture of four N(μ, 0.4² I) at (±2, ±2): four separated modes."""
    g = torch.Generator().manual_seed(seed)
    signs = 2.0 * torch.randint(0, 2, (n, 2), generator=g) - 1.0
    return 2.0 * signs + 0.4 * torch.randn(n, 2, generator=g)


# ------------------------------------------------------------------------------------------------- normalisation
# Why [-8, 8]², h = 0.02 and a tolerance of 2e-3: the density is discontinuous along the pieces' boundaries and
# the images' ends, so the midpoint rule errs by O(h^1.5) to O(h) rather than O(h²): over twelve perturbed models
# (K = 1, 2, 3, four seeds each) the sum is off by at most 9e-4 here (2.3e-3 on [-10, 10]² with h = 0.025). The
# mass outside the box is < 1e-4. On the models tested here (seed 0), dropping the gate's log p(k | z) moves the
# sum by 0.7 to 1.5, a softmax over all pieces instead of the feasible ones by -0.7 to -1.0, dropping the
# log-determinant by 2e-2 to 8e-2 and flipping its sign by 7e-3 to 0.25.
@pytest.mark.parametrize("num_pieces", PIECES)
def test_density_integrates_to_one_on_a_grid(num_pieces):
    model = make_rad(2, num_pieces)
    h = 0.02
    total = torch.logsumexp(grid_log_prob(model, grid_2d(8.0, h)), 0).exp().item() * h**2
    assert total == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("num_pieces", [2, 3])
def test_one_dimensional_density_integrates_to_one(num_pieces):
    # in 1-D the discontinuities are points: with h = 1e-4 the midpoint rule errs by ~1e-5
    model = make_rad(1, num_pieces)
    h = 1e-4
    grid = torch.arange(-15 + h / 2, 15, h, dtype=torch.float64).unsqueeze(-1)
    total = torch.logsumexp(grid_log_prob(model, grid), 0).exp().item() * h
    assert total == pytest.approx(1.0, abs=1e-4)


def test_briefly_trained_model_learns_and_still_integrates_to_one():
    torch.manual_seed(0)
    model = RAD(2, num_pieces=3, **SMALL).double()
    data = mixture_data(2000).double()
    with torch.no_grad():
        before = -model.log_prob(data).mean().item()
    history = fit(model, data, steps=40, batch_size=256, lr=5e-3, progress=False, init_base=False)
    with torch.no_grad():
        after = -model.log_prob(data).mean().item()
        log_p = grid_log_prob(model, grid_2d(8.0, 0.02))
    assert history.steps == 40
    assert after < before - 0.3, f"training did not lower the NLL: {before:.3f} -> {after:.3f}"
    # the gates must have learnt something for this to be a check of the gate's normalisation
    assert any(layer.gate.final_layer.weight.abs().max() > 1e-2 for layer in model.layers)
    assert torch.logsumexp(log_p, 0).exp().item() * 0.02**2 == pytest.approx(1.0, abs=2e-3)


def test_new_layer_matches_its_closed_form_density():
    # A new one-layer RAD on ℝ with K = 2: breakpoint 0, unit slopes, jump ½, so z = x + ¼ for x < 0 and z = x - ¼
    # for x ≥ 0; both pieces' images hold [-¼, ¼], where the new gate is uniform (½), elsewhere one piece has
    # probability 1: p(x) = N(z; 0, 1) · (½ if |z| ≤ ¼ else 1).
    # The points avoid the breakpoint 0 and the images' ends x = ±½; the tolerance covers the float32 rounding of
    # the initial biases (slopes and jumps are 1 and ½ to ~3e-8); a missing or wrong gate factor would be off by
    # log 2 on [-½, ½].
    model = RAD(1, num_pieces=2, num_layers=1, hidden_features=8).double()
    x = torch.arange(-2.995, 3, 0.01, dtype=torch.float64)
    z = torch.where(x < 0, x + 0.25, x - 0.25)
    expected = norm.logpdf(z.numpy()) + torch.where(z.abs() <= 0.25, math.log(0.5), 0.0).numpy()
    with torch.no_grad():
        log_p = model.log_prob(x.unsqueeze(-1))
    torch.testing.assert_close(log_p, torch.as_tensor(expected), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- pieces, inversion
@pytest.mark.parametrize("features", [1, 2, 3])
@pytest.mark.parametrize("num_pieces", PIECES)
def test_each_piece_inverts_exactly(num_pieces, features):
    torch.manual_seed(0)
    layer = RADCoupling(features, num_pieces, hidden_features=16).double()
    perturb(layer, 0.3)
    x = make_inputs(500, features)
    with torch.no_grad():
        z, k, _ = layer(x)
        torch.testing.assert_close(layer.inverse(z, k), x, rtol=0, atol=1e-12)
        # every piece whose image holds z maps back onto z from inside its own domain: each piece is injective,
        # and the images used by the gate are the true images
        feasible = layer.feasible(z)  # (N, D_b, K)
        assert feasible.gather(-1, k.unsqueeze(-1)).all(), "the piece x came from does not contain z"
        if num_pieces > 1:
            assert (feasible.sum(-1) > 1).any(), "no overlapping images: the test would be trivial"
        for piece in range(num_pieces):
            rows = feasible[..., piece].all(-1)
            other = torch.full_like(k[rows], piece)
            x_other = layer.inverse(z[rows], other)
            z_back, k_back, _ = layer(x_other)
            assert torch.equal(k_back, other), f"inverting through piece {piece} left its domain"
            torch.testing.assert_close(z_back, z[rows], rtol=0, atol=1e-12)


def test_latent_and_generate_are_exact_inverses():
    model = make_rad(3, 3)
    x = make_inputs(400, 3)
    with torch.no_grad():
        z, pieces = model.latent(x)
        assert pieces.shape == (400, SMALL["num_layers"], 2) and pieces.dtype == torch.int64
        torch.testing.assert_close(model.generate(z, pieces), x, rtol=0, atol=1e-12)
        # the log-density is the sum of its parts along the inferred path, with no sum over pieces
        assert torch.isfinite(model.log_prob(x)).all()


def test_consecutive_layers_transform_complementary_features():
    # with the feature order reversed between layers, two layers on ℝ² move both coordinates as functions of both:
    # the Jacobian of x -> z is dense (without the reversal both layers would transform x_2 given x_1: triangular)
    model = make_rad(2, 2, num_layers=2)
    for x in make_inputs(5, 2):
        jacobian = torch.autograd.functional.jacobian(lambda row: model.latent(row.unsqueeze(0))[0].squeeze(0), x)
        assert (jacobian.abs() > 1e-6).all(), jacobian


@pytest.mark.parametrize("num_pieces", [2, 3])
def test_log_det_matches_autograd_jacobian(num_pieces):
    torch.manual_seed(0)
    layer = RADCoupling(3, num_pieces, hidden_features=16).double()
    perturb(layer, 0.3)
    x = make_inputs(20, 3)
    _, _, log_det = layer(x)
    for i in range(len(x)):
        jacobian = torch.autograd.functional.jacobian(lambda row: layer(row.unsqueeze(0))[0].squeeze(0), x[i])
        sign, log_abs = torch.linalg.slogdet(jacobian)
        assert sign > 0
        torch.testing.assert_close(log_det[i], log_abs, rtol=0, atol=1e-10)


@pytest.mark.parametrize("num_pieces", PIECES)
def test_gate_puts_mass_only_on_pieces_whose_image_holds_z(num_pieces):
    torch.manual_seed(0)
    layer = RADCoupling(2, num_pieces, hidden_features=16).double()
    perturb(layer, 0.3)
    z_a = make_inputs(300, 1, seed=5)
    with torch.no_grad():
        pieces = layer.pieces(z_a)
        # the images' finite ends, exactly, and far-out values: the images cover ℝ with no rounding gap
        ends = torch.cat([pieces.lower, pieces.upper], -1).squeeze(1)  # (N, 2K)
        finite = ends[torch.isfinite(ends)].view(300, 2 * num_pieces - 2)
        far = torch.tensor([-1e4, 1e4], dtype=torch.float64).expand(300, 2)
        for column in torch.cat([finite, far], -1).T:
            z = torch.stack([z_a[:, 0], column], -1)
            log_gate = layer.gate_log_prob(z)  # (N, 1, K)
            feasible = layer.feasible(z)
            assert feasible.any(-1).all(), "some z lies in no piece's image"
            assert torch.all(log_gate[~feasible] == -math.inf), "mass on a piece whose image does not hold z"
            torch.testing.assert_close(log_gate.exp().sum(-1), torch.ones(300, 1, dtype=torch.float64))
            drawn = layer.sample_pieces(z)
            assert feasible.gather(-1, drawn.unsqueeze(-1)).all()


# ------------------------------------------------------------------------------------------- samples vs density
def grid_reference(model: RAD, half_width: float = 8.0, h: float = 0.02):
    """(grid (M, 2), cell probabilities (M,)) of the model's density on a grid."""
    grid = grid_2d(half_width, h)
    return grid, grid_log_prob(model, grid).exp() * h**2


def test_sample_moments_match_the_density():
    # mean and covariance of n = 20000 samples against the grid density's, within 5 standard errors
    # (standard errors from the grid density's own fourth moments); a sampler with a uniform gate over the
    # feasible pieces, one that always takes the first feasible piece, or one whose gate is not masked to the
    # feasible pieces misses the mean by 9 to 35 standard errors
    model = make_rad(2, 2)
    grid, p = grid_reference(model)
    p = p / p.sum()
    mean = p @ grid  # (2,)
    centred = grid - mean
    products = centred[:, [0, 0, 1]] * centred[:, [0, 1, 1]]  # (M, 3): xx, xy, yy
    covariance = p @ products
    n = 20_000
    torch.manual_seed(7)
    with torch.no_grad():
        samples = model.sample(n)
    sample_mean = samples.mean(0)
    sample_centred = samples - sample_mean
    sample_cov = (sample_centred[:, [0, 0, 1]] * sample_centred[:, [0, 1, 1]]).mean(0)
    mean_se = (covariance[[0, 2]] / n).sqrt()
    cov_se = ((p @ products.square() - covariance.square()) / n).sqrt()
    assert ((sample_mean - mean).abs() / mean_se).max() < 5, (sample_mean, mean)
    assert ((sample_cov - covariance).abs() / cov_se).max() < 5, (sample_cov, covariance)


@pytest.mark.parametrize("num_pieces", [2, 3])
def test_samples_match_the_density_in_a_binned_chi_square(num_pieces):
    # Pearson's chi-square of n = 20000 samples over 0.5 × 0.5 bins of [-6, 6]² (bins expecting < 5 samples are
    # pooled with the outside), expected counts from the model's density on a 0.02 grid. Seeded, so the test is
    # deterministic; it fails at a p-value below 1e-4. A uniform gate, an unmasked gate or the wrong piece in the
    # inverse give p-values below 1e-30.
    model = make_rad(2, num_pieces)
    grid, p = grid_reference(model, half_width=6.0)
    width = 0.5
    bins_per_axis = round(12 / width)

    def bin_index(points: torch.Tensor) -> torch.Tensor:
        cells = torch.floor((points + 6.0) / width).long()
        inside = ((cells >= 0) & (cells < bins_per_axis)).all(-1)
        return torch.where(inside, cells[:, 0] * bins_per_axis + cells[:, 1], bins_per_axis**2)

    n = 20_000
    expected = torch.zeros(bins_per_axis**2 + 1, dtype=torch.float64).index_add_(0, bin_index(grid), p)
    expected[-1] = 1 - expected[:-1].sum()  # the outside of the box
    expected *= n
    torch.manual_seed(11)
    with torch.no_grad():
        samples = model.sample(n)
    observed = torch.bincount(bin_index(samples), minlength=bins_per_axis**2 + 1).double()
    small = expected < 5
    small[-1] = True
    pooled_expected = torch.cat([expected[~small], expected[small].sum(0, keepdim=True)])
    pooled_observed = torch.cat([observed[~small], observed[small].sum(0, keepdim=True)])
    statistic = ((pooled_observed - pooled_expected).square() / pooled_expected).sum().item()
    dof = len(pooled_expected) - 1
    assert dof > 100
    p_value = chi2.sf(statistic, dof)
    assert p_value > 1e-4, f"chi-square {statistic:.1f} on {dof} degrees of freedom, p = {p_value:.2e}"


# ------------------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("num_pieces", PIECES)
def test_every_parameter_gets_a_finite_nonzero_gradient(num_pieces):
    model = make_rad(3, num_pieces)
    loss = -model.log_prob(make_inputs(256, 3)).mean()
    loss.backward()
    parameters = dict(model.named_parameters())
    assert any(".gate." in name for name in parameters) == (num_pieces > 1)
    for name, parameter in parameters.items():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"
        assert parameter.grad.abs().max() > 0, f"{name} has an all-zero gradient"


def test_samples_are_differentiable_given_their_pieces():
    model = make_rad(2, 2)
    torch.manual_seed(0)
    samples = model.sample(64)
    samples.square().sum().backward()
    grads = [p.grad for name, p in model.named_parameters() if ".conditioner." in name]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().max() > 0 for g in grads)


# --------------------------------------------------------------------------------------------- dtypes, save/load
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_works_end_to_end_in_the_module_dtype(dtype):
    model = make_rad(2, 3, dtype=dtype)
    x = make_inputs(32, 2, dtype=dtype)
    log_p = model.log_prob(x)
    assert log_p.dtype == dtype and log_p.shape == (32,) and torch.isfinite(log_p).all()
    log_p.mean().backward()
    assert all(p.grad is None or p.grad.dtype == dtype for p in model.parameters())
    with torch.no_grad():
        samples = model.sample(16)
        assert samples.dtype == dtype and samples.shape == (16, 2)
        assert torch.isfinite(model.log_prob(samples)).all()


def test_float32_agrees_with_float64():
    model64 = make_rad(2, 3)
    model32 = make_rad(2, 3, dtype=torch.float32)
    x = make_inputs(200, 2)
    with torch.no_grad():
        log_p64 = model64.log_prob(x)
        log_p32 = model32.log_prob(x.float())
    # rows whose pieces differ between the precisions (x within rounding of a breakpoint) would differ a lot
    torch.testing.assert_close(log_p32.double(), log_p64, rtol=0, atol=1e-4)


def test_state_dict_round_trip_gives_identical_log_prob(tmp_path):
    model = make_rad(2, 3)
    torch.save(model.state_dict(), tmp_path / "rad.pt")
    other = RAD(2, num_pieces=3, **SMALL).double()  # another initialisation
    x = make_inputs(100, 2)
    with torch.no_grad():
        assert not torch.equal(other.log_prob(x), model.log_prob(x))
        other.load_state_dict(torch.load(tmp_path / "rad.pt", weights_only=True))
        assert torch.equal(other.log_prob(x), model.log_prob(x))


def test_sampling_follows_the_global_seed():
    model = make_rad(2, 2)
    with torch.no_grad():
        torch.manual_seed(5)
        a = model.sample(50)
        torch.manual_seed(5)
        b = model.sample(50)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "inputs, match",
    [
        (torch.tensor([[0.0, float("nan")]], dtype=torch.float64), "must be finite"),
        (torch.tensor([[float("inf"), 0.0]], dtype=torch.float64), "must be finite"),
        (torch.zeros(4, 3, dtype=torch.float64), r"shape \(N, 2\)"),
        (torch.zeros(4, dtype=torch.float64), r"shape \(N, 2\)"),
        (torch.zeros(4, 2, dtype=torch.float32), "dtype"),
    ],
    ids=["nan", "inf", "features", "one-dimensional", "dtype"],
)
def test_bad_inputs_raise(inputs, match):
    model = make_rad(2, 2)
    with pytest.raises(ValueError, match=match):
        model.log_prob(inputs)
    with pytest.raises(ValueError, match=match):
        model.latent(inputs)


def test_a_context_raises():
    model = make_rad(2, 2)
    x, context = make_inputs(4, 2), torch.zeros(4, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="unconditional"):
        model.log_prob(x, context=context)
    with pytest.raises(ValueError, match="unconditional"):
        model.sample(3, context=context)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(features=0), "features must be a positive integer"),
        (dict(features=2.0), "features must be a positive integer"),
        (dict(features=2, num_pieces=0), "num_pieces must be a positive integer"),
        (dict(features=2, num_layers=0), "num_layers must be a positive integer"),
        (dict(features=2, hidden_features=True), "hidden_features must be a positive integer"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    features = kwargs.pop("features")
    with pytest.raises(ValueError, match=match):
        RAD(features, **kwargs)


def test_generate_refuses_bad_pieces():
    model = make_rad(2, 3)
    x = make_inputs(50, 2)
    with torch.no_grad():
        z, pieces = model.latent(x)
        with pytest.raises(ValueError, match="shape"):
            model.generate(z, pieces[:, :1])
        with pytest.raises(ValueError, match=r"lie in \[0, 3\)"):
            model.generate(z, pieces + 3)
        with pytest.raises(ValueError, match="integer"):
            model.generate(z, pieces.double())
        # a piece whose image does not hold its value: some row admits only one piece at the last layer
        only = model.layers[-1].feasible(z).sum(-1) == 1  # (N, D_b)
        row = int(torch.nonzero(only.any(-1))[0])
        bad = pieces.clone()
        column = int(torch.nonzero(only[row])[0])
        bad[row, -1, column] = (bad[row, -1, column] + 1) % 3
        with pytest.raises(ValueError, match="do not contain their values"):
            model.generate(z, bad)

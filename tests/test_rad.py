"""Tests of `mog_flows.baselines.RAD`: the piecewise-linear map (continuous at every breakpoint, onto ℝ, exact
inverse of every piece, log-determinants against autograd), the gate (exactly 0 off a piece's image, sums to 1,
continuous in z), the density (normalisation on a grid in 1-D and 2-D, continuity along lines, a closed form for a
new layer, three modes from one fold of one Gaussian), samples against the density (moments and a binned
chi-square), K = 1 against an affine coupling flow, gradients, dtypes, save/load and errors.

Models are perturbed away from their initialisation (`perturb`) so that no check is passed by a special case; the
gating networks' last layers get a larger perturbation, so that p(k | z) is far from the windows alone and a sampler
that got the gate wrong would be caught. Shapes: N rows, D features, L layers, K pieces, B branches, D_b
transformed features per layer.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from nflows.transforms import AffineCouplingTransform, CompositeTransform, ReversePermutation
from scipy.stats import chi2, norm
from torch import nn

from mog_flows import fit
from mog_flows.baselines import RAD, RADCoupling

SMALL = dict(num_layers=3, hidden_features=16)
VARIANTS = {  # every kind of sign pattern and both gates
    "K1": dict(num_pieces=1),
    "K3": dict(num_pieces=3),
    "K5": dict(num_pieces=5),
    "K3-increasing": dict(num_pieces=3, signs="increasing"),
    "K4-up-up-down-up": dict(num_pieces=4, signs=(1, 1, -1, 1)),
    "K3-masked": dict(num_pieces=3, gating="masked"),
}
FOLDING = ["K3", "K5", "K4-up-up-down-up", "K3-masked"]  # the variants with overlapping images
variants = pytest.mark.parametrize("variant", list(VARIANTS))


@torch.no_grad()
def perturb(module: nn.Module, scale: float = 0.05, *, gate_scale: float = 1.5, seed: int = 0) -> None:
    """Add seeded N(0, scale²) noise to every parameter, N(0, gate_scale²) to the gating networks' last layers."""
    generator = torch.Generator().manual_seed(seed + 1234)
    for name, parameter in module.named_parameters():
        size = gate_scale if ".gate.final_layer." in f".{name}" else scale
        noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
        parameter.add_(size * noise.to(parameter))


def make_rad(
    features: int = 2, variant: str = "K3", *, dtype=torch.float64, seed: int = 0, gate_scale: float = 1.5, **kwargs
) -> RAD:
    torch.manual_seed(seed)
    model = RAD(features, **{**SMALL, **VARIANTS[variant], **kwargs}).to(dtype)
    perturb(model, seed=seed, gate_scale=gate_scale)
    return model


def make_layer(features: int, variant: str, *, scale: float = 0.3, gate_scale: float = 1.5) -> RADCoupling:
    torch.manual_seed(0)
    options = dict(VARIANTS[variant])
    layer = RADCoupling(features, options.pop("num_pieces"), hidden_features=16, **options).double()
    perturb(layer, scale, gate_scale=gate_scale)
    return layer


def make_inputs(rows: int, features: int, *, scale: float = 2.0, dtype=torch.float64, seed: int = 2) -> torch.Tensor:
    x = torch.randn(rows, features, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (scale * x).to(dtype)


def _inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


def set_pieces(layer: RADCoupling, *, shift: float, slopes, location: float = 0.0, gaps=()) -> None:
    """Make every transformed feature's function the given one, whatever x_a: slope magnitudes (K,), gaps (K - 2,)
    (inverting the layer's softplus + 10⁻³)."""
    bias = [shift, *(_inverse_softplus(a - 1e-3) for a in slopes)]
    if len(slopes) > 1:
        bias += [location, *(_inverse_softplus(g - 1e-3) for g in gaps)]
    with torch.no_grad():
        layer.conditioner.final_layer.weight.zero_()
        layer.conditioner.final_layer.bias.copy_(torch.tensor(bias * layer.transformed_features))


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


# -------------------------------------------------------------------------------------------- the piecewise map
@variants
def test_h_is_continuous_at_every_breakpoint_and_onto_the_line(variant):
    layer = make_layer(2, variant)
    x_a = make_inputs(300, 1, seed=5)
    with torch.no_grad():
        pieces = layer.pieces(x_a)
        K = layer.num_pieces
        for j in range(K - 1):  # piece j's end at b_j against piece j + 1's start there
            b = pieces.breakpoints[..., j]
            left = pieces.out_anchors[..., j] + pieces.slopes[..., j] * (b - pieces.in_anchors[..., j])
            right = pieces.out_anchors[..., j + 1] + pieces.slopes[..., j + 1] * (b - pieces.in_anchors[..., j + 1])
            assert (left - right).abs().max() < 1e-6
            # and through the layer's own forward map, just left of b_j and at it
            for u in (b - 1e-9, b):
                z, _, _ = layer(torch.cat([x_a, u], -1))
                assert (z[:, 1:] - left).abs().max() < 1e-6
        # onto ℝ: the outer pieces run to opposite infinities, and every value lies in some piece's image
        far = torch.full_like(x_a, 1e6)
        low, _, _ = layer(torch.cat([x_a, -far], -1))
        high, _, _ = layer(torch.cat([x_a, far], -1))
        s = layer.signs[0]
        assert (s * low[:, 1] < -1e2).all() and (s * high[:, 1] > 1e2).all()
        finite = pieces.values[..., 1:-1].reshape(300, -1)  # (N, K - 1): the values at the breakpoints
        values = torch.cat([finite, finite - 1e-9, finite + 1e-9, make_inputs(300, 20, scale=5.0), far, -far], -1)
        for column in values.T:
            assert layer.feasible(torch.stack([x_a[:, 0], column], -1)).any(-1).all()


@pytest.mark.parametrize("features", [1, 2, 3])
@variants
def test_each_piece_inverts_exactly(variant, features):
    layer = make_layer(features, variant)
    x = make_inputs(500, features)
    with torch.no_grad():
        z, k, _ = layer(x)
        torch.testing.assert_close(layer.inverse(z, k), x, rtol=0, atol=1e-12)
        # every piece whose image holds z maps back onto z from inside its own domain: each piece is injective,
        # and the images used by the gate are the true images
        feasible = layer.feasible(z)  # (N, D_b, K)
        assert feasible.gather(-1, k.unsqueeze(-1)).all(), "the piece x came from does not contain z"
        if variant in FOLDING:
            assert (feasible.sum(-1) > 1).any(), "no overlapping images: the test would be trivial"
        for piece in range(layer.num_pieces):
            rows = feasible[..., piece].all(-1)
            other = torch.full_like(k[rows], piece)
            x_other = layer.inverse(z[rows], other)
            z_back, k_back, _ = layer(x_other)
            assert torch.equal(k_back, other), f"inverting through piece {piece} left its domain"
            torch.testing.assert_close(z_back, z[rows], rtol=0, atol=1e-12)


def test_latent_and_generate_are_exact_inverses_and_assign_gives_the_pieces():
    model = make_rad(3, "K5")
    x = make_inputs(400, 3)
    with torch.no_grad():
        z, pieces = model.latent(x)
        assert pieces.shape == (400, SMALL["num_layers"], 2) and pieces.dtype == torch.int64
        assert torch.equal(model.assign(x), pieces)
        assert pieces.unique().numel() == 5, "the points visit every piece"
        torch.testing.assert_close(model.generate(z, pieces), x, rtol=0, atol=1e-12)
        assert torch.isfinite(model.log_prob(x)).all()


def test_consecutive_layers_transform_complementary_features():
    # with the feature order reversed between layers, two layers on ℝ² move both coordinates as functions of both:
    # the Jacobian of x -> z is dense (without the reversal both layers would transform x_2 given x_1: triangular)
    model = make_rad(2, "K3", num_layers=2)
    for x in make_inputs(5, 2):
        jacobian = torch.autograd.functional.jacobian(lambda row: model.latent(row.unsqueeze(0))[0].squeeze(0), x)
        assert (jacobian.abs() > 1e-6).all(), jacobian


@variants
def test_log_det_matches_autograd_jacobian(variant):
    layer = make_layer(3, variant)
    x = make_inputs(20, 3)
    _, _, log_det = layer(x)
    for i in range(len(x)):
        jacobian = torch.autograd.functional.jacobian(lambda row: layer(row.unsqueeze(0))[0].squeeze(0), x[i])
        _, log_abs = torch.linalg.slogdet(jacobian)
        torch.testing.assert_close(log_det[i], log_abs, rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------------------------------- the gate
@pytest.mark.parametrize("variant", FOLDING)
def test_gate_puts_mass_only_on_pieces_whose_image_holds_z_and_sums_to_one(variant):
    layer = make_layer(2, variant)
    z_a = make_inputs(300, 1, seed=5)
    with torch.no_grad():
        pieces = layer.pieces(z_a)
        ends = pieces.values[..., 1:-1].reshape(300, -1)  # the images' finite ends, exactly
        far = torch.tensor([-1e4, 1e4], dtype=torch.float64).expand(300, 2)
        for column in torch.cat([ends, ends + 1e-7, make_inputs(300, 10, seed=6), far], -1).T:
            z = torch.stack([z_a[:, 0], column], -1)
            log_gate = layer.gate_log_prob(z)  # (N, 1, K)
            feasible = layer.feasible(z)
            assert torch.all(log_gate[~feasible] == -math.inf), "mass on a piece whose image does not hold z"
            torch.testing.assert_close(log_gate.exp().sum(-1), torch.ones(300, 1, dtype=torch.float64))
            drawn = layer.sample_pieces(z)
            assert feasible.gather(-1, drawn.unsqueeze(-1)).all()


@pytest.mark.parametrize("variant", ["K3", "K5", "K4-up-up-down-up"])
def test_continuous_gate_fades_to_zero_at_the_ends_of_an_image(variant):
    # on either side of every finite end v of a branch's image, each branch's probability is the same to O(δ),
    # and the branch that ends at v has probability O(δ) on its inner side. Logits that differ by up to ~7 here: the
    # fade's slope grows as exp(ℓ_γ - ℓ_β) / the image's width, and with the larger ones of `make_layer` it is as
    # continuous, but steeper than δ = 1e-9 resolves.
    layer = make_layer(2, variant, scale=0.05, gate_scale=0.1)
    z_a = make_inputs(200, 1, seed=5)
    members = torch.nn.functional.one_hot(torch.tensor(layer._branch_of_piece), layer.num_branches).double()
    with torch.no_grad():
        pieces = layer.pieces(z_a)
        ends = torch.cat([pieces.branch_lower, pieces.branch_upper], -1).squeeze(1)  # (N, 2B)
        for column in range(ends.shape[-1]):
            v = ends[:, column]
            if not torch.isfinite(v).all():
                continue
            below, above = (layer.gate_log_prob(torch.stack([z_a[:, 0], v + d], -1)).exp() for d in (-1e-9, 1e-9))
            below, above = below @ members, above @ members  # (N, 1, B): probability per branch
            assert (below - above).abs().max() < 1e-6
            branch = column % layer.num_branches
            assert below[..., branch].max() < 1e-6 and above[..., branch].max() < 1e-6


def test_masked_gate_jumps_where_an_image_ends():
    # the labelled variant: at a new layer's overlap the softmax over three feasible pieces gives 1/3, outside 1
    layer = RADCoupling(1, 3, hidden_features=8, gating="masked").double()
    z = torch.tensor([[0.25 - 1e-9], [0.25 + 1e-9]], dtype=torch.float64)  # just inside and outside [-¼, ¼]
    with torch.no_grad():
        p = layer.gate_log_prob(z).exp()
    torch.testing.assert_close(p[0, 0], torch.full((3,), 1 / 3, dtype=torch.float64))
    torch.testing.assert_close(p[1, 0], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------- the density
# Why [-8, 8]², h = 0.02 and 2e-3: with the default gate the density is continuous but has kinks along the folds and
# the images' ends, and the variants that jump ("increasing", a monotone junction, "masked") make the midpoint rule
# err by O(h) there; the sums are within 7e-4 of 1, and the mass outside the box is < 1e-4. Dropping the gate's
# log p(k | z) moves the sum by 1.5 to 3.5 on the folding variants. Both gates normalise, so a gate without its
# window passes here: the closed form and the continuity tests catch that, and a sampler without it fails the
# chi-square tests (p < 1e-100).
@variants
def test_density_integrates_to_one_on_a_grid(variant):
    model = make_rad(2, variant)
    h = 0.02
    total = torch.logsumexp(grid_log_prob(model, grid_2d(8.0, h)), 0).exp().item() * h**2
    assert total == pytest.approx(1.0, abs=2e-3)


@variants
def test_one_dimensional_density_integrates_to_one(variant):
    # in 1-D the breakpoints are points: with h = 1e-4 the midpoint rule errs by ~1e-5 even where the density jumps
    model = make_rad(1, variant)
    h = 1e-4
    grid = torch.arange(-15 + h / 2, 15, h, dtype=torch.float64).unsqueeze(-1)
    total = torch.logsumexp(grid_log_prob(model, grid), 0).exp().item() * h
    assert total == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("variant", ["K3", "K5"])
def test_density_is_continuous_along_random_lines(variant):
    # along lines across [-4, 4]², at spacing 1e-4, no jump between neighbours exceeds 1 % of the largest density on
    # the line: no factor-2 steps at breakpoints or where an image ends (the masked gate fails this, below). The
    # gates' logits differ by up to ~7 here: p is continuous whatever they are, but near the end of an image it
    # rises from 0 over a distance that shrinks as exp(-|ℓ_β - ℓ_γ|), which logits 20 apart (the default
    # perturbation) take below the spacing on K = 5.
    model = make_rad(2, variant, gate_scale=0.1)
    generator = torch.Generator().manual_seed(9)
    t = torch.arange(-4.0, 4.0, 1e-4, dtype=torch.float64).unsqueeze(-1)
    for _ in range(4):
        centre = torch.rand(2, generator=generator, dtype=torch.float64) * 2 - 1
        direction = torch.nn.functional.normalize(torch.randn(2, generator=generator, dtype=torch.float64), dim=0)
        p = grid_log_prob(model, centre + t * direction).exp()
        assert p.diff().abs().max() < 0.01 * p.max()


def test_masked_gate_makes_the_density_jump():
    model = make_rad(2, "K3-masked", gate_scale=0.1)
    t = torch.arange(-4.0, 4.0, 1e-4, dtype=torch.float64).unsqueeze(-1)
    p = grid_log_prob(model, t * torch.tensor([0.6, 0.8], dtype=torch.float64)).exp()
    assert p.diff().abs().max() > 0.05 * p.max()


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


@pytest.mark.parametrize("gating", ["continuous", "masked"])
def test_new_layer_matches_its_closed_form_density(gating):
    # A new one-layer RAD on ℝ with K = 3: breakpoints ±¼, slopes +1, -1, +1, so z = x + ½ for x < -¼, -x on
    # [-¼, ¼) and x - ½ for x ≥ ¼; the three images overlap on [-¼, ¼], where the new gate's logits are 0, so
    # p(k | z) is proportional to the windows w_0 = ¼ - z, w_1 = (z + ¼)(¼ - z) / ½, w_2 = z + ¼ ("continuous") or
    # uniform ("masked"); elsewhere one piece has probability 1: p(x) = N(z) p(k(x) | z).
    # The points avoid the breakpoints; the tolerance covers the float32 rounding of the initial biases.
    model = RAD(1, num_pieces=3, num_layers=1, hidden_features=8, gating=gating).double()
    x = np.arange(-2.9995, 3, 0.001)
    piece = np.digitize(x, [-0.25, 0.25])
    z = np.choose(piece, [x + 0.5, -x, x - 0.5])
    inside = np.abs(z) <= 0.25
    windows = np.stack([0.25 - z, (z + 0.25) * (0.25 - z) / 0.5, z + 0.25]) if gating == "continuous" else None
    if windows is None:
        gate = np.where(inside, 1 / 3, 1.0)
    else:
        gate = np.where(inside, np.choose(piece, windows) / np.where(inside, windows.sum(0), 1.0), 1.0)
    with torch.no_grad():
        log_p = model.log_prob(torch.as_tensor(x).unsqueeze(-1))
    torch.testing.assert_close(log_p, torch.as_tensor(norm.logpdf(z) + np.log(gate)), rtol=0, atol=1e-5)


def test_an_up_down_up_fold_of_one_gaussian_has_three_separated_modes():
    # h = x + 2 on (-∞, -1), -x on [-1, 1), x - 2 on [1, ∞) folds N(0, 1) into three modes, one per piece, with
    # p = 0 at the folds x = ±1; the same slopes without the fold ("increasing") are the identity: one mode
    model = RAD(1, num_pieces=3, num_layers=1, hidden_features=8).double()
    layer = model.layers[0]
    set_pieces(layer, shift=0.0, slopes=[1.0, 1.0, 1.0], gaps=[2.0])
    x = torch.arange(-6, 6 + 1e-9, 1e-3, dtype=torch.float64).unsqueeze(-1)
    with torch.no_grad():
        p = model.log_prob(x).exp()
        folds = layer.pieces(x[:1, :0]).breakpoints.reshape(2, 1)  # (2, 1): exactly ±1 up to float32 rounding
        p_folds = model.log_prob(folds).exp()
    torch.testing.assert_close(folds.squeeze(-1), torch.tensor([-1.0, 1.0], dtype=torch.float64), atol=1e-6, rtol=0)
    modes = x[1:-1][(p[1:-1] > p[:-2]) & (p[1:-1] > p[2:])].squeeze(-1)
    assert len(modes) == 3 and modes[0] < -1 < modes[1] < 1 < modes[2], modes
    assert p_folds.max() < 1e-12 * p.max()
    torch.testing.assert_close(p, p.flip(0), rtol=0, atol=1e-12)  # symmetric, as the fold and N(0, 1) are

    straight = RAD(1, num_pieces=3, num_layers=1, hidden_features=8, signs="increasing").double()
    set_pieces(straight.layers[0], shift=0.0, slopes=[1.0, 1.0, 1.0], gaps=[2.0])
    with torch.no_grad():
        q = straight.log_prob(x).exp()
    assert int(((q[1:-1] > q[:-2]) & (q[1:-1] > q[2:])).sum()) == 1


def test_log_prob_and_gradients_are_finite_exactly_at_the_folds():
    # x exactly at a breakpoint lands on the end of two images, where the windows are 0: the distance floor keeps
    # log p finite (and very negative), and the gradient finite
    # (one point per call: the conditioner's rounding depends on the batch size, and the breakpoints with it)
    model = make_rad(1, "K5", num_layers=1)
    with torch.no_grad():
        folds = model.layers[0].pieces(torch.zeros(1, 0, dtype=torch.float64)).breakpoints.reshape(-1, 1, 1)
    log_p = torch.cat([model.log_prob(fold) for fold in folds])
    assert torch.isfinite(log_p).all() and (log_p < -100).all()
    log_p.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_one_piece_is_an_affine_coupling_flow():
    # RAD with K = 1 and nflows' affine coupling (softplus scale, shifts first) with the same conditioner outputs,
    # masks and reversals give the same log-density
    model = make_rad(3, "K1", num_layers=3)

    class SoftplusAffineCoupling(AffineCouplingTransform):
        def _scale_and_shift(self, transform_params):
            shift, raw = transform_params.split(self.num_transform_features, dim=1)
            return nn.functional.softplus(raw) + 1e-3, shift

    class Reordered(nn.Module):  # RAD's (D_b, [t, raw slope]) layout -> nflows' [shifts, raw scales]
        def __init__(self, conditioner):
            super().__init__()
            self.conditioner = conditioner

        def forward(self, x, context=None):
            return self.conditioner(x).unflatten(-1, (-1, 2)).transpose(-1, -2).flatten(-2)

    mask = torch.tensor([0, 1, 1])  # the first ⌊D/2⌋ features pass unchanged
    transforms = []
    for index, layer in enumerate(model.layers):
        if index > 0:
            transforms.append(ReversePermutation(3))
        transforms.append(SoftplusAffineCoupling(mask, lambda i, o, layer=layer: Reordered(layer.conditioner)))
    flow = Flow(CompositeTransform(transforms), StandardNormal([3]))
    x = make_inputs(200, 3)
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(x), flow.log_prob(x), rtol=0, atol=1e-10)
        torch.testing.assert_close(model.latent(x)[0], flow.transform_to_noise(x), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------- samples vs density
def grid_reference(model: RAD, half_width: float = 8.0, h: float = 0.02):
    """(grid (M, 2), cell probabilities (M,)) of the model's density on a grid."""
    grid = grid_2d(half_width, h)
    return grid, grid_log_prob(model, grid).exp() * h**2


def test_sample_moments_match_the_density():
    # mean and covariance of n = 20000 samples against the grid density's, within 5 standard errors
    # (standard errors from the grid density's own fourth moments)
    model = make_rad(2, "K3")
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


@pytest.mark.parametrize("variant", ["K3", "K5", "K4-up-up-down-up", "K3-masked"])
def test_samples_match_the_density_in_a_binned_chi_square(variant):
    # Pearson's chi-square of n = 20000 samples over 0.5 × 0.5 bins of [-6, 6]² (bins expecting < 5 samples are
    # pooled with the outside), expected counts from the model's density on a 0.02 grid. Seeded, so the test is
    # deterministic; it fails at a p-value below 1e-4.
    model = make_rad(2, variant)
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


def test_one_dimensional_samples_match_the_fold_density():
    # the three-mode fold of one Gaussian: a histogram of samples against the density's bin masses
    model = RAD(1, num_pieces=3, num_layers=1, hidden_features=8).double()
    set_pieces(model.layers[0], shift=0.0, slopes=[1.0, 1.0, 1.0], gaps=[2.0])
    edges = torch.linspace(-5, 5, 41, dtype=torch.float64)
    h = 1e-4
    grid = torch.arange(-5 + h / 2, 5, h, dtype=torch.float64).unsqueeze(-1)
    with torch.no_grad():
        mass = grid_log_prob(model, grid).exp() * h
        n = 50_000
        torch.manual_seed(3)
        samples = model.sample(n).squeeze(-1)
    expected = torch.zeros(40, dtype=torch.float64).index_add_(0, torch.bucketize(grid[:, 0], edges) - 1, mass) * n
    observed = torch.histc(samples, 40, -5, 5).double()
    keep = expected > 5
    statistic = ((observed[keep] - expected[keep]).square() / expected[keep]).sum().item()
    assert chi2.sf(statistic, int(keep.sum()) - 1) > 1e-4


# ------------------------------------------------------------------------------------------------------ gradients
@variants
def test_every_parameter_gets_a_finite_nonzero_gradient(variant):
    model = make_rad(3, variant)
    loss = -model.log_prob(make_inputs(256, 3)).mean()
    loss.backward()
    parameters = dict(model.named_parameters())
    assert any(".gate." in name for name in parameters) == (model.layers[0].num_branches > 1)
    for name, parameter in parameters.items():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"
        assert parameter.grad.abs().max() > 0, f"{name} has an all-zero gradient"


def test_samples_are_differentiable_given_their_pieces():
    model = make_rad(2, "K3")
    torch.manual_seed(0)
    samples = model.sample(64)
    samples.square().sum().backward()
    grads = [p.grad for name, p in model.named_parameters() if ".conditioner." in name]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().max() > 0 for g in grads)


# --------------------------------------------------------------------------------------------- dtypes, save/load
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_works_end_to_end_in_the_module_dtype(dtype):
    model = make_rad(2, "K3", dtype=dtype)
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
    model64 = make_rad(2, "K3")
    model32 = make_rad(2, "K3", dtype=torch.float32)
    x = make_inputs(200, 2)
    with torch.no_grad():
        log_p64 = model64.log_prob(x)
        log_p32 = model32.log_prob(x.float())
    # near a fold log p ~ log of the distance to it, which float32 knows to ~1e-7 |z| / distance: 1e-3 covers the
    # rows here (rows within rounding of a fold would differ a lot)
    torch.testing.assert_close(log_p32.double(), log_p64, rtol=0, atol=1e-3)


def test_state_dict_round_trip_gives_identical_log_prob(tmp_path):
    model = make_rad(2, "K5")
    torch.save(model.state_dict(), tmp_path / "rad.pt")
    other = RAD(2, num_pieces=5, **SMALL).double()  # another initialisation
    x = make_inputs(100, 2)
    with torch.no_grad():
        assert not torch.equal(other.log_prob(x), model.log_prob(x))
        other.load_state_dict(torch.load(tmp_path / "rad.pt", weights_only=True))
        assert torch.equal(other.log_prob(x), model.log_prob(x))


def test_sampling_follows_the_global_seed():
    model = make_rad(2, "K3")
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
    model = make_rad(2, "K3")
    with pytest.raises(ValueError, match=match):
        model.log_prob(inputs)
    with pytest.raises(ValueError, match=match):
        model.latent(inputs)


def test_a_context_raises():
    model = make_rad(2, "K3")
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
        (dict(features=2, num_pieces=2), "needs an odd num_pieces"),
        (dict(features=2, num_pieces=4), "needs an odd num_pieces"),
        (dict(features=2, num_pieces=4, signs=(1, -1, 1, -1)), "cannot cover ℝ"),
        (dict(features=2, num_pieces=2, signs=(-1, 1)), "cannot cover ℝ"),
        (dict(features=2, num_pieces=3, signs=(1, 0, 1)), r"each \+1 or -1"),
        (dict(features=2, num_pieces=3, signs=(1, -1)), "num_pieces = 3 values"),
        (dict(features=2, num_pieces=3, signs=(True, False, True)), r"each \+1 or -1"),
        (dict(features=2, signs="zigzag"), "signs must be one of"),
        (dict(features=2, signs=3), "signs must be 'alternating', 'increasing' or a sequence"),
        (dict(features=2, gating="soft"), "gating must be one of"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    features = kwargs.pop("features")
    with pytest.raises(ValueError, match=match):
        RAD(features, **kwargs)


def test_other_sign_patterns_that_cover_the_line_are_accepted():
    for num_pieces, signs in [(2, "increasing"), (1, (-1,)), (3, (-1, 1, -1)), (5, (1, -1, -1, 1, 1))]:
        model = RAD(2, num_pieces=num_pieces, signs=signs, num_layers=1, hidden_features=4)
        assert model.layers[0].num_branches == 1 + sum(a != b for a, b in zip(model.signs, model.signs[1:]))


def test_generate_refuses_bad_pieces():
    model = make_rad(2, "K3")
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

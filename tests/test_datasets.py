"""Tests for mog_flows.datasets: exact toy densities against grids and samples, the 10-D mixture against scipy,
the digits splits, seeding, and the errors at the public boundary."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from mog_flows.datasets import (
    DATASETS,
    DIGITS_SPLITS,
    DUAL_MOON_NORMALISER,
    ArcMixture,
    Checkerboard,
    CircularGaussianMixture,
    Digits,
    GaussianMixture,
    MirrorModes,
    Moons,
    Pinwheel,
    RingMixture,
    Rings,
    Spirals,
    Target,
    get_dataset,
    load_digits,
    make_splits,
)

TOYS = (
    "eight_gaussians",
    "grid",
    "rings",
    "checkerboard",
    "moons",
    "pinwheel",
    "spirals",
    "banana_modes",
    "mixed_shapes",
    "ring_of_rings",
    "stimper_two_moons",
    "stimper_circular_gmm",
    "stimper_rings",
    "mirror_modes",
)
STIMPER = ("stimper_two_moons", "stimper_circular_gmm", "stimper_rings")

# Midpoint grid over [-HALF_WIDTH, HALF_WIDTH]² with step h, whose cell edges fall on the checkerboard's square
# edges (multiples of 2), so the piecewise-constant checkerboard is integrated exactly. The other toys keep > 9
# noise scales inside the grid and their narrowest feature (ring noise σ = 0.08) spans two cells at h = 0.04;
# where smooth, the midpoint rule then converges spectrally: measured |∫ p - 1| ≤ 1e-11. The spirals' density
# has a direction-dependent limit at the origin (every arm starts there), which makes the rule O(h²): measured
# 1.3e-4, 3.5e-5, 9e-6 at h = 0.04, 0.02, 0.01, so they get h = 0.01 and a 1e-4 tolerance.
HALF_WIDTH = 6.0
GRID_STEP = {"spirals": 0.01}
DEFAULT_GRID_STEP = 0.04
TOLERANCE = {"spirals": 1e-4}
DEFAULT_TOLERANCE = 1e-8
BIN_WIDTH = 0.4  # chi-square bins: a whole number of grid cells
NUM_SAMPLES = 100_000


@functools.cache
def grid_density(name: str) -> tuple[torch.Tensor, float]:
    """p on the midpoint grid, shape (G, G) indexed [x₁ cell, x₂ cell], and the grid step h."""
    h = GRID_STEP.get(name, DEFAULT_GRID_STEP)
    cells = round(2 * HALF_WIDTH / h)
    centres = -HALF_WIDTH + (torch.arange(cells, dtype=torch.float64) + 0.5) * h
    density = get_dataset(name).log_prob(torch.cartesian_prod(centres, centres)).exp()
    return density.view(cells, cells), h


@functools.cache
def toy_samples(name: str) -> torch.Tensor:
    """NUM_SAMPLES float64 draws with seed 1, shared by the tests that compare samples with the density."""
    return get_dataset(name).sample(NUM_SAMPLES, seed=1, dtype=torch.float64)


@functools.cache
def bin_probabilities(name: str) -> torch.Tensor:
    """Mass of each BIN_WIDTH × BIN_WIDTH square bin over the grid, from the grid: (B, B)."""
    density, h = grid_density(name)
    per_bin = round(BIN_WIDTH / h)
    bins = density.shape[0] // per_bin
    return density.view(bins, per_bin, bins, per_bin).sum((1, 3)) * h**2


def chi_square_p_value(probabilities: torch.Tensor, samples: torch.Tensor) -> float:
    """Pearson chi-square p-value of the samples' bin counts against the bin probabilities. Bins expecting
    fewer than 5 samples are pooled with everything outside the grid into one bin."""
    n = samples.shape[0]
    bins = probabilities.shape[0]
    index = torch.floor((samples.double() + HALF_WIDTH) / BIN_WIDTH).long()  # (N, 2)
    inside = ((index >= 0) & (index < bins)).all(-1)
    counts = torch.zeros(bins * bins, dtype=torch.float64)
    counts.index_add_(0, index[inside, 0] * bins + index[inside, 1], torch.ones(int(inside.sum()), dtype=torch.float64))
    expected = n * probabilities.flatten()
    large = expected >= 5
    observed = torch.cat([counts[large], (n - counts[large].sum()).view(1)])
    expected = torch.cat([expected[large], (n - expected[large].sum()).clamp(min=1e-300).view(1)])
    statistic = ((observed - expected).square() / expected).sum().item()
    return stats.chi2.sf(statistic, df=observed.numel() - 1)


# ------------------------------------------------------------------------------------------------ registry
def test_registry_lists_every_dataset():
    assert DATASETS == (*TOYS, "gaussian_mixture", "digits")
    for name in DATASETS:
        target = get_dataset(name)
        assert isinstance(target, Target) and target.name == name
        assert target.has_exact_density == (name != "digits")
        assert target.is_multimodal
        if target.modes is not None:
            assert target.modes.dim() == 2 and target.modes.shape[1] == target.features


def test_get_dataset_passes_keyword_arguments():
    assert get_dataset("gaussian_mixture", features=12, num_components=3).means.shape == (3, 12)
    assert get_dataset("rings", radii=(1.0, 2.0)).radii.tolist() == [1.0, 2.0]


# ------------------------------------------------------------------------------------------------ toys: density
@pytest.mark.parametrize("name", TOYS)
def test_toy_density_integrates_to_one(name):
    density, h = grid_density(name)
    assert torch.isfinite(density).all()
    assert density.sum().item() * h**2 == pytest.approx(1, abs=TOLERANCE.get(name, DEFAULT_TOLERANCE))


@pytest.mark.parametrize("name", TOYS)
def test_toy_samples_follow_the_density(name):
    assert chi_square_p_value(bin_probabilities(name), toy_samples(name)) > 1e-4


@pytest.mark.parametrize(
    ("density", "sampler"),
    [
        (Rings(), Rings(noise=0.084)),
        (Moons(), Moons(scale=2.55)),
        (Pinwheel(), Pinwheel(rate=0.27)),
        (Spirals(), Spirals(concentration=12.0)),
        (RingMixture(), RingMixture(noise=0.13)),
        (CircularGaussianMixture(), CircularGaussianMixture(std=0.26)),
    ],
    ids=["rings", "moons", "pinwheel", "spirals", "stimper_rings", "stimper_circular_gmm"],
)
def test_chi_square_detects_a_slightly_different_sampler(density, sampler):
    # the test above can fail: 5-10 % changes of one parameter are rejected at these sample sizes
    assert chi_square_p_value(bin_probabilities(density.name), sampler.sample(NUM_SAMPLES, seed=1)) < 1e-6


@pytest.mark.parametrize("name", TOYS)
def test_toy_mean_log_density_of_samples_is_minus_the_grid_entropy(name):
    # KL evaluation averages log p over samples: that mean must estimate ∫ p log p
    density, h = grid_density(name)
    minus_entropy = torch.where(density > 0, density * density.log(), 0).sum().item() * h**2
    log_p = get_dataset(name).log_prob(toy_samples(name))
    standard_error = log_p.std().item() / math.sqrt(NUM_SAMPLES)
    assert log_p.mean().item() == pytest.approx(minus_entropy, abs=5 * standard_error + 1e-9)


@pytest.mark.parametrize("name", TOYS)
def test_toy_log_prob_follows_the_input_dtype_and_has_gradients(name):
    target = get_dataset(name)
    x = target.sample(64, seed=3, dtype=torch.float64).requires_grad_()
    log_p = target.log_prob(x)
    assert log_p.shape == (64,) and log_p.dtype == torch.float64 and torch.isfinite(log_p).all()
    log_p.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert target.log_prob(x.detach().float()).dtype == torch.float32
    torch.testing.assert_close(target.log_prob(x.detach().float()), log_p.detach().float())


def test_toy_gaussians_match_torch_distributions():
    # r = 0 arcs are plain Gaussians: compare eight_gaussians with an independent mixture
    target = get_dataset("eight_gaussians")
    x = 3 * torch.randn(100, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.full((8,), 1 / 8, dtype=torch.float64)),
        torch.distributions.Independent(torch.distributions.Normal(target.centres, target.noise[:, None]), 1),
    )
    torch.testing.assert_close(target.log_prob(x), mixture.log_prob(x))


def test_ring_density_matches_numerical_integral_over_the_angle():
    # p(x) = (1/2π) ∫ N(x; r u(θ), σ² I) dθ for one ring, by the trapezoid rule over θ (periodic: spectral)
    ring = ArcMixture(torch.ones(1), torch.zeros(1, 2), radii=1.5, noise=0.3)
    x = torch.tensor([[0.0, 0.0], [1.5, 0.1], [-0.3, 2.0], [3.0, -1.0]], dtype=torch.float64)
    theta = torch.linspace(0, 2 * math.pi, 2001, dtype=torch.float64)[:-1]
    on_circle = 1.5 * torch.stack([theta.cos(), theta.sin()], -1)  # (T, 2)
    gauss = torch.exp(-(x[:, None] - on_circle).square().sum(-1) / (2 * 0.09)) / (2 * math.pi * 0.09)
    torch.testing.assert_close(ring.log_prob(x), gauss.mean(-1).log())


@pytest.mark.parametrize("concentration", [1e-3, 0.5, 4.0, 100.0])
def test_von_mises_arc_angles_have_the_right_mean_resultant_length(concentration):
    # E[cos(θ - μ)] = I₁(κ) / I₀(κ) for θ ~ vM(μ, κ); tiny noise, so atan2 recovers θ
    arc = ArcMixture(
        torch.ones(1), torch.zeros(1, 2), radii=1.0, directions=0.7, concentrations=concentration, noise=1e-9
    )
    samples = arc.sample(50_000, seed=4, dtype=torch.float64)
    cosines = torch.cos(torch.atan2(samples[:, 1], samples[:, 0]) - 0.7)
    expected = special.i1e(concentration) / special.i0e(concentration)
    assert cosines.mean().item() == pytest.approx(expected, abs=5 * cosines.std().item() / math.sqrt(50_000))


def test_checkerboard_is_uniform_on_the_closed_black_squares():
    board = Checkerboard()
    black, white = -math.log(32), -math.inf
    points_and_values = [
        ((-3.0, -3.0), black),
        ((-1.0, -3.0), white),
        ((1.0, 1.0), black),
        ((3.0, 1.0), white),
        ((4.5, 0.0), white),
        # edges and corners of black squares count as black, the outer edges of white squares do not
        ((2.0, 0.5), black),
        ((4.0, -1.0), black),
        ((4.0, 1.0), white),
        ((-4.0, 4.0), white),
        ((0.0, 0.0), black),
    ]
    x = torch.tensor([point for point, _ in points_and_values], dtype=torch.float64)
    assert board.log_prob(x).tolist() == [value for _, value in points_and_values]
    assert board.modes.shape == (8, 2)
    # float32 samples rounded onto an edge keep their density
    assert torch.isfinite(board.log_prob(torch.tensor([[2 - 1e-9, 0.5], [4 - 1e-9, -1.0]]).float())).all()


# ------------------------------------------------------------------------------------------------ Stimper et al.
def test_dual_moon_normaliser_matches_quadrature():
    # polar coordinates: Gauss-Legendre in r on [0, 10], trapezoid rule in θ (periodic: spectral), float64
    nodes, weights = np.polynomial.legendre.leggauss(400)
    r, w = 5 * (nodes + 1), 5 * weights
    theta = np.arange(800) * (2 * np.pi / 800)
    x1 = r[:, None] * np.cos(theta)
    bumps = np.exp(-((x1 - 2) ** 2) / 0.18) + np.exp(-((x1 + 2) ** 2) / 0.18)
    integral = (w * r * np.exp(-((r - 2) ** 2) / 0.08) * bumps.mean(-1) * 2 * np.pi).sum()
    assert DUAL_MOON_NORMALISER == pytest.approx(integral, rel=1e-12)


def test_ring_mixture_normaliser_matches_quadrature():
    from scipy import integrate

    target = RingMixture()
    masses = [
        integrate.quad(lambda r, a=a: 2 * math.pi * r * math.exp(-((r - a) ** 2) / (2 * 0.125**2)), 0, 10, points=[a])[
            0
        ]
        for a in (1.0, 2.0)
    ]
    assert target.log_normaliser == pytest.approx(math.log(sum(masses)), abs=1e-12)
    torch.testing.assert_close(target.weights, torch.tensor(masses, dtype=torch.float64) / sum(masses))


@pytest.mark.parametrize("name", STIMPER)
def test_stimper_targets_agree_with_normflows(name):
    normflows = pytest.importorskip("normflows", reason="normflows is not installed: the reference is skipped")
    reference = {
        "stimper_two_moons": normflows.distributions.TwoMoons,
        "stimper_circular_gmm": normflows.distributions.CircularGaussianMixture,
        "stimper_rings": normflows.distributions.RingMixture,
    }[name]().double()
    if name == "stimper_circular_gmm":  # normflows stores the std as float32: give it the exact value
        reference.scale = torch.tensor(2 / 3 * math.sin(math.pi / 8), dtype=torch.float64)
    target = get_dataset(name)
    x = torch.cat(
        [
            3 * torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
            target.sample(500, seed=1, dtype=torch.float64),
        ]
    )
    difference = target.log_prob(x) - reference.log_prob(x)
    if name == "stimper_circular_gmm":  # normalised in normflows too
        torch.testing.assert_close(difference, torch.zeros_like(difference), rtol=0, atol=1e-10)
    else:  # normflows' density is unnormalised: the difference is -log Z at every point
        log_z = math.log(DUAL_MOON_NORMALISER) if name == "stimper_two_moons" else target.log_normaliser
        torch.testing.assert_close(difference, torch.full_like(difference, -log_z), rtol=0, atol=1e-10)


def test_stimper_targets_have_the_published_geometry():
    circle = CircularGaussianMixture()
    assert circle.modes.shape == (8, 2)
    torch.testing.assert_close(circle.modes.norm(dim=-1), torch.full((8,), 2.0, dtype=torch.float64))
    assert circle.noise[0].item() == pytest.approx(2 / 3 * math.sin(math.pi / 8))
    assert get_dataset("stimper_two_moons").modes.tolist() == [[2.0, 0.0], [-2.0, 0.0]]
    rings = get_dataset("stimper_rings")
    assert rings.modes is None and rings.radii.tolist() == [1.0, 2.0] and rings.noise == 0.125
    # the radius of samples: E[r] per ring is ∫ r² f / ∫ r f for f the radial profile (quadrature), mixed by mass
    r = torch.linspace(0, 4, 40001, dtype=torch.float64)
    profile = torch.exp(-((r[:, None] - rings.radii) ** 2) / (2 * 0.125**2))  # (R, K)
    mean_radius = (rings.weights * (r[:, None] ** 2 * profile).sum(0) / (r[:, None] * profile).sum(0)).sum()
    radius = rings.sample(NUM_SAMPLES, seed=2, dtype=torch.float64).norm(dim=-1)
    assert radius.mean().item() == pytest.approx(
        mean_radius.item(), abs=5 * radius.std().item() / math.sqrt(NUM_SAMPLES)
    )


def test_ring_mixture_rejects_bad_arguments():
    with pytest.raises(ValueError, match="radii must be positive"):
        RingMixture(radii=(1.0, -2.0))
    with pytest.raises(ValueError, match="noise > 0"):
        RingMixture(noise=0.0)


# ------------------------------------------------------------------------------------------------ seeding
def test_mirror_modes_is_symmetric_under_reflecting_the_first_coordinate():
    target = MirrorModes()
    x = torch.cat([target.sample(5000, seed=2, dtype=torch.float64), 5 * torch.randn(1000, 2, dtype=torch.float64)])
    mirrored = x * torch.tensor([-1.0, 1.0], dtype=torch.float64)
    # the same terms summed in the other order of each pair: equal up to the rounding of logsumexp
    torch.testing.assert_close(target.log_prob(mirrored), target.log_prob(x), rtol=0, atol=1e-12)
    density, _ = grid_density("mirror_modes")  # [x₁ cell, x₂ cell]; the cell centres are symmetric up to rounding
    torch.testing.assert_close(density.flip(0), density, rtol=1e-10, atol=1e-300)
    modes = target.modes
    assert modes.shape == (6, 2)
    torch.testing.assert_close(modes[1::2], modes[0::2] * torch.tensor([-1.0, 1.0], dtype=torch.float64))
    separation = torch.cdist(modes, modes) + torch.eye(6, dtype=torch.float64) * 100
    assert separation.min() > 1.9  # separated modes, more than 12 widths apart
    samples = toy_samples("mirror_modes")
    assert (samples[:, 0] > 0).double().mean().item() == pytest.approx(0.5, abs=0.01)
    assert samples[:, 0].mean().item() == pytest.approx(0, abs=0.02)


@pytest.mark.parametrize("name", DATASETS)
def test_sampling_is_reproducible_with_a_seed_and_differs_across_seeds(name):
    target = get_dataset(name)
    first = target.sample(200, seed=5)
    assert first.shape == (200, target.features) and first.dtype == torch.float32
    assert torch.equal(first, target.sample(200, seed=5))
    assert not torch.equal(first, target.sample(200, seed=6))
    torch.testing.assert_close(target.sample(200, seed=5, dtype=torch.float64).float(), first, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["moons", "gaussian_mixture"])
def test_seeded_sampling_leaves_the_global_generator_alone_and_seed_none_uses_it(name):
    target = get_dataset(name)
    state = torch.get_rng_state()
    target.sample(10, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(8)
    first = target.sample(10)
    torch.manual_seed(8)
    assert torch.equal(first, target.sample(10))


def test_make_splits_shapes_dtypes_and_independence():
    train, val, test = make_splits("pinwheel", 100, 20, 30, seed=0)
    assert (train.shape, val.shape, test.shape) == ((100, 2), (20, 2), (30, 2))
    assert train.dtype == val.dtype == test.dtype == torch.float32
    assert not torch.equal(train[:20], val) and not torch.equal(val, test[:20])
    # the test set does not move when the training set grows; another seed moves it
    assert torch.equal(make_splits(Pinwheel(), 500, 20, 30, seed=0)[2], test)
    assert not torch.equal(make_splits("pinwheel", 100, 20, 30, seed=1)[2], test)
    assert make_splits("pinwheel", 10, 10, 10, dtype=torch.float64)[0].dtype == torch.float64


# ------------------------------------------------------------------------------------------------ 10-D mixture
def test_mixture_dataset_matches_scipy():
    target = GaussianMixture()
    assert target.features >= 10 and target.weights.shape == (10,)
    x = torch.cat([target.sample(200, seed=9, dtype=torch.float64), 4 * torch.randn(50, 10, dtype=torch.float64)])
    per_component = np.stack(
        [
            stats.multivariate_normal(mean.numpy(), covariance.numpy()).logpdf(x.numpy())
            for mean, covariance in zip(target.means, target.covariances)
        ],
        axis=-1,
    )  # (N, K)
    expected = special.logsumexp(per_component, b=target.weights.numpy(), axis=-1)
    np.testing.assert_allclose(target.log_prob(x).numpy(), expected, rtol=1e-10)


def test_mixture_dataset_samples_have_the_mixture_moments():
    target = GaussianMixture()
    samples = target.sample(100_000, seed=10, dtype=torch.float64)
    w, mu = target.weights, target.means
    mean = w @ mu
    second = torch.einsum("k,kij->ij", w, target.covariances + mu[:, :, None] * mu[:, None, :])
    covariance = second - torch.outer(mean, mean)
    standard_error = covariance.diagonal().sqrt() / math.sqrt(samples.shape[0])
    assert ((samples.mean(0) - mean).abs() < 5 * standard_error).all()
    torch.testing.assert_close(torch.cov(samples.T), covariance, rtol=0, atol=0.1)


def test_mixture_dataset_is_fixed_by_its_seed():
    torch.testing.assert_close(GaussianMixture(seed=3).means, GaussianMixture(seed=3).means, rtol=0, atol=0)
    assert not torch.equal(GaussianMixture(seed=3).means, GaussianMixture(seed=4).means)


# ------------------------------------------------------------------------------------------------ digits
def test_digits_splits_have_fixed_sizes_and_are_disjoint():
    digits = Digits()
    for split, size in DIGITS_SPLITS.items():
        assert load_digits(split).shape == (size, 64)
    indices = torch.cat([digits.indices(split) for split in DIGITS_SPLITS])
    assert torch.equal(indices.sort().values, torch.arange(1797))
    assert torch.equal(load_digits("test"), load_digits("test"))
    assert not torch.equal(Digits(seed=1).indices("test"), digits.indices("test"))


@pytest.mark.parametrize("scaling", ["logit", "standardize"])
def test_digits_dequantisation_recovers_the_pixels(scaling):
    from sklearn.datasets import load_digits as sklearn_load_digits

    digits = Digits(scaling=scaling)
    pixels = torch.as_tensor(sklearn_load_digits().data)
    for split in DIGITS_SPLITS:
        data = digits.split(split, dtype=torch.float64)
        assert torch.equal(torch.floor(17 * digits.unscale(data)), pixels[digits.indices(split)])
    train = digits.split("train", dtype=torch.float64)
    if scaling == "logit":
        assert train.abs().max() < 3
    else:
        assert train.mean().item() == pytest.approx(0, abs=1e-12) and train.std().item() == pytest.approx(1)


def test_digits_sample_draws_dequantised_training_images():
    from sklearn.datasets import load_digits as sklearn_load_digits

    digits = Digits()
    images = torch.floor(17 * digits.unscale(digits.sample(300, seed=0, dtype=torch.float64)))
    training = torch.as_tensor(sklearn_load_digits().data)[digits.indices("train")]
    assert (torch.cdist(images, training).min(-1).values == 0).all()


def test_make_splits_of_digits_uses_the_fixed_splits():
    train, val, test = make_splits("digits", None, 100, None)
    assert torch.equal(train, load_digits("train")) and torch.equal(test, load_digits("test"))
    assert val.shape == (100, 64) and torch.equal(make_splits(Digits(), 5, 100, 5)[1], val)
    with pytest.raises(ValueError, match="at most the 180 digits"):
        make_splits("digits", None, 181, None)


# ------------------------------------------------------------------------------------------------ errors
def test_unknown_dataset_name_raises():
    with pytest.raises(ValueError, match="unknown dataset 'swissroll'"):
        get_dataset("swissroll")


@pytest.mark.parametrize("name", [*TOYS, "gaussian_mixture"])
def test_log_prob_rejects_wrong_features_and_nan(name):
    target = get_dataset(name)
    D = target.features
    with pytest.raises(ValueError, match=rf"shape \(N, {D}\)"):
        target.log_prob(torch.zeros(4, D + 1))
    with pytest.raises(ValueError, match=rf"shape \(N, {D}\)"):
        target.log_prob(torch.zeros(D))
    x = torch.zeros(4, D)
    x[2, 0] = math.nan
    with pytest.raises(ValueError, match="must be finite"):
        target.log_prob(x)


def test_digits_has_no_exact_density():
    with pytest.raises(NotImplementedError, match="no exact density"):
        Digits().log_prob(torch.zeros(3, 64))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: Moons().sample(0), "num_samples must be a positive integer"),
        (lambda: Moons().sample(10, seed=-1), "seed must be a non-negative integer"),
        (lambda: load_digits("validation"), "split must be one of"),
        (lambda: Digits(scaling="minmax"), "scaling must be one of"),
        (lambda: make_splits("moons", None, 10, 10), "n_train must be a positive integer"),
        (lambda: Checkerboard(num_squares=3), "num_squares must be even"),
        (lambda: ArcMixture(torch.tensor([0.5, 0.6]), torch.zeros(2, 2), noise=0.1), "summing to 1"),
        (lambda: ArcMixture(torch.ones(2) / 2, torch.zeros(2, 2), noise=torch.ones(3)), r"noise must .* shape \(2,\)"),
    ],
)
def test_bad_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()

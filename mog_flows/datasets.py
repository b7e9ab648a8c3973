"""Targets to fit: 2-D toy densities and a 10-D Gaussian mixture with exact log-densities, and the 8×8 digits.

Shapes: N samples, K components, D features, M modes.

Every target draws samples with torch's RNG only, from a `torch.Generator` made from `seed` (or from the global
generator when `seed=None`), computes in float64 and returns the dtype asked for. `has_exact_density` says
whether `log_prob` is available, so that evaluation can report KL(p‖q) = E_p[log p(x) − log q(x)].

Exact densities: "eight_gaussians", "grid", "rings", "checkerboard", "moons", "pinwheel", "spirals",
"banana_modes", "mixed_shapes", "ring_of_rings", "mirror_modes", "stimper_two_moons", "stimper_circular_gmm",
"stimper_rings" (all 2-D) and "gaussian_mixture" (D = 10 by default). Not exact: "digits" (real data).
"banana_modes", "mixed_shapes" and "ring_of_rings" have modes that are not Gaussian (bent, of different shapes,
rings), so that neither a mixture alone nor a flow over one Gaussian fits them easily (`ShapeMixture`);
"mirror_modes" pairs bent modes across the x₂ axis, p(x₁, x₂) = p(-x₁, x₂), a symmetry a map that folds the line
can represent. The three "stimper_*" targets are the 2-D problems of Stimper et al. 2022 ("Resampling Base
Distributions of Normalizing Flows"), as normflows' `distributions/target.py` defines them, normalised exactly and
sampled exactly (`DualMoon`, `CircularGaussianMixture`, `RingMixture`).

The toys look like the FFJORD / neural-spline-flow sets but are built so that their density has a closed form:

- rings and moons are noisy circular arcs: an angle θ ~ von Mises(μ, κ) (κ = 0: uniform, a full ring), a point
  c + r (cos θ, sin θ) on the circle, plus isotropic Gaussian noise. The angle integrates out in closed form
  (`ArcMixture`). Rings are exactly the FFJORD construction; each moon replaces the uniform half-circle by six
  overlapping von Mises arcs, flat along the moon and fading over ~0.3 rad past its ends.
- the pinwheel rotates each Gaussian arm by an angle that depends on the radius only, a bijection with unit
  Jacobian (FFJORD's angle depends on the first coordinate and is not invertible everywhere).
- the spirals draw the radius almost as FFJORD does (uniform over the disc, with a soft edge) and put von Mises
  noise on the angle around the spiral, so the density is 2 g(‖x‖²) vM(angle; spiral angle at that radius, κ)
  per arm, g the density of the squared radius.
- the checkerboard is uniform on its black squares.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .checks import check_choice, check_features, check_positive_int

__all__ = [
    "Target",
    "ArcMixture",
    "EightGaussians",
    "Grid",
    "Rings",
    "Moons",
    "Checkerboard",
    "Pinwheel",
    "Spirals",
    "ShapeMixture",
    "BananaModes",
    "MixedShapes",
    "RingOfRings",
    "DualMoon",
    "CircularGaussianMixture",
    "RingMixture",
    "DUAL_MOON_NORMALISER",
    "MirrorModes",
    "GaussianMixture",
    "Digits",
    "DATASETS",
    "DIGITS_SPLITS",
    "get_dataset",
    "load_digits",
    "make_splits",
]

_LOG_2PI = math.log(2 * math.pi)


def _check_seed(seed: int | None) -> int | None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer or None; got {seed!r}")
    return seed


def _generator(seed: int | None) -> torch.Generator | None:
    """A CPU generator seeded with `seed`, or None (torch's global generator) when `seed` is None."""
    if _check_seed(seed) is None:
        return None
    return torch.Generator().manual_seed(seed)


def _unit(angle: Tensor) -> Tensor:
    """Angles (...,) -> unit vectors (..., 2)."""
    return torch.stack([angle.cos(), angle.sin()], dim=-1)


def _rotate(x: Tensor, angle: Tensor) -> Tensor:
    """Rotate points x (..., 2) counter-clockwise by angle (...,)."""
    cos, sin = angle.cos(), angle.sin()
    return torch.stack([cos * x[..., 0] - sin * x[..., 1], sin * x[..., 0] + cos * x[..., 1]], dim=-1)


def _softplus(x: float) -> float:
    """log(1 + eˣ) without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _log_i0(x: Tensor) -> Tensor:
    """log I₀(x) for x ≥ 0, stable for large x: I₀(x) = i0e(x) eˣ."""
    return torch.special.i0e(x).log() + x


def _sample_von_mises(loc: Tensor, concentration: Tensor, generator: torch.Generator | None) -> Tensor:
    """Angles θ ~ vM(loc, concentration) (N,) by Best and Fisher's (1979) wrapped-Cauchy rejection sampler;
    a concentration of 0 gives a uniform angle. torch.distributions.VonMises takes no generator, hence this."""
    uniform = concentration == 0
    deviation = 2 * math.pi * torch.rand(int(uniform.sum()), generator=generator, dtype=loc.dtype)
    deviation = torch.zeros_like(loc).index_put((uniform.nonzero().squeeze(-1),), deviation)
    pending = (~uniform).nonzero().squeeze(-1)
    kappa = concentration[pending]
    # ρ = (τ - √(2τ)) / 2κ with τ = 1 + √(1 + 4κ²), rewritten without cancellation for small κ
    root = torch.sqrt(1 + 4 * kappa**2)
    tau = 1 + root
    rho = 2 * kappa * tau / ((root + 1) * (tau + torch.sqrt(2 * tau)))
    s = (1 + rho**2) / (2 * rho)
    while pending.numel() > 0:
        u = torch.rand(3, pending.numel(), generator=generator, dtype=loc.dtype)
        z = torch.cos(math.pi * u[0])
        f = (1 + s * z) / (s + z)
        c = kappa * (s - f)
        accept = (c * (2 - c) > u[1]) | (torch.log(c / u[1]) + 1 >= c)
        # write every candidate; the rejected ones are drawn again and overwritten
        deviation[pending] = torch.copysign(torch.acos(f.clamp(-1, 1)), u[2] - 0.5)
        keep = (~accept).nonzero().squeeze(-1)
        pending, kappa, s = pending[keep], kappa[keep], s[keep]
    return loc + deviation


class Target(ABC):
    """A distribution on ℝᴰ to fit: `sample` always, `log_prob` when `has_exact_density`.

    Attributes:
        name: the registry name (`get_dataset(name)`).
        features: D.
        has_exact_density: whether `log_prob` returns the exact log-density.
        is_multimodal: whether the mass sits in several separated pieces.
        modes: mode (or piece) centres (M, D) for mode-coverage evaluation, float64; None where pieces are not
            points (rings, spirals, digits).
    """

    name: str
    features: int
    has_exact_density: bool = True
    is_multimodal: bool = False
    modes: Tensor | None = None

    def sample(self, num_samples: int, *, seed: int | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """`num_samples` (N) independent draws (N, D) on the CPU; the same `seed` gives the same draws whatever
        the dtype. `seed=None` draws from torch's global generator (so `torch.manual_seed` governs it)."""
        check_positive_int("num_samples", num_samples)
        return self._sample(num_samples, _generator(seed)).to(dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density of points x (N, D) -> (N,), computed in float64 and returned in x's dtype;
        differentiable in x. Raises NotImplementedError when the target has no exact density."""
        if not self.has_exact_density:
            raise NotImplementedError(
                f"dataset {self.name!r} has no exact density (has_exact_density=False); "
                "evaluate it by held-out NLL instead of KL"
            )
        x = torch.as_tensor(x)
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        x = check_features("x", x, self.features).to(torch.float64)
        return self._log_prob(x).to(dtype)

    @abstractmethod
    def _sample(self, num_samples: int, generator: torch.Generator | None) -> Tensor:
        """float64 samples (N, D) drawn with `generator`."""

    def _log_prob(self, x: Tensor) -> Tensor:
        """float64 log-density of validated float64 points (N, D) -> (N,)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, features={self.features}, exact={self.has_exact_density})"


# ---------------------------------------------------------------------------------------------------- arcs
class ArcMixture(Target):
    """Mixture of K noisy circular arcs in 2-D (D = 2): pick arc k with probability w_k, an angle
    θ ~ vM(μ_k, κ_k) (κ_k = 0: uniform, the whole circle), and add isotropic noise to the point on the circle,

        x = c_k + r_k (cos θ, sin θ) + σ_k ε,   ε ~ N(0, I).

    Integrating θ out (the von Mises kernel times the Gaussian is again a von Mises kernel in θ):

        p(x) = Σ_k w_k exp(-(‖x - c_k‖² + r_k²) / 2σ_k²) I₀(‖κ_k u(μ_k) + r_k (x - c_k) / σ_k²‖) / (2π σ_k² I₀(κ_k))

    with u(μ) = (cos μ, sin μ). r_k = 0 gives a Gaussian N(c_k, σ_k² I); κ_k = 0 a ring (Rice-distributed radius).

    Args:
        weights: w (K,), positive, summing to 1.
        centres: c (K, 2), circle centres.
        radii: r (K,) ≥ 0, or one number for all arcs.
        directions: μ (K,) or a number, mean angle of each arc in radians.
        concentrations: κ (K,) ≥ 0 or a number; larger is a shorter arc.
        noise: σ (K,) > 0 or a number, standard deviation of the Gaussian noise.
        name: the registry name.
        modes: (M, 2) mode centres, or None.
    """

    features = 2

    def __init__(
        self,
        weights: Tensor,
        centres: Tensor,
        *,
        noise: Tensor | float,
        radii: Tensor | float = 0.0,
        directions: Tensor | float = 0.0,
        concentrations: Tensor | float = 0.0,
        name: str = "arc_mixture",
        modes: Tensor | None = None,
    ) -> None:
        self.name = name
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        if self.weights.dim() != 1 or (self.weights <= 0).any() or abs(self.weights.sum().item() - 1) > 1e-9:
            raise ValueError(f"weights must be a (K,) vector of positive numbers summing to 1; got {self.weights}")
        K = self.weights.shape[0]
        self.centres = torch.as_tensor(centres, dtype=torch.float64)
        if self.centres.shape != (K, 2):
            raise ValueError(f"centres must have shape ({K}, 2); got {tuple(self.centres.shape)}")
        per_arc = {"radii": radii, "directions": directions, "concentrations": concentrations, "noise": noise}
        for key, value in per_arc.items():
            value = torch.as_tensor(value, dtype=torch.float64)
            if value.shape not in ((), (K,)):
                raise ValueError(f"{key} must be a number or have shape ({K},); got {tuple(value.shape)}")
            setattr(self, key, value.expand(K).clone())
        if (self.radii < 0).any() or (self.concentrations < 0).any() or (self.noise <= 0).any():
            raise ValueError("radii and concentrations must be ≥ 0 and noise > 0")
        self.is_multimodal = K > 1
        self.modes = None if modes is None else torch.as_tensor(modes, dtype=torch.float64)

    def _sample(self, num_samples: int, generator: torch.Generator | None) -> Tensor:
        k = torch.multinomial(self.weights, num_samples, replacement=True, generator=generator)  # (N,)
        theta = _sample_von_mises(self.directions[k], self.concentrations[k], generator)
        eps = torch.randn(num_samples, 2, generator=generator, dtype=torch.float64)
        return self.centres[k] + self.radii[k, None] * _unit(theta) + self.noise[k, None] * eps

    def _log_prob(self, x: Tensor) -> Tensor:
        params = (self.weights, self.centres, self.radii, self.directions, self.concentrations, self.noise)
        weights, centres, radii, directions, kappa, sigma = (t.to(x.device) for t in params)
        variance = sigma**2  # (K,)
        diff = x.unsqueeze(-2) - centres  # (N, 1, 2) - (K, 2) -> (N, K, 2)
        pull = _unit(directions) * kappa[:, None] + diff * (radii / variance)[:, None]  # (K, 2) + (N, K, 2)
        bessel_arg = torch.linalg.vector_norm(pull, dim=-1)  # ‖κ u(μ) + r (x - c) / σ²‖: (N, K)
        log_components = (
            -(diff.square().sum(-1) + radii**2) / (2 * variance)
            + _log_i0(bessel_arg)
            - _log_i0(kappa)
            - torch.log(variance)
            - _LOG_2PI
        )  # (N, K)
        return torch.logsumexp(weights.log() + log_components, dim=-1)


def _equal_weights(num_components: int) -> Tensor:
    return torch.full((num_components,), 1 / num_components, dtype=torch.float64)


class EightGaussians(ArcMixture):
    """Eight equally weighted isotropic Gaussians (std `std`) centred on a circle of radius `radius` (FFJORD's
    "8gaussians": radius 4/√2, std 0.5/√2)."""

    def __init__(self, *, radius: float = 2 * math.sqrt(2), std: float = 0.5 / math.sqrt(2)) -> None:
        centres = radius * _unit(torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8))
        super().__init__(_equal_weights(8), centres, noise=std, name="eight_gaussians", modes=centres)


class Grid(ArcMixture):
    """`size` × `size` equally weighted isotropic Gaussians (std `std`) on a square grid over [-extent, extent]²."""

    def __init__(self, *, size: int = 5, extent: float = 3.0, std: float = 0.2) -> None:
        ticks = torch.linspace(-extent, extent, check_positive_int("size", size), dtype=torch.float64)
        centres = torch.cartesian_prod(ticks, ticks)  # (size², 2)
        super().__init__(_equal_weights(size * size), centres, noise=std, name="grid", modes=centres)


class Rings(ArcMixture):
    """Concentric rings around the origin, equally weighted: a uniform point on the circle of each radius plus
    isotropic Gaussian noise `noise` (FFJORD's "rings": radii 0.75, 1.5, 2.25, 3, noise 0.08)."""

    def __init__(self, *, radii: tuple[float, ...] = (0.75, 1.5, 2.25, 3.0), noise: float = 0.08) -> None:
        K = len(radii)
        radii = torch.tensor(radii, dtype=torch.float64)
        super().__init__(_equal_weights(K), torch.zeros(K, 2), radii=radii, noise=noise, name="rings")


class Moons(ArcMixture):
    """Two interleaved moons: sklearn's make_moons (noise 0.1) scaled by `scale` and centred. Each half-circle
    of radius `scale` is covered by `arcs_per_moon` equally weighted von Mises arcs centred at evenly spaced
    angles, with concentration κ = (arcs_per_moon / 0.6π)² (angular std 0.6 × their spacing, so their sum is
    flat along the moon and fades over about that std past its ends), plus isotropic Gaussian noise `noise`.
    Modes are the two moon midpoints."""

    def __init__(self, *, scale: float = 2.5, noise: float = 0.25, arcs_per_moon: int = 6) -> None:
        n = check_positive_int("arcs_per_moon", arcs_per_moon)
        # make_moons: upper half of the unit circle at (0, 0), lower half of the one at (1, 0.5); centred at (0.5, 0.25)
        moon_centres = scale * torch.tensor([[-0.5, -0.25], [0.5, 0.25]], dtype=torch.float64)
        offsets = (torch.arange(n, dtype=torch.float64) + 0.5) * (math.pi / n)  # (n,) across a half-circle
        super().__init__(
            _equal_weights(2 * n),
            moon_centres.repeat_interleave(n, dim=0),
            radii=scale,
            directions=torch.cat([offsets, offsets + math.pi]),  # upper moon, then lower moon: (2n,)
            concentrations=(n / (0.6 * math.pi)) ** 2,
            noise=noise,
            name="moons",
            modes=moon_centres + scale * _unit(torch.tensor([math.pi / 2, -math.pi / 2], dtype=torch.float64)),
        )


# ---------------------------------------------------------------------------------------------------- other toys
class Checkerboard(Target):
    """Uniform on the black squares of a `num_squares` × `num_squares` board of side `square_size` centred at
    the origin (FFJORD's "checkerboard": 4 × 4 squares of side 2). Square (i, j), counted from the lower-left,
    is black when i + j is even:

        p(x) = 2 / (num_squares · square_size)²  on the closed black squares, 0 elsewhere (log p = -inf).
    """

    is_multimodal = True

    def __init__(self, *, num_squares: int = 4, square_size: float = 2.0) -> None:
        check_positive_int("num_squares", num_squares)
        if num_squares % 2:
            raise ValueError(f"num_squares must be even; got {num_squares}")
        self.name = "checkerboard"
        self.features = 2
        self.num_squares, self.square_size = num_squares, float(square_size)
        self.half_width = num_squares * square_size / 2
        ticks = torch.arange(num_squares)
        squares = torch.cartesian_prod(ticks, ticks)
        self.black_squares = squares[squares.sum(-1) % 2 == 0]  # (M, 2) integer corners, counted from lower-left
        self.modes = (self.black_squares.to(torch.float64) + 0.5) * square_size - self.half_width

    def _sample(self, num_samples: int, generator: torch.Generator | None) -> Tensor:
        M = self.black_squares.shape[0]
        square = torch.randint(M, (num_samples,), generator=generator)
        offset = torch.rand(num_samples, 2, generator=generator, dtype=torch.float64)
        return (self.black_squares[square] + offset) * self.square_size - self.half_width

    def _log_prob(self, x: Tensor) -> Tensor:
        board = (x + self.half_width) / self.square_size  # (N, 2) in square units from the lower-left corner
        lower = torch.floor(board)
        on_line = (board == lower).to(board.dtype)
        # the closed squares: a point on a line between squares belongs to both, so rounding a sample onto an
        # edge (float32 data) never makes its density 0; the density changes only on a set of measure zero
        black = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for step in ((0, 0), (0, 1), (1, 0), (1, 1)):
            index = lower - on_line * x.new_tensor(step)
            inside = ((index >= 0) & (index < self.num_squares)).all(-1)
            black |= inside & (index.sum(-1) % 2 == 0)
        log_density = x.new_tensor(-math.log(self.black_squares.shape[0] * self.square_size**2))
        # adding 0 · x keeps the graph to x, so gradients are defined (zero) everywhere
        return torch.where(black, log_density, -math.inf) + 0 * x.sum(-1)


class Pinwheel(Target):
    """`num_arms` Gaussian arms swirled around the origin (after FFJORD's "pinwheel"). Arm k draws
    f ~ N((1, 0), diag(radial_std², tangential_std²)) and rotates it by an angle that grows with its radius,

        x = scale · R(a_k + rate · exp(‖f‖)) f,   a_k = 2πk / num_arms.

    Rotating each circle ‖f‖ = const rigidly is a bijection with unit Jacobian (FFJORD's angle uses f₁ in place
    of ‖f‖ and is not invertible everywhere), so

        p(x) = (1 / scale²) Σ_k (1 / num_arms) N(R(-a_k - rate · exp(‖x‖ / scale)) x / scale; (1, 0), diag(...)).

    Modes are the images of the arm means f = (1, 0).
    """

    def __init__(
        self,
        *,
        num_arms: int = 5,
        radial_std: float = 0.3,
        tangential_std: float = 0.1,
        rate: float = 0.25,
        scale: float = 2.0,
    ) -> None:
        self.name = "pinwheel"
        self.features = 2
        self.num_arms = check_positive_int("num_arms", num_arms)
        if min(radial_std, tangential_std, scale) <= 0:
            raise ValueError("radial_std, tangential_std and scale must be positive")
        self.std = torch.tensor([radial_std, tangential_std], dtype=torch.float64)
        self.rate, self.scale = float(rate), float(scale)
        self.arm_angles = torch.arange(num_arms, dtype=torch.float64) * (2 * math.pi / num_arms)  # (K,)
        self.modes = scale * _unit(self.arm_angles + rate * math.e)
        self.is_multimodal = num_arms > 1

    def _sample(self, num_samples: int, generator: torch.Generator | None) -> Tensor:
        k = torch.randint(self.num_arms, (num_samples,), generator=generator)
        f = torch.randn(num_samples, 2, generator=generator, dtype=torch.float64) * self.std
        f[:, 0] += 1
        angle = self.arm_angles[k] + self.rate * torch.linalg.vector_norm(f, dim=-1).exp()
        return self.scale * _rotate(f, angle)

    def _log_prob(self, x: Tensor) -> Tensor:
        y = x / self.scale
        swirl = self.rate * torch.linalg.vector_norm(y, dim=-1).exp()  # (N,)
        angles = -(swirl.unsqueeze(-1) + self.arm_angles.to(x.device))  # (N, 1) + (K,) -> (N, K)
        f = _rotate(y.unsqueeze(-2), angles)  # (N, 1, 2) rotated by (N, K) -> (N, K, 2)
        std = self.std.to(x.device)
        z = (f - torch.tensor([1.0, 0.0], dtype=x.dtype, device=x.device)) / std
        log_gauss = -0.5 * z.square().sum(-1) - std.log().sum() - _LOG_2PI  # (N, K)
        return torch.logsumexp(log_gauss, dim=-1) - math.log(self.num_arms) - 2 * math.log(self.scale)


class Spirals(Target):
    """`num_arms` interleaved spiral arms (after FFJORD's "2spirals"). Arm k puts the angle around the spiral
    with von Mises noise, θ ~ vM(φ_k - winding · ρ, concentration), φ_k = π + 2πk / num_arms, at a radius ρ whose
    square has a soft-edged uniform density on [0, ∞),

        g(ρ²) = sigmoid((max_radius² - ρ²) / w) / (w · softplus(max_radius² / w)),   w = 2 · max_radius · fade,

    which falls from its plateau to 0 over about `fade` around ρ = max_radius; fade → 0 is FFJORD's radius law,
    uniform over the disc. The polar density is 2ρ g(ρ²) vM(θ; ...) per arm; dividing by the Jacobian ρ,

        p(x) = 2 g(‖x‖²) (1 / num_arms) Σ_k vM(angle(x); φ_k - winding ‖x‖, concentration),

    positive everywhere, and smooth except at the origin, where every arm starts and the limit depends on the
    direction. An arm's radial width is about 1 / (winding √concentration).
    """

    def __init__(
        self,
        *,
        num_arms: int = 2,
        max_radius: float = math.pi,
        winding: float = 3.0,
        concentration: float = 10.0,
        fade: float = 0.1,
    ) -> None:
        self.name = "spirals"
        self.features = 2
        self.num_arms = check_positive_int("num_arms", num_arms)
        if min(max_radius, concentration, fade) <= 0:
            raise ValueError("max_radius, concentration and fade must be positive")
        self.max_radius, self.winding, self.concentration = float(max_radius), float(winding), float(concentration)
        self._squared_max, self._edge = self.max_radius**2, 2 * self.max_radius * fade  # R², w
        self.arm_angles = math.pi + torch.arange(num_arms, dtype=torch.float64) * (2 * math.pi / num_arms)  # (K,)
        self.is_multimodal = num_arms > 1

    def _sample(self, num_samples: int, generator: torch.Generator | None) -> Tensor:
        k = torch.randint(self.num_arms, (num_samples,), generator=generator)
        # inverse CDF of g: F(s) = 1 - softplus((R² - s) / w) / softplus(R² / w)
        u = torch.rand(num_samples, generator=generator, dtype=torch.float64)
        tail = (1 - u) * _softplus(self._squared_max / self._edge)  # softplus((R² - s) / w) > 0
        inverse_softplus = tail + torch.log(-torch.expm1(-tail))  # log(eʸ - 1) without overflow
        radius = (self._squared_max - self._edge * inverse_softplus).clamp(min=0).sqrt()
        loc = self.arm_angles[k] - self.winding * radius
        theta = _sample_von_mises(loc, torch.full_like(loc, self.concentration), generator)
        return radius.unsqueeze(-1) * _unit(theta)

    def _log_prob(self, x: Tensor) -> Tensor:
        radius = torch.linalg.vector_norm(x, dim=-1)  # (N,)
        angle = torch.atan2(x[:, 1], x[:, 0])
        loc = self.arm_angles.to(x.device) - self.winding * radius.unsqueeze(-1)  # (K,) - (N, 1) -> (N, K)
        kappa = x.new_tensor(self.concentration)
        log_vm = kappa * torch.cos(angle.unsqueeze(-1) - loc) - _LOG_2PI - _log_i0(kappa)  # (N, K)
        log_normaliser = math.log(self._edge * _softplus(self._squared_max / self._edge))
        log_g = torch.nn.functional.logsigmoid((self._squared_max - x.square().sum(-1)) / self._edge) - log_normaliser
        return math.log(2 / self.num_arms) + log_g + torch.logsumexp(log_vm, dim=-1)


# ---------------------------------------------------------------------------------- modes that are not Gaussian
class _Banana:
    """One banana-shaped mode: z ~ N(0, diag(s₁², s₂²)), bent by the shear (z₁, z₂) ↦ (z₁, z₂ + b z₁²) (unit
    Jacobian), rotated by φ and moved to c: x = c + R_φ (z₁, z₂ + b z₁²). Exactly,

        log p(x) = log N(z₁; 0, s₁²) + log N(z₂; 0, s₂²),   (z₁, y₂) = R_φᵀ (x - c),  z₂ = y₂ - b z₁²."""

    def __init__(self, centre, angle: float, *, length: float, width: float, bend: float) -> None:
        self.centre = torch.as_tensor(centre, dtype=torch.float64)
        self.angle, self.length, self.width, self.bend = float(angle), float(length), float(width), float(bend)

    def sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        z = torch.randn(n, 2, generator=generator, dtype=torch.float64) * torch.tensor([self.length, self.width])
        bent = torch.stack([z[:, 0], z[:, 1] + self.bend * z[:, 0] ** 2], -1)
        return self.centre + _rotate(bent, torch.tensor(self.angle, dtype=torch.float64))

    def log_prob(self, x: Tensor) -> Tensor:
        y = _rotate(x - self.centre.to(x), torch.tensor(-self.angle, dtype=x.dtype, device=x.device))
        z2 = y[:, 1] - self.bend * y[:, 0] ** 2
        return (
            -0.5 * (y[:, 0] / self.length) ** 2
            - 0.5 * (z2 / self.width) ** 2
            - math.log(self.length * self.width)
            - _LOG_2PI
        )


class _Arcs:
    """Components of an `ArcMixture` (noisy arcs, rings, Gaussians) as one component with its own weights."""

    def __init__(self, mixture: ArcMixture) -> None:
        self.mixture = mixture

    def sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        return self.mixture._sample(n, generator)

    def log_prob(self, x: Tensor) -> Tensor:
        return self.mixture._log_prob(x)


class ShapeMixture(Target):
    """A mixture of modes of any shape with exact densities (`_Banana`, `_Arcs`): p(x) = Σ_k w_k p_k(x).

    Args:
        weights: w (K,), positive, summing to 1.
        components: K objects with `sample(n, generator)` and `log_prob(x)` (float64).
        name: the registry name.
        modes: (M, 2) mode centres for mode coverage, or None.
    """

    features = 2

    def __init__(
        self, weights: Sequence[float] | Tensor, components: Sequence[Any], *, name: str, modes: Tensor | None = None
    ) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        if self.weights.shape != (len(components),) or abs(self.weights.sum().item() - 1) > 1e-9:
            raise ValueError(f"weights must be ({len(components)},) and sum to 1; got {self.weights}")
        self.components, self.name, self.modes = list(components), name, modes
        self.is_multimodal = len(components) > 1

    def _sample(self, num_samples: int, generator: torch.Generator | None) -> Tensor:
        k = torch.multinomial(self.weights, num_samples, replacement=True, generator=generator)
        x = torch.empty(num_samples, 2, dtype=torch.float64)
        for index, component in enumerate(self.components):
            rows = (k == index).nonzero().squeeze(-1)
            if rows.numel():
                x[rows] = component.sample(rows.numel(), generator)
        return x

    def _log_prob(self, x: Tensor) -> Tensor:
        log_components = torch.stack([component.log_prob(x) for component in self.components], -1)  # (N, K)
        return torch.logsumexp(self.weights.to(x.device).log() + log_components, dim=-1)


class BananaModes(ShapeMixture):
    """Five equally weighted banana-shaped modes around a circle of radius `radius`, each bent along the circle:
    a flow must bend every mode, a mixture must spend several Gaussians on each."""

    def __init__(self, *, radius: float = 2.8, length: float = 0.4, width: float = 0.1, bend: float = 1.0) -> None:
        angles = torch.arange(5, dtype=torch.float64) * (2 * math.pi / 5) + math.pi / 2
        centres = radius * _unit(angles)
        components = [
            # the banana's long axis runs along the circle (angle + π/2); it bends towards the centre
            _Banana(centre, a.item() + math.pi / 2, length=length, width=width, bend=bend)
            for centre, a in zip(centres, angles)
        ]
        super().__init__(_equal_weights(5), components, name="banana_modes", modes=centres)


class MixedShapes(ShapeMixture):
    """Four modes of different shapes: a banana, a narrow elongated arc, a wide Gaussian and a small ring."""

    def __init__(self) -> None:
        components = [
            _Banana((-2.0, 2.0), 0.3, length=0.6, width=0.12, bend=-0.5),
            _Arcs(
                ArcMixture(
                    torch.ones(1), [[2.0, 1.0]], radii=1.2, directions=-math.pi / 2, concentrations=4.0, noise=0.08
                )
            ),
            _Arcs(ArcMixture(torch.ones(1), [[2.0, -2.5]], noise=0.6)),
            _Arcs(ArcMixture(torch.ones(1), [[-2.0, -2.0]], radii=0.6, noise=0.07)),
        ]
        modes = torch.tensor([[-2.0, 2.0], [2.0, -0.2], [2.0, -2.5], [-2.0, -2.0]], dtype=torch.float64)
        super().__init__([0.3, 0.25, 0.25, 0.2], components, name="mixed_shapes", modes=modes)


class RingOfRings(ArcMixture):
    """`count` small noisy rings (radius `ring_radius`, noise `noise`) centred on a circle of radius `radius`."""

    def __init__(self, *, count: int = 6, radius: float = 2.5, ring_radius: float = 0.5, noise: float = 0.06) -> None:
        centres = radius * _unit(
            torch.arange(check_positive_int("count", count), dtype=torch.float64) * (2 * math.pi / count)
        )
        super().__init__(
            _equal_weights(count), centres, radii=ring_radius, noise=noise, name="ring_of_rings", modes=centres
        )


# ---------------------------------------------------------------------------------- Stimper et al. 2022
def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def _ring_mass(radius: float, noise: float) -> float:
    """∫_ℝ² exp(-(‖x‖ - a)² / 2σ²) dx = 2π [σ² exp(-a² / 2σ²) + a σ √(2π) Φ(a / σ)] for a = radius ≥ 0, σ = noise.

    In polar coordinates the integral is 2π ∫₀^∞ r exp(-(r - a)² / 2σ²) dr; with u = r - a, ∫_{-a}^∞ u e^{-u²/2σ²} du
    = σ² e^{-a²/2σ²} and a ∫_{-a}^∞ e^{-u²/2σ²} du = a σ √(2π) Φ(a / σ)."""
    return (
        2
        * math.pi
        * (
            noise**2 * math.exp(-(radius**2) / (2 * noise**2))
            + radius * noise * math.sqrt(2 * math.pi) * _normal_cdf(radius / noise)
        )
    )


def _sample_ring_radius(radius: Tensor, noise: Tensor, generator: torch.Generator | None) -> Tensor:
    """Exact draws r > 0 (N,) from the radial density of a ring, f(r) ∝ r exp(-(r - a)² / 2σ²) on r > 0, for
    a = radius (N,) ≥ 0 and σ = noise (N,) > 0, by rejection.

    Proposal on ℝ: h(r) ∝ (a + |r - a|) exp(-(r - a)² / 2σ²), a mixture of N(a, σ²) (weight ∝ a σ √(2π)) and
    a ± σ R, R ~ Rayleigh(1) with a fair sign (weight ∝ 2σ², since ∫ |u| e^{-u²/2σ²} du = 2σ²). A candidate is
    accepted with probability r / (a + |r - a|) when r > 0 (≤ 1 by the triangle inequality: the bound is proven)
    and rejected when r ≤ 0, so accepted draws have density ∝ h(r) r / (a + |r - a|) = f(r). Acceptance is
    about 0.96 for a / σ = 10."""
    out = torch.empty_like(radius)
    pending = torch.arange(radius.numel())
    while pending.numel() > 0:
        a, sigma = radius[pending], noise[pending]
        u = torch.rand(4, pending.numel(), generator=generator, dtype=torch.float64)
        gaussian = torch.randn(pending.numel(), generator=generator, dtype=torch.float64)
        rayleigh = torch.sqrt(-2 * torch.log1p(-u[0]))  # 1 - U in (0, 1]
        folded = torch.where(u[1] < 0.5, -rayleigh, rayleigh)
        gaussian_weight = a * sigma * math.sqrt(2 * math.pi)
        from_gaussian = u[2] * (gaussian_weight + 2 * sigma**2) < gaussian_weight
        r = a + sigma * torch.where(from_gaussian, gaussian, folded)
        accept = (r > 0) & (u[3] * (a + (r - a).abs()) < r)
        out[pending[accept]] = r[accept]
        pending = pending[~accept]
    return out


# ∫ exp(-(‖x‖ - 2)² / 0.08) [exp(-(x₁ - 2)² / 0.18) + exp(-(x₁ + 2)² / 0.18)] dx over ℝ²: in polar coordinates,
# Gauss-Legendre in r on [0, 10] (200 to 1600 nodes) times the trapezoid rule in θ (400 to 3200 nodes, spectrally
# accurate for a periodic integrand), and scipy's dblquad (epsrel 1e-13): all agree to 3e-14
DUAL_MOON_NORMALISER = 2.23494014876774


class DualMoon(Target):
    """Stimper et al.'s "dual moon" (normflows' `TwoMoons`): a ring of radius 2 cut into two moons at x₁ = ±2,

        p(x) = exp(-(‖x‖ - 2)² / (2 · 0.2²)) [exp(-(x₁ - 2)² / (2 · 0.3²)) + exp(-(x₁ + 2)² / (2 · 0.3²))] / Z,

    normflows' log-density minus log Z (normflows leaves it unnormalised and writes the bracket as
    exp(-(|x₁| - 2)² / 0.18) (1 + exp(-4|x₁| / 0.09)), the same function). Z = `DUAL_MOON_NORMALISER` =
    2.23494014876774, by quadrature in polar coordinates (Gauss-Legendre in r, trapezoid rule in θ, checked
    against scipy's dblquad; relative accuracy ~1e-13; `tests/test_datasets.py` recomputes it).

    Sampling is exact, by rejection: propose the ring alone, exp(-(‖x‖ - 2)² / 0.08) (a uniform angle and an exact
    radius, `_sample_ring_radius`), and accept with probability g(x₁) / M, g the bracket. M = 1 + exp(-400/9)
    bounds g: g(x₁) = exp(-(|x₁| - 2)² / 0.18) (1 + exp(-4|x₁| / 0.09)), where for |x₁| ≥ 1 the first factor is ≤ 1
    and the second ≤ M, and for |x₁| < 1 the product is ≤ 2 exp(-1 / 0.18) < 0.01. About 35 % of proposals are
    accepted. Modes: (±2, 0)."""

    is_multimodal = True
    features = 2
    _RADIUS, _RADIAL_STD, _LATERAL_STD = 2.0, 0.2, 0.3

    def __init__(self) -> None:
        self.name = "stimper_two_moons"
        self.modes = torch.tensor([[2.0, 0.0], [-2.0, 0.0]], dtype=torch.float64)

    def _log_bracket(self, first: Tensor) -> Tensor:
        """log g(x₁) (N,): the two Gaussian bumps across the ring at x₁ = ±2."""
        scale = 2 * self._LATERAL_STD**2
        return torch.logaddexp(-((first - 2) ** 2) / scale, -((first + 2) ** 2) / scale)

    def _sample(self, num_samples: int, generator: torch.Generator | None) -> Tensor:
        out = torch.empty(num_samples, 2, dtype=torch.float64)
        bound = math.log1p(math.exp(-400 / 9))  # log M
        filled = 0
        while filled < num_samples:
            m = num_samples - filled
            radius = _sample_ring_radius(
                torch.full((m,), self._RADIUS, dtype=torch.float64),
                torch.full((m,), self._RADIAL_STD, dtype=torch.float64),
                generator,
            )
            angle = 2 * math.pi * torch.rand(m, generator=generator, dtype=torch.float64)
            x = radius.unsqueeze(-1) * _unit(angle)
            u = torch.rand(m, generator=generator, dtype=torch.float64)
            accepted = x[u.log() < self._log_bracket(x[:, 0]) - bound]
            out[filled : filled + accepted.shape[0]] = accepted
            filled += accepted.shape[0]
        return out

    def _log_prob(self, x: Tensor) -> Tensor:
        radius = torch.linalg.vector_norm(x, dim=-1)
        ring = -((radius - self._RADIUS) ** 2) / (2 * self._RADIAL_STD**2)
        return ring + self._log_bracket(x[:, 0]) - math.log(DUAL_MOON_NORMALISER)


class CircularGaussianMixture(ArcMixture):
    """Stimper et al.'s circle of Gaussians (normflows' `CircularGaussianMixture`, normalised there too):
    `num_modes` equally weighted isotropic Gaussians centred at radius · (sin φ_k, cos φ_k), φ_k = 2πk / num_modes
    (k = 0 at the top, clockwise), each with std (2/3) sin(π / num_modes) (≈ 0.255 for 8 modes, radius 2).
    Modes: the centres."""

    def __init__(self, *, num_modes: int = 8, radius: float = 2.0, std: float | None = None) -> None:
        angles = torch.arange(check_positive_int("num_modes", num_modes), dtype=torch.float64) * (
            2 * math.pi / num_modes
        )
        centres = radius * torch.stack([angles.sin(), angles.cos()], dim=-1)  # (M, 2)
        std = 2 / 3 * math.sin(math.pi / num_modes) if std is None else std
        super().__init__(_equal_weights(num_modes), centres, noise=std, name="stimper_circular_gmm", modes=centres)


class RingMixture(Target):
    """Stimper et al.'s two rings (normflows' `RingMixture`, unnormalised there): rings of radii a_k = 1, 2 whose
    radial profile is a Gaussian bump of std σ = 0.125 (normflows: 1 / (4 · number of rings)),

        p(x) = Σ_k exp(-(‖x‖ - a_k)² / 2σ²) / Z,   Z = Σ_k 2π [σ² exp(-a_k² / 2σ²) + a_k σ √(2π) Φ(a_k / σ)]

    (`_ring_mass`; Z = 5.9061037296459 for the defaults, log Z = 1.7759863466023). This is not the FFJORD ring
    (`Rings`, a uniform point on the circle plus isotropic noise): the weight of ring k is its mass Z_k / Z, about
    1/3 and 2/3. Sampled exactly: ring k with probability Z_k / Z, a uniform angle, the radius from the exact radial
    density r exp(-(r - a_k)² / 2σ²) (`_sample_ring_radius`). No point modes.

    Args:
        radii: a_k, positive.
        noise: σ > 0.
    """

    is_multimodal = True
    features = 2

    def __init__(self, *, radii: Sequence[float] = (1.0, 2.0), noise: float = 0.125) -> None:
        if len(radii) < 1 or min(radii) <= 0 or noise <= 0:
            raise ValueError(f"radii must be positive numbers and noise > 0; got radii={radii}, noise={noise}")
        self.name = "stimper_rings"
        self.radii = torch.tensor(radii, dtype=torch.float64)
        self.noise = float(noise)
        masses = torch.tensor([_ring_mass(a, self.noise) for a in radii], dtype=torch.float64)
        self.log_normaliser = masses.sum().log().item()
        self.weights = masses / masses.sum()  # (K,)

    def _sample(self, num_samples: int, generator: torch.Generator | None) -> Tensor:
        k = torch.multinomial(self.weights, num_samples, replacement=True, generator=generator)
        radius = _sample_ring_radius(
            self.radii[k], torch.full((num_samples,), self.noise, dtype=torch.float64), generator
        )
        angle = 2 * math.pi * torch.rand(num_samples, generator=generator, dtype=torch.float64)
        return radius.unsqueeze(-1) * _unit(angle)

    def _log_prob(self, x: Tensor) -> Tensor:
        radius = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # (N, 1)
        log_rings = -((radius - self.radii.to(x.device)) ** 2) / (2 * self.noise**2)  # (N, 1) - (K,) -> (N, K)
        return torch.logsumexp(log_rings, dim=-1) - self.log_normaliser


class MirrorModes(ShapeMixture):
    """Three pairs of banana-shaped modes, each pair mirrored across the x₂ axis: the density is symmetric under
    x₁ ↦ -x₁ exactly, p(x₁, x₂) = p(-x₁, x₂), with six separated, bent modes whose axes are tilted (not aligned with
    the coordinates, nor with the circle through them).

    The mirror of a `_Banana` at c = (c₁, c₂) with angle φ is the banana at (-c₁, c₂) with angle -φ (the same
    length, width and bend): reflecting x = c + R_φ (z₁, z₂ + b z₁²) gives (-c₁, c₂) + R_{-φ} (-z₁, z₂ + b z₁²),
    and -z₁ has the law of z₁. Each mode at x₁ > 0 bends towards the origin, its axis turned by `TILTS` from the
    tangent there: φ = atan2(c₁, -c₂) + tilt. Pair weights 0.4, 0.35, 0.25, split equally within a pair."""

    CENTRES = ((1.6, 2.0), (2.6, -0.4), (1.0, -2.4))  # the modes at x₁ > 0; their mirrors at -x₁
    TILTS = (0.4, -0.3, 0.2)
    PAIR_WEIGHTS = (0.4, 0.35, 0.25)

    def __init__(self, *, length: float = 0.4, width: float = 0.12, bend: float = 1.0) -> None:
        components, modes, weights = [], [], []
        for (c1, c2), tilt, weight in zip(self.CENTRES, self.TILTS, self.PAIR_WEIGHTS):
            angle = math.atan2(c1, -c2) + tilt
            for sign in (1.0, -1.0):
                centre = (sign * c1, c2)
                components.append(_Banana(centre, sign * angle, length=length, width=width, bend=bend))
                modes.append(centre)
                weights.append(weight / 2)
        modes = torch.tensor(modes, dtype=torch.float64)
        super().__init__(weights, components, name="mirror_modes", modes=modes)


# ---------------------------------------------------------------------------------------------------- D ≥ 10
class GaussianMixture(Target):
    """A fixed mixture of K full-covariance Gaussians in D dimensions, drawn from `seed`:

        p(x) = Σ_k w_k N(x; μ_k, Σ_k),

    w = softmax(0.5 ε) with ε ~ N(0, I); μ_k ~ U(-spread, spread)ᴰ; Σ_k = Q_k diag(s_k²) Q_kᵀ with Q_k a random
    rotation and s_k ~ U(0.2, 0.6). Attributes `weights` (K,), `means` (K, D), `covariances` (K, D, D), float64.
    """

    def __init__(self, features: int = 10, num_components: int = 10, *, seed: int = 0, spread: float = 3.0) -> None:
        self.name = "gaussian_mixture"
        self.features = check_positive_int("features", features)
        K = check_positive_int("num_components", num_components)
        generator = torch.Generator().manual_seed(_check_seed(seed))
        self.weights = torch.softmax(0.5 * torch.randn(K, generator=generator, dtype=torch.float64), dim=0)
        self.means = spread * (2 * torch.rand(K, features, generator=generator, dtype=torch.float64) - 1)
        q, r = torch.linalg.qr(torch.randn(K, features, features, generator=generator, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)  # Haar-distributed rotations
        stds = 0.2 + 0.4 * torch.rand(K, features, generator=generator, dtype=torch.float64)
        self.covariances = (q * stds.unsqueeze(-2).square()) @ q.mT  # Q diag(s²) Qᵀ: (K, D, D)
        self.scale_tril = torch.linalg.cholesky(self.covariances)
        self.modes = self.means
        self.is_multimodal = K > 1

    def _sample(self, num_samples: int, generator: torch.Generator | None) -> Tensor:
        k = torch.multinomial(self.weights, num_samples, replacement=True, generator=generator)
        eps = torch.randn(num_samples, self.features, 1, generator=generator, dtype=torch.float64)
        return self.means[k] + (self.scale_tril[k] @ eps).squeeze(-1)

    def _log_prob(self, x: Tensor) -> Tensor:
        means, scale_tril = self.means.to(x.device), self.scale_tril.to(x.device)
        diff = (x.unsqueeze(-2) - means).unsqueeze(-1)  # (N, 1, D) - (K, D) -> (N, K, D, 1)
        whitened = torch.linalg.solve_triangular(scale_tril, diff, upper=False).squeeze(-1)  # L⁻¹ (x - μ): (N, K, D)
        half_log_det = scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (K,)
        log_gauss = -0.5 * whitened.square().sum(-1) - half_log_det - 0.5 * self.features * _LOG_2PI
        return torch.logsumexp(self.weights.to(x.device).log() + log_gauss, dim=-1)


# ---------------------------------------------------------------------------------------------------- digits
DIGITS_SPLITS = {"train": 1257, "val": 180, "test": 360}  # sizes of the fixed split of sklearn's 1797 digits
_DIGITS_LEVELS = 17  # pixel values are the integers 0..16


@functools.cache
def _digits_pixels() -> Tensor:
    """sklearn's bundled 8×8 digits as integers (1797, 64); read once, no download."""
    from sklearn.datasets import load_digits as sklearn_load_digits

    return torch.as_tensor(sklearn_load_digits().data, dtype=torch.float64)


class Digits(Target):
    """scikit-learn's 8×8 handwritten digits (D = 64, 1797 images, bundled with scikit-learn), dequantised and
    scaled. A pixel v ∈ {0, …, 16} becomes u = (v + U) / 17 ∈ (0, 1) with U ~ U(0, 1), then

        "logit":       x = logit(alpha + (1 - 2 alpha) u)            (in about [-2.9, 2.9] for alpha = 0.05)
        "standardize": x = (u - m) / s, m and s the mean and std of all training pixels' u.

    The images are split once by a permutation drawn from `seed` into DIGITS_SPLITS sizes, and each image gets
    one dequantisation draw from `seed`, so `split(...)` is fixed data. `sample` draws training images with
    replacement and fresh dequantisation noise: the dequantised empirical distribution of the training split.
    There is no exact density (has_exact_density=False).
    """

    has_exact_density = False
    is_multimodal = True

    def __init__(self, *, seed: int = 0, scaling: str = "logit", alpha: float = 0.05) -> None:
        self.name = "digits"
        self.features = 64
        self.seed = _check_seed(seed)
        self.scaling = check_choice("scaling", scaling, ("logit", "standardize"))
        if not 0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5); got {alpha}")
        self.alpha = float(alpha)
        generator = torch.Generator().manual_seed(seed)
        pixels = _digits_pixels()
        permutation = torch.randperm(pixels.shape[0], generator=generator)
        ends = torch.tensor(list(DIGITS_SPLITS.values())).cumsum(0).tolist()
        self._indices = dict(zip(DIGITS_SPLITS, permutation.tensor_split(ends[:-1])))
        self._noise = torch.rand(pixels.shape, generator=generator, dtype=torch.float64)  # one draw per pixel
        train = self._unit_interval(pixels[self._indices["train"]], self._noise[self._indices["train"]])
        self._mean, self._std = train.mean(), train.std()

    def indices(self, split: str) -> Tensor:
        """Rows (N,) of `sklearn.datasets.load_digits().data` (and its `target` labels) in `split`."""
        return self._indices[check_choice("split", split, tuple(DIGITS_SPLITS))].clone()

    def split(self, split: str = "train", *, dtype: torch.dtype = torch.float32) -> Tensor:
        """The fixed dequantised, scaled images of `split` ("train", "val" or "test"), shape (N, 64)."""
        index = self.indices(split)
        return self._scale(self._unit_interval(_digits_pixels()[index], self._noise[index])).to(dtype)

    def _sample(self, num_samples: int, generator: torch.Generator | None) -> Tensor:
        train = self._indices["train"]
        rows = train[torch.randint(train.numel(), (num_samples,), generator=generator)]
        noise = torch.rand(num_samples, self.features, generator=generator, dtype=torch.float64)
        return self._scale(self._unit_interval(_digits_pixels()[rows], noise))

    @staticmethod
    def _unit_interval(pixels: Tensor, noise: Tensor) -> Tensor:
        return (pixels + noise) / _DIGITS_LEVELS

    def _scale(self, u: Tensor) -> Tensor:
        if self.scaling == "logit":
            return torch.logit(self.alpha + (1 - 2 * self.alpha) * u)
        return (u - self._mean) / self._std

    def unscale(self, x: Tensor) -> Tensor:
        """Inverse of the scaling: data x (N, 64) -> dequantised pixels u (N, 64) in (0, 1); floor(17 u) are
        the original pixel values."""
        x = torch.as_tensor(x)
        if self.scaling == "logit":
            return (torch.sigmoid(x) - self.alpha) / (1 - 2 * self.alpha)
        return x * self._std.to(x.dtype) + self._mean.to(x.dtype)


def load_digits(
    split: str = "train", *, seed: int = 0, scaling: str = "logit", dtype: torch.dtype = torch.float32
) -> Tensor:
    """The fixed `split` of the dequantised, scaled 8×8 digits (N, 64); see `Digits`."""
    return Digits(seed=seed, scaling=scaling).split(split, dtype=dtype)


# ---------------------------------------------------------------------------------------------------- registry
_REGISTRY: dict[str, type[Target]] = {
    "eight_gaussians": EightGaussians,
    "grid": Grid,
    "rings": Rings,
    "checkerboard": Checkerboard,
    "moons": Moons,
    "pinwheel": Pinwheel,
    "spirals": Spirals,
    "banana_modes": BananaModes,
    "mixed_shapes": MixedShapes,
    "ring_of_rings": RingOfRings,
    "stimper_two_moons": DualMoon,
    "stimper_circular_gmm": CircularGaussianMixture,
    "stimper_rings": RingMixture,
    "mirror_modes": MirrorModes,
    "gaussian_mixture": GaussianMixture,
    "digits": Digits,
}
DATASETS = tuple(_REGISTRY)


def get_dataset(name: str, **kwargs) -> Target:
    """The target called `name` (one of DATASETS), built with its keyword arguments."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(map(repr, DATASETS))}")
    return _REGISTRY[name](**kwargs)


def make_splits(
    dataset: Target | str,
    n_train: int | None,
    n_val: int | None,
    n_test: int | None,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor]:
    """Train, validation and test tensors (n_train, D), (n_val, D), (n_test, D) for `dataset` (a Target or a
    name in DATASETS).

    A sampled target draws the three sets independently from three seeds derived from `seed`, so the test set
    does not change with n_train; every size must be given. Digits returns its fixed splits (`Digits(seed=0)`
    unless a Digits is passed), a size of None meaning the whole split; a smaller size takes a random subset
    chosen by `seed`.
    """
    if isinstance(dataset, str):
        dataset = get_dataset(dataset)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    seeds = torch.randint(2**62, (3,), generator=torch.Generator().manual_seed(_check_seed(seed))).tolist()
    if isinstance(dataset, Digits):
        out = []
        for (split, size), split_seed in zip(sizes.items(), seeds):
            data = dataset.split(split, dtype=dtype)
            if size is not None:
                if check_positive_int(f"n_{split}", size) > data.shape[0]:
                    raise ValueError(f"n_{split} must be at most the {data.shape[0]} digits of {split!r}; got {size}")
                rows = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(split_seed))[:size]
                data = data[rows]
            out.append(data)
        return tuple(out)
    for split, size in sizes.items():
        if size is None:
            raise ValueError(f"n_{split} must be a positive integer for the sampled dataset {dataset.name!r}; got None")
    return tuple(dataset.sample(size, seed=s, dtype=dtype) for size, s in zip(sizes.values(), seeds))

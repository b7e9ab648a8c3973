"""`RAD`: Real-and-Discrete flows (Dinh, Sohl-Dickstein, Larochelle and Pascanu, "A RAD approach to deep mixture
models", 2019, arXiv:1903.07714), a flow with piecewise-invertible coupling layers and a discrete latent per layer.

Shapes: N batch, D features, L layers, K pieces, D_a = ⌊D/2⌋ features each layer leaves unchanged, D_b = D - D_a
features it transforms.

The model
---------
Each layer maps x (N, D) to z = (x_a, f(x_b; x_a)), where f acts on each transformed feature u = x_b,i by a
piecewise-affine function of u whose parameters come from a network of x_a. The real line is partitioned into K
intervals A_0 = (-∞, b_0), A_1 = [b_0, b_1), …, A_{K-1} = [b_{K-2}, ∞); on A_k the function is increasing and affine,
so each piece is injective, but the images f(A_k) overlap: f is piecewise invertible, not invertible. The piece index
k_i(x) is a discrete latent, known exactly from x (exact inference). A gating network gives p(k | z), which is zero
for a piece whose image does not contain z_b,i, so that (z, k) ↦ x is a bijection onto ℝᴰ and

    log p(x) = log N(z_L; 0, I) + Σ_l [ log p_l(k_l(x) | z_l) + log |det ∂z_l/∂z_{l-1}| ],   z_0 = x,

with no sum over k. Sampling is ancestral and exact: z_L ~ N(0, I); for l = L…1, k_l ~ p_l(k | z_l) (only pieces
whose image holds z_l), z_{l-1} = f_l⁻¹ restricted to the pieces k_l. Inference is exact too: `RAD.latent(x)` gives
(z_L, the pieces of every layer) and `RAD.generate(z, pieces)` inverts it.

No implementation of the paper is public: this is a reconstruction from its description of the model (piecewise-
invertible couplings, a discrete latent per piece, a gate with zero mass off the images, a standard normal base),
and the form of the piecewise function below is this module's own.

One transformed feature: the piecewise function
-----------------------------------------------
From the conditioner's 3K - 1 outputs per transformed feature: a shift t; breakpoints b_0 < … < b_{K-2}, centred on
a location c with gaps softplus(·) + 10⁻³; slopes a_k = softplus(·) + 10⁻³ > 0; downward jumps δ_j = softplus(·) ≥ 0
at each breakpoint. Piece k is the line through an anchor (p_k, q_k),

    f(u) = q_k + a_k (u - p_k)   for u ∈ A_k,       log |f'(u)| = log a_k,

where p_0 = b_0, q_0 = t + b_0 + ½ Σ_j δ_j (the end of piece 0), and p_k = b_{k-1}, q_k = f(b_{k-1}⁻) - δ_{k-1} for
k ≥ 1 (piece k starts δ_{k-1} below where piece k-1 ended). Piece k's image is [q_k, f(b_k⁻)] (piece 0: (-∞, q_0];
piece K-1: [q_{K-1}, ∞)); consecutive images overlap by up to δ, and their union is ℝ because every jump goes down,
so every z has at least one piece. With all jumps 0 the function is a continuous increasing piecewise-linear
bijection (with unit slopes, the shift u ↦ u + t). K = 1 is an affine coupling: RealNVP with a softplus scale.

Choices the paper leaves open (or that this reconstruction makes), and what is done here
-------------------------------------------------------------------------------------------
- The piecewise function. The paper asks for a trainable piecewise-invertible coupling function whose pieces map onto
  intervals with overlapping images; this module uses the increasing-pieces-with-downward-jumps form above for any K.
  It was chosen because (i) it is onto ℝ for every K, odd or even (a continuous "zig-zag" fold with alternating slope
  signs is onto ℝ only for odd K), so no z is left without a piece and no mass is lost; (ii) its images and inverses
  are closed-form; (iii) with zero jumps it reduces to an ordinary monotone piecewise-linear coupling, so RAD strictly
  contains a bijective coupling flow. Slopes are positive (no reflections): overlaps come from the jumps instead.
- Parameterisation: every piece parameter is a function of x_a through one nflows `ResidualNet` per layer (two
  residual blocks of width `hidden_features`, ReLU); positivity by softplus, with a 10⁻³ floor on slopes and gaps
  (as `build_flow`'s affine couplings) and none on jumps (zero jump = touching images is legal).
- The gating network sees the whole layer output z = (z_a, z_b) (all of it is known when sampling) through its own
  `ResidualNet` and gives K logits per transformed feature; p(k | z) = Π_i p(k_i | z), a softmax over the pieces
  whose (closed) image contains z_b,i, with the others set to -∞, i.e. probability exactly 0. The piece that x
  actually lies in is always counted as feasible, so rounding at an image's end can never make log p(x) = -∞.
- Partition conventions: pieces are half-open intervals [b_{k-1}, b_k) and images closed intervals; the boundaries
  have measure zero, so the density is unaffected; a sample landing exactly on an image's end (probability ~0) may be
  scored under the neighbouring piece.
- Layout: the first D_a = ⌊D/2⌋ features pass unchanged and condition the rest; the feature order is reversed
  between consecutive layers (RealNVP's alternating masks); with D = 1 the conditioner sees a constant input, so its
  piece parameters are free parameters of the layer. z_L is in the order of the last layer (the base is isotropic).
- Base: a fixed standard normal, as in the paper. No multi-scale architecture, batch normalisation or dequantisation
  (the paper's image models): this is the tabular / toy-density model the mixture base is compared with.
- Initialisation: the last layers of the conditioners and of the gating networks start at zero, with biases giving
  unit slopes, gaps of 1, jumps of ½ and no shift, and a uniform gate over the feasible pieces. A new RAD is
  therefore not the identity (jumps of 0 would make it one, but then no image overlaps, the gates have nothing to
  decide and the jumps would start where their gradient through the gate vanishes); every layer starts as the same
  mild fold around 0.
- Gradients through samples: `sample` is reparameterised given the drawn pieces (x is a differentiable function of
  z and of the parameters for fixed k), but the choice of pieces is a discrete draw and passes no gradient; training
  is by exact maximum likelihood (`log_prob`), which needs none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from nflows.distributions import Distribution
from nflows.nn.nets import ResidualNet
from torch import Tensor, nn
from torch.nn import functional as F

from ..checks import check_context, check_features, check_positive_int

__all__ = ["RAD", "RADCoupling"]

_MIN_SLOPE = 1e-3  # floor on the pieces' slopes
_MIN_GAP = 1e-3  # floor on the gaps between breakpoints
_INITIAL_GAP = 1.0  # distance between consecutive breakpoints of a new layer
_INITIAL_JUMP = 0.5  # overlap between consecutive pieces' images in a new layer
_LOG_2PI = math.log(2 * math.pi)


def _inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


@dataclass
class _Pieces:
    """The piecewise-affine functions of one layer, one per (row, transformed feature): shapes (N, D_b, K), and
    (N, D_b, K - 1) for the breakpoints. Piece k is z = out_anchor_k + slope_k (u - in_anchor_k) on
    [breakpoint_{k-1}, breakpoint_k); its image is [lower_k, upper_k] (infinite ends for the outer pieces)."""

    breakpoints: Tensor
    slopes: Tensor
    in_anchors: Tensor
    out_anchors: Tensor
    lower: Tensor
    upper: Tensor

    def index(self, u: Tensor) -> Tensor:
        """The piece each u (N, D_b) lies in: the number of breakpoints ≤ u, (N, D_b) int64."""
        return (u.unsqueeze(-1) >= self.breakpoints).sum(-1)

    def select(self, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(slope, in_anchor, out_anchor) of pieces k (N, D_b), each (N, D_b)."""
        k = k.unsqueeze(-1)
        return tuple(t.gather(-1, k).squeeze(-1) for t in (self.slopes, self.in_anchors, self.out_anchors))

    def feasible(self, z: Tensor) -> Tensor:
        """Whether each piece's image contains z (N, D_b): (N, D_b, K) bool."""
        z = z.unsqueeze(-1)  # (N, D_b, 1) against (N, D_b, K)
        return (z >= self.lower) & (z <= self.upper)


class RADCoupling(nn.Module):
    """One RAD layer: a piecewise-invertible coupling with its gating network p(k | z).

    Args:
        features: D.
        num_pieces: K ≥ 1 pieces per transformed feature.
        hidden_features: width of the conditioner and gating networks.

    `forward(x)` gives (z, k, log|det|) and `inverse(z, k)` undoes it; `feasible(z)` says which pieces' images hold
    z; `gate_log_prob(z)` gives log p(k | z) and `sample_pieces(z)` draws from it. `log_prob_terms(x)` and
    `sample_inverse(z)` do what `RAD` needs with one pass of the conditioner each.
    """

    def __init__(self, features: int, num_pieces: int = 2, *, hidden_features: int = 64) -> None:
        super().__init__()
        self.features = check_positive_int("features", features)
        self.num_pieces = check_positive_int("num_pieces", num_pieces)
        hidden = check_positive_int("hidden_features", hidden_features)
        D, K = features, num_pieces
        self.identity_features = D // 2  # D_a
        self.transformed_features = D - D // 2  # D_b
        self.conditioner = ResidualNet(max(self.identity_features, 1), self.transformed_features * (3 * K - 1), hidden)
        # per transformed feature: [shift t, location c, K - 2 raw gaps, K raw slopes, K - 1 raw jumps]
        bias = torch.cat(
            [
                torch.zeros(2 if K > 1 else 1),
                torch.full((max(K - 2, 0),), _inverse_softplus(_INITIAL_GAP - _MIN_GAP)),
                torch.full((K,), _inverse_softplus(1 - _MIN_SLOPE)),
                torch.full((K - 1,), _inverse_softplus(_INITIAL_JUMP)),
            ]
        )
        with torch.no_grad():
            self.conditioner.final_layer.weight.zero_()
            self.conditioner.final_layer.bias.copy_(bias.repeat(self.transformed_features))
        self.gate = None
        if K > 1:
            self.gate = ResidualNet(D, self.transformed_features * K, hidden)
            with torch.no_grad():
                self.gate.final_layer.weight.zero_()
                self.gate.final_layer.bias.zero_()

    # ------------------------------------------------------------------ the piecewise functions
    def pieces(self, x_a: Tensor) -> _Pieces:
        """The piecewise functions given the unchanged features x_a (N, D_a)."""
        K = self.num_pieces
        if self.identity_features == 0:  # D = 1: a constant input, so the parameters are free
            x_a = torch.ones(x_a.shape[0], 1, dtype=x_a.dtype, device=x_a.device)
        params = self.conditioner(x_a).unflatten(-1, (self.transformed_features, 3 * K - 1))  # (N, D_b, 3K - 1)
        if K == 1:
            shift, raw_slopes = params.split([1, 1], dim=-1)
            slopes = F.softplus(raw_slopes) + _MIN_SLOPE
            zero = torch.zeros_like(shift)
            inf = torch.full_like(shift, math.inf)
            return _Pieces(shift[..., :0], slopes, zero, shift, -inf, inf)
        shift, location, raw_gaps, raw_slopes, raw_jumps = params.split([1, 1, K - 2, K, K - 1], dim=-1)
        slopes = F.softplus(raw_slopes) + _MIN_SLOPE  # (N, D_b, K)
        jumps = F.softplus(raw_jumps)  # (N, D_b, K - 1)
        offsets = torch.cat([torch.zeros_like(location), (F.softplus(raw_gaps) + _MIN_GAP).cumsum(-1)], -1)
        breakpoints = location + offsets - offsets[..., -1:] / 2  # (N, D_b, K - 1), centred on the location
        # Anchors piece by piece: each piece starts its jump below where the previous one ended. Computing lower
        # from upper this way (not by a cumulative sum) keeps consecutive images overlapping or touching after
        # rounding, so every z has a feasible piece.
        out_anchors = [shift[..., 0] + breakpoints[..., 0] + jumps.sum(-1) / 2]  # end of piece 0, at b_0
        uppers = [out_anchors[0]]
        for k in range(1, K):
            out_anchors.append(uppers[-1] - jumps[..., k - 1])
            if k < K - 1:
                uppers.append(out_anchors[k] + slopes[..., k] * (breakpoints[..., k] - breakpoints[..., k - 1]))
        inf = torch.full_like(uppers[0], math.inf)
        in_anchors = torch.cat([breakpoints[..., :1], breakpoints], -1)  # (N, D_b, K): p_0 = b_0, p_k = b_{k-1}
        out_anchors = torch.stack(out_anchors, -1)
        lower = torch.cat([-inf.unsqueeze(-1), out_anchors[..., 1:]], -1)
        upper = torch.stack([*uppers, inf], -1)
        return _Pieces(breakpoints, slopes, in_anchors, out_anchors, lower, upper)

    # ------------------------------------------------------------------ the map and its inverse
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (N, D) -> (z (N, D), pieces k (N, D_b) int64, log|det ∂z/∂x| (N,))."""
        z, k, log_det, _ = self._forward(x)
        return z, k, log_det

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, _Pieces]:
        x_a, u = x.split([self.identity_features, self.transformed_features], dim=-1)
        pieces = self.pieces(x_a)
        k = pieces.index(u)
        slope, in_anchor, out_anchor = pieces.select(k)
        z_b = out_anchor + slope * (u - in_anchor)
        return torch.cat([x_a, z_b], -1), k, torch.log(slope).sum(-1), pieces

    def inverse(self, z: Tensor, k: Tensor) -> Tensor:
        """The x with forward(x) = (z, k): z (N, D), pieces k (N, D_b) -> x (N, D). Meaningful only for pieces
        whose image contains z (`feasible`)."""
        return self._inverse(z, k, self.pieces(z[..., : self.identity_features]))

    def _inverse(self, z: Tensor, k: Tensor, pieces: _Pieces) -> Tensor:
        z_a, z_b = z.split([self.identity_features, self.transformed_features], dim=-1)
        slope, in_anchor, out_anchor = pieces.select(k)
        return torch.cat([z_a, in_anchor + (z_b - out_anchor) / slope], -1)

    def feasible(self, z: Tensor) -> Tensor:
        """Whether each piece's image contains z_b: (N, D_b, K) bool."""
        z_a, z_b = z.split([self.identity_features, self.transformed_features], dim=-1)
        return self.pieces(z_a).feasible(z_b)

    # ------------------------------------------------------------------ the gate
    def gate_log_prob(self, z: Tensor) -> Tensor:
        """log p(k | z) for every piece: z (N, D) -> (N, D_b, K), -∞ for pieces whose image does not contain z_b."""
        return self._gate_log_prob(z, self.feasible(z))

    def _gate_log_prob(self, z: Tensor, feasible: Tensor) -> Tensor:
        if self.gate is None:
            return z.new_zeros(z.shape[0], self.transformed_features, 1)
        logits = self.gate(z).unflatten(-1, (self.transformed_features, self.num_pieces))  # (N, D_b, K)
        return torch.log_softmax(logits.masked_fill(~feasible, -math.inf), dim=-1)

    def sample_pieces(self, z: Tensor) -> Tensor:
        """k ~ p(k | z) for each transformed feature: z (N, D) -> (N, D_b) int64, with torch's global RNG."""
        return self._sample_pieces(z, self.feasible(z))

    def _sample_pieces(self, z: Tensor, feasible: Tensor) -> Tensor:
        probs = self._gate_log_prob(z, feasible).exp().detach().flatten(0, 1)  # (N D_b, K)
        return torch.multinomial(probs, 1).view(z.shape[0], self.transformed_features)

    # ------------------------------------------------------------------ what RAD uses: one pass each way
    def log_prob_terms(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (N, D) -> (z (N, D), log|det ∂z/∂x| (N,), log p(k(x) | z) (N,)). The piece x lies in always counts as
        feasible, so that rounding at an image's end cannot make its gate probability 0."""
        z, k, log_det, pieces = self._forward(x)
        feasible = pieces.feasible(z[..., self.identity_features :]) | F.one_hot(k, self.num_pieces).bool()
        log_gate = self._gate_log_prob(z, feasible).gather(-1, k.unsqueeze(-1)).squeeze(-1)  # (N, D_b)
        return z, log_det, log_gate.sum(-1)

    def sample_inverse(self, z: Tensor) -> Tensor:
        """Draw k ~ p(k | z) and return f⁻¹(z; k): z (N, D) -> x (N, D)."""
        pieces = self.pieces(z[..., : self.identity_features])
        k = self._sample_pieces(z, pieces.feasible(z[..., self.identity_features :]))
        return self._inverse(z, k, pieces)


class RAD(Distribution):
    """A RAD flow over ℝᴰ: L piecewise-invertible coupling layers with gating networks over a standard normal
    (module docstring). An nflows `Distribution`: `log_prob(x)` is exact, `sample(n)` exact; `fit` trains it.

    Args:
        features: D.
        num_pieces: K ≥ 1 pieces per transformed feature and layer (K = 1: an affine coupling flow).
        num_layers: L.
        hidden_features: width of every conditioner and gating network.

    Unconditional only: a context raises ValueError.
    """

    def __init__(self, features: int, *, num_pieces: int = 2, num_layers: int = 4, hidden_features: int = 64) -> None:
        super().__init__()
        self.features = check_positive_int("features", features)
        self.num_pieces = check_positive_int("num_pieces", num_pieces)
        self.num_layers = check_positive_int("num_layers", num_layers)
        check_positive_int("hidden_features", hidden_features)
        self.layers = nn.ModuleList(
            RADCoupling(features, num_pieces, hidden_features=hidden_features) for _ in range(num_layers)
        )

    # ------------------------------------------------------------------ validation
    def _reference_parameter(self) -> Tensor:
        return self.layers[0].conditioner.final_layer.weight

    def _check_inputs(self, inputs: Tensor, name: str = "inputs") -> Tensor:
        inputs = check_features(name, torch.as_tensor(inputs), self.features)
        reference = self._reference_parameter()
        if inputs.dtype != reference.dtype or inputs.device != reference.device:
            raise ValueError(
                f"{name} have dtype {inputs.dtype} on {inputs.device} but the model's parameters are "
                f"{reference.dtype} on {reference.device}; move one of them with .to(...)"
            )
        return inputs

    @staticmethod
    def _check_context(context: Tensor | None) -> None:
        check_context(None if context is None else torch.as_tensor(context), None, None)  # RAD is unconditional

    def _check_pieces(self, pieces: Tensor, rows: int) -> Tensor:
        pieces = torch.as_tensor(pieces)
        shape = (rows, self.num_layers, self.layers[0].transformed_features)
        if pieces.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise ValueError(f"pieces must be an integer tensor; got dtype {pieces.dtype}")
        if tuple(pieces.shape) != shape:
            raise ValueError(f"pieces must have shape (N, L, D_b) = {shape}; got {tuple(pieces.shape)}")
        if pieces.numel() and (pieces.min() < 0 or pieces.max() >= self.num_pieces):
            low, high = int(pieces.min()), int(pieces.max())
            raise ValueError(f"pieces must lie in [0, {self.num_pieces}); got values in [{low}, {high}]")
        return pieces.long().to(self._reference_parameter().device)

    # ------------------------------------------------------------------ inference: x -> (z, k)
    @staticmethod
    def _reorder(x: Tensor, index: int) -> Tensor:
        """Reverse the feature order between layers (before layer `index` going forward, after it going back), so
        that consecutive layers transform complementary features."""
        return x.flip(-1) if index > 0 else x

    def latent(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """Exact inference: x (N, D) -> (z (N, D) the continuous latent, pieces (N, L, D_b) int64, the discrete one)."""
        x = self._check_inputs(inputs)
        pieces = []
        for index, layer in enumerate(self.layers):
            x, k, _ = layer(self._reorder(x, index))
            pieces.append(k)
        return x, torch.stack(pieces, 1)

    def _log_prob(self, inputs: Tensor, context: Tensor | None) -> Tensor:
        """log p(x) = log N(z_L; 0, I) + Σ_l [log p_l(k_l | z_l) + log|det|]: x (N, D) -> (N,)."""
        self._check_context(context)
        x = self._check_inputs(inputs)
        total = x.new_zeros(x.shape[0])
        for index, layer in enumerate(self.layers):
            x, log_det, log_gate = layer.log_prob_terms(self._reorder(x, index))
            total = total + log_det + log_gate
        return total - 0.5 * (x.square().sum(-1) + self.features * _LOG_2PI)

    # ------------------------------------------------------------------ generation: (z, k) -> x
    def generate(self, z: Tensor, pieces: Tensor) -> Tensor:
        """The inverse of `latent`: z (N, D) and pieces (N, L, D_b) -> x (N, D). Raises ValueError if a piece's
        image does not contain the value it is asked to invert (such (z, k) have probability zero)."""
        z = self._check_inputs(z, "z")
        pieces = self._check_pieces(pieces, z.shape[0])
        for index in reversed(range(self.num_layers)):
            layer, k = self.layers[index], pieces[:, index]
            feasible = layer.feasible(z).gather(-1, k.unsqueeze(-1)).squeeze(-1)
            if not feasible.all():
                raise ValueError(
                    f"pieces of layer {index} do not contain their values in {int((~feasible).sum())} place(s): "
                    "p(k | z) = 0 there, so no x maps to this (z, k)"
                )
            z = self._reorder(layer.inverse(z, k), index)
        return z

    def _sample(self, num_samples: int, context: Tensor | None) -> Tensor:
        """Ancestral sampling: z ~ N(0, I), then per layer from the last, k ~ p(k | z) and z <- f⁻¹(z; k).
        Reparameterised given the drawn pieces; the draw of pieces passes no gradient."""
        self._check_context(context)
        reference = self._reference_parameter()
        z = torch.randn(num_samples, self.features, dtype=reference.dtype, device=reference.device)
        for index in reversed(range(self.num_layers)):
            layer = self.layers[index]
            z = self._reorder(layer.sample_inverse(z), index)
        return z

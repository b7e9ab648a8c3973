"""`RAD`: Real-and-Discrete flows (Dinh, Sohl-Dickstein, Larochelle and Pascanu, "A RAD approach to deep mixture
models", 2019, arXiv:1903.07714): coupling layers whose coordinate maps are continuous, piecewise linear and fold the
line, with the piece as a discrete latent per transformed coordinate and layer.

Shapes: N batch, D features, L layers, K pieces, B branches (below), D_a = ⌊D/2⌋ features each layer leaves
unchanged, D_b = D - D_a features it transforms.

The model
---------
Each layer maps x (N, D) to z = (x_a, h(x_b; x_a)), where h acts on each transformed feature u = x_b,i by a
continuous piecewise-linear function of u whose breakpoints and slopes come from a network of x_a. The real line is
partitioned into K intervals A_0 = (-∞, b_0), A_1 = [b_0, b_1), …, A_{K-1} = [b_{K-2}, ∞); on A_k the function is
affine with slope of sign s_k, so each piece is injective, but where consecutive slopes have opposite signs the
function folds the line and the images h(A_k) overlap: h is piecewise invertible, not invertible. The piece index
k_i(x) is a discrete latent, known exactly from x (exact inference). A gating network gives p(k | z), which is zero
for a piece whose image does not contain z_b,i, so that (z, k) ↦ x is a bijection onto ℝᴰ and

    log p(x) = log N(z_L; 0, I) + Σ_l [ log p_l(k_l(x) | z_l) + log |det ∂z_l/∂z_{l-1}| ],   z_0 = x,

with no sum over k. Sampling is ancestral and exact: z_L ~ N(0, I); for l = L…1, k_l ~ p_l(k | z_l) (only pieces
whose image holds z_l), z_{l-1} = h_l⁻¹ restricted to the pieces k_l. `RAD.latent(x)` gives (z_L, the pieces of
every layer), `RAD.assign(x)` the pieces alone, and `RAD.generate(z, pieces)` inverts `latent`.

One transformed feature: the piecewise-linear function
------------------------------------------------------
A sign pattern s = (s_0, …, s_{K-1}) ∈ {+1, -1}ᴷ is fixed when the layer is built: "alternating" (+1, -1, +1, …, the
default), "increasing" (all +1: a monotone piecewise-linear bijection, a labelled variant without folds) or any
sequence. The conditioner gives 2K numbers per transformed feature: a shift t and K raw slopes, and for K ≥ 2 a
location c and K - 2 raw gaps. Slopes are s_k a_k with a_k = softplus(·) + 10⁻³; the breakpoints b_0 < … < b_{K-2}
are centred on c with gaps softplus(·) + 10⁻³. The function is continuous by construction: with V_j = h(b_j),

    V_j = V_{j-1} + s_j a_j (b_j - b_{j-1}),   shifted so that (V_0 + V_{K-2}) / 2 = t,
    h(u) = V_{k-1} + s_k a_k (u - b_{k-1})  on A_k  (k ≥ 1),   h(u) = V_0 + s_0 a_0 (u - b_0)  on A_0,

log |h'(u)| = log a_k, and the inverse of piece k is u = b_{k-1} + (z - V_{k-1}) / (s_k a_k) (b_0, V_0 for k = 0).
K = 1 is h(u) = t + s_0 a_0 u: an affine coupling (RealNVP with a softplus scale). The outer pieces run to ±∞, so
piece k's image is the interval between h at the ends of A_k, with h(-∞) = -s_0 ∞ and h(∞) = s_{K-1} ∞, in closed
form. h is onto ℝ exactly when its two outer pieces run to opposite infinities, s_0 = s_{K-1}: with alternating
signs, for odd K; an even K or a pattern with s_0 ≠ s_{K-1} raises ValueError (every z must have a piece).

Branches are the maximal runs of consecutive pieces with the same sign: h is monotone on each, and turns at the
B - 1 breakpoints between them (the folds; B = K for alternating signs, B = 1 for "increasing"). Within a branch
the pieces' images are consecutive and disjoint (half-open, as the pieces), so a value z_b,i lies in the image of at
most one piece of each branch, and the gate chooses a branch.

The gate
--------
The gating network sees the whole layer output z = (z_a, z_b) (all of it is known when sampling) and gives B
logits ℓ per transformed feature; p(k | z) = Π_i p(k_i | z) with, for branch β with image [lo_β, hi_β],

    p(β | z) ∝ exp(ℓ_β(z)) w_β(z_b,i),   w_β(v) = (v - lo_β)(hi_β - v) / (hi_β - lo_β) for lo_β ≤ v ≤ hi_β, else 0,

(w_β(v) = v - lo_β or hi_β - v when the other end is infinite), given to the piece of β whose image holds z_b,i.
Infeasible pieces get probability exactly 0 (log-probability -∞). With gating="continuous" (the default) the
window w fades linearly to 0 at each finite end of a branch's image, where another branch's image continues, so
p(k | z) is continuous in z; as h is continuous, so is p(x): it reaches 0 at the folds (x at a breakpoint between
two branches), which is how RAD separates modes, and is continuous across the ends of other branches' images. Across
a breakpoint inside a branch (a pattern with equal consecutive signs, e.g. "increasing") p(x) jumps by the ratio of
the two slopes, as the density of any piecewise-linear bijection does. gating="masked" is the labelled variant
without the window (w = 1 on the image): a softmax over the feasible branches, whose density jumps where an image
ends (by a factor 3 at the ends of a new K = 3 layer's overlap).

What follows the descriptions of RAD, and what this module chooses
------------------------------------------------------------------
No implementation of the paper is public, and its method section could not be obtained here (only its abstract and
introduction). From the descriptions available (the abstract; the Kobyzev–Prince–Brubaker survey's piecewise
monotone couplings on a partition of the line; Cornish et al. 2020 on RAD's parametrisation for continuity) this
module takes: the real-and-discrete latent (z, k) with exact inference and sampling, domain partitioning by locally
invertible coupling functions, a gate that is zero off a piece's image, log p(x) as above, a standard normal base,
RealNVP-style coupling layers, and a continuous piecewise-linear coordinate map whose alternating slopes fold the
line (three pieces up-down-up turn one Gaussian into three modes). This module's own choices:

- Parameterisation: softplus slopes and gaps with a 10⁻³ floor (as `build_flow`'s affine couplings); the shift t
  pins the mean of h at the outer breakpoints; the sign pattern is fixed, not learnt. Every piece parameter comes
  from one nflows `ResidualNet` per layer (two residual blocks of width `hidden_features`, ReLU).
- The gate: one logit per branch from its own `ResidualNet` of the whole z, and the window w above (its linear fade
  and the harmonic form are this module's; the paper's gate is not known here). The piece x lies in always counts
  as feasible, and distances to an image's end are floored at the dtype's smallest normal number, so rounding at an
  image's end can never make log p(x) = -∞ or give a non-finite gradient.
- Partition conventions: pieces are half-open intervals [b_{k-1}, b_k), and so are their images; branch images are
  closed. Boundaries have measure zero, so the density is unaffected.
- Layout: the first D_a = ⌊D/2⌋ features pass unchanged and condition the rest; the feature order is reversed
  between consecutive layers (RealNVP's alternating masks); with D = 1 the conditioner sees a constant input, so its
  piece parameters are free parameters of the layer. z_L is in the order of the last layer (the base is isotropic).
- Base: a fixed standard normal, as in the paper. No multi-scale architecture, batch normalisation or dequantisation
  (the paper's image models): this is the tabular / toy-density model the mixture base is compared with.
- Initialisation: the last layers of the conditioners and gating networks start at zero, with biases giving unit
  slope magnitudes, gaps of ½ and no shift, and logits 0. A new layer with "increasing" signs (or K = 1) is the
  identity; with folds it cannot be, and every layer starts as the same mild fold around 0 (for K = 3: pieces
  u + ½, -u, u - ½ with breakpoints ±¼, images overlapping on [-¼, ¼]).
- Gradients through samples: `sample` is reparameterised given the drawn pieces (x is a differentiable function of
  z and of the parameters for fixed k), but the choice of pieces is a discrete draw and passes no gradient; training
  is by exact maximum likelihood (`log_prob`), which needs none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from nflows.distributions import Distribution
from nflows.nn.nets import ResidualNet
from torch import Tensor, nn
from torch.nn import functional as F

from ..checks import check_choice, check_context, check_features, check_positive_int

__all__ = ["RAD", "RADCoupling"]

SIGN_PATTERNS = ("alternating", "increasing")
GATINGS = ("continuous", "masked")
_MIN_SLOPE = 1e-3  # floor on the pieces' slope magnitudes
_MIN_GAP = 1e-3  # floor on the gaps between breakpoints
_INITIAL_GAP = 0.5  # distance between consecutive breakpoints of a new layer
_LOG_2PI = math.log(2 * math.pi)


def _inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


def _sign_pattern(signs: str | Sequence[int], num_pieces: int) -> tuple[int, ...]:
    """The slope signs (s_0, …, s_{K-1}) named by `signs`; ValueError unless h can be onto ℝ (s_0 = s_{K-1})."""
    K = num_pieces
    if isinstance(signs, str):
        check_choice("signs", signs, SIGN_PATTERNS)
        if signs == "increasing":
            return (1,) * K
        if K % 2 == 0:
            raise ValueError(
                f"signs='alternating' needs an odd num_pieces: with {K} pieces the outer pieces run to the same "
                "infinity, so h is not onto ℝ and some z would have no piece; use an odd num_pieces or "
                "signs='increasing'"
            )
        return tuple(1 if k % 2 == 0 else -1 for k in range(K))
    try:
        pattern = tuple(signs)
    except TypeError:
        raise ValueError(f"signs must be 'alternating', 'increasing' or a sequence of ±1; got {signs!r}") from None
    if len(pattern) != K or any(isinstance(s, bool) or s not in (1, -1) for s in pattern):
        raise ValueError(f"signs must be a sequence of num_pieces = {K} values, each +1 or -1; got {signs!r}")
    if pattern[0] != pattern[-1]:
        raise ValueError(
            f"signs {pattern} cannot cover ℝ: the first and last slopes must have the same sign, so that the outer "
            "pieces run to opposite infinities"
        )
    return tuple(int(s) for s in pattern)


@dataclass
class _Pieces:
    """The piecewise-linear functions of one layer, one per (row, transformed feature), and their images.

    Shapes (N, D_b, K - 1) for the breakpoints, (N, D_b, K) for the pieces, (N, D_b, K + 1) for the values
    h(-∞), V_0, …, V_{K-2}, h(∞), (N, D_b, B) for the branch images. Piece k is z = out_anchor_k + slope_k
    (u - in_anchor_k) on [breakpoint_{k-1}, breakpoint_k); its image runs from values_k (closed) to values_{k+1}
    (open). `branch_lower`/`branch_upper` are the ends of each branch's (closed) image, infinite for the outer ones.
    """

    breakpoints: Tensor
    slopes: Tensor
    in_anchors: Tensor
    out_anchors: Tensor
    values: Tensor
    branch_lower: Tensor
    branch_upper: Tensor

    def index(self, u: Tensor) -> Tensor:
        """The piece each u (N, D_b) lies in: the number of breakpoints ≤ u, (N, D_b) int64."""
        return (u.unsqueeze(-1) >= self.breakpoints).sum(-1)

    def select(self, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(slope, in_anchor, out_anchor) of pieces k (N, D_b), each (N, D_b)."""
        k = k.unsqueeze(-1)
        return tuple(t.gather(-1, k).squeeze(-1) for t in (self.slopes, self.in_anchors, self.out_anchors))

    def holds(self, z: Tensor) -> Tensor:
        """Whether each piece's half-open image holds z (N, D_b): (N, D_b, K) bool (at most one per branch)."""
        z = z.unsqueeze(-1)  # (N, D_b, 1) against (N, D_b, K)
        sign = torch.sign(self.slopes)
        start, end = self.values[..., :-1], self.values[..., 1:]
        return (sign * (z - start) >= 0) & (sign * (end - z) > 0)

    def feasible(self, z: Tensor) -> Tensor:
        """Whether each piece's closed image contains z (N, D_b): (N, D_b, K) bool."""
        z = z.unsqueeze(-1)
        start, end = self.values[..., :-1], self.values[..., 1:]
        return (z >= torch.minimum(start, end)) & (z <= torch.maximum(start, end))


class RADCoupling(nn.Module):
    """One RAD layer: a coupling by continuous piecewise-linear functions, with its gating network p(k | z).

    Args:
        features: D.
        num_pieces: K ≥ 1 pieces per transformed feature.
        hidden_features: width of the conditioner and gating networks.
        signs: the slopes' signs (s_0, …, s_{K-1}): "alternating" (default; needs an odd K), "increasing" (no
            folds), or a sequence of K values ±1 with s_0 = s_{K-1}.
        gating: "continuous" (default: p(k | z) fades to 0 at the ends of a piece's image, so p(x) is continuous)
            or "masked" (a softmax over the feasible branches, discontinuous where an image ends).

    `forward(x)` gives (z, k, log|det|) and `inverse(z, k)` undoes it; `feasible(z)` says which pieces' images hold
    z; `gate_log_prob(z)` gives log p(k | z) and `sample_pieces(z)` draws from it. `log_prob_terms(x)` and
    `sample_inverse(z)` do what `RAD` needs with one pass of the conditioner each.
    """

    def __init__(
        self,
        features: int,
        num_pieces: int = 3,
        *,
        hidden_features: int = 64,
        signs: str | Sequence[int] = "alternating",
        gating: str = "continuous",
    ) -> None:
        super().__init__()
        self.features = check_positive_int("features", features)
        self.num_pieces = check_positive_int("num_pieces", num_pieces)
        hidden = check_positive_int("hidden_features", hidden_features)
        self.signs = _sign_pattern(signs, num_pieces)
        self.gating = check_choice("gating", gating, GATINGS)
        D, K = features, num_pieces
        self.identity_features = D // 2  # D_a
        self.transformed_features = D - D // 2  # D_b

        # the branches: maximal runs of equal signs, as (first piece, last piece)
        folds = [j for j in range(K - 1) if self.signs[j] != self.signs[j + 1]]  # breakpoints between branches
        firsts, lasts = [0, *(j + 1 for j in folds)], [*folds, K - 1]
        self.branches = tuple(zip(firsts, lasts))
        self.num_branches = len(self.branches)  # B
        self._branch_of_piece = [b for b, (first, last) in enumerate(self.branches) for _ in range(first, last + 1)]
        # a branch's image runs between the values at its domain's ends, indices first and last + 1 of `values`
        self._branch_lower_index = [f if self.signs[f] > 0 else last + 1 for f, last in self.branches]
        self._branch_upper_index = [last + 1 if self.signs[f] > 0 else f for f, last in self.branches]

        self.conditioner = ResidualNet(max(self.identity_features, 1), self.transformed_features * 2 * K, hidden)
        # per transformed feature: [shift t, K raw slopes, location c, K - 2 raw gaps] (K = 1: [t, raw slope])
        bias = torch.cat(
            [
                torch.zeros(1),
                torch.full((K,), _inverse_softplus(1 - _MIN_SLOPE)),
                torch.zeros(1 if K > 1 else 0),
                torch.full((max(K - 2, 0),), _inverse_softplus(_INITIAL_GAP - _MIN_GAP)),
            ]
        )
        with torch.no_grad():
            self.conditioner.final_layer.weight.zero_()
            self.conditioner.final_layer.bias.copy_(bias.repeat(self.transformed_features))
        self.gate = None
        if self.num_branches > 1:
            self.gate = ResidualNet(D, self.transformed_features * self.num_branches, hidden)
            with torch.no_grad():
                self.gate.final_layer.weight.zero_()
                self.gate.final_layer.bias.zero_()

    # ------------------------------------------------------------------ the piecewise functions
    def pieces(self, x_a: Tensor) -> _Pieces:
        """The piecewise functions given the unchanged features x_a (N, D_a)."""
        K = self.num_pieces
        if self.identity_features == 0:  # D = 1: a constant input, so the parameters are free
            x_a = torch.ones(x_a.shape[0], 1, dtype=x_a.dtype, device=x_a.device)
        params = self.conditioner(x_a).unflatten(-1, (self.transformed_features, 2 * K))  # (N, D_b, 2K)
        signs = torch.tensor(self.signs, dtype=params.dtype, device=params.device)  # (K,)
        shift, raw_slopes, rest = params.split([1, K, K - 1], dim=-1)
        slopes = signs * (F.softplus(raw_slopes) + _MIN_SLOPE)  # (N, D_b, K)
        infinity = torch.full_like(shift, math.inf)
        ends = (-self.signs[0] * infinity, self.signs[-1] * infinity)  # h(-∞), h(∞): (N, D_b, 1) each
        if K == 1:
            breakpoints, in_anchors, out_anchors = shift[..., :0], torch.zeros_like(shift), shift
            values = torch.cat([ends[0], ends[1]], -1)
        else:
            location, raw_gaps = rest.split([1, K - 2], dim=-1)
            offsets = torch.cat([torch.zeros_like(location), (F.softplus(raw_gaps) + _MIN_GAP).cumsum(-1)], -1)
            breakpoints = location + offsets - offsets[..., -1:] / 2  # (N, D_b, K - 1), centred on the location
            # V_j - V_0 by the middle pieces, then shifted so that (V_0 + V_{K-2}) / 2 = t
            rises = slopes[..., 1:-1] * breakpoints.diff(dim=-1)  # (N, D_b, K - 2)
            partial = torch.cat([torch.zeros_like(shift), rises.cumsum(-1)], -1)  # (N, D_b, K - 1)
            inner = shift + partial - partial[..., -1:] / 2  # V_0, …, V_{K-2}
            in_anchors = torch.cat([breakpoints[..., :1], breakpoints], -1)  # (N, D_b, K): b_0, b_0, …, b_{K-2}
            out_anchors = torch.cat([inner[..., :1], inner], -1)  # V_0, V_0, …, V_{K-2}
            values = torch.cat([ends[0], inner, ends[1]], -1)  # (N, D_b, K + 1)
        return _Pieces(
            breakpoints,
            slopes,
            in_anchors,
            out_anchors,
            values,
            values[..., self._branch_lower_index],
            values[..., self._branch_upper_index],
        )

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
        return torch.cat([x_a, z_b], -1), k, torch.log(slope.abs()).sum(-1), pieces

    def inverse(self, z: Tensor, k: Tensor) -> Tensor:
        """The x with forward(x) = (z, k): z (N, D), pieces k (N, D_b) -> x (N, D). Meaningful only for pieces
        whose image contains z (`feasible`)."""
        return self._inverse(z, k, self.pieces(z[..., : self.identity_features]))

    def _inverse(self, z: Tensor, k: Tensor, pieces: _Pieces) -> Tensor:
        z_a, z_b = z.split([self.identity_features, self.transformed_features], dim=-1)
        slope, in_anchor, out_anchor = pieces.select(k)
        return torch.cat([z_a, in_anchor + (z_b - out_anchor) / slope], -1)

    def feasible(self, z: Tensor) -> Tensor:
        """Whether each piece's (closed) image contains z_b: (N, D_b, K) bool."""
        z_a, z_b = z.split([self.identity_features, self.transformed_features], dim=-1)
        return self.pieces(z_a).feasible(z_b)

    # ------------------------------------------------------------------ the gate
    def _branch_log_prob(self, z: Tensor, pieces: _Pieces, actual: Tensor | None = None) -> Tensor:
        """log p(β | z) for every branch: (N, D_b, B), -∞ where z_b lies outside the branch's image. `actual`
        (N, D_b), the branch x came from, counts as feasible whatever the rounding."""
        if self.gate is None:
            return z.new_zeros(z.shape[0], self.transformed_features, 1)
        v = z[..., self.identity_features :].unsqueeze(-1)  # (N, D_b, 1) against (N, D_b, B)
        lower, upper = pieces.branch_lower, pieces.branch_upper
        feasible = (v >= lower) & (v <= upper)
        if actual is not None:
            feasible = feasible | F.one_hot(actual, self.num_branches).bool()
        scores = self.gate(z).unflatten(-1, (self.transformed_features, self.num_branches))  # logits (N, D_b, B)
        if self.gating == "continuous":
            # log w = log d_lo + log d_hi - log(d_lo + d_hi), a finite end's term only; distances floored
            tiny = torch.finfo(z.dtype).tiny
            lower_finite, upper_finite = torch.isfinite(lower), torch.isfinite(upper)
            d_lower = torch.where(lower_finite & feasible, v - lower, 1.0).clamp_min(tiny)
            d_upper = torch.where(upper_finite & feasible, upper - v, 1.0).clamp_min(tiny)
            log_window = torch.where(lower_finite, d_lower.log(), 0.0) + torch.where(upper_finite, d_upper.log(), 0.0)
            log_window = log_window - torch.where(lower_finite & upper_finite, (d_lower + d_upper).log(), 0.0)
            scores = scores + log_window
        return torch.log_softmax(scores.masked_fill(~feasible, -math.inf), dim=-1)

    def _piece_of_branch(self, z_b: Tensor, branch: Tensor, pieces: _Pieces) -> Tensor:
        """The piece of branch `branch` (N, D_b) whose image holds z_b (N, D_b): (N, D_b) int64 (the closed image
        decides at the branch's open end)."""
        branch_of_piece = torch.tensor(self._branch_of_piece, device=z_b.device)  # (K,)
        member = branch_of_piece == branch.unsqueeze(-1)  # (N, D_b, K)
        holds = member & pieces.holds(z_b)
        closed = member & pieces.feasible(z_b)
        chosen = torch.where(holds.any(-1, keepdim=True), holds, closed)
        return chosen.to(torch.uint8).argmax(-1)

    def gate_log_prob(self, z: Tensor) -> Tensor:
        """log p(k | z) for every piece: z (N, D) -> (N, D_b, K), -∞ for pieces whose image does not hold z_b (in
        each feasible branch, the one piece whose half-open image holds z_b gets the branch's probability)."""
        pieces = self.pieces(z[..., : self.identity_features])
        z_b = z[..., self.identity_features :]
        log_branch = self._branch_log_prob(z, pieces)  # (N, D_b, B)
        branch_of_piece = torch.tensor(self._branch_of_piece, device=z.device)
        log_piece = log_branch[..., branch_of_piece]  # (N, D_b, K)
        holds = pieces.holds(z_b)
        # at a branch's open end no piece's half-open image holds z_b: the closed one decides, as in sampling
        members = F.one_hot(branch_of_piece, self.num_branches).to(z.dtype)  # (K, B)
        unheld = (holds.to(z.dtype) @ members == 0)[..., branch_of_piece]  # (N, D_b, K)
        chosen = holds | (unheld & pieces.feasible(z_b))
        return log_piece.masked_fill(~chosen, -math.inf)

    def sample_pieces(self, z: Tensor) -> Tensor:
        """k ~ p(k | z) for each transformed feature: z (N, D) -> (N, D_b) int64, with torch's global RNG."""
        return self._sample_pieces(z, self.pieces(z[..., : self.identity_features]))

    def _sample_pieces(self, z: Tensor, pieces: _Pieces) -> Tensor:
        probs = self._branch_log_prob(z, pieces).exp().detach().flatten(0, 1)  # (N D_b, B)
        branch = torch.multinomial(probs, 1).view(z.shape[0], self.transformed_features)
        return self._piece_of_branch(z[..., self.identity_features :], branch, pieces)

    # ------------------------------------------------------------------ what RAD uses: one pass each way
    def log_prob_terms(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (N, D) -> (z (N, D), log|det ∂z/∂x| (N,), log p(k(x) | z) (N,))."""
        z, k, log_det, pieces = self._forward(x)
        branch = torch.tensor(self._branch_of_piece, device=x.device)[k]  # (N, D_b)
        log_gate = self._branch_log_prob(z, pieces, branch).gather(-1, branch.unsqueeze(-1)).squeeze(-1)
        return z, log_det, log_gate.sum(-1)

    def sample_inverse(self, z: Tensor) -> Tensor:
        """Draw k ~ p(k | z) and return h⁻¹(z; k): z (N, D) -> x (N, D)."""
        pieces = self.pieces(z[..., : self.identity_features])
        return self._inverse(z, self._sample_pieces(z, pieces), pieces)


class RAD(Distribution):
    """A RAD flow over ℝᴰ: L coupling layers of continuous piecewise-linear functions with gating networks, over a
    standard normal (module docstring). An nflows `Distribution`: `log_prob(x)` is exact (and continuous in x with
    the default signs and gating), `sample(n)` exact; `fit` trains it.

    Args:
        features: D.
        num_pieces: K ≥ 1 pieces per transformed feature and layer (K = 1: an affine coupling flow).
        num_layers: L.
        hidden_features: width of every conditioner and gating network.
        signs: the slopes' signs, shared by every layer: "alternating" (default, folding; needs an odd K),
            "increasing" (the labelled variant without folds) or a sequence of K values ±1 with s_0 = s_{K-1}.
        gating: "continuous" (default) or "masked" (the labelled variant with a density that jumps where a piece's
            image ends).

    Unconditional only: a context raises ValueError.
    """

    def __init__(
        self,
        features: int,
        *,
        num_pieces: int = 3,
        num_layers: int = 4,
        hidden_features: int = 64,
        signs: str | Sequence[int] = "alternating",
        gating: str = "continuous",
    ) -> None:
        super().__init__()
        self.features = check_positive_int("features", features)
        self.num_pieces = check_positive_int("num_pieces", num_pieces)
        self.num_layers = check_positive_int("num_layers", num_layers)
        check_positive_int("hidden_features", hidden_features)
        self.signs = _sign_pattern(signs, num_pieces)
        self.gating = check_choice("gating", gating, GATINGS)
        self.layers = nn.ModuleList(
            RADCoupling(features, num_pieces, hidden_features=hidden_features, signs=self.signs, gating=gating)
            for _ in range(num_layers)
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

    def assign(self, inputs: Tensor) -> Tensor:
        """The piece each point lies in, per layer and transformed feature: x (N, D) -> (N, L, D_b) int64 (RAD's
        partition of the input space, for figures; layer l's features are those it transforms, in its order)."""
        return self.latent(inputs)[1]

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
        """Ancestral sampling: z ~ N(0, I), then per layer from the last, k ~ p(k | z) and z <- h⁻¹(z; k).
        Reparameterised given the drawn pieces; the draw of pieces passes no gradient."""
        self._check_context(context)
        reference = self._reference_parameter()
        z = torch.randn(num_samples, self.features, dtype=reference.dtype, device=reference.device)
        for index in reversed(range(self.num_layers)):
            layer = self.layers[index]
            z = self._reorder(layer.sample_inverse(z), index)
        return z

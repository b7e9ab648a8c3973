"""The training loop the MDN training studies share: Adam on any minibatch loss, divergence recorded, not raised.

Shapes: N training pairs, B minibatch rows, D output features (y), C context features (x).

`mog_flows.fit` trains by the exact NLL only; the studies `jensen_warmup` and `collinearity` need other losses for
some or all steps (a Jensen bound first, a penalty added), so they train with `train`: Adam at a peak learning
rate decayed as lr · ½(1 + cos(π t / steps)) over the whole run (one optimiser and one schedule whatever the
loss does at each step), minibatches drawn with replacement by a generator seeded from the run's seed, and an
optional gradient-norm clip (as `fit`'s `max_grad_norm`). A non-finite loss, gradient norm or parameter, or a
`ValueError` from the library's input checks (which refuse non-finite mixture parameters), ends the run and is
returned in the `Outcome`: a study counts diverged runs instead of crashing on them.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..checks import check_optional_positive_number, check_positive_int, check_positive_number
from ..mdn import MixtureDensityNetwork
from ..runs import derive_seed

__all__ = ["Outcome", "train", "hard_start", "flat_parameters", "command_line"]

# loss(model, y (B, D), x (B, C), step) -> scalar; step counts from 0
Loss = Callable[[nn.Module, Tensor, Tensor, int], Tensor]


@dataclass
class Outcome:
    """What `train` did.

    Attributes:
        steps: completed updates.
        diverged_step: the step (from 1) whose loss, gradient or update was not finite; None if none was.
        reason: what was not finite (empty if nothing).
        eval_steps, eval_values: `evaluate(model)` after each of these steps (the last one included).
    """

    steps: int = 0
    diverged_step: int | None = None
    reason: str = ""
    eval_steps: list[int] = field(default_factory=list)
    eval_values: list[float] = field(default_factory=list)

    @property
    def diverged(self) -> bool:
        return self.diverged_step is not None


def _non_finite_parameter(model: nn.Module) -> str | None:
    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter).all():
            return name
    return None


def train(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    loss: Loss,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    max_grad_norm: float | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    eval_every: int = 100,
) -> Outcome:
    """Train `model` in place on data = (y (N, D), x (N, C)) for `steps` Adam steps of `loss`; returns the Outcome.

    `evaluate(model)` (e.g. a test NLL) runs without gradients every `eval_every` steps and after the last one; a
    non-finite value there is recorded as it is. The run stops at the first non-finite loss or gradient norm
    (before that step's update), at the first update that leaves a parameter non-finite, and at a ValueError
    raised inside `loss` (the library refuses NaN inputs): each way `Outcome.diverged_step` says which step.
    """
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    check_positive_int("eval_every", eval_every)
    check_positive_number("lr", lr)
    max_norm = check_optional_positive_number("max_grad_norm", max_grad_norm)
    y, x = data
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
    generator = torch.Generator().manual_seed(derive_seed(seed, "batches"))
    outcome = Outcome()

    def record(step: int) -> None:
        if evaluate is not None:
            model.eval()
            with torch.no_grad():
                outcome.eval_steps.append(step)
                outcome.eval_values.append(float(evaluate(model)))
            model.train()

    model.train()
    for step in range(steps):
        index = torch.randint(0, y.shape[0], (batch_size,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        try:
            value = loss(model, y[index], x[index], step)
        except ValueError as error:  # mog_flows.mdn refuses non-finite mixture parameters
            outcome.diverged_step, outcome.reason = step + 1, f"ValueError: {str(error).splitlines()[0][:120]}"
            break
        if not torch.isfinite(value):
            outcome.diverged_step, outcome.reason = step + 1, f"the minibatch loss is {value.item()}"
            break
        value.backward()
        norm = torch.nn.utils.clip_grad_norm_(parameters, math.inf if max_norm is None else max_norm).item()
        if not math.isfinite(norm):
            outcome.diverged_step, outcome.reason = step + 1, f"the gradient norm is {norm}"
            break
        optimizer.step()
        schedule.step()
        outcome.steps = step + 1
        bad = _non_finite_parameter(model)
        if bad is not None:
            outcome.diverged_step, outcome.reason = step + 1, f"parameter {bad} is not finite"
            break
        if outcome.steps % eval_every == 0 or outcome.steps == steps:
            record(outcome.steps)
    model.eval()
    return outcome


def hard_start(model: MixtureDensityNetwork, *, mean_spread: float, initial_std: float) -> MixtureDensityNetwork:
    """Make a new MDN start badly: component means drawn `mean_spread` times wider than the library's N(0, I) and
    every component sharp, U = I / initial_std (σ = initial_std along each axis). Modifies the output layer's bias
    in place (its weights start near zero, so every x starts at about this mixture) and returns the model."""
    check_positive_number("mean_spread", mean_spread)
    check_positive_number("initial_std", initial_std)
    K, D = model.num_components, model.out_features
    bias = model.net[-1].bias
    with torch.no_grad():
        bias[K : K + K * D] *= mean_spread
        raw = bias[K + K * D :].view(K, -1)  # (K, S): the packed factor entries of each component
        if model.covariance == "full":
            rows, cols = torch.triu_indices(D, D)
            raw[:, rows == cols] = -math.log(initial_std)  # U_dd = exp(raw_dd) = 1 / initial_std
        else:
            raw[:] = -math.log(initial_std)
    return model


def flat_parameters(model: nn.Module) -> Tensor:
    """Every parameter, flattened and concatenated in `named_parameters` order (P,), detached."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command a report names: `python <script>` and its arguments (sys.argv's when argv is None), without
    `--out DIR` (where the files went is not part of what they hold)."""
    words = list(sys.argv[1:] if argv is None else argv)
    kept, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word == "--out":
            skip = True
        elif not word.startswith("--out="):
            kept.append(word)
    return " ".join(["python", script, *kept])

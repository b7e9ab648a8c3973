"""Compiled training losses: the forward and backward pass of `fit`'s loss through `torch.compile`, checked against
eager code, with a fall-back to eager execution, announced by one warning, when compilation fails or disagrees.

Shapes: B minibatch rows, D features, C context features. The loss is the minibatch mean negative log-likelihood

    L = -(1/B) Σ_b log p(x_b | c_b).

What is compiled is the call `model.log_prob(x[, context])` and its mean, as a function (the model is not wrapped, so
its `state_dict` keys and checkpoints are those of an eager run); backward runs the graphs AOTAutograd derived from
it. Dynamo splits the call where Python depends on tensor values (nflows' splines test `torch.any(inside_mask)` and
index with boolean masks; such a test becomes a graph break, the code between breaks is compiled), so nflows' flows
compile piecewise rather than fail. Compiled gradients are checked against eager ones before they are used
(`TrainingLoss`). The optimiser step, gradient clipping and the gradient all-reduce of a data-parallel run stay
eager.

Random numbers: with the inductor backend the compiled graphs draw from torch's global RNG as eager code does
(inductor's `fallback_random`), so a model whose `log_prob` draws random numbers (dropout) consumes the same stream
compiled and eager, and checkpoints stay exact.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .runs import first_line

__all__ = ["TrainingLoss", "CompileFallbackWarning", "check_compile", "relative_tolerance", "VERIFY_STEPS"]

# compiled steps whose loss and gradients are checked against the eager ones at the start of each fit call
VERIFY_STEPS = 5

Forward = Callable[[Tensor, Tensor | None], Tensor]


class CompileFallbackWarning(UserWarning):
    """`fit(compile=...)` could not use the compiled loss (no C++ compiler for inductor, an operation Dynamo or the
    backend does not support, an error inside torch.compile, or a loss or gradients other than eager code computes)
    and trains eagerly instead; the message says why."""


def check_compile(value: bool | str) -> bool | str:
    """`fit`'s `compile`: False (eager), True (torch.compile's default backend, inductor), or the name of a backend
    `torch.compile` knows ("inductor", "aot_eager", "cudagraphs", ...); ValueError or TypeError otherwise."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise TypeError(f"compile must be a bool or the name of a torch.compile backend; got {type(value).__name__}")
    import torch._dynamo  # noqa: PLC0415 - the compiler stack loads only when asked for

    known = torch._dynamo.list_backends(exclude_tags=())
    if value not in known:
        raise ValueError(
            f"compile must be True, False or a torch.compile backend ({', '.join(sorted(known))}); got {value!r}"
        )
    return value


class TrainingLoss:
    """`loss_and_backward(x, context)`: the loss L of a minibatch x (B, D) (with context (B, C) or None), its
    gradients accumulated into the parameters' `.grad` when L depends on any; returns (L detached, whether it did).

    With `compile` True or a backend name the pass goes through `torch.compile`, checked before it is trusted: on
    the first `verify_steps` calls the compiled pass and the eager pass both run on the same minibatch from the same
    state (the global RNG state, CPU and `device`'s on CUDA, the floating buffers and the gradients are put back in
    between), the eager results are the ones kept, and the two must agree,

        |L_c - L_e| ≤ ρ (1 + |L_e|),  ‖g_c - g_e‖₂ ≤ ρ ‖g_e‖₂ (all parameters),  ρ = `relative_tolerance(dtype)`,

    so a compiler that computes wrong gradients is caught before any step uses them (inductor 2.13 on a CPU does so
    for nflows' rational-quadratic splines; the benchmark page of the docs). Afterwards only the compiled pass runs.

    Falling back: when the compiled pass raises, or disagrees with the eager one, the step is computed eagerly
    (from the restored state) and, when that succeeds, one `CompileFallbackWarning` says what happened and the rest
    of the run stays eager. When the eager pass fails as well, its error is raised without a warning: the failure is
    the model's own, not the compiler's. The verification steps are checked from the first step of each `fit` call;
    the spline flows start as the identity, where some wrong gradients vanish by symmetry, so more than one is
    checked.
    """

    def __init__(
        self, model: nn.Module, compile: bool | str, device: torch.device, *, verify_steps: int = VERIFY_STEPS
    ) -> None:
        self.model, self.device = model, device
        self.requested = compile
        self.compiled: Forward | None = None
        self.failure: str | None = None  # why compilation was given up, once it was
        self.unverified = verify_steps  # compiled calls still to be checked against eager ones
        if compile is not False:
            self.compiled = self._compile(compile)

    def _forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        log_p = self.model.log_prob(x) if context is None else self.model.log_prob(x, context=context)
        return -log_p.mean()

    def _compile(self, compile: bool | str) -> Forward | None:
        backend = "inductor" if compile is True else compile
        # inductor draws random numbers as eager code does, so the RNG streams (and checkpoints) stay the same
        options = {"fallback_random": True} if backend == "inductor" else None
        try:
            return torch.compile(self._forward, backend=backend, options=options)
        except Exception as error:  # e.g. Dynamo unsupported on this Python
            self._give_up(f"{_reason(error)}")
            return None

    @property
    def is_compiled(self) -> bool:
        """Whether the next step goes through torch.compile."""
        return self.compiled is not None

    def loss_and_backward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, bool]:
        if self.compiled is None:
            return self._run(self._forward, x, context)
        saved = self._snapshot()
        try:
            compiled = self._run(self.compiled, x, context)
        except Exception as error:
            self._restore(saved)
            result = self._run(self._forward, x, context)  # raises the model's own error if eager fails too
            self._give_up(_reason(error))
            return result
        if self.unverified <= 0:
            return compiled
        self.unverified -= 1
        compiled_grads = [p.grad for p in self.model.parameters()]
        self._restore(saved)
        eager = self._run(self._forward, x, context)
        disagreement = _disagreement(compiled, compiled_grads, eager, [p.grad for p in self.model.parameters()])
        if disagreement is not None:
            self._give_up(disagreement)
        return eager

    @staticmethod
    def _run(forward: Forward, x: Tensor, context: Tensor | None) -> tuple[Tensor, bool]:
        loss = forward(x, context)
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise ValueError(f"the loss must be a scalar tensor; got {loss!r}")
        trainable = loss.requires_grad
        if trainable:
            loss.backward()
        return loss.detach(), trainable

    def _give_up(self, why: str) -> None:
        self.compiled, self.failure = None, why
        warnings.warn(
            f"fit(compile={self.requested!r}) could not use the compiled loss and trains eagerly instead ({why}). "
            "The run is the eager one; pass compile=False to silence this.",
            CompileFallbackWarning,
            stacklevel=3,
        )

    def _snapshot(self) -> tuple:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        buffers = {name: b.detach().clone() for name, b in self.model.named_buffers() if b.is_floating_point()}
        grads = [(p, None if p.grad is None else p.grad.detach().clone()) for p in self.model.parameters()]
        return torch.get_rng_state(), cuda, buffers, grads

    def _restore(self, saved: tuple) -> None:
        cpu, cuda, buffers, grads = saved
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.device)
        with torch.no_grad():
            for name, buffer in self.model.named_buffers():
                if name in buffers:
                    buffer.copy_(buffers[name])
        for parameter, grad in grads:
            parameter.grad = grad


def relative_tolerance(dtype: torch.dtype) -> float:
    """ρ of the verification: 10⁴ machine epsilons of the loss's dtype (1.2e-3 in float32, 2.2e-12 in float64), far
    above the rounding differences of fused kernels and far below the errors of a miscompiled gradient."""
    return 1e4 * torch.finfo(dtype).eps


def _disagreement(compiled, compiled_grads, eager, eager_grads) -> str | None:
    """Why the compiled (loss, trainable) and gradients differ from the eager ones beyond ρ, or None."""
    (loss_c, trainable_c), (loss_e, trainable_e) = compiled, eager
    rho = relative_tolerance(loss_e.dtype)
    if trainable_c != trainable_e:
        return "the compiled loss and the eager one disagree on whether it depends on the parameters"
    gap = (loss_c - loss_e).abs().item()
    if not gap <= rho * (1 + loss_e.abs().item()):
        return f"the compiled loss {loss_c.item():.10g} differs from the eager {loss_e.item():.10g}"
    pairs = [(c, e) for c, e in zip(compiled_grads, eager_grads) if c is not None or e is not None]
    if any((c is None) != (e is None) for c, e in pairs):
        return "the compiled and eager passes give gradients to different parameters"
    if not pairs:
        return None
    difference = torch.stack([(c - e).double().norm() for c, e in pairs]).norm().item()
    norm = torch.stack([e.double().norm() for _, e in pairs]).norm().item()
    if not difference <= rho * norm:
        return (
            f"the compiled gradients differ from the eager ones by {difference / max(norm, 1e-300):.2g} relative "
            f"(2-norm over all parameters; rounding allows {rho:.1g})"
        )
    return None


def _reason(error: BaseException) -> str:
    """The error's type and first line, and those of the error inside it (torch wraps a backend's own error)."""
    reason = f"{type(error).__name__}: {first_line(error)}"
    inner = getattr(error, "inner_exception", None) or error.__cause__
    if inner is not None and inner is not error and first_line(inner) not in reason:
        reason += f" ({type(inner).__name__}: {first_line(inner)})"
    return reason

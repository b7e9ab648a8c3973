"""`fit`: maximum-likelihood training of flows and base distributions, with checkpoints that resume exactly.

Shapes: N data rows, B minibatch rows (`batch_size`), D features, C context features. Each step draws a
minibatch and takes an Adam step on the mean negative log-likelihood

    L = -(1/B) Σ_b log p(x_b | c_b),

with a cosine learning-rate decay over the run and gradient-norm clipping. A flow's mixture base has its own Adam
parameter group, at `base_lr_factor` × lr.

A checkpoint directory holds

    config.json   the arguments of the run (human-readable; the same dict is inside every checkpoint)
    latest.pt     the state after the last saved step: at the start (after the base initialisation), every
                  `checkpoint_every` steps, at the end, and when the run is interrupted (then the state after the
                  last *completed* step); never a state with non-finite parameters
    best.pt       the state with the lowest validation NLL so far (only with `val_data`)

`checkpoint_every` saves are skipped while the loss is blown up (`BLOWUP_FACTOR`), so that `latest.pt` stays the last
good state if the blow-up lasts.

Each `.pt` file is a plain dict of tensors, numbers, strings and lists, readable with
`torch.load(path, weights_only=True)` or `load_checkpoint`:

    format      "mog_flows.fit/1"
    step        completed steps
    config      the run's arguments, as in config.json
    model       model.state_dict()
    optimizer   Adam's state_dict();  scheduler: the learning-rate schedule's state_dict()
    history     History.state_dict(): per-step lists as float64 / int64 tensors
    rng         {"torch": global CPU RNG, "batches": the minibatch generator, "cuda": CUDA RNG when used}
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from nflows.flows import Flow
from nflows.transforms import (
    AffineCouplingTransform,
    MaskedAffineAutoregressiveTransform,
    MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
)
from nflows.transforms.coupling import PiecewiseCouplingTransform
from torch import Tensor, nn
from tqdm import tqdm

from .checks import check_finite, check_positive_int, check_positive_number
from .mixture import MixtureOfGaussians

__all__ = [
    "fit",
    "History",
    "TrainingDivergedError",
    "load_checkpoint",
    "CHECKPOINT_FORMAT",
    "BASE_LR_FACTOR",
    "BLOWUP_FACTOR",
    "BLOWUP_STEPS",
]

CHECKPOINT_FORMAT = "mog_flows.fit/1"
_INIT_POINTS = 5000  # data points used to initialise a mixture base
# `init_base` widens the scales of a mixture fitted under a flow of affine layers only (MAF, RealNVP) by this factor;
# under spline flows and for a base trained alone it keeps the exact fit (`_init_scale_factor`).
AFFINE_FLOW_INIT_SCALE_FACTOR = 2.0
# A flow's mixture base learns at this multiple of lr (`fit(base_lr_factor=...)`). Chosen on seeds the comparison
# does not report: checkerboard under NSF (2000 steps, K = 32), test NLL over seeds 3-10 averaged 3.534 at factor 1,
# 3.513 at 30 (lower on all 8 seeds; the Gaussian base: 3.529, beaten on 6 of 8); seeds 3 / 10 gave 3.533 / 3.573
# at 1, 3.518 / 3.551 at 10, 3.516 / 3.544 at 30, 3.509 / 3.538 at 100. At 30, seed 3, the MoG flow beat the
# Gaussian-base one in the 13 other 2-D cells of nsf and maf tried and on the 10-D mixture under nsf.
BASE_LR_FACTOR = 30.0
_AFFINE_LAYERS = (AffineCouplingTransform, MaskedAffineAutoregressiveTransform)
_SPLINE_LAYERS = (PiecewiseCouplingTransform, MaskedPiecewiseRationalQuadraticAutoregressiveTransform)
# A finite loss that explodes stops the run (TrainingDivergedError) when for BLOWUP_STEPS steps in a row it lies more
# than BLOWUP_FACTOR · (1 + |best|) above the best minibatch loss so far: the margin scales with the loss (nats, any
# units of the data), and a few steps in a row let single bad minibatches pass. Ordinary training stays far below it:
# on the 2-D targets under NSF, MAF and RealNVP (mixture and Gaussian bases), RAD, a mixture alone and 64-D digits,
# batches of 32 to 512 and lr up to 1e-2, the largest such ratio sustained for 3 steps was 0.29 (single steps: 1.5);
# data in units of 1e-30 give ratios of 1e10 and more from the second step on.
BLOWUP_FACTOR = 100.0
BLOWUP_STEPS = 3
_HALF_PRECISION = (torch.float16, torch.bfloat16)
_PROBE_ROWS = 8  # rows of data tried through model.log_prob before training
# arguments that change the trajectory: a checkpoint resumes only a run with the same values
_RESUME_KEYS = (
    "steps",
    "batch_size",
    "lr",
    "seed",
    "init_base",
    "temperature_schedule",
    "max_grad_norm",
    "base_lr_factor",
    "schedule",
    "model",
    "data",
)

# resume keys added after format 1 was fixed, with the value that checkpoints written without them ran with
_ADDED_RESUME_KEYS = {"base_lr_factor": 1.0}

Data = Tensor | tuple[Tensor, Tensor] | Callable[[int], Any]


class TrainingDivergedError(RuntimeError):
    """The loss, the gradient or the parameters became non-finite. `step` is the step (counting from 1) that
    failed; `checkpoint` the last good `latest.pt` (left as it was), or None without a checkpoint directory."""

    def __init__(self, message: str, *, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


@dataclass
class History:
    """What `fit` recorded. Per-step lists have one entry per completed step: entry i belongs to step i + 1.

    Attributes:
        train_loss: minibatch mean negative log-likelihood (nats) of each step, before its update.
        grad_norm: gradient norm of each step, before clipping.
        learning_rate: learning rate each step used.
        val_nll: mean negative log-likelihood of `val_data`, every `checkpoint_every` steps and at the end.
        val_steps: the step after which each `val_nll` entry was computed.
        best_val_nll, best_step: the lowest `val_nll` and its step (None without validation).
        wall_time: seconds spent in `fit`, summed over the calls that resumed this run.
    """

    train_loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    val_nll: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    best_val_nll: float | None = None
    best_step: int | None = None
    wall_time: float = 0.0

    @property
    def steps(self) -> int:
        """Completed steps."""
        return len(self.train_loss)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and numbers only, so a checkpoint loads with `torch.load(..., weights_only=True)`."""
        floats = {
            name: torch.tensor(getattr(self, name), dtype=torch.float64)
            for name in ("train_loss", "grad_norm", "learning_rate", "val_nll")
        }
        return {
            **floats,
            "val_steps": torch.tensor(self.val_steps, dtype=torch.int64),
            "best_val_nll": self.best_val_nll,
            "best_step": self.best_step,
            "wall_time": self.wall_time,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> History:
        lists = {
            name: state[name].tolist() for name in ("train_loss", "grad_norm", "learning_rate", "val_nll", "val_steps")
        }
        return cls(
            **lists,
            best_val_nll=state["best_val_nll"],
            best_step=state["best_step"],
            wall_time=float(state["wall_time"]),
        )


# ---------------------------------------------------------------------------------------------------------- fit
def fit(
    model: nn.Module,
    data: Data,
    *,
    steps: int,
    batch_size: int = 512,
    lr: float = 1e-3,
    device: str | torch.device = "auto",
    seed: int = 0,
    val_data: Tensor | tuple[Tensor, Tensor] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    init_base: bool = True,
    progress: bool = True,
    temperature_schedule: tuple[float, float] | None = None,
    max_grad_norm: float | None = 5.0,
    base_lr_factor: float = BASE_LR_FACTOR,
) -> History:
    """Train `model` by maximum likelihood on `data` for `steps` steps; returns the `History`.

    Args:
        model: an `nn.Module` with `log_prob(x)` (or `log_prob(x, context=c)`) returning (B,): an nflows `Flow`,
            a `MixtureOfGaussians`, a baseline. It is moved to `device` and trained in place.
        data: a tensor (N, D), a pair (x (N, D), context (N, C)), or a callable n -> (n, D) tensor (or such a pair)
            drawing fresh samples. Tensor minibatches are drawn with replacement by a `torch.Generator` seeded from
            `seed`; a callable may use torch's global RNG, which `fit` seeds, checkpoints and restores. Batches are
            cast to the model's dtype and moved to `device`.
        steps: total length of the run (a resumed run counts the steps already done).
        batch_size: B.
        lr: peak Adam learning rate, decayed as lr · ½(1 + cos(π t / steps)).
        device: "auto" (CUDA when available, else CPU), or any torch device.
        seed: seeds the minibatch generator, torch's global RNG and the base initialisation.
        val_data: a tensor (N', D) or a pair (x, context); its mean NLL is computed without gradients every
            `checkpoint_every` steps and at the end.
        checkpoint_dir: where `config.json`, `latest.pt` and `best.pt` go (see the module docstring): a str or
            os.PathLike naming a directory that exists or can be created, checked by writing a file into it before
            any work ("" is refused: pass "." for the current directory). A directory holding `latest.pt` from a
            run with the same arguments is resumed from it; calling `fit` again after an interruption ends with
            exactly the parameters of an uninterrupted run (bitwise on CPU; on CUDA only with
            `torch.use_deterministic_algorithms(True)`). A run with other arguments, or a model whose mixtures have
            another estimator, temperature (when no `temperature_schedule` sets it) or num_inner than those the
            checkpoint was written with, raises ValueError.
        checkpoint_every: steps between checkpoints and validations.
        init_base: on a fresh start, when the base is a `MixtureOfGaussians` (the model itself, or a Flow's
            `_distribution`), fit it (k-means++ then EM, `initialize_from_data`) to up to 5000 data points pushed
            through the flow's current transform. Under a flow of affine layers only (MAF, RealNVP) the fitted
            scales are then doubled (`AFFINE_FLOW_INIT_SCALE_FACTOR`): from the exact fit such a flow barely moves
            (measured: checkerboard validation NLL flat at 3.81 for 2000 steps, 3.65 from the widened start).
        progress: show a tqdm bar with the loss (also hidden when stderr is not a terminal).
        temperature_schedule: (start, end): anneal the Gumbel-softmax τ of every `MixtureOfGaussians` in the model
            geometrically from start (first step) to end (last step). Exact log-densities do not depend on τ; it
            matters to models whose `log_prob` uses the relaxed estimators, and leaves τ at `end` for later use.
        max_grad_norm: clip the gradient norm to this value (None: no clipping).
        base_lr_factor: the learning rate of a flow's unconditional `MixtureOfGaussians` base (its logits, means
            and scales), as a multiple of `lr`, with the same decay; no effect on other models (a mixture trained
            alone, a conditional mixture base, other bases). Adam moves each parameter by about lr per step, which
            suits network weights but not means and log-scales in the data's units (what was measured: the
            comment on `BASE_LR_FACTOR`).

    The model trains in its own dtype, float32 or float64; half precision (float16, bfloat16) is refused, since
    Adam's moment estimates underflow there and the run diverges at once: train in float32 and cast afterwards.

    Raises:
        ValueError: bad arguments; a half-precision model; a checkpoint_dir that is not a path, is a file, lies
            under a file or cannot be written; data that are not finite or do not fit the model; an unreadable
            checkpoint; a checkpoint from a run with other arguments or a model with other mixture settings.
        TrainingDivergedError: a non-finite loss, gradient or parameter, or a loss blown up for `BLOWUP_STEPS`
            steps in a row (see `BLOWUP_FACTOR`). The step is not applied and the last good `latest.pt` is left in
            place.
        KeyboardInterrupt, or an exception raised by the data source or the model: re-raised after saving the
            state after the last completed step to `latest.pt`. SIGTERM (a scheduler's preemption) and SIGHUP (a
            closed terminal) are handled as Ctrl-C (SIGINT) is, raising KeyboardInterrupt("received SIGTERM") and
            so on, where they have their default handlers and `fit` runs in the main thread. A signal during a
            parameter update takes effect when the update is done.
    """
    _check_arguments(steps, batch_size, lr, seed, checkpoint_every, max_grad_norm, init_base, progress)
    check_positive_number("base_lr_factor", base_lr_factor)
    if not isinstance(model, nn.Module) or not callable(getattr(model, "log_prob", None)):
        raise TypeError(f"model must be an nn.Module with a log_prob method; got {type(model).__name__}")
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("model has no trainable parameters")
    half = sorted({str(p.dtype) for p in parameters if p.dtype in _HALF_PRECISION})
    if half:
        raise ValueError(
            f"fit trains in float32 or float64; the model's parameters are {', '.join(half)}, in which Adam's "
            "moment estimates underflow and the run diverges at once: train in float32 and cast afterwards "
            "(model.float() before fit, model.half() or model.bfloat16() after)"
        )
    directory = _check_checkpoint_dir(checkpoint_dir)
    device = _resolve_device(device)
    mixtures = [module for module in model.modules() if isinstance(module, MixtureOfGaussians)]
    schedule = _check_temperature_schedule(temperature_schedule, mixtures)
    model.to(device)
    dtype = next((p.dtype for p in parameters if p.is_floating_point()), torch.get_default_dtype())
    source = _make_source(data, device, dtype)
    val = None if val_data is None else _split(val_data, "val_data")

    cuda_devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    with torch.random.fork_rng(devices=cuda_devices), _InterruptGuard() as guard:
        # before any seeding: the probe's draws from a callable do not enter the run
        probe_x, probe_context = source.probe(_PROBE_ROWS)
        _check_model_accepts(model, probe_x, probe_context, "data")
        if val is not None:
            _check_val_data(model, val, source, device, dtype)
        config = _config(
            model,
            source,
            val,
            device,
            dict(
                steps=steps,
                batch_size=batch_size,
                lr=float(lr),
                seed=seed,
                init_base=bool(init_base),
                temperature_schedule=None if schedule is None else list(schedule),
                max_grad_norm=None if max_grad_norm is None else float(max_grad_norm),
                base_lr_factor=float(base_lr_factor),
                schedule="cosine",
                checkpoint_every=checkpoint_every,
            ),
        )
        run = _Run(model, parameters, source, val, config, directory, device, mixtures, schedule)
        run.start(init_base)
        run.train(guard, progress)
        return run.history


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None) -> dict[str, Any]:
    """Read and check a checkpoint written by `fit` (on the CPU); with `model`, load its parameters into it.
    Returns the checkpoint dict (layout in the module docstring); `History.from_state_dict(ckpt["history"])`
    rebuilds the history. Raises ValueError naming the file if it is unreadable or does not fit `model`."""
    path = Path(path)
    checkpoint = _read_checkpoint(path)
    if model is not None:
        _check_state_fits(model, checkpoint["model"], path)
        model.load_state_dict(checkpoint["model"])
    return checkpoint


# -------------------------------------------------------------------------------------------------- the run
class _Run:
    """The state of one training run and the steps that change it."""

    def __init__(self, model, parameters, source, val, config, directory, device, mixtures, schedule):
        self.model, self.parameters, self.source, self.val = model, parameters, source, val
        self.config, self.directory, self.device = config, directory, device
        self.mixtures, self.schedule = mixtures, schedule
        self.steps, self.batch_size = config["steps"], config["batch_size"]
        self.checkpoint_every, self.max_grad_norm = config["checkpoint_every"], config["max_grad_norm"]
        groups = _parameter_groups(model, parameters, config["lr"], config["base_lr_factor"])
        self.optimizer = torch.optim.Adam(groups, lr=config["lr"])
        steps = self.steps

        def cosine(step: int) -> float:
            return 0.5 * (1 + math.cos(math.pi * step / steps))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine)
        self.history = History()
        self.step = 0  # completed steps
        self.saved_step: int | None = None  # step of the latest.pt on disk
        self._blowup = _BlowUp()

    # ---------------------------------------------------------------- start: fresh or resumed
    def start(self, init_base: bool) -> None:
        latest = None if self.directory is None else self.directory / "latest.pt"
        if latest is not None and latest.exists():
            self._resume(latest)
            return
        seed = self.config["seed"]
        torch.manual_seed(seed)
        self.source.generator.manual_seed(_derive_seed(seed, "batches"))
        if init_base:
            _initialize_base(self.model, self.source, seed)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            _write_atomic(
                self.directory / "config.json", lambda f: f.write(json.dumps(self.config, indent=2).encode() + b"\n")
            )
            self._check_parameters_finite(0)
            self.save("latest.pt", self._rng_state())

    def _resume(self, path: Path) -> None:
        checkpoint = _read_checkpoint(path)
        _check_config(checkpoint["config"], self.config, path)
        # under a schedule τ is set at every step (and the schedule is compared above), so only its absence makes
        # the model's τ part of the run
        _check_mixture_settings(self.model, checkpoint["model"], path, temperature=self.schedule is None)
        step = checkpoint["step"]
        history = checkpoint["history"]
        if not 0 <= step <= self.steps or len(history["train_loss"]) != step:
            raise ValueError(
                f"checkpoint {path} is inconsistent: step {step}, "
                f"{len(history['train_loss'])} recorded losses, a run of {self.steps} steps"
            )
        _check_state_fits(self.model, checkpoint["model"], path)
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        except (ValueError, KeyError, TypeError, RuntimeError) as error:
            raise ValueError(
                f"checkpoint {path}: the optimizer or scheduler state does not fit this model ({_first_line(error)})"
            ) from error
        self.model.load_state_dict(checkpoint["model"])
        self._set_rng_state(checkpoint["rng"], path)
        self.history = History.from_state_dict(history)
        self.step = self.saved_step = step
        self._blowup = _BlowUp.replay(self.history.train_loss)

    # ---------------------------------------------------------------- the loop
    def train(self, guard: _InterruptGuard, progress: bool) -> None:
        self.model.train()
        began, previous_time = time.perf_counter(), self.history.wall_time
        boundary = (self._rng_state(), _floating_buffers(self.model))  # what is not restored by a failed step
        bar = tqdm(total=self.steps, initial=self.step, desc="fit", unit="step", disable=None if progress else True)
        try:
            while self.step < self.steps:
                # Phase 1: loss and gradients. Nothing saved in a checkpoint changes here except the RNGs and
                # floating buffers (kept in `boundary`), so an interruption saves the last completed step.
                try:
                    loss, grad_norm = self._loss_and_gradients()
                except TrainingDivergedError:
                    raise
                except BaseException as error:
                    interrupted = not isinstance(error, (SystemExit, GeneratorExit))
                    if self.directory is not None and interrupted and not self._non_finite_parameters():
                        self.history.wall_time = previous_time + time.perf_counter() - began
                        self.save("latest.pt", *boundary)
                        if hasattr(error, "add_note"):
                            error.add_note(
                                f"mog_flows.fit saved the state after step {self.step} to "
                                f"{self.directory / 'latest.pt'}; call fit again with the same "
                                "arguments to resume."
                            )
                    raise
                # Phase 2: the update, the record, validation and checkpoints; Ctrl-C waits for the end of it.
                with guard.deferred():
                    self.history.learning_rate.append(self.optimizer.param_groups[0]["lr"])
                    self.optimizer.step()
                    self.scheduler.step()
                    self.step += 1
                    self.history.train_loss.append(loss)
                    self.history.grad_norm.append(grad_norm)
                    self.history.wall_time = previous_time + time.perf_counter() - began
                    postfix = {"loss": f"{loss:.4f}"}
                    self._blowup.record(loss)
                    if self.step % self.checkpoint_every == 0 or self.step == self.steps:
                        self._check_parameters_finite(self.step)
                        # while the loss is blown up, latest.pt keeps the last good state (the end is always saved)
                        self._validate_and_save(latest=not self._blowup.streak or self.step == self.steps)
                        if self.history.val_nll:
                            postfix["val"] = f"{self.history.val_nll[-1]:.4f}"
                    boundary = (self._rng_state(), _floating_buffers(self.model))
                bar.set_postfix(postfix, refresh=False)
                bar.update()
                if guard.pending:
                    guard.pending = False
                    unsaved = self.saved_step != self.step
                    if self.directory is not None and unsaved and not self._non_finite_parameters():
                        self.save("latest.pt", *boundary)
                    error = KeyboardInterrupt(guard.reason)
                    if self.directory is not None:
                        error.add_note(
                            f"mog_flows.fit saved the state after step {self.saved_step} to "
                            f"{self.directory / 'latest.pt'}; call fit again with the same arguments to resume."
                        )
                    raise error
        finally:
            bar.close()
            self.history.wall_time = previous_time + time.perf_counter() - began
        if self.schedule is not None:  # also after a resumed run that had nothing left to do
            for mixture in self.mixtures:
                mixture.temperature = self.schedule[1]

    def _loss_and_gradients(self) -> tuple[float, float]:
        step = self.step  # index of this step, from 0
        if self.schedule is not None:
            self._set_temperature(step)
        x, context = self.source.draw(self.batch_size)
        self.optimizer.zero_grad(set_to_none=True)
        loss = -_log_prob(self.model, x, context).mean()
        value = loss.item()
        if not math.isfinite(value):
            self._diverged(f"the minibatch loss is {value}")
        blown_up = self._blowup.check(value)
        if blown_up:
            self._diverged(blown_up)
        loss.backward()
        max_norm = math.inf if self.max_grad_norm is None else self.max_grad_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, max_norm).item()
        if not math.isfinite(grad_norm):
            self._diverged(f"the gradient norm is {grad_norm}")
        return value, grad_norm

    def _diverged(self, what: str, step: int | None = None) -> None:
        """Raise TrainingDivergedError: for the step being computed (its update is not applied), or, with `step`,
        after that step's update made the parameters non-finite."""
        applied = step is not None
        step = self.step + 1 if step is None else step
        latest = None if self.directory is None else self.directory / "latest.pt"
        if latest is None:
            kept = "No checkpoint_dir was given, so nothing was saved."
        elif self.saved_step is None:
            kept = f"Nothing was saved to {latest}."
        else:
            kept = f"The last good checkpoint, {latest} (step {self.saved_step}), is kept."
        raise TrainingDivergedError(
            f"training diverged at step {step} of {self.steps}: {what}"
            f"{'' if applied else '; the update was not applied'}. {kept} "
            "Try a smaller lr, standardised data or a tighter max_grad_norm.",
            step=step,
            checkpoint=None if self.saved_step is None else latest,
        )

    def _non_finite_parameters(self) -> list[str]:
        return [name for name, p in self.model.named_parameters() if not torch.isfinite(p).all()]

    def _check_parameters_finite(self, step: int) -> None:
        bad = self._non_finite_parameters()
        if bad:
            self._diverged(f"parameters {bad[:5]} became non-finite", step=step)

    def _set_temperature(self, step: int) -> None:
        start, end = self.schedule
        tau = start * (end / start) ** (step / max(self.steps - 1, 1))
        for mixture in self.mixtures:
            mixture.temperature = tau

    # ---------------------------------------------------------------- validation and checkpoints
    def _validate_and_save(self, latest: bool = True) -> None:
        history = self.history
        improved = False
        if self.val is not None:
            nll = _evaluate(self.model, *self.val, self.batch_size, self.device)
            history.val_nll.append(nll)
            history.val_steps.append(self.step)
            if math.isfinite(nll) and (history.best_val_nll is None or nll < history.best_val_nll):
                history.best_val_nll, history.best_step, improved = nll, self.step, True
        if self.directory is not None:
            rng = self._rng_state()
            if improved:
                self.save("best.pt", rng)
            if latest:
                self.save("latest.pt", rng)

    def save(self, name: str, rng: dict[str, Tensor], buffers: dict[str, Tensor] | None = None) -> None:
        state = self.model.state_dict()
        for key, value in (buffers or {}).items():
            if key in state:
                state[key] = value
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "config": self.config,
            "model": state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history.state_dict(),
            "rng": rng,
        }
        _write_atomic(self.directory / name, lambda f: torch.save(checkpoint, f))
        if name == "latest.pt":
            self.saved_step = self.step

    def _rng_state(self) -> dict[str, Tensor]:
        state = {"torch": torch.get_rng_state(), "batches": self.source.generator.get_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _set_rng_state(self, state: dict[str, Tensor], path: Path) -> None:
        try:
            torch.set_rng_state(state["torch"])
            self.source.generator.set_state(state["batches"])
            if self.device.type == "cuda":
                if "cuda" in state:
                    torch.cuda.set_rng_state(state["cuda"], self.device)
                else:  # saved on the CPU: the CUDA stream starts from the seed
                    torch.cuda.manual_seed(self.config["seed"])
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"checkpoint {path} holds an invalid RNG state ({_first_line(error)})") from error


# -------------------------------------------------------------------------------------------------- data
class _Source:
    """Minibatches (x (n, D), context (n, C) or None) in the model's dtype on the training device."""

    kind = ""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype
        self.generator = torch.Generator()  # CPU; draws the minibatch indices of tensor data
        self.features: int | None = None
        self.context_features: int | None = None

    def _finish(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor | None]:
        x = x.to(self.device, self.dtype)
        return x, None if context is None else context.to(self.device, self.dtype)


class _TensorSource(_Source):
    kind = "tensor"

    def __init__(self, x: Tensor, context: Tensor | None, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(device, dtype)
        self.x, self.context = x, context
        self.features = x.shape[1]
        self.context_features = None if context is None else context.shape[1]

    def _rows(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        index = index.to(self.x.device)
        context = None if self.context is None else self.context[index.to(self.context.device)]
        return self._finish(self.x[index], context)

    def draw(self, n: int) -> tuple[Tensor, Tensor | None]:
        return self._rows(torch.randint(self.x.shape[0], (n,), generator=self.generator))

    def probe(self, n: int) -> tuple[Tensor, Tensor | None]:
        return self._rows(torch.arange(min(n, self.x.shape[0])))

    def init_sample(self, n: int, seed: int) -> tuple[Tensor, Tensor | None]:
        generator = torch.Generator().manual_seed(_derive_seed(seed, "init"))
        return self._rows(torch.randperm(self.x.shape[0], generator=generator)[:n])

    def describe(self) -> dict[str, Any]:
        tensors = [self.x] if self.context is None else [self.x, self.context]
        return {
            "kind": self.kind,
            "rows": self.x.shape[0],
            "features": self.features,
            "context_features": self.context_features,
            "checksum": sum(_checksum(t) for t in tensors),
        }


class _CallableSource(_Source):
    kind = "callable"

    def __init__(self, function: Callable[[int], Any], device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(device, dtype)
        self.function = function

    def draw(self, n: int) -> tuple[Tensor, Tensor | None]:
        name = f"data({n})"
        x, context = _split(self.function(n), name)
        if x.shape[0] != n:
            raise ValueError(f"{name} must return {n} rows; got shape {tuple(x.shape)}")
        context_features = None if context is None else context.shape[1]
        if self.features is None:
            self.features, self.context_features = x.shape[1], context_features
        elif (x.shape[1], context_features) != (self.features, self.context_features):
            raise ValueError(
                f"{name} returned {x.shape[1]} features and context features {context_features}; "
                f"earlier batches had {self.features} and {self.context_features}"
            )
        return self._finish(x, context)

    probe = draw

    def init_sample(self, n: int, seed: int) -> tuple[Tensor, Tensor | None]:
        return self.draw(n)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "features": self.features, "context_features": self.context_features}


def _make_source(data: Data, device: torch.device, dtype: torch.dtype) -> _Source:
    if callable(data) and not isinstance(data, Tensor):
        return _CallableSource(data, device, dtype)
    x, context = _split(data, "data")
    return _TensorSource(x, context, device, dtype)


def _split(value: Any, name: str) -> tuple[Tensor, Tensor | None]:
    """A tensor (N, D) or a pair (x (N, D), context (N, C)) -> (x, context), checked finite."""
    if isinstance(value, Tensor):
        x, context = value, None
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, Tensor) for v in value):
        x, context = value
    else:
        raise TypeError(
            f"{name} must be a tensor (N, D) or a pair (x (N, D), context (N, C)) of tensors; "
            f"got {type(value).__name__}"
        )
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have shape (N, D) with N, D ≥ 1; got {tuple(x.shape)}")
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name} must hold real numbers; got dtype {x.dtype}")
    check_finite(name, x.detach())
    if context is not None:
        if context.dim() != 2 or context.shape[0] != x.shape[0]:
            raise ValueError(
                f"the context of {name} must have shape ({x.shape[0]}, C), one row per data row; "
                f"got {tuple(context.shape)}"
            )
        check_finite(f"the context of {name}", context.detach())
        context = context.detach()
    return x.detach(), context


def _check_val_data(model, val, source, device, dtype) -> None:
    x, context = val
    context_features = None if context is None else context.shape[1]
    if (x.shape[1], context_features) != (source.features, source.context_features):
        raise ValueError(
            f"val_data has {x.shape[1]} features and context features {context_features}; "
            f"data has {source.features} and {source.context_features}"
        )
    rows = slice(0, _PROBE_ROWS)
    _check_model_accepts(
        model, x[rows].to(device, dtype), None if context is None else context[rows].to(device, dtype), "val_data"
    )


def _checksum(tensor: Tensor) -> float:
    """A position-weighted float64 sum: tells data sets (and row orders) apart for the resume check."""
    total = 0.0
    for start in range(0, tensor.shape[0], 1 << 20):
        chunk = tensor[start : start + (1 << 20)].to(torch.float64)
        weights = 1 + (torch.arange(start, start + chunk.shape[0], device=chunk.device) % 89) / 89
        total += (chunk * weights.unsqueeze(-1)).sum().item()  # (n, 1) * (n, D)
    return total


# -------------------------------------------------------------------------------------------------- model
def _log_prob(model: nn.Module, x: Tensor, context: Tensor | None) -> Tensor:
    return model.log_prob(x) if context is None else model.log_prob(x, context=context)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluation mode inside the block (no dropout, no batch-norm statistics updates); each submodule's
    mode is restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _expected_features(model: nn.Module) -> tuple[int | None, int | None | bool]:
    """(D, C) as declared by the model or its base, where they say: D None when unknown; C an int for a
    conditional mixture base, None for an unconditional one, False when unknown."""
    features, context_features = None, False
    for module in (model, getattr(model, "_distribution", None)):
        value = getattr(module, "features", None)
        shape = getattr(module, "_shape", None)  # nflows StandardNormal
        if features is None and isinstance(value, int) and not isinstance(value, bool):
            features = value
        elif features is None and isinstance(shape, torch.Size) and len(shape) == 1:
            features = shape[0]
        if context_features is False and isinstance(module, MixtureOfGaussians):
            context_features = module.context_features
    return features, context_features


def _check_model_accepts(model: nn.Module, x: Tensor, context: Tensor | None, name: str) -> None:
    """Refuse data the model cannot score, before any step: wrong feature count, missing or extra context."""
    features, context_features = _expected_features(model)
    if features is not None and x.shape[1] != features:
        raise ValueError(f"{name} has {x.shape[1]} features but the model expects {features}")
    if context is None and context_features:
        raise ValueError(
            f"the model is conditional (context_features={context_features}): pass {name} as a pair "
            f"(x (N, {x.shape[1]}), context (N, {context_features}))"
        )
    if context is not None and context_features is None:
        raise ValueError(
            f"{name} comes with a context of shape {tuple(context.shape)} but the model's base is an "
            "unconditional MixtureOfGaussians"
        )
    try:
        with torch.no_grad(), _eval_mode(model):
            log_p = _log_prob(model, x, context)
    except Exception as error:
        given = " and no context" if context is None else f" with a context of shape {tuple(context.shape)}"
        raise ValueError(
            f"model.log_prob fails on {name} of shape {tuple(x.shape)}{given}: "
            f"{type(error).__name__}: {_first_line(error)}"
        ) from error
    if not isinstance(log_p, Tensor) or log_p.shape != (x.shape[0],):
        shape = tuple(log_p.shape) if isinstance(log_p, Tensor) else type(log_p).__name__
        raise ValueError(f"model.log_prob must return shape ({x.shape[0]},) for {x.shape[0]} rows; got {shape}")


def _mixture_base(model: nn.Module) -> tuple[MixtureOfGaussians | None, bool]:
    """(the model's MixtureOfGaussians base or None, whether data go through a flow's transform first)."""
    if isinstance(model, MixtureOfGaussians):
        return model, False
    if isinstance(model, Flow) and isinstance(model._distribution, MixtureOfGaussians):
        return model._distribution, True
    return None, False


@torch.no_grad()
def _initialize_base(model: nn.Module, source: _Source, seed: int) -> None:
    base, through_flow = _mixture_base(model)
    if base is None:
        return
    x, context = source.init_sample(_INIT_POINTS, seed)
    if through_flow:
        with _eval_mode(model):
            embedded = model._embedding_net(context) if context is not None else None
            x = model._transform(x, context=embedded)[0]
    base.initialize_from_data(x, seed=seed, scale_factor=_init_scale_factor(model) if through_flow else 1.0)


def _parameter_groups(
    model: nn.Module, parameters: list[Tensor], lr: float, base_lr_factor: float
) -> list[dict[str, Any]]:
    """Adam's parameter groups: everything at lr, and a flow's unconditional mixture base at lr · base_lr_factor
    (group 0 is always the one at lr; the learning-rate schedule scales every group alike)."""
    base, through_flow = _mixture_base(model)
    if base is None or not through_flow or base.context_net is not None or base_lr_factor == 1.0:
        return [{"params": parameters}]
    in_base = {id(p) for p in base.parameters()}
    others = [p for p in parameters if id(p) not in in_base]
    base_parameters = [p for p in parameters if id(p) in in_base]
    if not others or not base_parameters:
        return [{"params": parameters}]
    return [{"params": others}, {"params": base_parameters, "lr": lr * base_lr_factor}]


def _init_scale_factor(flow: Flow) -> float:
    """`AFFINE_FLOW_INIT_SCALE_FACTOR` for a flow with affine coupling or autoregressive layers and no spline layer,
    else 1. An exact fit of the base is a near-stationary point of an affine flow's likelihood (each component
    already explains its data; a new flow is the identity), while a spline flow moves from it at once and loses
    from a widened start (validation NLL on every 2-D target, held-out seed: README)."""
    layers = list(flow._transform.modules())
    affine = any(isinstance(layer, _AFFINE_LAYERS) for layer in layers)
    spline = any(isinstance(layer, _SPLINE_LAYERS) for layer in layers)
    return AFFINE_FLOW_INIT_SCALE_FACTOR if affine and not spline else 1.0


@torch.no_grad()
def _evaluate(model: nn.Module, x: Tensor, context: Tensor | None, batch_size: int, device: torch.device) -> float:
    """Mean NLL of (x, context) in batches, in evaluation mode; the RNGs are left as they were."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())
    devices = [device] if device.type == "cuda" else []
    total = torch.zeros((), dtype=torch.float64, device=device)
    with torch.random.fork_rng(devices=devices), _eval_mode(model):
        for start in range(0, x.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            batch_context = None if context is None else context[rows].to(device, dtype)
            total += _log_prob(model, x[rows].to(device, dtype), batch_context).sum(dtype=torch.float64)
    return -total.item() / x.shape[0]


def _floating_buffers(model: nn.Module) -> dict[str, Tensor]:
    """Copies of the floating buffers (batch-norm statistics, ...): a forward pass may change them."""
    return {name: buffer.detach().clone() for name, buffer in model.named_buffers() if buffer.is_floating_point()}


def _check_state_fits(model: nn.Module, state: dict[str, Any], path: Path) -> None:
    """Compare names and shapes before loading, so a mismatch leaves the model untouched."""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, value in expected.items():
        saved = state[name]
        if not isinstance(value, Tensor):  # extra state (e.g. a mixture's temperature), checked by set_extra_state
            continue
        if not isinstance(saved, Tensor) or saved.shape != value.shape:
            shape = tuple(saved.shape) if isinstance(saved, Tensor) else type(saved).__name__
            raise ValueError(
                f"checkpoint {path} does not fit this model: {name} has shape {shape} there, {tuple(value.shape)} here"
            )


# -------------------------------------------------------------------------------------------------- files
def _write_atomic(path: Path, write: Callable[[Any], Any]) -> None:
    """Write through a temporary file in the same directory and rename it over `path`."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, garbage, or objects other than tensors and containers
        raise ValueError(
            f"checkpoint {path} cannot be read: it is truncated, corrupt, or was not written by "
            f"mog_flows.fit ({type(error).__name__}{': ' + _first_line(error) if str(error).strip() else ''})"
        ) from error
    problem = _checkpoint_problem(checkpoint)
    if problem:
        raise ValueError(f"checkpoint {path} is not a mog_flows.fit checkpoint: {problem}")
    return checkpoint


def _checkpoint_problem(checkpoint: Any) -> str | None:
    if not isinstance(checkpoint, dict):
        return f"it holds a {type(checkpoint).__name__}, not a dict"
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        return f"format {checkpoint.get('format')!r}, expected {CHECKPOINT_FORMAT!r}"
    kinds = {
        "step": int,
        "config": dict,
        "model": dict,
        "optimizer": dict,
        "scheduler": dict,
        "history": dict,
        "rng": dict,
    }
    for key, kind in kinds.items():
        if not isinstance(checkpoint.get(key), kind):
            return f"entry {key!r} is missing or not a {kind.__name__}"
    history = checkpoint["history"]
    for key in ("train_loss", "grad_norm", "learning_rate", "val_nll", "val_steps"):
        if not isinstance(history.get(key), Tensor) or history[key].dim() != 1:
            return f"history entry {key!r} is missing or not a 1-D tensor"
    for key in ("best_val_nll", "best_step", "wall_time"):
        if key not in history:
            return f"history entry {key!r} is missing"
    for key in ("torch", "batches"):
        if not isinstance(checkpoint["rng"].get(key), Tensor):
            return f"RNG state {key!r} is missing"
    if not isinstance(checkpoint["config"].get("data"), dict):
        return "its config has no data description"
    return None


def _check_config(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    saved = {**_ADDED_RESUME_KEYS, **saved}
    differences = [
        f"{key}: {saved.get(key)!r} there, {current[key]!r} now"
        for key in _RESUME_KEYS
        if not _same(saved.get(key), current[key])
    ]
    if differences:
        raise ValueError(
            f"checkpoint {path} belongs to a run with other settings ({'; '.join(differences)}); "
            "call fit with the original arguments to resume it, or use another checkpoint_dir"
        )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):  # data checksums may differ in the last bits across devices
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def _config(model, source, val, device, arguments) -> dict[str, Any]:
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())
    model_description = {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(dtype),
    }
    val_description = None if val is None else {"rows": val[0].shape[0], "checksum": _checksum(val[0])}
    return {
        "format": CHECKPOINT_FORMAT,
        **arguments,
        "model": model_description,
        "data": source.describe(),
        "val_data": val_description,
        "device": str(device),
        "torch": str(torch.__version__),
    }


# -------------------------------------------------------------------------------------------------- arguments
def _check_arguments(steps, batch_size, lr, seed, checkpoint_every, max_grad_norm, init_base, progress) -> None:
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    check_positive_int("checkpoint_every", checkpoint_every)
    check_positive_number("lr", lr)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63); got {seed!r}")
    if max_grad_norm is not None and (
        isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, (int, float)) or not max_grad_norm > 0
    ):
        raise ValueError(f"max_grad_norm must be a number > 0 or None; got {max_grad_norm!r}")
    for name, value in (("init_base", init_base), ("progress", progress)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False; got {value!r}")


def _check_temperature_schedule(schedule, mixtures) -> tuple[float, float] | None:
    if schedule is None:
        return None
    try:
        start, end = (float(value) for value in schedule)
    except (TypeError, ValueError) as error:
        raise ValueError(f"temperature_schedule must be a pair (start, end); got {schedule!r}") from error
    if not all(math.isfinite(t) and t > 0 for t in (start, end)):
        raise ValueError(f"temperature_schedule values must be finite and > 0; got {schedule!r}")
    if not mixtures:
        raise ValueError("temperature_schedule was given but the model contains no MixtureOfGaussians")
    return start, end


def _resolve_device(device: str | torch.device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'auto' or a torch device; got {device!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for but CUDA is not available")
    return device


def _derive_seed(seed: int, purpose: str) -> int:
    """A seed for one purpose (minibatches, initial subset), independent of the streams seeded with `seed`."""
    digest = hashlib.blake2b(f"{seed}/{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _first_line(error: BaseException) -> str:
    """The informative line of an error message (torch's weights-only refusals explain themselves at length)."""
    text = str(error)
    if "WeightsUnpickler error:" in text:  # keep the reason, drop the advice around it
        reason = text.split("WeightsUnpickler error:", 1)[1]
        reason = reason.split("Check the documentation", 1)[0].split("Please use", 1)[0]
        return "the file holds something other than tensors and containers: " + " ".join(reason.split())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


# -------------------------------------------------------------------------------------------------- blow-ups
class _BlowUp:
    """The rule of `BLOWUP_FACTOR`: a run stops when its minibatch loss lies more than BLOWUP_FACTOR · (1 + |best|)
    above the best loss so far for BLOWUP_STEPS steps in a row. A function of the recorded losses alone, so that a
    resumed run decides as the uninterrupted one (`replay`)."""

    def __init__(self) -> None:
        self.best: float | None = None  # the lowest recorded loss
        self.streak = 0  # recorded steps in a row above the threshold, up to the last one

    def _above(self, loss: float) -> bool:
        return self.best is not None and loss > self.best + BLOWUP_FACTOR * (1 + abs(self.best))

    def check(self, loss: float) -> str | None:
        """Before the update of a step with minibatch loss `loss`: why the run must stop, or None."""
        if self._above(loss) and self.streak + 1 >= BLOWUP_STEPS:
            return (
                f"the minibatch loss {loss:.6g} lies more than {BLOWUP_FACTOR:g} × (1 + |best|) above the best loss "
                f"so far, {self.best:.6g}, for {BLOWUP_STEPS} steps in a row (finite, but blown up)"
            )
        return None

    def record(self, loss: float) -> None:
        self.streak = self.streak + 1 if self._above(loss) else 0
        self.best = loss if self.best is None else min(self.best, loss)

    @classmethod
    def replay(cls, losses: list[float]) -> _BlowUp:
        state = cls()
        for loss in losses:
            state.record(loss)
        return state


# -------------------------------------------------------------------------------------------------- checkpoint dirs
def _check_checkpoint_dir(value: Any, name: str = "checkpoint_dir") -> Path | None:
    """None, or `value` as a Path once it is known that checkpoints can be written there: a str or os.PathLike, not
    "", naming a directory, or a path that can be created as one. The check writes and removes a file (in the
    directory, or in its nearest existing ancestor), so that permissions, read-only file systems and the like are
    found before any work, whoever runs it (root ignores permission bits)."""
    if value is None:
        return None
    path = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
    if not isinstance(path, str):
        raise ValueError(f"{name} must be a path (str or os.PathLike) or None; got {type(value).__name__}")
    if path == "":
        raise ValueError(
            f"{name}='' names no directory, and would put the checkpoints in the current directory: pass '.' to "
            "mean that, or None for no checkpoints"
        )
    directory = Path(path)
    existing = directory
    while not (existing.exists() or existing.is_symlink()):
        existing = existing.parent
    if not existing.exists():
        raise ValueError(f"{name} {directory}: {existing} is a broken symbolic link")
    if not existing.is_dir():
        kind = "a file" if existing.is_file() else "something other than a directory"
        if existing == directory:
            raise ValueError(f"{name} {directory} is {kind}, not a directory")
        raise ValueError(f"{name} {directory} lies under {existing}, {kind}, so it cannot be created")
    try:
        handle, probe = tempfile.mkstemp(prefix=".mog_flows-write-probe-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        to_create = "" if existing == directory else f" (to create {directory})"
        raise ValueError(f"{name}: cannot write into {existing}{to_create}: {error.strerror or error}") from error
    return directory


def _check_mixture_settings(model: nn.Module, state: dict[str, Any], path: Path, *, temperature: bool) -> None:
    """Refuse a checkpoint whose mixtures were built with another estimator, num_inner or (with `temperature`) τ
    than the model's: loading it would silently replace the caller's settings with the checkpoint's."""
    keys = ("estimator", "temperature", "num_inner") if temperature else ("estimator", "num_inner")
    differences = []
    for name, module in model.named_modules():
        if not isinstance(module, MixtureOfGaussians):
            continue
        saved = state.get(f"{name}._extra_state" if name else "_extra_state")
        if not isinstance(saved, dict):  # _check_state_fits names what is missing
            continue
        current = module.get_extra_state()
        differences += [
            f"{name or 'model'}.{key}: {saved[key]!r} there, {current[key]!r} now"
            for key in keys
            if key in saved and not _same(saved[key], current[key])
        ]
    if differences:
        raise ValueError(
            f"checkpoint {path} was written by a model built with other settings ({'; '.join(differences)}); build "
            "the model with the checkpoint's settings to resume it, or use another checkpoint_dir"
        )


# -------------------------------------------------------------------------------------------------- signals
# the signals that stop a run as Ctrl-C does: SIGTERM is what cluster schedulers send to preempt a job, SIGHUP what a
# closed terminal sends (SIGHUP does not exist on Windows)
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class _InterruptGuard:
    """SIGINT, SIGTERM or SIGHUP during training raise KeyboardInterrupt("received SIGTERM", ...): at once while a
    step computes its loss and gradients (nothing has changed yet); held back (`pending`, `reason`) while the step
    updates the state, inside `deferred()`; a second signal is not held back. Each signal is handled only in the main
    thread and where it has its default handler (Python's for SIGINT, the system's for the others: a handler
    someone installed is left alone, and a process started under nohup keeps ignoring SIGHUP)."""

    def __init__(self) -> None:
        self.pending = False
        self.reason = "received SIGINT"
        self._critical = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for number in _STOP_SIGNALS:
                default = signal.default_int_handler if number == signal.SIGINT else signal.SIG_DFL
                if signal.getsignal(number) == default:
                    self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        reason = f"received {signal.Signals(signum).name}"
        if self._critical and not self.pending:
            self.pending, self.reason = True, reason
            return
        raise KeyboardInterrupt(reason)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._critical = True
        try:
            yield
        finally:
            self._critical = False

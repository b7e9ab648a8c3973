"""`fit`: maximum-likelihood training of flows and base distributions, with checkpoints that resume exactly.

Shapes: N data rows, B minibatch rows (`batch_size`), D features, C context features. Each step draws a
minibatch and takes an Adam step on the mean negative log-likelihood

    L = -(1/B) Σ_b log p(x_b | c_b),

with a cosine learning-rate decay over the run and gradient-norm clipping. A flow's mixture base has its own Adam
parameter group, at `base_lr_factor` × lr. Under `torch.distributed` the same run is trained data-parallel, each of
the W ranks computing B / W rows of every minibatch (`fit`'s docstring, and `mog_flows.distributed`). With
`compile=True` the loss and its gradients go through `torch.compile`, checked against eager ones before they are
used (`mog_flows.compilation`).

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

import copy
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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

from .checks import (
    check_bool,
    check_finite,
    check_optional_positive_number,
    check_positive_int,
    check_positive_number,
    check_seed,
)
from .compilation import CompileFallbackWarning, TrainingLoss, check_compile
from .distributed import SINGLE_PROCESS, World, current_world, local_rank
from .mixture import MixtureOfGaussians
from .nflows_adapters import distribution_features, embed_context, flow_base, flow_transform, transform_layers
from .runs import (
    InterruptGuard,
    TrainingDivergedError,
    capture_rng,
    check_checkpoint_dir,
    check_mixture_settings,
    check_resume_config,
    check_state_fits,
    check_temperature_schedule,
    derive_seed,
    diverged,
    eval_mode,
    first_line,
    forked_rng,
    geometric_temperature,
    load_training_state,
    non_finite_parameters,
    read_checkpoint,
    restore_rng,
    same_setting,
    set_temperature,
    write_atomic,
    write_config,
)

__all__ = [
    "fit",
    "initialize_base",
    "DataOutsideTailBoundWarning",
    "CompileFallbackWarning",
    "FitSettings",
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
_RANGE_ROWS = 1024  # rows of data checked against a spline flow's tail bound before training
# resume keys added after format 1 was fixed, with the value that checkpoints written without them ran with
_ADDED_RESUME_KEYS = {"base_lr_factor": 1.0, "world_size": 1}

Data = Tensor | tuple[Tensor, Tensor] | Callable[[int], Any]


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
        restored_step: the step whose parameters the model was left with by `restore_best` (None: the model holds
            the last step's parameters, because there was no validation, `restore_best=False`, or the best step was
            the last).
        wall_time: seconds spent in `fit`, summed over the calls that resumed this run.
    """

    train_loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    val_nll: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    best_val_nll: float | None = None
    best_step: int | None = None
    restored_step: int | None = None
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
            "restored_step": self.restored_step,
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
            restored_step=state.get("restored_step"),
            wall_time=float(state["wall_time"]),
        )


@dataclass(frozen=True)
class FitSettings:
    """The settings of one `fit` run (the arguments of `fit` that shape it; see `fit` for each), validated when
    built. `config()` is what the run's `config.json` and checkpoints hold, beside the model, data and device;
    `RESUME_KEYS` the entries a checkpoint must match to be resumed."""

    steps: int
    batch_size: int = 512
    lr: float = 1e-3
    seed: int = 0
    init_base: bool = True
    temperature_schedule: tuple[float, float] | None = None
    max_grad_norm: float | None = 5.0
    base_lr_factor: float = BASE_LR_FACTOR
    schedule: str = "cosine"
    checkpoint_every: int = 100
    compile: bool | str = False

    # what changes the trajectory (checkpoint_every does not; nor does compile, which changes the rounding of the
    # loss and gradients, not what they are: a run may be resumed with or without it); "model" and "data" describe
    # what is trained
    RESUME_KEYS = (
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
        "world_size",
    )

    def __post_init__(self) -> None:
        check_positive_int("steps", self.steps)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("checkpoint_every", self.checkpoint_every)
        check_seed(self.seed)
        check_bool("init_base", self.init_base)
        check_compile(self.compile)
        # Python numbers, so that the config is plain JSON and compares exactly across calls
        object.__setattr__(self, "lr", float(check_positive_number("lr", self.lr)))
        object.__setattr__(self, "base_lr_factor", float(check_positive_number("base_lr_factor", self.base_lr_factor)))
        object.__setattr__(self, "max_grad_norm", check_optional_positive_number("max_grad_norm", self.max_grad_norm))
        if self.temperature_schedule is not None:
            start, end = self.temperature_schedule
            object.__setattr__(self, "temperature_schedule", (float(start), float(end)))
        if self.schedule != "cosine":
            raise ValueError(f"schedule must be 'cosine'; got {self.schedule!r}")

    def config(self) -> dict[str, Any]:
        config = asdict(self)
        if self.temperature_schedule is not None:
            config["temperature_schedule"] = list(self.temperature_schedule)
        return config


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
    restore_best: bool = True,
    progress: bool = True,
    temperature_schedule: tuple[float, float] | None = None,
    max_grad_norm: float | None = 5.0,
    base_lr_factor: float = BASE_LR_FACTOR,
    compile: bool | str = False,
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
        batch_size: B, the global minibatch; under torch.distributed a multiple of the world size W, each rank
            computing B / W rows of it.
        lr: peak Adam learning rate, decayed as lr · ½(1 + cos(π t / steps)).
        device: "auto" (CUDA when available, else CPU), or any torch device. Under torch.distributed "auto" and a
            bare "cuda" mean cuda:LOCAL_RANK, which `fit` makes the current CUDA device.
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
        restore_best: with `val_data`, leave the model in the state of its lowest validation NLL (from memory, or
            from `best.pt` after a resumed run) once all steps are done; `history.best_step` and
            `history.restored_step` say which step that was. False, or no `val_data`: the model ends at the last step.
            Checkpoints are unaffected (`latest.pt` is the last step, `best.pt` the best), so a resume is exact either
            way. Small data sets need it: a flow fitted to 272 points overfits within a few hundred steps.
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
        compile: True, or the name of a `torch.compile` backend ("inductor", which True means, "aot_eager", ...):
            compute each step's loss and its gradients through `torch.compile` (`mog_flows.compilation`: the call
            `model.log_prob` and its mean are compiled, the model is not wrapped, validation and the probes before
            training stay eager). The first `VERIFY_STEPS` = 5 compiled steps of each call are checked against the
            eager pass on the same minibatch and keep the eager results; the run then goes on compiled, equal to
            the eager run up to floating-point rounding (fused kernels round differently), with random numbers in
            `log_prob` drawn as eager code draws them. The first step pays the compilation (seconds to minutes on a
            CPU, less from inductor's on-disk cache). When compilation fails (no C++ compiler, an operation the
            compiler does not support, a Dynamo error) or the check finds other numbers than eager code computes
            (inductor in torch 2.13 on a CPU, for nflows' spline gradients), the step is computed eagerly and the
            run goes on eagerly after one `CompileFallbackWarning` saying why. Not part of what a checkpoint must
            match: a run saved compiled resumes eagerly and vice versa (equal to the uninterrupted run up to that
            rounding). Under torch.distributed each rank compiles its own loss; the gradient averaging stays
            outside the compiled code. What it gains: the benchmark page of the docs (on a CPU, nothing for a
            small NSF, whose splines split the graph where they test tensor values).

    Distributed training: when `torch.distributed` is initialised with W > 1 processes (e.g. under `torchrun
    --nproc_per_node W`), every rank calls `fit` with the same model, data and arguments (the whole data set, not a
    shard: the arguments and data checksums are compared across ranks, ValueError otherwise) and `fit` trains
    data-parallel, without wrapping the model in `DistributedDataParallel` (which only hooks `forward`, while `fit`
    calls `log_prob`): after each backward pass the gradients are averaged over the ranks with one `all_reduce`.

    - Tensor data: every rank draws the same B global indices from the same seeded generator and takes its
      contiguous B / W of them, so the mean of the ranks' gradients is the gradient of the global minibatch's mean
      loss, and the parameters end equal to a single-process run's up to floating-point reduction order (checked
      to 1e-5 in float64). This holds when `log_prob` draws no random numbers (flows, the exact mixture density);
      a model that does (dropout) draws other numbers than one process would, and agrees in distribution only.
    - A callable `data`: each rank draws its own B / W rows, with torch's global RNG seeded from (seed, rank, step)
      inside a fork (so the global stream stays the same on every rank): the run agrees with a single-process one
      in distribution only, and resumes exactly with the same world size.
    - The base initialisation (`init_base`) runs on rank 0, whose parameters, buffers and RNG state are then
      broadcast, so every rank starts from rank 0's model; the mixture base's parameter group, the temperature
      schedule, clipping, the blow-up rule, validation and `restore_best` decide from reduced numbers, alike on
      every rank. Validation splits `val_data` into W contiguous parts and adds the NLL sums over the ranks.
    - Only rank 0 writes `checkpoint_dir` (the other ranks touch no file there) and shows the progress bar; on a
      resume rank 0 reads `latest.pt` (and `best.pt`) and sends it to the others, so no shared file system is
      needed. The checkpoint's config records `world_size`, and a checkpoint resumes only with the same world
      size. An error while setting up or reading a checkpoint on one rank is raised on every rank (the others
      raise `mog_flows.distributed.RankFailedError`, a ValueError); an error or interruption during a step on one
      rank only leaves the others waiting in a collective until the launcher (torchrun) stops them, after rank 0
      saved the state after the last completed step.
    - Backends: gloo for CPU training, nccl for CUDA (nccl with a CPU device is a ValueError).

    The model trains in its own dtype, float32 or float64; half precision (float16, bfloat16) is refused, since
    Adam's moment estimates underflow there and the run diverges at once: train in float32 and cast afterwards.

    Raises:
        ValueError: bad arguments; a half-precision model; under torch.distributed, a batch_size that is not a
            multiple of the world size, a CUDA index this node lacks, nccl with a CPU device, or ranks called with
            different arguments or data; a checkpoint_dir that is not a path, is a file, lies
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
    world = current_world()

    def setup() -> tuple:
        check_bool("progress", progress)
        check_bool("restore_best", restore_best)
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
        mixtures = [module for module in model.modules() if isinstance(module, MixtureOfGaussians)]
        settings = FitSettings(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            init_base=init_base,
            temperature_schedule=check_temperature_schedule(temperature_schedule, mixtures),
            max_grad_norm=max_grad_norm,
            base_lr_factor=base_lr_factor,
            checkpoint_every=checkpoint_every,
            compile=compile,
        )
        if settings.batch_size % world.size:
            raise ValueError(
                f"batch_size is the global minibatch, split evenly over the {world.size} processes of the "
                f"distributed run: it must be a multiple of the world size {world.size}; got {settings.batch_size}"
            )
        directory = check_checkpoint_dir(checkpoint_dir, probe=world.writer)
        resolved = _resolve_device(device, world)
        model.to(resolved)
        dtype = next((p.dtype for p in parameters if p.is_floating_point()), torch.get_default_dtype())
        source = _make_source(data, resolved, dtype)
        val = None if val_data is None else _split(val_data, "val_data")
        return parameters, mixtures, settings, directory, resolved, dtype, source, val

    # under torch.distributed every rank raises when one does (world.agree), instead of waiting for it
    parameters, mixtures, settings, directory, device, dtype, source, val = world.agree(setup)

    def probe() -> None:
        # before any seeding: the probe's draws from a callable do not enter the run
        probe_x, probe_context = source.probe(_PROBE_ROWS)
        _check_model_accepts(model, probe_x, probe_context, "data")
        if world.writer:
            _warn_outside_tail_bound(model, source)
        if val is not None:
            _check_val_data(model, val, source, device, dtype)

    with forked_rng(device), InterruptGuard() as guard:
        world.agree(probe)
        run = _Run(model, parameters, source, val, settings, directory, device, mixtures, world)
        run.start()
        run.train(guard, progress)
        if restore_best and val is not None:
            run.restore_best()
        return run.history


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None) -> dict[str, Any]:
    """Read and check a checkpoint written by `fit` (on the CPU); with `model`, load its parameters into it.
    Returns the checkpoint dict (layout in the module docstring); `History.from_state_dict(ckpt["history"])`
    rebuilds the history. Raises ValueError naming the file if it is unreadable or does not fit `model`."""
    path = Path(path)
    checkpoint = _read_checkpoint(path)
    if model is not None:
        check_state_fits(model, checkpoint["model"], path)
        model.load_state_dict(checkpoint["model"])
    return checkpoint


# -------------------------------------------------------------------------------------------------- the run
class _Run:
    """The state of one training run and the steps that change it."""

    def __init__(self, model, parameters, source, val, settings: FitSettings, directory, device, mixtures, world):
        self.model, self.parameters, self.source, self.val = model, parameters, source, val
        self.settings, self.directory, self.device, self.mixtures = settings, directory, device, mixtures
        self.world: World = world
        self.config = _config(model, source, val, device, settings, world)
        self.steps = settings.steps
        groups = _parameter_groups(model, parameters, settings.lr, settings.base_lr_factor)
        self.optimizer = torch.optim.Adam(groups, lr=settings.lr)
        steps = self.steps

        def cosine(step: int) -> float:
            return 0.5 * (1 + math.cos(math.pi * step / steps))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine)
        self.history = History()
        self.step = 0  # completed steps
        self.saved_step: int | None = None  # step of the latest.pt on disk
        self.best_state: dict[str, Tensor] | None = None  # the model's state at history.best_step, in this call
        self._blowup = _BlowUp()
        self.loss = TrainingLoss(model, settings.compile, device)

    # ---------------------------------------------------------------- start: fresh or resumed
    def start(self) -> None:
        world = self.world
        if world.parallel:
            self._check_ranks_agree()
        latest = None if self.directory is None else self.directory / "latest.pt"
        # rank 0 reads the checkpoint and sends it to the others (no shared file system needed)
        checkpoint = world.from_rank0(
            lambda: _read_checkpoint(latest) if latest is not None and latest.exists() else None
        )
        if checkpoint is not None:
            self._resume(checkpoint, latest)
            return
        seed = self.settings.seed
        torch.manual_seed(seed)
        self.source.generator.manual_seed(derive_seed(seed, "batches"))
        if self.settings.init_base:  # on rank 0 only, then broadcast
            world.agree(lambda: _initialize_base(self.model, self.source, seed) if world.writer else None)
        # every rank starts from rank 0's parameters and RNG state (the initialisation may have drawn from it)
        world.broadcast_module(self.model)
        world.broadcast_rng(self.device)
        if self.directory is not None:
            if world.writer:
                write_config(self.directory, self.config)
            self._check_parameters_finite(0)
            self.save("latest.pt", self._rng_state())

    def _check_ranks_agree(self) -> None:
        """Every rank must train the same run: the resume keys of the configs (data checksum included) agree."""
        mine = {key: self.config.get(key) for key in FitSettings.RESUME_KEYS + ("val_data",)}
        configs = self.world.gather_objects(mine)
        differences = [
            f"{key}: {configs[0][key]!r} on rank 0, {config[key]!r} on rank {rank}"
            for rank, config in enumerate(configs)
            for key in mine
            if not same_setting(configs[0][key], config[key])
        ]
        if differences:
            raise ValueError(
                "the processes of the distributed run called fit with different arguments, models or data "
                f"({'; '.join(differences[:5])}): every rank must pass the same ones (the same data, not a shard)"
            )

    def _resume(self, checkpoint: dict[str, Any], path: Path) -> None:
        saved = {**_ADDED_RESUME_KEYS, **checkpoint["config"]}
        check_resume_config(saved, self.config, FitSettings.RESUME_KEYS, path, "fit")
        # under a schedule τ is set at every step (and the schedule is compared above), so only its absence makes
        # the model's τ part of the run
        schedule = self.settings.temperature_schedule
        check_mixture_settings(self.model, checkpoint["model"], path, temperature=schedule is None)
        step = checkpoint["step"]
        history = checkpoint["history"]
        if not 0 <= step <= self.steps or len(history["train_loss"]) != step:
            raise ValueError(
                f"checkpoint {path} is inconsistent: step {step}, "
                f"{len(history['train_loss'])} recorded losses, a run of {self.steps} steps"
            )
        # the RNGs first (the run's own and the global one, which fit restores for its caller): a state that
        # cannot be restored must leave the model untouched
        restore_rng(
            checkpoint["rng"],
            self.device,
            path,
            seed=self.settings.seed,
            generators={"batches": self.source.generator},
        )
        load_training_state(self.model, self.optimizer, checkpoint, path, self.scheduler)
        self.history = History.from_state_dict(history)
        self.step = self.saved_step = step
        self._blowup = _BlowUp.replay(self.history.train_loss)

    # ---------------------------------------------------------------- the loop
    def train(self, guard: InterruptGuard, progress: bool) -> None:
        self.model.train()
        began, previous_time = time.perf_counter(), self.history.wall_time
        boundary = (self._rng_state(), _floating_buffers(self.model))  # what is not restored by a failed step
        show = progress and self.world.writer  # under torch.distributed only rank 0 shows progress
        bar = tqdm(total=self.steps, initial=self.step, desc="fit", unit="step", disable=None if show else True)
        every = self.settings.checkpoint_every
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
                    if self.directory is not None and interrupted and not non_finite_parameters(self.model):
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
                    if self.step % every == 0 or self.step == self.steps:
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
                    if self.directory is not None and unsaved and not non_finite_parameters(self.model):
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
        schedule = self.settings.temperature_schedule
        if schedule is not None:  # also after a resumed run that had nothing left to do
            set_temperature(self.mixtures, schedule[1])

    def _loss_and_gradients(self) -> tuple[float, float]:
        schedule = self.settings.temperature_schedule
        if schedule is not None:
            set_temperature(self.mixtures, geometric_temperature(schedule, self.step, self.steps))
        world = self.world
        if world.parallel:
            x, context = self.source.draw_share(self.settings.batch_size, world, self.settings.seed, self.step)
        else:
            x, context = self.source.draw(self.settings.batch_size)
        self.optimizer.zero_grad(set_to_none=True)
        # forward and backward together, so that a compiled pass that fails in either falls back as a whole
        loss, requires_grad = self.loss.loss_and_backward(x, context)
        if world.parallel:
            # the global minibatch mean: the mean of the ranks' means over equal shares; whether any rank's loss
            # depends on a parameter
            share = torch.stack(
                [
                    loss.to(torch.float64),
                    torch.tensor(float(requires_grad), dtype=torch.float64, device=loss.device),
                ]
            )
            total = world.all_reduce_sum(share).tolist()
            value, trainable = total[0] / world.size, total[1] > 0
        else:
            value, trainable = loss.item(), requires_grad
        if not math.isfinite(value):
            self._diverged(f"the minibatch loss is {value}")
        blown_up = self._blowup.check(value)
        if blown_up:
            self._diverged(blown_up)
        if not trainable:
            raise ValueError(
                f"the loss of step {self.step + 1} does not depend on any trainable parameter, so there is nothing "
                "to train: every point of the minibatch passed the flow where it is the identity (outside a spline's "
                "tail bound) into a base without parameters. Standardise the data (build_flow(..., standardize="
                "x_train)) or build the flow with a larger tail_bound."
            )
        world.average_gradients(self.parameters)  # the mean of the ranks' gradients: the global batch's gradient
        max_norm = math.inf if self.settings.max_grad_norm is None else self.settings.max_grad_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, max_norm).item()
        if not math.isfinite(grad_norm):
            self._diverged(f"the gradient norm is {grad_norm}")
        return value, grad_norm

    def _diverged(self, what: str, step: int | None = None) -> None:
        """Raise TrainingDivergedError: for the step being computed (its update is not applied), or, with `step`,
        after that step's update made the parameters non-finite."""
        raise diverged(
            "training",
            what,
            step=self.step + 1 if step is None else step,
            steps=self.steps,
            latest=None if self.directory is None else self.directory / "latest.pt",
            saved_step=self.saved_step,
            applied=step is not None,
            advice="Try a smaller lr, standardised data or a tighter max_grad_norm.",
        )

    def _check_parameters_finite(self, step: int) -> None:
        bad = non_finite_parameters(self.model)
        if bad:
            self._diverged(f"parameters {bad[:5]} became non-finite", step=step)

    # ---------------------------------------------------------------- validation and checkpoints
    def _validate_and_save(self, latest: bool = True) -> None:
        history = self.history
        improved = False
        if self.val is not None:
            nll = _evaluate(self.model, *self.val, self.settings.batch_size, self.device, self.world)
            history.val_nll.append(nll)
            history.val_steps.append(self.step)
            if math.isfinite(nll) and (history.best_val_nll is None or nll < history.best_val_nll):
                history.best_val_nll, history.best_step, improved = nll, self.step, True
                self.best_state = copy.deepcopy(self.model.state_dict())
        if self.directory is not None:
            rng = self._rng_state()
            if improved:
                self.save("best.pt", rng)
            if latest:
                self.save("latest.pt", rng)

    def restore_best(self) -> None:
        """Load the state of the best validation step into the model (from memory, or from `best.pt` when the best
        step came before this call resumed the run)."""
        best = self.history.best_step
        if best is None or best == self.step:
            return
        state = self.best_state
        if state is None:
            path = self.directory / "best.pt"  # a resumed run: best_step came from a checkpoint in this directory

            def read() -> dict[str, Tensor]:
                checkpoint = _read_checkpoint(path)
                if checkpoint["step"] != best:
                    raise ValueError(
                        f"cannot restore the best state: {path} holds step {checkpoint['step']} but the run's "
                        f"history says the best validation NLL was at step {best}; pass restore_best=False to keep "
                        "the last step"
                    )
                return checkpoint["model"]

            state = self.world.from_rank0(read)  # rank 0 reads, the others receive
        self.model.load_state_dict(state)
        self.history.restored_step = best

    def save(self, name: str, rng: dict[str, Tensor], buffers: dict[str, Tensor] | None = None) -> None:
        """Write a checkpoint (rank 0 only under torch.distributed; every rank records the step as saved)."""
        if not self.world.writer:
            if name == "latest.pt":
                self.saved_step = self.step
            return
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
        write_atomic(self.directory / name, lambda f: torch.save(checkpoint, f))
        if name == "latest.pt":
            self.saved_step = self.step

    def _rng_state(self) -> dict[str, Tensor]:
        return capture_rng(self.device, {"batches": self.source.generator})


# -------------------------------------------------------------------------------------------------- data
class DataOutsideTailBoundWarning(UserWarning):
    """Most training points lie outside the interval [-B, B] where a spline flow's first spline layer acts: the
    splines are the identity there, so the flow cannot shape the data (standardise them: `build_flow(...,
    standardize=x)`)."""


@torch.no_grad()
def _warn_outside_tail_bound(model: nn.Module, source: _Source) -> None:
    """Warn when most rows reach a flow's first spline layer outside its tail bound."""
    if not isinstance(model, Flow):
        return
    x, context = source.range_sample(_RANGE_ROWS)
    context = embed_context(model, context)
    with eval_mode(model):
        for layer in transform_layers(flow_transform(model)):
            if isinstance(layer, _SPLINE_LAYERS):
                bound = float(layer.tail_bound)
                outside = (x.abs() > bound).any(-1).double().mean().item()
                if outside > 0.5:
                    warnings.warn(
                        f"{outside:.0%} of the training points reach the flow's first spline layer outside its tail "
                        f"bound [-{bound:g}, {bound:g}] (largest |value| {x.abs().max().item():.3g}), where the "
                        "splines are the identity: the flow cannot shape those points and trains at most its base. "
                        "Standardise the data (build_flow(..., standardize=x_train) keeps log_prob in your units) "
                        "or build the flow with a larger tail_bound.",
                        DataOutsideTailBoundWarning,
                        stacklevel=3,
                    )
                return
            x = layer(x, context=context)[0]


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

    def draw_share(self, n: int, world: World, seed: int, step: int) -> tuple[Tensor, Tensor | None]:
        """This rank's contiguous n / W rows of the global minibatch of n that `draw` gives (every rank draws the
        same indices from the same generator)."""
        index = torch.randint(self.x.shape[0], (n,), generator=self.generator)
        return self._rows(index.tensor_split(world.size)[world.rank])

    def probe(self, n: int) -> tuple[Tensor, Tensor | None]:
        return self._rows(torch.arange(min(n, self.x.shape[0])))

    def init_sample(self, n: int, seed: int) -> tuple[Tensor, Tensor | None]:
        generator = torch.Generator().manual_seed(derive_seed(seed, "init"))
        return self._rows(torch.randperm(self.x.shape[0], generator=generator)[:n])

    def range_sample(self, n: int) -> tuple[Tensor, Tensor | None]:
        step = max(1, self.x.shape[0] // n)  # evenly spaced rows: no RNG
        return self._rows(torch.arange(0, self.x.shape[0], step)[:n])

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

    def draw_share(self, n: int, world: World, seed: int, step: int) -> tuple[Tensor, Tensor | None]:
        """n / W fresh rows, drawn with torch's global RNG seeded from (seed, rank, step) inside a fork: the ranks
        draw independent shares, resume needs no per-rank RNG state, and the global stream that the model may use
        stays the same on every rank."""
        with forked_rng(self.device):
            torch.manual_seed(derive_seed(seed, f"data/rank {world.rank} of {world.size}/step {step}"))
            return self.draw(n // world.size)

    def init_sample(self, n: int, seed: int) -> tuple[Tensor, Tensor | None]:
        return self.draw(n)

    def range_sample(self, n: int) -> tuple[Tensor, Tensor | None]:
        return self.probe(n)

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


def _expected_features(model: nn.Module) -> tuple[int | None, int | None | bool]:
    """(D, C) as declared by the model or its base, where they say: D None when unknown; C an int for a
    conditional mixture base, None for an unconditional one, False when unknown."""
    features, context_features = None, False
    for module in (model, flow_base(model) if isinstance(model, Flow) else None):
        if features is None and module is not None:
            features = distribution_features(module)
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
        with torch.no_grad(), eval_mode(model):
            log_p = _log_prob(model, x, context)
    except Exception as error:
        given = " and no context" if context is None else f" with a context of shape {tuple(context.shape)}"
        raise ValueError(
            f"model.log_prob fails on {name} of shape {tuple(x.shape)}{given}: "
            f"{type(error).__name__}: {first_line(error)}"
        ) from error
    if not isinstance(log_p, Tensor) or log_p.shape != (x.shape[0],):
        shape = tuple(log_p.shape) if isinstance(log_p, Tensor) else type(log_p).__name__
        raise ValueError(f"model.log_prob must return shape ({x.shape[0]},) for {x.shape[0]} rows; got {shape}")


def _mixture_base(model: nn.Module) -> tuple[MixtureOfGaussians | None, bool]:
    """(the model's MixtureOfGaussians base or None, whether data go through a flow's transform first)."""
    if isinstance(model, MixtureOfGaussians):
        return model, False
    if isinstance(model, Flow) and isinstance(flow_base(model), MixtureOfGaussians):
        return flow_base(model), True
    return None, False


def initialize_base(model: nn.Module, x: Tensor, context: Tensor | None = None, *, seed: int = 0) -> None:
    """Fit the `MixtureOfGaussians` base of `model` to data, in place: what `fit(init_base=True)` does on a fresh
    start, for models trained by other code (an sbi density estimator, a custom loop).

    The data x (N, D) are pushed through the flow's current transform (with the context through its embedding net
    when the flow is conditional), and the base is fitted to the result by k-means++ and EM
    (`MixtureOfGaussians.initialize_from_data`; a conditional base is set to the marginal fit). Under a flow of
    affine layers only the fitted scales are widened by `AFFINE_FLOW_INIT_SCALE_FACTOR`, as in `fit`. A few
    thousand rows suffice (`fit` uses up to 5000).

    Args:
        model: a `MixtureOfGaussians`, or an nflows `Flow` whose base is one.
        x: data (N, D) in the model's input space.
        context: (N, C) for a conditional flow, else None.
        seed: seeds k-means++.

    Raises:
        ValueError: a model without a mixture base, or data (or context) of the wrong shape or not finite.
    """
    base, _ = _mixture_base(model)
    if base is None:
        raise ValueError(
            f"initialize_base needs a MixtureOfGaussians or a Flow over one; got {type(model).__name__}"
            + (f" over {type(flow_base(model)).__name__}" if isinstance(model, Flow) else "")
        )
    check_seed(seed)
    reference = next(model.parameters())
    x, context = _split(x if context is None else (x, context), "x" if context is None else "(x, context)")
    x = x.to(reference.device, reference.dtype)
    context = None if context is None else context.to(reference.device, reference.dtype)
    _check_model_accepts(model, x[:_PROBE_ROWS], None if context is None else context[:_PROBE_ROWS], "x")
    _fit_base(model, x, context, seed)


@torch.no_grad()
def _initialize_base(model: nn.Module, source: _Source, seed: int) -> None:
    if _mixture_base(model)[0] is not None:
        _fit_base(model, *source.init_sample(_INIT_POINTS, seed), seed)


@torch.no_grad()
def _fit_base(model: nn.Module, x: Tensor, context: Tensor | None, seed: int) -> None:
    base, through_flow = _mixture_base(model)
    if through_flow:
        with eval_mode(model):
            x = flow_transform(model)(x, context=embed_context(model, context))[0]
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
    from a widened start (validation NLL on every 2-D target, held-out seed: the base-comparison page of the docs)."""
    layers = list(flow_transform(flow).modules())
    affine = any(isinstance(layer, _AFFINE_LAYERS) for layer in layers)
    spline = any(isinstance(layer, _SPLINE_LAYERS) for layer in layers)
    return AFFINE_FLOW_INIT_SCALE_FACTOR if affine and not spline else 1.0


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    x: Tensor,
    context: Tensor | None,
    batch_size: int,
    device: torch.device,
    world: World = SINGLE_PROCESS,
) -> float:
    """Mean NLL of (x, context) in batches, in evaluation mode; the RNGs are left as they were. Under
    torch.distributed each rank scores its contiguous share of the rows and the sums are added over the ranks."""
    rows_total = x.shape[0]
    if world.parallel:
        x = x.tensor_split(world.size)[world.rank]
        context = None if context is None else context.tensor_split(world.size)[world.rank]
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())
    devices = [device] if device.type == "cuda" else []
    total = torch.zeros((), dtype=torch.float64, device=device)
    with torch.random.fork_rng(devices=devices), eval_mode(model):
        for start in range(0, x.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            batch_context = None if context is None else context[rows].to(device, dtype)
            total += _log_prob(model, x[rows].to(device, dtype), batch_context).sum(dtype=torch.float64)
    return -world.all_reduce_sum(total).item() / rows_total


def _floating_buffers(model: nn.Module) -> dict[str, Tensor]:
    """Copies of the floating buffers (batch-norm statistics, ...): a forward pass may change them."""
    return {name: buffer.detach().clone() for name, buffer in model.named_buffers() if buffer.is_floating_point()}


# -------------------------------------------------------------------------------------------------- files
def _read_checkpoint(path: Path) -> dict[str, Any]:
    entries = {"scheduler": dict, "history": dict}
    return read_checkpoint(path, CHECKPOINT_FORMAT, "mog_flows.fit", entries, _checkpoint_problem)


def _checkpoint_problem(checkpoint: dict[str, Any]) -> str | None:
    history = checkpoint["history"]
    for key in ("train_loss", "grad_norm", "learning_rate", "val_nll", "val_steps"):
        if not isinstance(history.get(key), Tensor) or history[key].dim() != 1:
            return f"history entry {key!r} is missing or not a 1-D tensor"
    for key in ("best_val_nll", "best_step", "wall_time"):
        if key not in history:
            return f"history entry {key!r} is missing"
    if not isinstance(checkpoint["rng"].get("batches"), Tensor):
        return "RNG state 'batches' is missing"
    if not isinstance(checkpoint["config"].get("data"), dict):
        return "its config has no data description"
    return None


def _config(model, source, val, device, settings: FitSettings, world: World) -> dict[str, Any]:
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())
    model_description = {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(dtype),
    }
    val_description = None if val is None else {"rows": val[0].shape[0], "checksum": _checksum(val[0])}
    return {
        "format": CHECKPOINT_FORMAT,
        **settings.config(),
        "model": model_description,
        "data": source.describe(),
        "val_data": val_description,
        "device": str(device),
        "world_size": world.size,
        "torch": str(torch.__version__),
    }


# -------------------------------------------------------------------------------------------------- arguments
def _resolve_device(device: str | torch.device, world: World = SINGLE_PROCESS) -> torch.device:
    """The training device. Under torch.distributed, "auto" and a bare "cuda" mean cuda:LOCAL_RANK, which becomes
    the current CUDA device; the nccl backend needs CUDA."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'auto' or a torch device; got {device!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for but CUDA is not available")
    if world.parallel:
        if device.type == "cuda":
            if device.index is None:
                device = torch.device("cuda", local_rank())
            if device.index >= torch.cuda.device_count():
                raise ValueError(
                    f"rank {world.rank} would train on {device}, but this node has {torch.cuda.device_count()} CUDA "
                    "devices: start at most that many processes per node (torchrun --nproc_per_node)"
                )
            torch.cuda.set_device(device)
        elif world.backend == "nccl":
            raise ValueError(
                f"the process group uses the nccl backend, which needs CUDA tensors, but fit would train on {device}: "
                "initialise the group with backend='gloo' to train on CPUs, or train on CUDA"
            )
    return device


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

"""The run engine that `fit` and `fit_maxent` share: checkpoint files (atomic writes, the reader and its errors),
the resume checks (one config comparison, one tolerance), RNG capture and restore, the interrupt guard, divergence
errors and temperature schedules.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (readable with
`torch.load(path, weights_only=True)`) with at least `format` (a string naming the writer and its version), `step`
(completed steps), `config` (the run's settings, as in the directory's `config.json`), `model` (its state_dict),
`optimizer` and `rng` (`capture_rng`). Each trainer adds its own entries and names them to `read_checkpoint`.
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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .mixture import MixtureOfGaussians

__all__ = [
    "TrainingDivergedError",
    "CONFIG_TOLERANCE",
    "same_setting",
    "check_resume_config",
    "write_atomic",
    "write_config",
    "read_checkpoint",
    "check_checkpoint_dir",
    "check_state_fits",
    "check_mixture_settings",
    "load_training_state",
    "capture_rng",
    "restore_rng",
    "forked_rng",
    "derive_seed",
    "InterruptGuard",
    "eval_mode",
    "diverged",
    "non_finite_parameters",
    "check_temperature_schedule",
    "geometric_temperature",
    "set_temperature",
    "first_line",
]

# Floats in two configs count as the same setting within this relative (and absolute) tolerance: the data checksums
# of a run resumed on another device may differ in their last bits; every other setting is an exact number.
CONFIG_TOLERANCE = 1e-9


class TrainingDivergedError(RuntimeError):
    """The loss, the gradient or the parameters became non-finite (or the loss blew up). `step` is the step
    (counting from 1) that failed; `checkpoint` the last good `latest.pt` (left as it was), or None when nothing was
    saved."""

    def __init__(self, message: str, *, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


# ---------------------------------------------------------------------------------------------- settings on resume
def same_setting(a: Any, b: Any) -> bool:
    """Whether two config values (numbers, strings, None, lists and dicts of them) are the same setting: floats
    within `CONFIG_TOLERANCE`, everything else equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_setting(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_setting(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=CONFIG_TOLERANCE, abs_tol=CONFIG_TOLERANCE)
    return a == b


def check_resume_config(
    saved: dict[str, Any], current: dict[str, Any], keys: Sequence[str], path: Path, who: str
) -> None:
    """Refuse to resume a checkpoint whose config differs from `current` in any of `keys`, naming each difference."""
    differences = [
        f"{key}: {saved.get(key)!r} there, {current.get(key)!r} now"
        for key in keys
        if not same_setting(saved.get(key), current.get(key))
    ]
    if differences:
        raise ValueError(
            f"checkpoint {path} belongs to a run with other settings ({'; '.join(differences)}); call {who} with the "
            "original arguments to resume it, or use another checkpoint_dir"
        )


# ---------------------------------------------------------------------------------------------- files
def write_atomic(path: Path, write: Callable[[Any], Any]) -> None:
    """Write through a temporary file in the same directory, flushed to disk, and rename it over `path`: a reader
    sees the old file or the new one, never a part of it."""
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


def write_config(directory: Path, config: dict[str, Any]) -> None:
    """Create `directory` and write `config` to its `config.json` (human-readable; the same dict is in every
    checkpoint)."""
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, indent=2).encode() + b"\n"
    write_atomic(directory / "config.json", lambda file: file.write(text))


_COMMON_ENTRIES = {"step": int, "config": dict, "model": dict, "optimizer": dict, "rng": dict}


def read_checkpoint(
    path: Path,
    format: str,
    who: str,
    entries: dict[str, type | tuple[type, ...]] | None = None,
    problem: Callable[[dict[str, Any]], str | None] | None = None,
    older: Sequence[str] = (),
) -> dict[str, Any]:
    """Load a checkpoint on the CPU, tensors and containers only, and check its layout: `format`, the common
    entries (module docstring), `entries` (name -> type) and what `problem(checkpoint)` says (a reason or None).
    Raises ValueError naming the file and what is wrong: unreadable (truncated, corrupt, arbitrary objects), of one
    of the `older` formats of the same writer (which this version cannot resume), or another layout."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, garbage, or objects other than tensors and containers
        reason = f"{type(error).__name__}{': ' + first_line(error) if str(error).strip() else ''}"
        raise ValueError(
            f"checkpoint {path} cannot be read: it is truncated, corrupt, or was not written by {who} ({reason})"
        ) from error
    if not isinstance(checkpoint, dict):
        found = f"it holds a {type(checkpoint).__name__}, not a dict"
    elif checkpoint.get("format") in older:
        raise ValueError(
            f"checkpoint {path} was written by an older version of {who} (format {checkpoint['format']!r}; this "
            f"version writes and resumes {format!r}), whose state it cannot resume: start the run afresh in another "
            "checkpoint_dir, or delete the checkpoint"
        )
    elif checkpoint.get("format") != format:
        found = f"format {checkpoint.get('format')!r}, expected {format!r}"
    else:
        found = None
        for key, kind in {**_COMMON_ENTRIES, **(entries or {})}.items():
            value = checkpoint.get(key)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
                found = f"entry {key!r} is missing or not a {names}"
                break
        if found is None and not isinstance(checkpoint["rng"].get("torch"), Tensor):
            found = "RNG state 'torch' is missing"
        if found is None and problem is not None:
            found = problem(checkpoint)
    if found:
        raise ValueError(f"checkpoint {path} is not a {who} checkpoint: {found}")
    return checkpoint


def check_checkpoint_dir(value: Any, name: str = "checkpoint_dir", *, probe: bool = True) -> Path | None:
    """None, or `value` as a Path once it is known that checkpoints can be written there: a str or os.PathLike, not
    "", naming a directory, or a path that can be created as one. The check writes and removes a file (in the
    directory, or in its nearest existing ancestor), so that permissions, read-only file systems and the like are
    found before any work, whoever runs it (root ignores permission bits). `probe=False` checks the value only and
    touches no file (a process that will not write, such as a rank other than 0 of a distributed run)."""
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
    if not probe:
        return directory
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


# ---------------------------------------------------------------------------------------------- model state
def check_state_fits(model: nn.Module, state: dict[str, Any], path: Path) -> None:
    """Compare names and shapes before loading, so that a mismatch leaves the model untouched."""
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


def check_mixture_settings(model: nn.Module, state: dict[str, Any], path: Path, *, temperature: bool) -> None:
    """Refuse a checkpoint whose mixtures were built with another estimator, num_inner or (with `temperature`) τ
    than the model's: loading it would silently replace the caller's settings with the checkpoint's."""
    keys = ("estimator", "temperature", "num_inner") if temperature else ("estimator", "num_inner")
    differences = []
    for name, module in model.named_modules():
        if not isinstance(module, MixtureOfGaussians):
            continue
        saved = state.get(f"{name}._extra_state" if name else "_extra_state")
        if not isinstance(saved, dict):  # check_state_fits names what is missing
            continue
        current = module.get_extra_state()
        differences += [
            f"{name or 'model'}.{key}: {saved[key]!r} there, {current[key]!r} now"
            for key in keys
            if key in saved and not same_setting(saved[key], current[key])
        ]
    if differences:
        raise ValueError(
            f"checkpoint {path} was written by a model built with other settings ({'; '.join(differences)}); build "
            "the model with the checkpoint's settings to resume it, or use another checkpoint_dir"
        )


def load_training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    checkpoint: dict[str, Any],
    path: Path,
    scheduler: Any | None = None,
) -> None:
    """Load the model, optimizer (and scheduler) states of a checkpoint, all or nothing for the model: the shapes
    are checked first, and an optimizer state that does not fit is a ValueError naming the file."""
    check_state_fits(model, checkpoint["model"], path)
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(checkpoint["scheduler"])
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        what = "optimizer" if scheduler is None else "optimizer or scheduler"
        raise ValueError(
            f"checkpoint {path}: the {what} state does not fit this model ({first_line(error)})"
        ) from error
    model.load_state_dict(checkpoint["model"])


def non_finite_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters holding NaN or ±inf."""
    return [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluation mode inside the block (no dropout, no batch-norm statistics updates); each submodule's mode is
    restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


# ---------------------------------------------------------------------------------------------- random state
def capture_rng(device: torch.device, generators: dict[str, torch.Generator] | None = None) -> dict[str, Tensor]:
    """The RNG states a run draws from: {"torch": the global CPU RNG, each named generator, "cuda": the device's
    RNG when the run is on CUDA}."""
    state = {"torch": torch.get_rng_state()}
    state.update({name: generator.get_state() for name, generator in (generators or {}).items()})
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(
    state: dict[str, Any],
    device: torch.device,
    path: Path,
    *,
    seed: int,
    generators: dict[str, torch.Generator] | None = None,
) -> None:
    """Set the RNGs from `capture_rng`'s dict. A checkpoint written on the CPU and resumed on CUDA seeds the CUDA
    stream with `seed`. A missing or malformed state is a ValueError naming the file; the state is checked whole
    before anything is set."""
    generators = generators or {}
    for name in ("torch", *generators):
        if not isinstance(state.get(name), Tensor) or state[name].dtype != torch.uint8 or state[name].dim() != 1:
            raise ValueError(f"checkpoint {path} holds an invalid RNG state: {name!r} is missing or not a byte tensor")
    probe = torch.Generator()
    try:
        for name in ("torch", *generators):
            probe.set_state(state[name])  # the CPU generators' own check, before any stream is touched
        torch.set_rng_state(state["torch"])
        for name, generator in generators.items():
            generator.set_state(state[name])
        if device.type == "cuda":
            if "cuda" in state:
                torch.cuda.set_rng_state(state["cuda"], device)
            else:  # saved on the CPU: the CUDA stream starts from the seed
                torch.cuda.manual_seed(seed)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ValueError(f"checkpoint {path} holds an invalid RNG state ({first_line(error)})") from error


def forked_rng(device: torch.device) -> contextlib.AbstractContextManager:
    """A block after which the global CPU RNG (and the device's, on CUDA) are as before it."""
    if device.type != "cuda":
        return torch.random.fork_rng(devices=[])
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.random.fork_rng(devices=[index])


def derive_seed(seed: int, purpose: str) -> int:
    """A seed for one purpose (minibatches, initial subset), independent of the streams seeded with `seed`."""
    digest = hashlib.blake2b(f"{seed}/{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# ---------------------------------------------------------------------------------------------- divergence
def diverged(
    who: str,
    what: str,
    *,
    step: int,
    steps: int,
    latest: Path | None,
    saved_step: int | None,
    applied: bool,
    advice: str,
) -> TrainingDivergedError:
    """The error for a run that diverged at `step` (from 1) of `steps` because of `what`: whether the failing update
    was applied, which checkpoint is kept (`latest`, saved after `saved_step`), and what to try (`advice`)."""
    if latest is None:
        kept = "No checkpoint_dir was given, so nothing was saved."
    elif saved_step is None:
        kept = f"Nothing was saved to {latest}."
    else:
        kept = f"The last good checkpoint, {latest} (step {saved_step}), is kept."
    return TrainingDivergedError(
        f"{who} diverged at step {step} of {steps}: {what}{'' if applied else '; the update was not applied'}. "
        f"{kept} {advice}",
        step=step,
        checkpoint=None if saved_step is None else latest,
    )


# ---------------------------------------------------------------------------------------------- temperatures
def check_temperature_schedule(
    schedule: Any, mixtures: list[MixtureOfGaussians], auto: float | None = None
) -> tuple[float, float] | None:
    """None, or the pair (start, end) of finite τ > 0 for a model that holds mixtures. With `auto` (a final τ), the
    string "auto" is accepted too: from the first Gumbel-estimated mixture's τ down to `auto` (not above the start),
    or None when no mixture uses a "gumbel-*" estimator."""
    if schedule is None:
        return None
    expected = "'auto', None or a pair (start, end)" if auto is not None else "a pair (start, end)"
    if isinstance(schedule, str):
        if auto is None or schedule != "auto":
            raise ValueError(f"temperature_schedule must be {expected}; got {schedule!r}")
        gumbel = [m for m in mixtures if m.estimator.startswith("gumbel")]
        if not gumbel:
            return None
        start = gumbel[0].temperature
        return start, min(start, auto)
    try:
        start, end = (float(value) for value in schedule)
    except (TypeError, ValueError) as error:
        raise ValueError(f"temperature_schedule must be {expected}; got {schedule!r}") from error
    if not all(math.isfinite(t) and t > 0 for t in (start, end)):
        raise ValueError(f"temperature_schedule values must be finite and > 0; got {schedule!r}")
    if not mixtures:
        raise ValueError("temperature_schedule was given but the model contains no MixtureOfGaussians")
    return start, end


def geometric_temperature(schedule: tuple[float, float], step: int, steps: int) -> float:
    """τ at `step` (from 0) of a run of `steps`: geometric from start (step 0) to end (step steps − 1, and after)."""
    start, end = schedule
    return start * (end / start) ** (min(step, steps - 1) / max(steps - 1, 1))


def set_temperature(mixtures: list[MixtureOfGaussians], temperature: float) -> None:
    for mixture in mixtures:
        mixture.temperature = temperature


# ---------------------------------------------------------------------------------------------- interruptions
# the signals that stop a run as Ctrl-C does: SIGTERM is what cluster schedulers send to preempt a job, SIGHUP what a
# closed terminal sends (SIGHUP does not exist on Windows)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class InterruptGuard:
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

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
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


def first_line(error: BaseException) -> str:
    """The informative line of an error message (torch's weights-only refusals explain themselves at length)."""
    text = str(error)
    if "WeightsUnpickler error:" in text:  # keep the reason, drop the advice around it
        reason = text.split("WeightsUnpickler error:", 1)[1]
        reason = reason.split("Check the documentation", 1)[0].split("Please use", 1)[0]
        return "the file holds something other than tensors and containers: " + " ".join(reason.split())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__

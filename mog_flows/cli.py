"""The `mog-flows` command: train, evaluate, plot and compare flows on the built-in targets.

A run directory holds everything about one run:

    config.json         the arguments of `mog-flows train`
    checkpoints/        fit's latest.pt, best.pt and config.json (resumable: run `train` again)
    metrics.json        test NLL, KL where the target's density is exact, mode coverage, parameter count
    figures/            density.png (2-D targets), training.png

Every failure is one line `mog-flows COMMAND: error: ...` on stderr and exit code 2 (argparse's convention); the
arguments and a run directory's config.json are checked before anything is written. `evaluate` and `plot` read
best.pt, or latest.pt when there is no best.pt or it cannot be read (saying so on stderr). An interrupted `train`
(Ctrl-C, SIGTERM, SIGHUP) exits with code 130 after fit has saved its state; the same command resumes it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

__all__ = ["main"]

_SPLIT_SIZES = {"train": 20_000, "val": 2_000, "test": 10_000}
# the settings of a run, as config.json holds them (the options of `train` but --no-progress)
_INTEGERS = ("num_layers", "hidden_features", "num_components", "steps", "batch_size")
_SETTINGS = (
    "dataset",
    "base",
    "transform",
    "num_layers",
    "hidden_features",
    "num_components",
    "covariance",
    "steps",
    "batch_size",
    "lr",
    "seed",
    "device",
)


class _Failure(Exception):
    """A failure of the command, reported as one `error:` line with exit code 2."""


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    from .datasets import DATASETS
    from .flows import TRANSFORMS

    parser.add_argument("--dataset", default="eight_gaussians", choices=DATASETS, help="target to fit")
    parser.add_argument("--base", default="mog", choices=("mog", "gaussian"), help="base distribution")
    parser.add_argument("--transform", default="nsf", choices=TRANSFORMS, help="flow transform")
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--hidden-features", type=int, default=64)
    parser.add_argument("--num-components", type=int, default=8, help="mixture components (base=mog)")
    parser.add_argument("--covariance", default="diagonal", choices=("diagonal", "full"))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu', 'cuda', ...")


def _build(config: dict):
    from .datasets import get_dataset
    from .flows import build_flow

    kwargs = {"covariance": config["covariance"]} if config["base"] == "mog" else {}
    return build_flow(
        get_dataset(config["dataset"]).features,
        base=config["base"],
        transform=config["transform"],
        num_layers=config["num_layers"],
        hidden_features=config["hidden_features"],
        num_components=config["num_components"],
        **kwargs,
    )


def _data(config: dict):
    from .datasets import make_splits

    sizes = (None, None, None) if config["dataset"] == "digits" else tuple(_SPLIT_SIZES.values())
    return make_splits(config["dataset"], *sizes, seed=config["seed"])


def _choices() -> dict[str, tuple[str, ...]]:
    from .datasets import DATASETS
    from .flows import TRANSFORMS

    return {
        "dataset": DATASETS,
        "base": ("mog", "gaussian"),
        "transform": TRANSFORMS,
        "covariance": ("diagonal", "full"),
    }


def _settings_problem(config: dict[str, Any], option: bool) -> str | None:
    """What is wrong with the settings of a run (None: nothing); names options (--steps) or config keys (steps)."""

    def name(key: str) -> str:
        return "--" + key.replace("_", "-") if option else key

    for key, choices in _choices().items():
        if config[key] not in choices:
            return f"{name(key)} must be one of {', '.join(map(repr, choices))}; got {config[key]!r}"
    for key in _INTEGERS:
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"{name(key)} must be a positive integer; got {value!r}"
    lr = config["lr"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        return f"{name('lr')} must be a finite number > 0; got {lr!r}"
    seed = config["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        return f"{name('seed')} must be an integer in [0, 2**63); got {seed!r}"
    return _device_problem(config["device"], name("device"))


def _device_problem(device: Any, name: str) -> str | None:
    if device == "auto":
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return f"{name} must be 'auto' or a torch device ('cpu', 'cuda', 'cuda:1', ...); got {device!r}"
    if parsed.type == "cuda" and not torch.cuda.is_available():
        return f"{name} {device!r} was asked for but CUDA is not available"
    return None


def _read_config(run_dir: Path) -> dict[str, Any]:
    """The checked settings in run_dir/config.json."""
    path = run_dir / "config.json"
    try:
        config = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise _Failure(
            f"{path} is not valid JSON ({error}); it was not written by `mog-flows train`: remove it or choose "
            "another run directory"
        ) from error
    if not isinstance(config, dict):
        raise _Failure(f"{path} holds a {type(config).__name__}, not the settings of a run (a JSON object)")
    missing = [key for key in _SETTINGS if key not in config]
    if missing:
        raise _Failure(f"{path} lacks the settings {missing}; it was not written by `mog-flows train`")
    problem = _settings_problem(config, option=False)
    if problem:
        raise _Failure(f"{path}: {problem}")
    return {key: config[key] for key in _SETTINGS}


def _run_directory(text: str) -> Path:
    if not text:
        raise _Failure("the run directory must be a non-empty path ('.' for the current directory)")
    run_dir = Path(text)
    if run_dir.exists() and not run_dir.is_dir():
        raise _Failure(f"{run_dir} is a file, not a run directory")
    return run_dir


def _load(run_dir: Path):
    """(config, flow with the best (else latest) checkpoint loaded, the checkpoint)."""
    from .training import load_checkpoint

    if not (run_dir / "config.json").exists():
        raise _Failure(f"{run_dir} is not a run directory (no config.json); create one with `mog-flows train`")
    config = _read_config(run_dir)
    checkpoints = run_dir / "checkpoints"
    best, latest = checkpoints / "best.pt", checkpoints / "latest.pt"
    if best.exists():
        flow = _build(config)
        try:
            checkpoint = load_checkpoint(best, flow)
        except ValueError as error:
            if not latest.exists():
                raise
            flow = _build(config)  # a fresh one: nothing of the refused file stays in it
            checkpoint = load_checkpoint(latest, flow)
            print(
                f"mog-flows: warning: {best} cannot be read or does not fit ({_one_line(error)}); using latest.pt "
                f"(step {checkpoint['step']}) instead",
                file=sys.stderr,
            )
    elif latest.exists():
        flow = _build(config)
        checkpoint = load_checkpoint(latest, flow)
    else:
        raise _Failure(f"{run_dir} has no checkpoint yet; run `mog-flows train` first")
    flow.eval()
    return config, flow, checkpoint


def _train(args: argparse.Namespace) -> None:
    from .training import fit

    config = {key: getattr(args, key) for key in _SETTINGS}
    problem = _settings_problem(config, option=True)
    if problem:
        raise _Failure(problem)
    run_dir = _run_directory(args.run_dir)
    saved = run_dir / "config.json"
    if saved.exists():
        previous = _read_config(run_dir)
        differences = [
            f"{key}: {previous[key]!r} there, {config[key]!r} now" for key in _SETTINGS if previous[key] != config[key]
        ]
        if differences:
            raise _Failure(
                f"{run_dir} holds a run with other settings ({'; '.join(differences)}); repeat its settings to "
                "resume it, or choose another run directory"
            )
    torch.manual_seed(args.seed)
    flow = _build(config)
    train, val, _ = _data(config)
    if not saved.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(config, indent=2) + "\n")
    fit(
        flow,
        train,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        seed=args.seed,
        val_data=val,
        checkpoint_dir=run_dir / "checkpoints",
        checkpoint_every=max(1, min(250, args.steps)),
        progress=args.progress,
    )
    _evaluate(argparse.Namespace(run_dir=str(run_dir)))
    _plot(argparse.Namespace(run_dir=str(run_dir)))


def _evaluate(args: argparse.Namespace) -> None:
    from .datasets import get_dataset
    from .evaluation import evaluate

    run_dir = _run_directory(args.run_dir)
    config, flow, checkpoint = _load(run_dir)
    flow.cpu()
    _, _, test = _data(config)
    metrics = evaluate(flow, get_dataset(config["dataset"]), test)
    metrics.update(step=checkpoint["step"], parameters=sum(p.numel() for p in flow.parameters()))
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


def _plot(args: argparse.Namespace) -> None:
    from .datasets import get_dataset
    from .plotting import plot_density_panels, plot_training_curves
    from .training import History

    run_dir = _run_directory(args.run_dir)
    config, flow, checkpoint = _load(run_dir)
    flow.cpu()
    figures = run_dir / "figures"
    figures.mkdir(exist_ok=True)
    history = History.from_state_dict(checkpoint["history"])
    plot_training_curves({f"{config['base']} base": history.train_loss}, figures / "training.png")
    target = get_dataset(config["dataset"])
    if target.features == 2:
        panels = [(f"{config['transform']}, {config['base']} base", lambda x: flow.log_prob(x.float()))]
        if target.has_exact_density:
            panels.insert(0, ("true density", lambda x: target.log_prob(x)))
        plot_density_panels(panels, figures / "density.png", bounds=4.5)
    print(f"wrote figures to {figures}")


def _compare(args: argparse.Namespace, rest: list[str]) -> None:
    from .studies import comparison

    comparison.main(rest)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mog-flows",
        description="Normalizing flows with a mixture-of-Gaussians base: train, evaluate, plot, compare.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a flow on a target; resumes if the run directory has a checkpoint")
    train.add_argument("run_dir", help="run directory (created; config, checkpoints, metrics, figures)")
    _add_model_arguments(train)
    train.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    train.set_defaults(func=_train)

    evaluate = commands.add_parser("evaluate", help="test NLL, KL and mode coverage of a run's best checkpoint")
    evaluate.add_argument("run_dir")
    evaluate.set_defaults(func=_evaluate)

    plot = commands.add_parser("plot", help="density and training-curve figures of a run")
    plot.add_argument("run_dir")
    plot.set_defaults(func=_plot)

    compare = commands.add_parser(
        "compare",
        help="Gaussian vs mixture base across transforms and targets (options: mog-flows compare --help)",
        add_help=False,
    )
    compare.set_defaults(func=_compare)
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> None:
    """Run the command; a failure prints one `mog-flows COMMAND: error: ...` line and exits with code 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    if argv and argv[0] == "compare":  # everything after `compare` belongs to the comparison's own parser
        args, rest = parser.parse_args(argv[:1]), argv[1:]
        args.func(args, rest)
        return
    args = parser.parse_args(argv)
    prog = f"{parser.prog} {args.command}"
    try:
        args.func(args)
    except KeyboardInterrupt as error:
        # fit has saved the state after the last completed step (its note says where)
        reason = f" ({error})" if str(error) else ""
        resume = (
            "; the last completed step is saved: run the same command again to resume"
            if args.command == "train"
            else ""
        )
        print(f"{prog}: interrupted{reason}{resume}", file=sys.stderr)
        raise SystemExit(130) from None
    except (_Failure, ValueError, TypeError, OSError, RuntimeError) as error:
        # _Failure: the command's own checks; the others: the library's checks (a checkpoint of other settings, a
        # corrupt file, a diverged run), the file system, torch
        message = _one_line(error)
        if not isinstance(error, (_Failure, ValueError)):
            message = f"{type(error).__name__}: {message}"
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

"""The `mog-flows` command: train, evaluate, sample, plot and compare flows, on a built-in target or your own data.

    mog-flows train RUN --data train.npy --val-data val.npy     # points (N, D) in .npy, .csv or .pt
    mog-flows evaluate RUN --data test.npy                      # held-out NLL per point
    mog-flows sample RUN -n 10000 --out samples.npy             # or samples.csv

A run directory holds everything about one run:

    config.json         the arguments of `mog-flows train`; for your own data the path, SHA-256, rows and features of
                        each file, so that a resume with other data is refused
    checkpoints/        fit's latest.pt, best.pt (with validation data) and config.json (resumable: run `train` again)
    metrics.json        what `evaluate` printed last: for a built-in target test NLL, KL where the target's density is
                        exact, mode coverage; for your own data the NLL of the training and validation files (or of
                        the --data file of `evaluate`); the step and parameter count
    figures/            density.png (2-D built-in targets), training.png

The data's feature count sets the flow's features, and the flow's first transform z-scores the training data
(`build_flow(standardize=...)`), so data in any units train well; log-densities are in the data's units. Data files:
`mog_flows.data_files`.

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

_DEFAULT_DATASET = "eight_gaussians"
_SAMPLE_BATCH = 65_536  # samples drawn at a time by `sample`

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
    "base_lr_factor",
    "temperature_schedule",
    "checkpoint_every",
    "data",
    "val_data",
)
_FILE_KEYS = ("data", "val_data")  # descriptions of data files: {"path", "sha256", "rows", "features"}


class _Failure(Exception):
    """A failure of the command, reported as one `error:` line with exit code 2."""


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    import inspect

    from .datasets import DATASETS
    from .flows import TRANSFORMS, build_flow

    parser.add_argument(
        "--dataset", choices=DATASETS, help=f"built-in target to fit (default {_DEFAULT_DATASET}; not with --data)"
    )
    parser.add_argument(
        "--data",
        metavar="FILE",
        help="train on your own points: FILE is .npy (an array (N, D), or (N,) for one feature), .csv (one point "
        "per line, comma-separated, an optional header line) or .pt (a tensor saved with torch.save)",
    )
    parser.add_argument(
        "--val-data",
        metavar="FILE",
        help="validation points (with --data; same formats and features): scored at every checkpoint, and the "
        "checkpoint with the lowest validation NLL is kept as best.pt (without it the run ends with its last step)",
    )
    parser.add_argument("--base", default="mog", choices=("mog", "gaussian"), help="base distribution")
    parser.add_argument("--transform", default="nsf", choices=TRANSFORMS, help="flow transform")
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--hidden-features", type=int, default=64)
    parser.add_argument(
        "--num-components",
        type=int,
        default=inspect.signature(build_flow).parameters["num_components"].default,
        help="mixture components (base=mog; default %(default)s, build_flow's)",
    )
    parser.add_argument("--covariance", default="diagonal", choices=("diagonal", "full"))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu', 'cuda', ...")
    parser.add_argument(
        "--base-lr-factor",
        type=float,
        default=None,
        help="learning rate of the mixture base as a multiple of --lr (default: fit's BASE_LR_FACTOR, 30)",
    )
    parser.add_argument(
        "--temperature-schedule",
        type=float,
        nargs=2,
        metavar=("START", "END"),
        help="anneal the mixture's Gumbel-softmax temperature geometrically from START to END (base mog). `train` "
        "maximises the exact likelihood, which does not depend on it: it sets the temperature saved with the "
        "model, for its relaxed samples (rsample) in your own code",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="STEPS",
        help="steps between checkpoints (default min(250, --steps)); --val-data is scored at every checkpoint (fit "
        "validates when it saves, so there is no separate --val-every)",
    )


def _features(config: dict) -> int:
    from .datasets import get_dataset

    return get_dataset(config["dataset"]).features if config["data"] is None else config["data"]["features"]


def _build(config: dict, train: torch.Tensor | None = None):
    """The flow of a run; on your own data its first transform z-scores `train` (the training points), or, when
    loading a checkpoint (train=None), a placeholder whose mean and scale the checkpoint sets."""
    from .flows import build_flow

    kwargs = {"covariance": config["covariance"]} if config["base"] == "mog" else {}
    if config["data"] is not None:
        kwargs["standardize"] = torch.zeros(1, config["data"]["features"]) if train is None else train
    return build_flow(
        _features(config),
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

    for key in _FILE_KEYS:
        problem = _file_description_problem(config[key])
        if problem:
            return f"{key}: {problem}"
    if config["data"] is None and config["val_data"] is not None:
        return "val_data is set without data"
    if config["val_data"] is not None and config["val_data"]["features"] != config["data"]["features"]:
        return "val_data and data have other numbers of features"
    for key, choices in _choices().items():
        if key == "dataset" and config["data"] is not None and config[key] is not None:
            return f"dataset must be null for a run on a data file; got {config[key]!r}"
        if key == "dataset" and config[key] is None and (option or config["data"] is not None):
            continue  # a run on a data file (`train` reads the files after checking the other settings)
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
    factor = config["base_lr_factor"]
    if not _positive_number(factor):
        return f"{name('base_lr_factor')} must be a finite number > 0; got {factor!r}"
    schedule = config["temperature_schedule"]
    if schedule is not None:
        if not (isinstance(schedule, list) and len(schedule) == 2 and all(map(_positive_number, schedule))):
            return f"{name('temperature_schedule')} must be two finite numbers > 0 (START END); got {schedule!r}"
        if config["base"] != "mog":
            return f"{name('temperature_schedule')} anneals a mixture base's temperature: it needs base 'mog'"
    every = config["checkpoint_every"]
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        return f"{name('checkpoint_every')} must be a positive integer; got {every!r}"
    return _device_problem(config["device"], name("device"))


def _positive_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _file_description_problem(description: Any) -> str | None:
    if description is None:
        return None
    keys = {"path": str, "sha256": str, "rows": int, "features": int}
    if not isinstance(description, dict) or set(description) != set(keys):
        return f"expected null or an object with the keys {sorted(keys)}; got {description!r}"
    for key, kind in keys.items():
        value = description[key]
        if isinstance(value, bool) or not isinstance(value, kind) or (kind is int and value < 1):
            return f"{key} must be a {'positive integer' if kind is int else 'string'}; got {value!r}"
    return None


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
    from .training import BASE_LR_FACTOR

    # the settings added after config.json was first written, with the values the runs written without them had
    added = {"base_lr_factor": BASE_LR_FACTOR, "temperature_schedule": None, "checkpoint_every": None}
    config = {**added, "data": None, "val_data": None, **config}
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


def _run_config(run_dir: Path) -> dict[str, Any]:
    if not (run_dir / "config.json").exists():
        raise _Failure(f"{run_dir} is not a run directory (no config.json); create one with `mog-flows train`")
    return _read_config(run_dir)


def _load(run_dir: Path, config: dict[str, Any] | None = None):
    """(config, flow with the best (else latest) checkpoint loaded, the checkpoint)."""
    from .training import load_checkpoint

    config = _run_config(run_dir) if config is None else config
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


def _read_data(path: str, option: str, features: int | None = None, against: str = "") -> torch.Tensor:
    """The points in `path` (N, D), checked to have `features` columns when given (`against` says whose)."""
    from .data_files import load_data

    if not path:
        raise _Failure(f"{option} must name a file; got an empty path")
    x = load_data(path)
    if features is not None and x.shape[1] != features:
        raise _Failure(f"{path} has {x.shape[1]} feature(s) per point; {against} {features}")
    return x


def _describe(path: str, x: torch.Tensor) -> dict[str, Any]:
    from .data_files import file_sha256

    return {"path": str(Path(path).resolve()), "sha256": file_sha256(path), "rows": x.shape[0], "features": x.shape[1]}


def _file_difference(key: str, before: dict | None, now: dict | None) -> str | None:
    """How the data file `key` of a run differs from the one given now (None: the same content)."""
    if before is None and now is None:
        return None
    if before is None:
        return f"{key}: none there, {now['path']} now"
    if now is None:
        return f"{key}: {before['path']} there, none now"
    if before["sha256"] == now["sha256"]:
        return None  # the same points, wherever the file lies now
    if before["path"] == now["path"]:
        return (
            f"{key}: {now['path']} has changed since the run started (sha256 {before['sha256'][:12]}... there, "
            f"{now['sha256'][:12]}... now)"
        )
    return (
        f"{key}: {before['path']} (sha256 {before['sha256'][:12]}...) there, {now['path']} "
        f"(sha256 {now['sha256'][:12]}...) now"
    )


def _train(args: argparse.Namespace) -> None:
    from .training import BASE_LR_FACTOR, fit

    if args.data is None and args.val_data is not None:
        raise _Failure("--val-data needs --data (a built-in --dataset brings its own validation split)")
    if args.data is not None and args.dataset is not None:
        raise _Failure("--data and --dataset exclude each other: train on your file or on a built-in target")
    config = {key: getattr(args, key) for key in _SETTINGS if key not in _FILE_KEYS}
    config.update(
        dataset=None if args.data is not None else args.dataset or _DEFAULT_DATASET,
        base_lr_factor=BASE_LR_FACTOR if args.base_lr_factor is None else args.base_lr_factor,
        data=None,
        val_data=None,
    )
    problem = _settings_problem(config, option=True)
    if problem:
        raise _Failure(problem)
    run_dir = _run_directory(args.run_dir)
    train = val = None
    if args.data is not None:
        train = _read_data(args.data, "--data")
        config["data"] = _describe(args.data, train)
        if args.val_data is not None:
            val = _read_data(args.val_data, "--val-data", train.shape[1], f"{args.data} has")
            config["val_data"] = _describe(args.val_data, val)
    saved = run_dir / "config.json"
    if saved.exists():
        previous = _read_config(run_dir)
        on_files = previous["data"] is not None or config["data"] is not None
        differences = [
            f"{key}: {previous[key]!r} there, {config[key]!r} now"
            for key in _SETTINGS
            if key not in _FILE_KEYS and previous[key] != config[key] and not (key == "dataset" and on_files)
        ]
        differences += filter(None, (_file_difference(key, previous[key], config[key]) for key in _FILE_KEYS))
        if differences:
            raise _Failure(
                f"{run_dir} holds a run with other settings ({'; '.join(differences)}); repeat its settings and data "
                "to resume it, or choose another run directory"
            )
    torch.manual_seed(args.seed)
    flow = _build(config, train)
    if train is None:
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
        checkpoint_every=args.checkpoint_every or max(1, min(250, args.steps)),
        progress=args.progress,
        temperature_schedule=None if args.temperature_schedule is None else tuple(args.temperature_schedule),
        base_lr_factor=config["base_lr_factor"],
        compile=args.compile,
    )
    _evaluate(argparse.Namespace(run_dir=str(run_dir), data=None), own={"data": train, "val_data": val})
    _plot(argparse.Namespace(run_dir=str(run_dir)))


def _recorded_data(config: dict[str, Any], key: str) -> torch.Tensor:
    """The points of the run's data file `key`, read again and checked to be those it was trained with."""
    from .data_files import DataFileError, file_sha256, load_data

    description = config[key]
    path = description["path"]
    advice = "evaluate on a file with --data TEST_FILE"
    try:
        x = load_data(path)
    except DataFileError as error:
        raise _Failure(f"the run's {key} file cannot be used: {error}; {advice}") from error
    if file_sha256(path) != description["sha256"]:
        raise _Failure(f"{path} has changed since the run was trained (its sha256 differs); {advice}")
    return x


def _evaluate(args: argparse.Namespace, own: dict[str, torch.Tensor | None] | None = None) -> None:
    """Print and write metrics.json; `own`: the run's data already in memory (from `train`)."""
    from .datasets import get_dataset
    from .evaluation import evaluate, negative_log_likelihood

    run_dir = _run_directory(args.run_dir)
    config = _run_config(run_dir)
    test = None
    if args.data is not None:
        test = _read_data(args.data, "--data", _features(config), f"the run {run_dir} was trained on")
    config, flow, checkpoint = _load(run_dir, config)
    flow.cpu()
    if config["data"] is None:
        metrics = evaluate(flow, get_dataset(config["dataset"]), _data(config)[2] if test is None else test)
    elif test is not None:
        nll = negative_log_likelihood(flow, test)
        metrics = {"nll": nll, "nll_per_dim": nll / test.shape[1]}
    else:
        metrics = {}
        for key, name in (("data", "train_nll"), ("val_data", "val_nll")):
            if config[key] is not None:
                x = own[key] if own is not None else _recorded_data(config, key)
                metrics[name] = negative_log_likelihood(flow, x)
    if test is not None:
        metrics["test_data"] = _describe(args.data, test)
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
    target = None if config["dataset"] is None else get_dataset(config["dataset"])
    if target is not None and target.features == 2:
        panels = [(f"{config['transform']}, {config['base']} base", lambda x: flow.log_prob(x.float()))]
        if target.has_exact_density:
            panels.insert(0, ("true density", lambda x: target.log_prob(x)))
        plot_density_panels(panels, figures / "density.png", bounds=4.5)
    print(f"wrote figures to {figures}")


def _sample(args: argparse.Namespace) -> None:
    from .data_files import save_samples

    out = Path(args.out)
    if out.suffix.lower() not in (".npy", ".csv"):
        shown = f"'{out.suffix}'" if out.suffix else "none"
        raise _Failure(f"{out}: unsupported extension ({shown}); expected .npy or .csv")
    if out.is_dir():
        raise _Failure(f"{out} is a directory; name the file to write")
    if not out.parent.is_dir():
        raise _Failure(f"{out}: the directory {out.parent} does not exist")
    if args.num_samples < 1:
        raise _Failure(f"-n must be a positive integer; got {args.num_samples}")
    if not 0 <= args.seed < 2**63:
        raise _Failure(f"--seed must be an integer in [0, 2**63); got {args.seed}")
    run_dir = _run_directory(args.run_dir)
    _, flow, checkpoint = _load(run_dir)
    flow.cpu()
    torch.manual_seed(args.seed)
    with torch.no_grad():
        sizes = [_SAMPLE_BATCH] * (args.num_samples // _SAMPLE_BATCH) + [args.num_samples % _SAMPLE_BATCH]
        samples = torch.cat([flow.sample(size) for size in sizes if size])
    save_samples(out, samples)
    print(f"wrote {len(samples)} samples of {samples.shape[1]} feature(s) (step {checkpoint['step']}) to {out}")


def _compare(args: argparse.Namespace, rest: list[str]) -> None:
    from .studies import comparison

    comparison.main(rest)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mog-flows",
        description="Normalizing flows with a mixture-of-Gaussians base: train, evaluate, sample, plot, compare.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a flow on a built-in target or a data file; resumes if the run directory has a checkpoint",
    )
    train.add_argument("run_dir", help="run directory (created; config, checkpoints, metrics, figures)")
    _add_model_arguments(train)
    train.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    train.add_argument(
        "--compile",
        nargs="?",
        const=True,
        default=False,
        metavar="BACKEND",
        help="run each step's loss through torch.compile (a backend name, or inductor when none is given), checked "
        "against eager gradients on the first steps; fit trains eagerly with a warning where they disagree. Not a "
        "setting of the run: a resumed run may change it",
    )
    train.set_defaults(func=_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="NLL per point (and KL, mode coverage on a built-in target) of a run's best checkpoint",
    )
    evaluate.add_argument("run_dir")
    evaluate.add_argument(
        "--data",
        metavar="TEST_FILE",
        help="held-out points (.npy, .csv or .pt, the run's features) to score instead of the run's own test split "
        "(built-in target) or training and validation files (your own data)",
    )
    evaluate.set_defaults(func=_evaluate)

    sample = commands.add_parser("sample", help="draw samples from a run's best checkpoint into .npy or .csv")
    sample.add_argument("run_dir")
    sample.add_argument("-n", "--num-samples", type=int, default=10_000, help="how many (default 10000)")
    sample.add_argument("--out", required=True, metavar="FILE", help="FILE.npy (float32 array) or FILE.csv")
    sample.add_argument("--seed", type=int, default=0, help="seed of torch's RNG for the draws")
    sample.set_defaults(func=_sample)

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

"""The `mog-flows` command: train, evaluate, plot and compare flows on the built-in targets.

A run directory holds everything about one run:

    config.json         the arguments of `mog-flows train`
    checkpoints/        fit's latest.pt, best.pt and config.json (resumable: run `train` again)
    metrics.json        test NLL, KL where the target's density is exact, mode coverage, parameter count
    figures/            density.png (2-D targets), training.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

__all__ = ["main"]

_SPLIT_SIZES = {"train": 20_000, "val": 2_000, "test": 10_000}


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


def _load(run_dir: Path):
    """(config, flow with the best (else latest) checkpoint loaded)."""
    from .training import load_checkpoint

    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise SystemExit(f"error: {run_dir} is not a run directory (no config.json); create one with `mog-flows train`")
    config = json.loads(config_path.read_text())
    flow = _build(config)
    checkpoints = run_dir / "checkpoints"
    path = checkpoints / "best.pt" if (checkpoints / "best.pt").exists() else checkpoints / "latest.pt"
    if not path.exists():
        raise SystemExit(f"error: {run_dir} has no checkpoint yet; run `mog-flows train` first")
    checkpoint = load_checkpoint(path, flow)
    flow.eval()
    return config, flow, checkpoint


def _train(args: argparse.Namespace) -> None:
    from .training import fit

    run_dir = Path(args.run_dir)
    config = {key: value for key, value in vars(args).items() if key not in ("command", "run_dir", "func", "progress")}
    saved = run_dir / "config.json"
    if saved.exists() and json.loads(saved.read_text()) != config:
        raise SystemExit(f"error: {run_dir} holds a run with other settings; choose another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(config, indent=2) + "\n")
    torch.manual_seed(args.seed)
    flow = _build(config)
    train, val, _ = _data(config)
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

    run_dir = Path(args.run_dir)
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

    run_dir = Path(args.run_dir)
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
    from . import comparison

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


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    if argv and argv[0] == "compare":  # everything after `compare` belongs to the comparison's own parser
        args, rest = parser.parse_args(argv[:1]), argv[1:]
        args.func(args, rest)
        return
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()

"""Jensen warm-up (seed 001): does training an MDN on a Jensen bound first, then on the exact NLL, survive a hard
start better than the NLL alone?

Shapes: N pairs, B minibatch rows, K components, D = 2 output features, one context feature.

Seed 001 §1.2 says the Jensen upper bound of the NLL behaves "more robust[ly] especially during early training,
when the predicted parameters are still somewhat volatile". This study puts that to a test where plain NLL
training is fragile. Problem: `mdn_inverse`'s correlated 2-D outputs, x ~ U(-1, 1), y | x = ½ N((x, x²), Σ) +
½ N(-(x, x²), Σ) (std 0.3, correlation 0.9), whose exact conditional a full-covariance MDN with K = 2 holds
exactly; its exact NLL on the test pairs is the floor. Hard start (`mdn_training.hard_start`): component means
drawn 4 times wider than the library's default and every component sharp (σ = 0.05 along each axis, against
y's spread of about 0.6), Adam at a peak learning rate of 3e-2 (cosine decay), no gradient clipping.

Arms, with equal total steps T and one Adam run over all of them (`mdn_training.train`):
    nll            the exact NLL (`MixtureDensityNetwork.log_prob`) for all T steps;
    weighted       the first W steps on `jensen_bound(form="weighted")`, -Σ_k w_k ℓ_k, then the NLL;
    uniform        the first W steps on form "uniform", -log K - (1/K) Σ_k (log w_k + ℓ_k), then the NLL;
    seed           the first W steps on form "seed", seed 001 eq. 15 as written, -Σ_k (log w_k + ℓ_k), then the NLL;
    nll_default    the NLL from the library's own initialisation (means N(0, I), U = I) at the same learning rate:
                   the reference that shows what the hard start costs.

Per run: the final test NLL (the last step's parameters), the test NLL after W steps, whether the run diverged
(a non-finite loss, gradient or parameter, recorded by the loop, never raised), the number of collapsed
components (`COLLAPSE_WEIGHT`: a component whose largest weight over the test inputs is below 1e-3; with K = 2
a collapsed component means the model has lost one of the two modes) and whether the final NLL came within
`REACHED_MARGIN` nats of the exact conditional's.

What the bounds do to the weights, whatever the run: "weighted" is linear in w, so for fixed components its
minimum puts all the weight on the component with the largest ℓ_k (it rewards collapse); "uniform" and "seed"
contain Σ_k log w_k, minimised at equal weights, and give every component the same pull from every point
whatever its responsibility (they keep far-away components alive, and drive all of them towards one fit).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from ..checks import check_positive_int
from ..mdn import JENSEN_FORMS, MixtureDensityNetwork, jensen_bound
from . import report
from .mdn_inverse import correlated_log_prob, simulate_correlated
from .mdn_training import command_line, hard_start, train
from .runner import run_many

__all__ = [
    "ARMS",
    "COLLAPSE_WEIGHT",
    "REACHED_MARGIN",
    "WarmupSpec",
    "run_spec",
    "summarize",
    "write_markdown",
    "plot_trajectories",
    "main",
]

ARMS = ("nll", *JENSEN_FORMS, "nll_default")
LABELS = {
    "nll": "NLL only",
    "weighted": "bound first: weighted",
    "uniform": "bound first: uniform",
    "seed": "bound first: seed (eq. 15)",
    "nll_default": "NLL only, default start",
}
COLLAPSE_WEIGHT = 1e-3
REACHED_MARGIN = 0.05
TEST_SEED = 10_000
_FORMAT = "jensen-warmup/1"


@dataclass(frozen=True)
class WarmupSpec:
    """One run: an arm, a seed, and the settings every arm shares."""

    arm: str
    seed: int
    steps: int = 3000
    warmup_steps: int = 500
    lr: float = 3e-2
    batch_size: int = 256
    num_components: int = 2
    hidden_features: int = 64
    mean_spread: float = 4.0
    initial_std: float = 0.05
    train_size: int = 20_000
    test_size: int = 5_000
    eval_size: int = 2_000
    eval_every: int = 100

    def __post_init__(self) -> None:
        if self.arm not in ARMS:
            raise ValueError(f"arm must be one of {ARMS}; got {self.arm!r}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must lie in [0, steps); got {self.warmup_steps} of {self.steps}")


SETTINGS = [f.name for f in fields(WarmupSpec) if f.name not in ("arm", "seed")]


def spec_key(spec: WarmupSpec) -> str:
    text = json.dumps({"format": _FORMAT, **asdict(spec)}, sort_keys=True)
    return f"{spec.arm}-{spec.seed}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _test_data(spec: WarmupSpec) -> tuple[torch.Tensor, torch.Tensor]:
    y, x = simulate_correlated(spec.test_size, torch.Generator().manual_seed(TEST_SEED))
    return y, x


def _loss(spec: WarmupSpec):
    """loss(model, y, x, step): the arm's Jensen form for the first W steps, the exact NLL afterwards."""

    def loss(model: MixtureDensityNetwork, y: torch.Tensor, x: torch.Tensor, step: int) -> torch.Tensor:
        if spec.arm in JENSEN_FORMS and step < spec.warmup_steps:
            p = model(x)
            return jensen_bound(y, p["weights"], p["means"], p["precision_cholesky"], form=spec.arm)
        return -model.log_prob(y, x).mean()

    return loss


def _test_nll(model: MixtureDensityNetwork, y: torch.Tensor, x: torch.Tensor) -> float:
    with torch.no_grad():
        return -model.log_prob(y.float(), x.float()).double().mean().item()


def run_spec(spec: WarmupSpec) -> dict:
    """Train one arm from its start and measure it on the test pairs."""
    y, x = simulate_correlated(spec.train_size, torch.Generator().manual_seed(1000 + spec.seed))
    y_test, x_test = _test_data(spec)
    y_eval, x_eval = y_test[: spec.eval_size].float(), x_test[: spec.eval_size].float()
    torch.manual_seed(spec.seed)
    model = MixtureDensityNetwork(1, 2, spec.num_components, covariance="full", hidden_features=spec.hidden_features)
    if spec.arm != "nll_default":
        hard_start(model, mean_spread=spec.mean_spread, initial_std=spec.initial_std)
    began = time.perf_counter()
    outcome = train(
        model,
        (y.float(), x.float()),
        _loss(spec),
        steps=spec.steps,
        lr=spec.lr,
        batch_size=spec.batch_size,
        seed=spec.seed,
        evaluate=lambda m: _test_nll(m, y_eval, x_eval),
        eval_every=spec.eval_every,
    )
    seconds = time.perf_counter() - began
    exact = -correlated_log_prob(y_test, x_test).mean().item()
    row = {
        **asdict(spec),
        "status": "ok",
        "diverged_step": math.nan,
        "reason": "",
        "final_nll": math.nan,
        "warmup_nll": math.nan,  # the eval NLL after W steps (the first W steps are the only ones that differ)
        "exact_nll": exact,
        "collapsed": math.nan,
        "min_max_weight": math.nan,
        "reached": math.nan,
        "train_seconds": seconds,
        "eval_steps": torch.tensor(outcome.eval_steps, dtype=torch.int64),
        "eval_nll": torch.tensor(outcome.eval_values, dtype=torch.float64),
    }
    at_warmup = [v for s, v in zip(outcome.eval_steps, outcome.eval_values) if s == spec.warmup_steps]
    if at_warmup:
        row["warmup_nll"] = at_warmup[0]
    final = math.nan if outcome.diverged else _test_nll(model, y_test, x_test)
    if not math.isfinite(final):
        row.update(status="diverged", diverged_step=outcome.diverged_step or spec.steps)
        row["reason"] = outcome.reason or f"the final test NLL is {final}"
        return row
    with torch.no_grad():
        largest = model(x_test.float())["weights"].amax(0)  # (K,): each component's largest weight over x
    row.update(
        final_nll=final,
        collapsed=int((largest < COLLAPSE_WEIGHT).sum()),
        min_max_weight=largest.min().item(),
        reached=int(final <= exact + REACHED_MARGIN),
    )
    return row


# ---------------------------------------------------------------------------------------------- report
CSV_COLUMNS = [
    "arm",
    "seed",
    "status",
    "diverged_step",
    "reason",
    "final_nll",
    "warmup_nll",
    "exact_nll",
    "collapsed",
    "min_max_weight",
    "reached",
    "train_seconds",
    *SETTINGS,
]
INTEGERS = ("seed", *(name for name in SETTINGS if name not in ("lr", "mean_spread", "initial_std")))
FULL = dict(seeds=(0, 1, 2, 3, 4))
QUICK = dict(
    seeds=(0, 1), steps=40, warmup_steps=10, train_size=500, test_size=300, eval_size=200, eval_every=10,
)  # fmt: skip


def _mean_se(values: Sequence[float]) -> str:
    values = [v for v in values if math.isfinite(v)]
    mean, std = report.mean_std(values)
    return report.pm(mean, std / math.sqrt(len(values)) if len(values) > 1 else math.nan, digits=3)


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Per arm: runs, diverged, runs with a collapsed component, runs that reached the exact NLL, and the final and
    after-warm-up test NLLs over the non-diverged runs."""
    out = {}
    for arm in ARMS:
        cell = [r for r in rows if r["arm"] == arm]
        if not cell:
            continue
        ok = [r for r in cell if r["status"] == "ok"]
        out[arm] = {
            "runs": len(cell),
            "diverged": len(cell) - len(ok),
            "collapsed": sum(1 for r in ok if r["collapsed"] > 0),
            "reached": sum(1 for r in ok if r["reached"] == 1),
            "final": [r["final_nll"] for r in ok],
            "warmup": [r["warmup_nll"] for r in ok],
            "by_seed": {r["seed"]: r for r in cell},
        }
    return out


def _verdicts(summary: dict[str, dict]) -> list[str]:
    base = summary.get("nll")
    if base is None:
        return []
    lines = []
    for form in JENSEN_FORMS:
        if form not in summary:
            continue
        arm = summary[form]
        paired = [
            (arm["by_seed"][s]["final_nll"], base["by_seed"][s]["final_nll"])
            for s in sorted(arm["by_seed"].keys() & base["by_seed"].keys())
        ]
        paired = [(a, b) for a, b in paired if math.isfinite(a) and math.isfinite(b)]
        lower = sum(1 for a, b in paired if a < b - 1e-3)
        higher = sum(1 for a, b in paired if a > b + 1e-3)
        compared = (
            "fewer"
            if arm["collapsed"] < base["collapsed"]
            else "more"
            if arm["collapsed"] > base["collapsed"]
            else "as many"
        )
        lines.append(
            f"- {LABELS[form]}: {arm['collapsed']}/{arm['runs']} runs with a collapsed component against "
            f"{base['collapsed']}/{base['runs']} for NLL only ({compared}); {arm['diverged']} diverged against "
            f"{base['diverged']}; final test NLL lower than NLL only's (by more than 1e-3) on {lower} of "
            f"{len(paired)} seeds, higher on {higher}."
        )
    return lines


def write_markdown(rows: list[dict], path: Path, *, command: str) -> str:
    """The report: settings, the summary per arm, per-seed final NLLs, every run, and what the numbers say.
    Built from the CSV's rows alone (no trajectories), so a committed report follows from its committed CSV."""
    first = rows[0]
    seeds = sorted({int(r["seed"]) for r in rows})
    summary = summarize(rows)
    W, T = int(first["warmup_steps"]), int(first["steps"])
    lines = [
        f"# Jensen warm-up against NLL only from a hard start (seed 001){' (--quick)' if '--quick' in command else ''}",
        "",
        f"Written by `{command}`. Problem: correlated 2-D outputs (`mdn_inverse`), x ~ U(-1, 1), y | x = ½ N((x, x²),"
        " Σ) + ½ N(-(x, x²), Σ), std 0.3, correlation 0.9; a full-covariance `MixtureDensityNetwork(1, 2, "
        f"{int(first['num_components'])})` (width {int(first['hidden_features'])}) holds it exactly. Hard start: "
        f"component means {first['mean_spread']:g}× wider than the library's N(0, I), σ = {first['initial_std']:g} "
        f"per axis; Adam, peak lr {first['lr']:g} with cosine decay over all {T} steps, batch "
        f"{int(first['batch_size'])}, {int(first['train_size'])} training pairs, no gradient clipping. Bound-first "
        f"arms train the first W = {W} steps on `jensen_bound(form=...)` and the remaining {T - W} on the exact NLL. "
        f"Seeds {seeds}. Test NLL on {int(first['test_size'])} fixed test pairs (nats; the exact conditional's: "
        f"{first['exact_nll']:.4f}) with the last step's parameters; mean ± standard error over the non-diverged "
        f"runs. A component is *collapsed* when its largest weight over the test inputs is below {COLLAPSE_WEIGHT:g} "
        f"(with K = 2: one mode lost); *reached* means a final NLL within {REACHED_MARGIN} nats of the exact one. "
        "Diverged: a non-finite loss, gradient or parameter (recorded, the run stopped).",
        "",
        "## Summary",
        "",
        f"| arm | runs | diverged | collapsed runs | reached exact | final test NLL | test NLL after {W} steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, cell in summary.items():
        lines.append(
            f"| {LABELS[arm]} | {cell['runs']} | {cell['diverged']} | {cell['collapsed']} | {cell['reached']} | "
            f"{_mean_se(cell['final'])} | {_mean_se(cell['warmup'])} |"
        )
    lines += [
        "",
        "## Final test NLL per seed",
        "",
        "(c): a collapsed component; (d): diverged.",
        "",
        "| seed | " + " | ".join(LABELS[arm] for arm in summary) + " |",
        "|---" * (len(summary) + 1) + "|",
    ]
    for seed in seeds:
        cells = []
        for cell in summary.values():
            row = cell["by_seed"].get(seed)
            if row is None:
                cells.append("")
            elif row["status"] != "ok":
                cells.append("(d)")
            else:
                cells.append(f"{row['final_nll']:.4f}" + (" (c)" if row["collapsed"] > 0 else ""))
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Every run",
        "",
        "| arm | seed | status | final test NLL | NLL after W | collapsed components | smallest max weight | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        reason = str(row["reason"]).replace("|", "/")
        status = "ok" if row["status"] == "ok" else f"diverged at step {int(row['diverged_step'])}: {reason}"
        collapsed = "—" if row["status"] != "ok" else str(int(row["collapsed"]))
        lines.append(
            f"| {LABELS[row['arm']]} | {int(row['seed'])} | {status} | {report.pm(row['final_nll'], math.nan, 4)} | "
            f"{report.pm(row['warmup_nll'], math.nan, 4)} | {collapsed} | "
            + ("—" if math.isnan(row["min_max_weight"]) else f"{row['min_max_weight']:.2e}")
            + f" | {row['train_seconds']:.0f} |"
        )
    lines += ["", "## What the numbers say", "", *_verdicts(summary)]
    text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


def plot_trajectories(rows: list[dict], path: Path) -> bool:
    """Test NLL (on the first eval_size test pairs) against the step, one panel per arm, one line per seed."""
    rows = [r for r in rows if "eval_nll" in r]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [arm for arm in ARMS if any(r["arm"] == arm for r in rows)]
    exact = rows[0]["exact_nll"]
    figure, axes = plt.subplots(1, len(arms), figsize=(3.1 * len(arms), 3.0), sharey=True, squeeze=False)
    for axis, arm in zip(axes[0], arms, strict=True):
        for row in (r for r in rows if r["arm"] == arm):
            values = row["eval_nll"].clamp(max=4.0)  # blown-up values at the top edge
            axis.plot(row["eval_steps"].numpy(), values.numpy(), lw=1, label=f"seed {row['seed']}")
        axis.axhline(exact, color="k", ls="--", lw=0.8)
        if arm in JENSEN_FORMS:
            axis.axvline(rows[0]["warmup_steps"], color="grey", ls=":", lw=0.8)
        axis.set(title=LABELS[arm], xlabel="step", ylim=(exact - 0.2, 4.0))
    axes[0][0].set_ylabel("test NLL (nats)")
    axes[0][-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return True


def _parser(default_out: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (seconds), for tests")
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--arms", nargs="+", choices=ARMS)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=default_out)
    return parser


def main(argv: Sequence[str] | None = None, *, default_out: str | os.PathLike = ".") -> list[dict]:
    """The study's command line; returns the rows (with their NLL trajectories)."""
    args = _parser(Path(default_out)).parse_args(argv)
    check_positive_int("workers", args.workers)
    preset = QUICK if args.quick else FULL
    seeds = args.seeds if args.seeds is not None else preset["seeds"]
    if any(seed < 0 for seed in seeds):
        raise ValueError(f"seeds must be non-negative integers; got {seeds}")
    settings = {k: v for k, v in preset.items() if k != "seeds"}
    specs = [WarmupSpec(arm, seed, **settings) for arm in (args.arms or ARMS) for seed in seeds]
    name = "jensen_warmup_quick" if args.quick else "jensen_warmup"
    args.out.mkdir(parents=True, exist_ok=True)

    def progress(done: int, total: int, row: dict) -> None:
        print(
            f"[{done}/{total}] {row['arm']} seed {row['seed']}: {row['status']}, final NLL {row['final_nll']:.4f}, "
            f"collapsed {row['collapsed']} ({row['train_seconds']:.0f} s)",
            flush=True,
        )

    rows = run_many(
        specs,
        run_spec,
        key=spec_key,
        workers=args.workers,
        on_result=progress,
        cache_dir=args.out / f".{name}_rows",
    )
    command = command_line("experiments/jensen_warmup.py", argv)
    report.write_csv(rows, args.out / f"{name}.csv", CSV_COLUMNS)
    written = report.read_csv(args.out / f"{name}.csv", integers=INTEGERS, texts=("arm", "status", "reason"))
    text = write_markdown(written, args.out / f"{name}.md", command=command)
    plot_trajectories(rows, args.out / f"{name}.png")
    print(text)
    return rows

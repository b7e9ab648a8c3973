"""Steps per second of `fit`'s training step, eager against `torch.compile` (`fit(compile=True)`).

The step is the one `fit` takes: the loss L = -(1/B) Σ_b log p(x_b) of a minibatch of B = 512 points of a 2-D
mixture, its gradients (forward and backward through `mog_flows.compilation.TrainingLoss`, compiled or not), and an
Adam update, for a 2-D neural spline flow (4 layers, width 64) with a mixture-of-Gaussians base (K = 32), float32.

For each device (the CPU, and CUDA when available; otherwise the file says it was skipped):

- compile_s: seconds of the first compiled step (tracing, graph breaks, code generation, with inductor's on-disk
  cache as found: the output says whether it held files before the run), reported apart from the timings;
- then `--warmup` steps of each mode, not timed;
- then `--rounds` rounds of `--steps` steps of each mode, alternating eager and compiled so that load from other
  processes hits both alike; ms_per_step is the median over rounds of a round's mean step time.

Writes <out>/bench_compile.md and <out>/bench_compile.csv and prints the table.

    python benchmarks/bench_compile.py                       # about a minute on a CPU with a warm inductor cache
    python benchmarks/bench_compile.py --quick --backends aot_eager --out /tmp/bench   # smoke run in seconds

Shapes: B minibatch rows, D = 2 features, K mixture components.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

try:
    from mog_flows import build_flow
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mog_flows import build_flow
from mog_flows.compilation import VERIFY_STEPS, CompileFallbackWarning, TrainingLoss, relative_tolerance

RESULTS = Path(__file__).resolve().parent / "results"
FIELDS = [
    "device",
    "base",
    "mode",
    "backend",
    "compile_s",
    "graphs",
    "ms_per_step",
    "steps_per_s",
    "ratio",
    "grad_rel_error",
]
FULL = dict(num_layers=4, hidden_features=64, num_components=32, batch_size=512)
QUICK = dict(num_layers=2, hidden_features=8, num_components=4, batch_size=64)


def make_data(n: int, seed: int) -> torch.Tensor:
    """n points (n, 2) from an 8-mode ring mixture."""
    generator = torch.Generator().manual_seed(seed)
    angles = torch.randint(8, (n,), generator=generator) * (torch.pi / 4)
    centres = 3 * torch.stack([angles.cos(), angles.sin()], -1)  # (n, 2)
    return centres + 0.4 * torch.randn(n, 2, generator=generator)


class Stepper:
    """One model, optimiser and `TrainingLoss`: `step()` takes one training step on the next minibatch."""

    def __init__(self, base: str, compile, device: torch.device, batches: list[torch.Tensor], sizes: dict) -> None:
        torch.manual_seed(0)
        self.flow = build_flow(2, base=base, transform="nsf", **{k: v for k, v in sizes.items() if k != "batch_size"})
        self.flow.to(device).train()
        self.optimizer = torch.optim.Adam(self.flow.parameters(), lr=1e-3)
        # verify_steps=0: the compiled pass alone, as `fit` runs it once its check passed (timed here even where the
        # check would fail; `gradient_error` says whether it would)
        self.loss = TrainingLoss(self.flow, compile, device, verify_steps=0)
        self.batches, self.device, self.count = batches, device, 0
        self.last_loss = float("nan")

    def step(self) -> None:
        batch = self.batches[self.count % len(self.batches)]
        self.count += 1
        self.optimizer.zero_grad(set_to_none=True)
        loss, _ = self.loss.loss_and_backward(batch, None)
        self.optimizer.step()
        self.last_loss = loss

    def timed(self, steps: int) -> float:
        """Mean seconds per step over `steps` steps."""
        synchronize(self.device)
        began = time.perf_counter()
        for _ in range(steps):
            self.step()
        synchronize(self.device)
        return (time.perf_counter() - began) / steps


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def unique_graphs() -> int:
    import torch._dynamo.utils

    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def gradient_error(eager: Stepper, compiled: Stepper) -> float:
    """‖g_c - g_e‖₂ / ‖g_e‖₂ over all parameters: the compiled and the eager gradients of the same minibatch at the
    same parameters (the eager model's, after its steps, so that the flow is no longer the identity)."""
    compiled.flow.load_state_dict(eager.flow.state_dict())  # in place: the compiled graphs stay valid
    batch = eager.batches[0]
    grads = []
    for stepper in (compiled, eager):
        stepper.flow.zero_grad(set_to_none=True)
        if stepper is compiled:
            stepper.loss.loss_and_backward(batch, None)
        else:
            (-stepper.flow.log_prob(batch).mean()).backward()
        grads.append(torch.cat([p.grad.flatten().double() for p in stepper.flow.parameters()]))
    return ((grads[0] - grads[1]).norm() / grads[1].norm()).item()


def measure(base: str, device: torch.device, backends: list[str], args: argparse.Namespace, sizes: dict) -> list[dict]:
    """The eager row and one compiled row per backend, for one (base, device); the modes' rounds alternate."""
    data = make_data(sizes["batch_size"] * 8, seed=1).to(device)
    batches = list(data.split(sizes["batch_size"]))
    steppers = {"eager": Stepper(base, False, device, batches, sizes)}
    steppers["eager"].step()  # the eager first step (allocations) is not counted as compilation either
    first: dict[str, dict] = {}
    for backend in backends:
        stepper = steppers[backend] = Stepper(base, True if backend == "inductor" else backend, device, batches, sizes)
        graphs = unique_graphs()
        synchronize(device)
        began = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CompileFallbackWarning)
            stepper.step()
        synchronize(device)
        fallback = [str(w.message) for w in caught if issubclass(w.category, CompileFallbackWarning)]
        first[backend] = dict(
            compile_s=round(time.perf_counter() - began, 2),
            graphs=unique_graphs() - graphs,
            fallback=fallback[0] if fallback else "",
        )
    for _ in range(args.warmup):
        for stepper in steppers.values():
            stepper.step()
    times: dict[str, list[float]] = {mode: [] for mode in steppers}
    for _ in range(args.rounds):
        for mode, stepper in steppers.items():
            times[mode].append(stepper.timed(args.steps))
    seconds = {mode: statistics.median(values) for mode, values in times.items()}
    rows = []
    for mode, stepper in steppers.items():
        compiled = mode != "eager"
        row = {
            "device": str(device),
            "base": base,
            "mode": "compiled" if compiled else "eager",
            "backend": mode if compiled else "",
            "compile_s": "",
            "graphs": "",
            "ms_per_step": round(1000 * seconds[mode], 3),
            "steps_per_s": round(1 / seconds[mode], 2),
            "ratio": round(seconds["eager"] / seconds[mode], 3),
            "grad_rel_error": f"{gradient_error(steppers['eager'], stepper):.2g}" if compiled else "",
            "fallback": "",
        }
        if compiled:
            row.update(first[mode])
            if row["fallback"]:
                row["mode"] = "compiled (fell back to eager)"
        rows.append(row)
    return rows


def cache_state() -> str:
    """Whether inductor's on-disk cache held files before this run (a warm cache shortens compile_s)."""
    from torch._inductor.runtime.runtime_utils import cache_dir

    directory = Path(cache_dir())
    files = sum(1 for _ in directory.rglob("*")) if directory.exists() else 0
    return f"{'warm' if files else 'cold'} ({directory}: {files} files before the run)"


def markdown(rows: list[dict], skipped: list[str], header: list[str]) -> str:
    columns = FIELDS
    lines = [*header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    lines += [""] + [f"- {line}" for line in skipped]
    lines += [f"- fallback on {row['device']}: {row['fallback']}" for row in rows if row.get("fallback")]
    rho = relative_tolerance(torch.float32)
    lines += [
        f"- {row['backend']} on {row['device']} ({row['base']} base): its gradients differ from the eager ones by "
        f"{row['grad_rel_error']} relative (more than the {rho:.1g} that float32 rounding is allowed): "
        f"`fit(compile=...)` checks its first {VERIFY_STEPS} compiled steps, finds this and trains eagerly, so its "
        "speed above is that of a step `fit` does not take"
        for row in rows
        if row["grad_rel_error"] and float(row["grad_rel_error"]) > rho
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny flow and few steps (a smoke run)")
    parser.add_argument(
        "--backends", nargs="+", default=["inductor", "aot_eager"], help="torch.compile backends (default: %(default)s)"
    )
    parser.add_argument("--bases", nargs="+", default=["mog"], choices=["mog", "gaussian"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (default 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per mode after the first")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per mode")
    parser.add_argument("--steps", type=int, default=None, help="steps per round")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    defaults = dict(warmup=1, rounds=1, steps=2) if args.quick else dict(warmup=10, rounds=9, steps=10)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    sizes = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads)
    cache = cache_state()
    devices = [torch.device("cpu")]
    skipped = []
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    else:
        skipped.append("cuda: skipped, CUDA is not available on this machine (no GPU rows)")
    began = time.perf_counter()
    rows = [
        row for device in devices for base in args.bases for row in measure(base, device, args.backends, args, sizes)
    ]
    command = " ".join(["python benchmarks/bench_compile.py", *(sys.argv[1:] if argv is None else argv)])
    header = [
        "# Compiled training step (2-D NSF + mixture base, Adam, float32)",
        "",
        f"Written by `{command}`.",
        "",
        f"{sizes['num_layers']} NSF layers of width {sizes['hidden_features']}, K = {sizes['num_components']}, "
        f"batch {sizes['batch_size']}; {args.warmup} warm-up steps per mode, then {args.rounds} alternating rounds of "
        f"{args.steps} steps (median of the rounds' mean step time). ratio = eager time / this mode's time "
        "(> 1: faster than eager); compile_s = the first compiled step; graphs = the graphs Dynamo compiled "
        "(nflows' splines break the graph where they test tensor values); grad_rel_error = ‖g_c - g_e‖₂ / ‖g_e‖₂, "
        "compiled against eager gradients at the same trained parameters (`fit` checks its "
        f"first compiled steps against eager ones and falls back to eager above "
        f"{relative_tolerance(torch.float32):.1g}).",
        "",
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, "
        f"{args.threads} CPU thread(s), {os.cpu_count()} CPUs; inductor cache {cache}; "
        f"{time.perf_counter() - began:.0f} s in all.",
    ]
    text = markdown(rows, skipped, header)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_compile.md").write_text(text)
    with open(out / "bench_compile.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=FIELDS + ["fallback"])
        writer.writeheader()
        writer.writerows(rows)
    print(text)
    for row in rows:
        if row["mode"] != "eager":
            print(
                f"{row['device']} {row['base']} {row['backend']}: compiled/eager steps per second = {row['ratio']:.3f}"
            )
    print(f"wrote {out / 'bench_compile.md'} and {out / 'bench_compile.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

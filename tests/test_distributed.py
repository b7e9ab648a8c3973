"""Tests of data-parallel `fit` under torch.distributed: two gloo processes on the CPU (spawned on a free loopback
port) end with the parameters of a single-process `fit` with the same arguments, resume exactly after an
interruption, train alike with a compiled loss, write files from rank 0 only, and refuse bad setups with a
ValueError on every rank.

Shapes: N rows, D = 2 features. One spawn runs every scenario (starting processes costs more than the runs).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mog_flows import build_flow, fit
from mog_flows.distributed import SINGLE_PROCESS, World, current_world

WORLD = 2
MODES = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]])  # (K, D)
ARGS = dict(steps=8, batch_size=16, lr=3e-3, seed=3, checkpoint_every=3, progress=False, device="cpu")
SCHEDULE = (1.0, 0.4)
FAIL_AT = 5  # the scenario "interrupted" fails in the training call of step 5


def mixture_sample(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n points (n, 2) from the equal-weight mixture of N(MODES_k, 0.5² I), float64."""
    k = torch.randint(len(MODES), (n,), generator=generator)
    return (MODES[k] + 0.5 * torch.randn(n, 2, generator=generator)).double()


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return mixture_sample(200, generator), mixture_sample(50, generator)


def make_flow(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_flow(2, base="mog", num_components=3, num_layers=1, hidden_features=8).double()


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def fail_in_training(model: nn.Module, at: int) -> None:
    """Make the at-th training-mode call of model.log_prob raise (the probes and validation run in eval mode)."""
    original, calls = model.log_prob, [0]

    def log_prob(*args, **kwargs):
        if model.training:
            calls[0] += 1
            if calls[0] == at:
                raise RuntimeError("planned failure")
        return original(*args, **kwargs)

    model.log_prob = log_prob


def scenarios(rank: int, tmp: Path) -> dict:
    x, x_val = data()
    out = {}
    # different initial parameters on each rank: fit starts every rank from rank 0's
    flow = make_flow(seed=1 + rank)
    history = fit(flow, x, val_data=x_val, checkpoint_dir=tmp / f"plain{rank}", temperature_schedule=SCHEDULE, **ARGS)
    out["plain"] = (state(flow), history, flow._distribution.temperature)

    # each rank compiles its own loss (aot_eager: Dynamo and AOTAutograd, no code generation); the gradient
    # all_reduce stays outside the compiled code
    flow = make_flow(seed=1 + rank)
    fit(flow, x, val_data=x_val, temperature_schedule=SCHEDULE, compile="aot_eager", **ARGS)
    out["compiled"] = state(flow)

    flow = make_flow(seed=1 + rank)
    fail_in_training(flow, FAIL_AT)
    try:
        fit(flow, x, val_data=x_val, checkpoint_dir=tmp / f"cut{rank}", temperature_schedule=SCHEDULE, **ARGS)
    except RuntimeError as error:
        out["cut_error"] = str(error)
    flow = make_flow(seed=10 + rank)  # the resume loads rank 0's checkpoint into every rank
    history = fit(flow, x, val_data=x_val, checkpoint_dir=tmp / f"cut{rank}", temperature_schedule=SCHEDULE, **ARGS)
    out["resumed"] = (state(flow), history)

    torch.manual_seed(0)
    flow = make_flow(seed=1 + rank)
    fit(flow, mixture_sample, **ARGS)
    out["callable"] = state(flow)

    for name, kwargs in {"odd_batch": dict(batch_size=15), "cuda": dict(device="cuda")}.items():
        try:
            fit(make_flow(seed=1), x, **{**ARGS, **kwargs})
        except ValueError as error:
            out[name] = str(error)
    out["world"] = current_world()
    return out


def worker(rank: int, port: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = scenarios(rank, Path(tmp))
    finally:
        dist.destroy_process_group()
    torch.save(results, Path(tmp) / "results" / f"rank{rank}.pt")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> tuple[list[dict], Path]:
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "results").mkdir()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(worker, args=(free_port(), str(tmp)), nprocs=WORLD, join=True)
    results = [torch.load(tmp / "results" / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return results, tmp


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


def test_two_ranks_end_with_the_single_process_parameters(ranks):
    results, _ = ranks
    x, x_val = data()
    flow = make_flow(seed=1)
    expected = fit(flow, x, val_data=x_val, temperature_schedule=SCHEDULE, **ARGS)
    for result in results:
        parameters, history, temperature = result["plain"]
        assert max_difference(parameters, state(flow)) <= 1e-5
        assert temperature == pytest.approx(flow._distribution.temperature)
        assert history.train_loss == pytest.approx(expected.train_loss, rel=1e-9)
        assert history.val_nll == pytest.approx(expected.val_nll, rel=1e-9)
        assert (history.best_step, history.restored_step) == (expected.best_step, expected.restored_step)
    assert max_difference(results[0]["plain"][0], results[1]["plain"][0]) == 0.0


def test_a_compiled_loss_trains_alike_under_ddp(ranks):
    results, _ = ranks
    for result in results:
        assert max_difference(result["compiled"], result["plain"][0]) <= 1e-10  # float64 rounding
    assert max_difference(results[0]["compiled"], results[1]["compiled"]) == 0.0


def test_resume_under_ddp_is_exact(ranks):
    results, _ = ranks
    for result in results:
        assert result["cut_error"] == "planned failure"
        resumed, history = result["resumed"]
        assert max_difference(resumed, result["plain"][0]) == 0.0
        assert history.train_loss == result["plain"][1].train_loss
        assert history.val_nll == result["plain"][1].val_nll


def test_only_rank_0_writes_files(ranks):
    _, tmp = ranks
    assert {p.name for p in (tmp / "plain0").iterdir()} == {"config.json", "latest.pt", "best.pt"}
    assert {p.name for p in (tmp / "cut0").iterdir()} == {"config.json", "latest.pt", "best.pt"}
    assert not (tmp / "plain1").exists() and not (tmp / "cut1").exists()
    checkpoint = torch.load(tmp / "plain0" / "latest.pt", weights_only=True)
    assert checkpoint["config"]["world_size"] == WORLD and checkpoint["step"] == ARGS["steps"]


def test_callable_data_draw_a_share_per_rank(ranks):
    results, _ = ranks
    assert max_difference(results[0]["callable"], results[1]["callable"]) == 0.0  # the ranks stay in step
    x, _ = data()
    single = make_flow(seed=1)
    torch.manual_seed(0)
    fit(single, mixture_sample, **ARGS)
    assert max_difference(results[0]["callable"], state(single)) > 1e-6  # other draws: equal in distribution only


def test_bad_setups_raise_on_every_rank(ranks):
    results, _ = ranks
    for rank, result in enumerate(results):
        assert result["world"] == World(size=WORLD, rank=rank)
        assert "multiple of the world size 2" in result["odd_batch"]
        if not torch.cuda.is_available():
            assert "CUDA is not available" in result["cuda"]


def test_single_process_world():
    assert current_world() == SINGLE_PROCESS and not SINGLE_PROCESS.parallel and SINGLE_PROCESS.writer


@pytest.mark.slow
def test_the_torchrun_example_runs_and_resumes(tmp_path):
    """examples/ddp_fit.py under `torchrun --nproc_per_node 2` (gloo), with tiny settings, then resumed."""
    script = Path(__file__).resolve().parents[1] / "examples" / "ddp_fit.py"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    command += [str(script), "--steps", "3", "--batch-size", "16", "--checkpoint-dir", str(tmp_path / "run")]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(2):  # the second call resumes the finished run
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "2 processes: best validation NLL" in done.stdout
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"config.json", "latest.pt", "best.pt"}


# ------------------------------------------------------------------------------------------------ nccl on GPUs
def nccl_worker(rank: int, world: int, port: int, tmp: str) -> None:
    """One rank of an nccl group, one GPU per rank: the plain scenario on cuda:rank, with a checkpoint."""
    torch.set_num_threads(1)
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        x, x_val = data()
        flow = make_flow(seed=1 + rank)
        arguments = {**ARGS, "device": f"cuda:{rank}"}
        history = fit(flow, x, val_data=x_val, checkpoint_dir=Path(tmp) / f"gpu{rank}", **arguments)
        result = (state(flow.cpu()), history)
    finally:
        dist.destroy_process_group()
    torch.save(result, Path(tmp) / f"nccl{rank}.pt")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nccl_ranks_on_gpus_end_with_the_single_process_parameters(tmp_path):
    """Data-parallel fit over nccl, one rank per GPU (two when the machine has two, else one: the nccl collectives
    on CUDA tensors all the same), ends with the parameters of a single-process CPU fit (float64)."""
    world = min(2, torch.cuda.device_count())
    mp.spawn(nccl_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    x, x_val = data()
    flow = make_flow(seed=1)
    expected = fit(flow, x, val_data=x_val, **ARGS)
    results = [torch.load(tmp_path / f"nccl{r}.pt", weights_only=False) for r in range(world)]
    for parameters, history in results:
        assert max_difference(parameters, state(flow)) <= 1e-5
        assert history.train_loss == pytest.approx(expected.train_loss, rel=1e-6)
        assert (history.best_step, history.restored_step) == (expected.best_step, expected.restored_step)
    assert {p.name for p in (tmp_path / "gpu0").iterdir()} == {"config.json", "latest.pt", "best.pt"}
    assert world == 1 or not (tmp_path / "gpu1").exists()

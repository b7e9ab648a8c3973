"""Data-parallel `fit` with torch.distributed: run it with torchrun.

    torchrun --nproc_per_node 2 examples/ddp_fit.py                     # two CPU processes (gloo)
    torchrun --nproc_per_node 4 examples/ddp_fit.py --backend nccl      # four GPUs of one node (nccl)

Every process builds the same data and model and calls `fit` with the same arguments; `fit` splits each global
minibatch of `--batch-size` rows over the processes, averages the gradients, and only rank 0 writes the checkpoint
directory and shows progress. Run it again with the same arguments to resume from `--checkpoint-dir`.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist

from mog_flows import build_flow, fit
from mog_flows.datasets import make_splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"], help="gloo: CPUs; nccl: GPUs")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=512, help="the global minibatch (a multiple of W)")
    parser.add_argument("--checkpoint-dir", default="ddp_fit_run")
    args = parser.parse_args()

    dist.init_process_group(args.backend)  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK
    try:
        # the same data on every rank (seeded): fit splits each minibatch, so do not shard the data yourself
        x_train, x_val, _ = make_splits("checkerboard", 20_000, 2_000, 1, seed=0)
        torch.manual_seed(0)  # (fit starts every rank from rank 0's parameters anyway)
        flow = build_flow(2, base="mog", num_components=8, hidden_features=32, num_layers=3, standardize=x_train)
        history = fit(
            flow,
            x_train,
            steps=args.steps,
            batch_size=args.batch_size,
            val_data=x_val,
            checkpoint_dir=args.checkpoint_dir,
            device="auto",  # cuda:LOCAL_RANK on GPUs, else the CPU
        )
        if dist.get_rank() == 0:
            print(
                f"{dist.get_world_size()} processes: best validation NLL {history.best_val_nll:.4f} at step "
                f"{history.best_step}; checkpoints in {args.checkpoint_dir}"
            )
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

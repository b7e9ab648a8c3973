"""Figures for experiments and notebooks: density heatmaps, samples, components through a flow, training curves."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt  # the backend is the caller's (matplotlib falls back to Agg where there is no display)
import torch
from torch import Tensor

__all__ = ["density_on_grid", "plot_density_panels", "plot_training_curves"]


@torch.no_grad()
def density_on_grid(
    log_prob: Callable[[Tensor], Tensor], bounds: float, resolution: int = 200
) -> tuple[Tensor, Tensor]:
    """Evaluate exp(log_prob) on a square grid [-bounds, bounds]²: returns the axis (R,) and density (R, R) [y, x]."""
    axis = torch.linspace(-bounds, bounds, resolution, dtype=torch.float64)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    points = torch.stack([xx.flatten(), yy.flatten()], -1)
    density = torch.cat([log_prob(chunk).double().cpu() for chunk in points.split(16384)]).exp()
    return axis, density.view(resolution, resolution)


def plot_density_panels(
    panels: Sequence[tuple[str, Callable[[Tensor], Tensor] | Tensor]],
    path,
    *,
    bounds: float = 4.0,
    resolution: int = 200,
    columns: int | None = None,
) -> None:
    """One heatmap per (title, log_prob) panel, written to `path` (PNG or PDF). In place of a log_prob callable a
    panel may give a density (R', R') [y, x] already computed on the grid [-bounds, bounds]² (`density_on_grid`)."""
    columns = columns or len(panels)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (title, log_prob) in zip(axes.flat, panels):
        density = log_prob if isinstance(log_prob, Tensor) else density_on_grid(log_prob, bounds, resolution)[1]
        ax.imshow(density.numpy(), extent=(-bounds, bounds, -bounds, bounds), origin="lower", cmap="magma")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training_curves(curves: dict[str, Sequence[float]], path, *, smooth: int = 20) -> None:
    """Training loss per step for each named run (moving average over `smooth` steps)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, values in curves.items():
        values = torch.tensor(list(values), dtype=torch.float64)
        if len(values) > smooth:
            values = values.unfold(0, smooth, 1).mean(-1)
        ax.plot(values.numpy(), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("training NLL (nats)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

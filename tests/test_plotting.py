"""mog_flows.plotting: the figures are written, the density grid is right, importing it leaves the backend alone."""

from __future__ import annotations

import math
import subprocess
import sys

import torch

from mog_flows.plotting import density_on_grid, plot_density_panels, plot_training_curves


def test_importing_plotting_leaves_the_matplotlib_backend_alone():
    code = (
        "import matplotlib; matplotlib.use('svg'); import mog_flows.plotting; "
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_density_on_grid_evaluates_the_density_at_the_grid_points():
    def log_prob(points):  # standard normal in 2-D
        return -0.5 * points.square().sum(-1) - math.log(2 * math.pi)

    axis, density = density_on_grid(log_prob, bounds=3.0, resolution=61)
    assert axis.shape == (61,) and density.shape == (61, 61)
    assert abs(density[30, 30].item() - 1 / (2 * math.pi)) < 1e-12
    cell = (axis[1] - axis[0]).item() ** 2
    assert abs(density.sum().item() * cell - 1) < 0.01


def test_figures_are_written(tmp_path):
    def log_prob(points):
        return -0.5 * points.square().sum(-1)

    plot_density_panels([("a", log_prob), ("b", density_on_grid(log_prob, 4.0, 20)[1])], tmp_path / "p.png")
    plot_training_curves({"run": torch.linspace(1, 0, 50).tolist()}, tmp_path / "c.png")
    for name in ("p.png", "c.png"):
        assert (tmp_path / name).stat().st_size > 1000

"""mog_flows: a differentiable mixture-of-Gaussians base distribution for nflows, and the experiments around it."""

from .flows import build_flow
from .mixture import MixtureOfGaussians
from .training import fit, initialize_base, load_checkpoint

__all__ = ["MixtureOfGaussians", "build_flow", "fit", "initialize_base", "load_checkpoint", "__version__"]

__version__ = "0.1.0"

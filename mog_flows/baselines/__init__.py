"""Baselines the mixture-of-Gaussians base is measured against: RAD (Dinh et al., 2019)."""

from .rad import RAD, RADCoupling

__all__ = ["RAD", "RADCoupling"]

"""Conditional Gaussian diffusion for 3D maps (improved DDPM, Nichol & Dhariwal 2021; DISPR)."""

from cryomap.models.diffusion.gaussian_diffusion import GaussianDiffusion
from cryomap.models.diffusion.schedules import make_betas

__all__ = ["GaussianDiffusion", "make_betas"]

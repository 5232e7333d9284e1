"""Noise schedules β_1..β_T for the forward diffusion process.

Written from Ho et al. 2020 (linear) and Nichol & Dhariwal 2021, eq. 17 (cosine).
"""

from __future__ import annotations

import math

import numpy as np


def linear_betas(steps: int) -> np.ndarray:
    """DDPM's linear schedule, β from 1e-4 to 0.02 for T = 1000, rescaled for other T."""
    scale = 1000.0 / steps
    return np.linspace(scale * 1e-4, scale * 0.02, steps, dtype=np.float64)


def cosine_betas(steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Improved-DDPM cosine schedule: ᾱ(t) = cos²(((t/T + s)/(1 + s))·π/2), β_t = 1 − ᾱ_t/ᾱ_{t−1}.

    β is clipped at ``max_beta`` to avoid a singularity at t = T (paper, section 3.2).
    """

    def alpha_bar(t: float) -> float:
        return math.cos((t / steps + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1.0 - alpha_bar(i + 1) / alpha_bar(i), max_beta) for i in range(steps)]
    return np.asarray(betas, dtype=np.float64)


def make_betas(schedule: str, steps: int = 1000) -> np.ndarray:
    """β_t (float64, length ``steps``) for ``schedule`` in {"linear", "cosine"}."""
    if schedule == "linear":
        return linear_betas(steps)
    if schedule == "cosine":
        return cosine_betas(steps)
    raise ValueError(f"unknown noise schedule {schedule!r} (choose linear or cosine)")

"""Networks that predict a 3D density map from a condition tensor (C×D×D×D).

* :mod:`cryomap.models.unet3d` — the report's 3D U-Net (approach 4.1) with attention gates.
* :mod:`cryomap.models.diffusion` — DISPR-style conditional diffusion (approaches 4.2/4.3):
  noise schedules, the Gaussian diffusion process (improved DDPM) and its 3D U-Net.
* :mod:`cryomap.models.registry` — build any of them by name from a config dict.
"""

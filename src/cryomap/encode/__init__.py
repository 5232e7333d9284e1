"""Per-target 2D autoencoders: train on a target's particles, write its encoder and per-particle latents.

``encode_particles(source, out_dir, EncodeParams(latent_dim=8))`` → ``OUT/encoder.safetensors``,
``OUT/latents.npy`` (N × L, STAR row order), plots; see :mod:`cryomap.encode.train`. The network is
:mod:`cryomap.models.autoencoder2d`.
"""

from cryomap.encode.train import ENCODER, LATENTS, EncodeParams, EncodeResult, encode_particles

__all__ = ["ENCODER", "LATENTS", "EncodeParams", "EncodeResult", "encode_particles"]

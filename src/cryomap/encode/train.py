"""Per-target autoencoder training: particles → encoder weights, per-particle latents, an embedding plot.

:func:`encode_particles` reads a :class:`~cryomap.particles.source.ParticleSource` chunk by chunk,
preprocesses every particle once for the network (:func:`cryomap.models.autoencoder2d.preprocess`)
into a memory-mapped scratch array inside the output folder being built (so memory stays flat in
the number of particles; the scratch file is removed before the folder is published), trains
:class:`~cryomap.models.autoencoder2d.Autoencoder2D` with Adam on shuffled mini-batches (seeded),
holding out ``val_fraction`` of the particles to report a validation loss, and writes:

``OUT/encoder.safetensors`` + ``OUT/encoder.json``
    the encoder (configuration in the safetensors metadata too) —
    :func:`cryomap.models.autoencoder2d.embed_with_encoder` reads it.
``OUT/decoder.safetensors`` + ``OUT/decoder.json``
    the decoder (for reconstructions).
``OUT/latents.npy``
    (N, L) float32, one row per particle in STAR row order.
``OUT/train_log.csv``
    epoch, training loss, validation loss (mean squared error per pixel inside the mask, of
    standardised images).
``OUT/embedding.png``
    the latents' first two principal components, coloured by each particle's viewing direction
    (RGB = (d + 1)/2 of the unit vector d from ``rlnAngleRot``/``rlnAngleTilt``) when the table has
    poses (simulated data), otherwise in one colour.
``OUT/reconstructions.png``
    a few particles (network input) above their reconstructions.
``OUT/run.json``
    parameters, losses, timings.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cryomap.errors import BadInputError
from cryomap.particles.source import ParticleSource

ENCODER = "encoder.safetensors"
DECODER = "decoder.safetensors"
LATENTS = "latents.npy"


@dataclass
class EncodeParams:
    """Settings of :func:`encode_particles` (sizes in pixels of the network input)."""

    latent_dim: int = 8
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    input_size: int = 64
    channels: tuple[int, ...] = (16, 32, 64, 64)
    rotation_invariant: bool = True
    n_rotations: int = 8
    val_fraction: float = 0.1
    seed: int = 0
    threads: int | None = None
    chunk: int = 256


@dataclass
class EncodeResult:
    """What :func:`encode_particles` wrote and measured."""

    out_dir: Path
    n_particles: int
    latent_dim: int
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def summary_line(self) -> str:
        first, last = self.train_loss[0], self.train_loss[-1]
        val = f", validation {self.val_loss[-1]:.4f}" if self.val_loss and np.isfinite(self.val_loss[-1]) else ""
        return (f"encode: {self.n_particles} particles → {self.latent_dim}-d latents in {self.out_dir} "
                f"(reconstruction error {first:.4f} → {last:.4f}{val}; {len(self.train_loss)} epochs, "
                f"{self.seconds:.0f} s)")


def _check(source: ParticleSource, p: EncodeParams) -> None:
    if len(source) < 2:
        raise BadInputError(f"needs at least 2 particles to train an autoencoder, got {len(source)}", source.path)
    if p.latent_dim < 1:
        raise BadInputError(f"--latent-dim must be at least 1, got {p.latent_dim}", source.path)
    if p.epochs < 1:
        raise BadInputError(f"--epochs must be at least 1, got {p.epochs}", source.path)
    if source.box < 16:
        raise BadInputError(f"a {source.box} px box is too small for the autoencoder (at least 16 px)", source.path)
    if not 0 <= p.val_fraction < 1:
        raise BadInputError(f"val_fraction must be in [0, 1), got {p.val_fraction}", source.path)


def viewing_directions(source: ParticleSource) -> np.ndarray | None:
    """Unit viewing directions (N, 3) from the table's rot/tilt (RELION ZYZ), or None without poses."""
    poses = source.poses()
    if poses is None:
        return None
    rot, tilt = np.radians(poses.rot), np.radians(poses.tilt)
    return np.column_stack([np.sin(tilt) * np.cos(rot), np.sin(tilt) * np.sin(rot), np.cos(tilt)])


def encode_particles(source: ParticleSource, out_dir: str | Path, params: EncodeParams | None = None, *,
                     force: bool = False,
                     on_progress: Callable[[str, int, int], None] | None = None) -> EncodeResult:
    """Train the autoencoder on ``source`` and write ``out_dir`` (see the module docstring)."""
    from cryomap.core.threads import torch_threads
    from cryomap.io.atomic import atomic_dir, check_replaceable_dir

    p = params or EncodeParams()
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    check_replaceable_dir(out_dir, force)
    _check(source, p)
    with atomic_dir(out_dir, force=force) as tmp, torch_threads(p.threads):
        res = _train(source, tmp, p, on_progress)
    res.out_dir = out_dir
    res.seconds = time.perf_counter() - t0
    return res


def _train(source: ParticleSource, tmp: Path, p: EncodeParams, on_progress) -> EncodeResult:
    from cryomap.models.autoencoder2d import (Autoencoder2D, AutoencoderConfig, preprocess, save_autoencoder,
                                              soft_mask)

    torch.manual_seed(p.seed)
    rng = np.random.default_rng(p.seed)
    cfg = AutoencoderConfig(input_size=p.input_size, latent_dim=p.latent_dim, channels=tuple(p.channels),
                            rotation_invariant=p.rotation_invariant, n_rotations=p.n_rotations)
    n = len(source)
    scratch_path = tmp / ".inputs.npy"
    inputs = np.lib.format.open_memmap(scratch_path, mode="w+", dtype=np.float32, shape=(n, cfg.input_size, cfg.input_size))
    for rows, images in source.chunks(p.chunk):
        inputs[rows[0]:rows[-1] + 1] = preprocess(images, cfg)[:, 0].numpy()
        if on_progress:
            on_progress("preparing images", len(rows), n)
    inputs.flush()
    perm = rng.permutation(n)
    n_val = int(round(p.val_fraction * n)) if n >= 20 else 0
    val_rows, train_rows = np.sort(perm[:n_val]), perm[n_val:]
    model = Autoencoder2D(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=p.learning_rate)
    mask = soft_mask(cfg.input_size, cfg.mask_radius)
    train_loss, val_loss = [], []
    steps = int(np.ceil(len(train_rows) / p.batch_size))
    for epoch in range(p.epochs):
        model.train()
        order = rng.permutation(train_rows)
        total, count = 0.0, 0
        for s in range(steps):
            rows = np.sort(order[s * p.batch_size:(s + 1) * p.batch_size])
            if len(rows) < 2:  # batch norm needs two images
                continue
            x = torch.from_numpy(np.ascontiguousarray(inputs[rows]))[:, None]
            recon, _ = model(x)
            loss = model.reconstruction_loss(x, recon, mask)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(rows)
            count += len(rows)
        train_loss.append(total / max(count, 1))
        val_loss.append(_evaluate(model, inputs, val_rows, mask, p.batch_size) if n_val else float("nan"))
        if on_progress:
            on_progress("training (epochs)", 1, p.epochs)
    model.eval()
    latents = np.lib.format.open_memmap(tmp / LATENTS, mode="w+", dtype=np.float32, shape=(n, cfg.latent_dim))
    with torch.no_grad():
        for start in range(0, n, p.chunk):
            x = torch.from_numpy(np.ascontiguousarray(inputs[start:start + p.chunk]))[:, None]
            latents[start:start + len(x)] = model.encode(x).numpy()
    latents.flush()
    save_autoencoder(model, tmp / ENCODER, part="encoder")
    save_autoencoder(model, tmp / DECODER, part="decoder")
    with open(tmp / "train_log.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "train_loss", "val_loss"])
        for i, (a, b) in enumerate(zip(train_loss, val_loss)):
            w.writerow([i + 1, f"{a:.6g}", f"{b:.6g}"])
    lat = np.asarray(latents)
    directions = viewing_directions(source)
    embedding_figure(tmp / "embedding.png", lat, directions)
    sample = np.sort(rng.choice(n, size=min(8, n), replace=False))
    with torch.no_grad():
        xs = torch.from_numpy(np.ascontiguousarray(inputs[sample]))[:, None]
        rec = model(xs)[0]
    reconstructions_figure(tmp / "reconstructions.png", xs[:, 0].numpy(), rec[:, 0].numpy())
    del inputs, latents
    scratch_path.unlink()
    info = {"params": asdict(p), "config": json.loads(cfg.to_json()), "n_particles": n, "n_validation": int(n_val),
            "train_loss": train_loss, "val_loss": val_loss, "source": str(source.path) if source.path else None,
            "loss": "mean squared error per pixel inside the mask, standardised images"
                    + (" (best of the input's rotations)" if cfg.rotation_invariant else "")}
    (tmp / "run.json").write_text(json.dumps(info, indent=1, default=str))
    return EncodeResult(tmp, n, cfg.latent_dim, train_loss, val_loss)


def _evaluate(model, inputs: np.ndarray, rows: np.ndarray, mask: torch.Tensor, batch: int) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(rows), batch):
            sel = rows[s:s + batch]
            x = torch.from_numpy(np.ascontiguousarray(inputs[sel]))[:, None]
            total += float(model.reconstruction_loss(x, model(x)[0], mask)) * len(sel)
    return total / max(len(rows), 1)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def embedding_figure(path: Path, latents: np.ndarray, directions: np.ndarray | None) -> Path:
    """Scatter of the latents' first two principal components; colour = viewing direction when known."""
    plt = _pyplot()
    lat = np.asarray(latents, np.float64)
    lat = lat - lat.mean(0)
    if lat.shape[1] > 2:
        _, _, vt = np.linalg.svd(lat, full_matrices=False)
        xy = lat @ vt[:2].T
    else:
        xy = np.column_stack([lat[:, 0], lat[:, 1] if lat.shape[1] > 1 else np.zeros(len(lat))])
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    if directions is not None:
        ax.scatter(xy[:, 0], xy[:, 1], c=np.clip((directions + 1) / 2, 0, 1), s=6, linewidths=0)
        ax.set_title("latents (PCA) coloured by viewing direction", fontsize=9)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=6, linewidths=0, color="tab:blue")
        ax.set_title("latents (PCA)", fontsize=9)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reconstructions_figure(path: Path, inputs: np.ndarray, recon: np.ndarray) -> Path:
    """Network inputs (top row) above their reconstructions (bottom row)."""
    plt = _pyplot()
    k = len(inputs)
    fig, axes = plt.subplots(2, k, figsize=(1.2 * k, 2.6), squeeze=False)
    for i in range(k):
        for row, img in ((0, inputs[i]), (1, recon[i])):
            ax = axes[row, i]
            ax.imshow(img, cmap="gray")
            ax.axis("off")
    axes[0, 0].set_title("input", fontsize=7, loc="left")
    axes[1, 0].set_title("reconstruction", fontsize=7, loc="left")
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

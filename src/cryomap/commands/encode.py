"""``cryomap encode``: train a per-target 2D autoencoder; write its encoder and per-particle latents."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("encode")
    def encode(
        particles: Path = typer.Argument(..., help="Particle STAR, .mrcs or cryoSPARC .cs."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder: encoder.safetensors, latents.npy, embedding.png, ..."),
        latent_dim: int = typer.Option(8, "--latent-dim", help="Latent dimensions per particle."),
        epochs: int = typer.Option(20, "--epochs", help="Training epochs."),
        batch_size: int = typer.Option(64, "--batch-size", help="Particles per optimisation step."),
        learning_rate: float = typer.Option(1e-3, "--lr", help="Adam learning rate."),
        input_size: int = typer.Option(64, "--input-size", help="Network input size in px (particles are Fourier-resized to it; a multiple of 16)."),
        rotation_invariant: bool = typer.Option(True, "--rotation-invariant/--plain", help="Latents that ignore the in-plane angle (default), or the plain autoencoder."),
        seed: int = typer.Option(0, "--seed", help="Random seed."),
        apix: float = typer.Option(None, "--apix", help="Pixel size in Å/px (overrides the file's)."),
        threads: int = typer.Option(None, "--threads", help="torch threads (default: torch's)."),
        force: bool = typer.Option(False, "--force", help="Replace an existing output folder written by cryomap."),
    ) -> None:
        """Train a 2D convolutional autoencoder on one target's particles (latents for the dataset's latent mode)."""
        from cryomap.encode import EncodeParams, encode_particles
        from cryomap.errors import BadInputError
        from cryomap.particles.source import open_particles
        from cryomap.progress import progress_bar, summary

        if input_size < 16 or input_size % 16:
            raise BadInputError(f"--input-size must be a multiple of 16, got {input_size}")
        source = open_particles(particles, apix=apix)
        params = EncodeParams(latent_dim=latent_dim, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                              input_size=input_size, rotation_invariant=rotation_invariant, seed=seed, threads=threads)
        tasks: dict = {}
        with progress_bar() as bar:
            def advance(label: str, done: int, total: int) -> None:
                if label not in tasks:
                    tasks[label] = bar.add_task(label, total=total)
                bar.advance(tasks[label], done)

            result = encode_particles(source, out, params, force=force, on_progress=advance)
        summary(result.summary_line())

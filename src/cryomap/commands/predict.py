"""``cryomap predict RUN|CHECKPOINT --particles P.star -o MAP.mrc``: predict a density map."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict_cmd(
        model: Path = typer.Argument(..., help="Run folder (model.safetensors), or a checkpoint .ckpt/.safetensors."),
        particles: Path = typer.Option(None, "--particles", help="RELION STAR of the particles to predict from."),
        target: str = typer.Option(None, "--target", help="A training-dataset target: its label origin is written; without --particles its held-out particles are used."),
        out: Path = typer.Option(..., "-o", "--out", help="Output map (.mrc); voxel size and origin of the training label grid."),
        mode: str = typer.Option(None, "--mode", help="Condition mode (default: the training dataset's): stack, classes-shuffled, classes-ordered, class-repeated, latents."),
        class_averages: Path = typer.Option(None, "--class-averages", help="Class averages .mrcs, best first (class modes)."),
        latents: Path = typer.Option(None, "--latents", help="Per-particle latents .npy (latents mode)."),
        n_images: int = typer.Option(None, "--n-images", help="Images per condition (stack) or top-k classes (default: as in training)."),
        samples: int = typer.Option(None, "--samples", help="Diffusion: samples K averaged into the map (default 4); their per-voxel std goes to MAP_std.mrc."),
        steps: int = typer.Option(None, "--steps", help="Diffusion: sampling steps (default 50)."),
        sampler: str = typer.Option("ddim", "--sampler", help="Diffusion: ddim or ddpm (ancestral)."),
        eta: float = typer.Option(None, "--eta", help="Diffusion: DDIM η (0 = deterministic)."),
        batch: int = typer.Option(1, "--batch", min=1, help="Diffusion: samples run through the network together (faster, more memory; same result for η = 0)."),
        seed: int = typer.Option(0, "--seed", help="Seed for particle draws and sampling noise."),
        force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    ) -> None:
        """Predict the density map of a set of particles with a trained model."""
        from cryomap.io.atomic import check_writable
        from cryomap.io.mrc import write_mrc
        from cryomap.progress import progress_bar, summary
        from cryomap.train.predict import load_model, predict_map, std_path

        check_writable(out, force)
        loaded = load_model(model)
        total = None
        if loaded.name == "diffusion":
            d = loaded.config["diffusion"]
            total = int(samples or d.get("samples", 4)) * int(steps or d.get("sample_steps", 50))
        with progress_bar(transient=True) as bar:
            task = bar.add_task("sampling" if total else "predicting", total=total or 1)
            pred = predict_map(loaded, particles, target=target, mode=mode, samples=samples, steps=steps,
                               sampler=sampler, eta=eta, seed=seed, class_averages=class_averages, latents=latents,
                               n_images=n_images, batch=batch, on_step=lambda i: bar.advance(task))
            if not total:
                bar.advance(task)
        if pred.std is not None:
            check_writable(std_path(out), force)
        write_mrc(out, pred.map.data, pred.map.apix, origin=pred.map.origin, force=force)
        line = f"predicted {pred.map.data.shape[0]}³ map at {pred.map.apix:g} Å/voxel → {out}"
        if pred.std is not None:
            write_mrc(std_path(out), pred.std.data, pred.std.apix, origin=pred.std.origin, force=force)
            line += f" (+ per-voxel std {std_path(out).name})"
        summary(line)

"""``cryomap predict [RUN|CHECKPOINT] [--model builtin[:NAME]] --particles P.star -o MAP.mrc``: predict a density map."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict_cmd(
        model_arg: str = typer.Argument(None, metavar="[MODEL]", help="Run folder (model.safetensors), a checkpoint .ckpt/.safetensors, or builtin[:NAME]."),
        model_opt: str = typer.Option(None, "--model", help="builtin (the shipped default), builtin:NAME, or a run folder / checkpoint (same as MODEL)."),
        particles: Path = typer.Option(None, "--particles", help="Particles to predict from (RELION STAR, .mrcs or cryoSPARC .cs)."),
        target: str = typer.Option(None, "--target", help="A training-dataset target: its label origin is written; without --particles its held-out particles are used."),
        out: Path = typer.Option(..., "-o", "--out", help="Output map (.mrc). Corpus-trained models: the particles' own box and pixel size; dataset models: the training label grid."),
        mode: str = typer.Option(None, "--mode", help="Condition mode (default: the training dataset's): stack, classes-shuffled, classes-ordered, class-repeated, latents."),
        class_averages: Path = typer.Option(None, "--class-averages", help="Class averages .mrcs, best first (class modes)."),
        latents: Path = typer.Option(None, "--latents", help="Per-particle latents .npy (latents mode)."),
        n_images: int = typer.Option(None, "--n-images", help="Images per condition (stack) or top-k classes (default: as in training)."),
        refine: bool = typer.Option(False, "--refine/--no-refine", help="Corpus-trained models: refine the given poses (cryomap refine) before the half maps, when installed."),
        symmetry: str = typer.Option("C1", "--symmetry", help="Corpus-trained models: point-group symmetry of the half-map reconstruction (RELION names)."),
        samples: int = typer.Option(None, "--samples", help="Diffusion: samples K averaged into the map (default 4); their per-voxel std goes to MAP_std.mrc."),
        steps: int = typer.Option(None, "--steps", help="Diffusion: sampling steps (default: the model's own, config.diffusion.sample_steps; 50 if unset)."),
        sampler: str = typer.Option("ddim", "--sampler", help="Diffusion: ddim or ddpm (ancestral)."),
        eta: float = typer.Option(None, "--eta", help="Diffusion: DDIM η (0 = deterministic)."),
        batch: int = typer.Option(1, "--batch", min=1, help="Diffusion: samples run through the network together (faster, more memory; same result for η = 0)."),
        rotations: int = typer.Option(None, "--rotations", help="U-Net on half maps: average its maps over this many of the 24 cube rotations of the input, each turned back (default: the model's own, config.predict.rotations; the shipped halfmaps-unet: 24)."),
        seed: int = typer.Option(0, "--seed", help="Seed for particle draws, half sets and sampling noise."),
        force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    ) -> None:
        """Predict the density map of a set of particles with a trained or shipped model."""
        from cryomap.errors import BadInputError
        from cryomap.io.atomic import check_writable
        from cryomap.io.mrc import write_mrc
        from cryomap.progress import progress_bar, summary
        from cryomap.train.predict import load_model, predict_map, std_path

        if model_arg and model_opt and model_arg != model_opt:
            raise BadInputError(f"two models given: {model_arg} and --model {model_opt}")
        spec = model_opt or model_arg or "builtin"
        if rotations is not None and not 1 <= rotations <= 24:
            raise BadInputError(f"--rotations must be 1…24 (cube rotations averaged), got {rotations}")
        from cryomap.io.atomic import check_output

        # a folder, or a file below a file, is refused before the model loads; so is an output that is an input
        check_output(out, force, inputs=[Path(spec), particles, class_averages, latents], kind="file")
        loaded = load_model(spec)
        total = None
        if loaded.name == "diffusion":
            d = loaded.config["diffusion"]
            total = int(samples or d.get("samples", 4)) * int(steps or d.get("sample_steps", 50))
        info: dict = {}
        with progress_bar(transient=True) as bar:
            task = bar.add_task("sampling" if total else "predicting", total=total or 1)
            if loaded.meta.get("source") == "pairs":
                from cryomap.train.learned_map import predict_particles

                if particles is None:
                    raise BadInputError("give --particles: this model predicts from any particles (posed, or unposed once ab initio is installed)")
                pred, info = predict_particles(loaded, particles, refine=refine, symmetry=symmetry, samples=samples,
                                               steps=steps, sampler=sampler, eta=eta, seed=seed, batch=batch,
                                               on_step=lambda i: bar.advance(task), rotations=rotations)
            else:
                pred = predict_map(loaded, particles, target=target, mode=mode, samples=samples, steps=steps,
                                   sampler=sampler, eta=eta, seed=seed, class_averages=class_averages, latents=latents,
                                   n_images=n_images, batch=batch, on_step=lambda i: bar.advance(task))
            if not total:
                bar.advance(task)
        if pred.std is not None:
            check_writable(std_path(out), force)
        write_mrc(out, pred.map.data, pred.map.apix, origin=pred.map.origin, force=force)
        line = f"predicted {pred.map.data.shape[0]}³ map at {pred.map.apix:g} Å/voxel → {out}"
        if info.get("halfmaps"):
            line += f" (half maps {info['halfmaps']}, half-map FSC-0.143 {info.get('halfmap_fsc0.143_A', float('nan')):.1f} Å; model grid {info['model_grid']})" \
                if "halfmap_fsc0.143_A" in info else f" (half maps {info['halfmaps']}; model grid {info['model_grid']})"
        if pred.std is not None:
            write_mrc(std_path(out), pred.std.data, pred.std.apix, origin=pred.std.origin, force=force)
            line += f" + per-voxel std {std_path(out).name}"
        summary(line)

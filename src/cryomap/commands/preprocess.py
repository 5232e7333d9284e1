"""``cryomap preprocess IN -o OUT --steps ...``: the report's preprocessing chain on a particle stack."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("preprocess")
    def preprocess(
        particles: Path = typer.Argument(..., metavar="IN", help="Particles: RELION STAR, .mrcs stack or cryoSPARC .cs."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder: particles.mrcs, particles.star, preprocess.json."),
        steps: str = typer.Option(None, "--steps", help="Comma-separated steps with default parameters, in order: "
                                  "standardize, phase-flip, wiener, denoise, blend, clahe, guided."),
        config: Path = typer.Option(None, "--config", help="YAML with a 'steps:' list of {step: NAME, parameter: value} (instead of --steps)."),
        apix: float = typer.Option(None, "--apix", help="Pixel size in Å/px (overrides the STAR and the stack header)."),
        workers: int = typer.Option(1, "--workers", min=1, help="Worker processes: N > 1 starts a local Dask cluster (chunks in parallel; output identical)."),
        scheduler: str = typer.Option(None, "--scheduler", help="Address of a running Dask scheduler (tcp://host:8786) to run the chunks on."),
        resume: bool = typer.Option(False, "--resume", help="Continue a crashed run in the same -o without redoing finished chunks."),
        chunk: int = typer.Option(256, "--chunk", min=1, help="Particles per chunk (memory ≈ chunk × box² × 4 bytes × steps)."),
        figure: bool = typer.Option(False, "--figure", help="Also write preprocess_gallery.png and preprocess_steps.png."),
        force: bool = typer.Option(False, "--force", help="Replace an output folder cryomap wrote before."),
    ) -> None:
        """Standardise, CTF-correct, denoise, blend, CLAHE and guided-filter particles; same rows, same order."""
        from cryomap.preprocess.chain import load_chain_config, parse_steps
        from cryomap.preprocess.run import run_preprocess
        from cryomap.progress import summary

        from cryomap.io.atomic import check_not_input

        check_not_input(out, [particles, config])  # --force never replaces the particles it reads
        if (steps is None) == (config is None):
            raise typer.BadParameter("give exactly one of --steps and --config", param_hint="--steps/--config")
        chain = load_chain_config(config) if config is not None else parse_steps(steps)
        result = run_preprocess(particles, out, chain, apix=apix, workers=workers, scheduler=scheduler, resume=resume,
                                chunk=chunk, force=force, figure=figure)
        summary(result.summary_line())

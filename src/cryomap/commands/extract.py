"""``cryomap extract``: cut, bin and normalise particles from a CryoPPP folder or a STAR file."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("extract")
    def extract(
        source: Path = typer.Argument(..., help="CryoPPP dataset folder (micrographs/ + ground_truth/) or a STAR file with rlnMicrographName and rlnCoordinateX/Y."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder; receives particles.mrcs and particles.star."),
        box: int = typer.Option(None, "--box", help="Box size in micrograph pixels (even). Default: smallest even ≥ 1.5 × diameter."),
        diameter: float = typer.Option(None, "--diameter", help="Particle diameter in pixels (default: the CryoPPP CSV Diameter column); sets the default box."),
        bin_factor: float = typer.Option(1.0, "--bin", help="Downsampling factor ≥ 1 by Fourier cropping; output box = box / bin, pixel size × bin."),
        invert: bool = typer.Option(False, "--invert", help="Invert contrast after normalisation (multiply by −1)."),
        edge: str = typer.Option("skip", "--edge", help="Boxes leaving the micrograph: 'skip' drops them (counted), 'pad' fills with the background mean and flags them (rlnCryomapEdgePadded)."),
        bg_radius: float = typer.Option(None, "--bg-radius", help="Background radius in output pixels; mean 0 / std 1 outside it. Default 75% of the output box radius."),
        apix: float = typer.Option(None, "--apix", help="Micrograph pixel size in Å/px (overrides headers; JPEG/PNG carry none)."),
        workers: int = typer.Option(1, "--workers", min=1, help="Worker processes: N > 1 starts a local Dask cluster (micrographs in parallel; output identical)."),
        scheduler: str = typer.Option(None, "--scheduler", help="Address of a running Dask scheduler to run on (tcp://host:8786) instead of a local cluster."),
        resume: bool = typer.Option(False, "--resume", help="Continue a crashed run in the same -o without redoing finished micrographs."),
        phase_flip: bool = typer.Option(False, "--phase-flip", help="Phase-flip each particle by its own CTF (after binning, before normalisation); needs CTF columns or --ctf."),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable micrographs instead of stopping; they are listed in the summary."),
        per_micrograph: bool = typer.Option(False, "--stack-per-micrograph", help="Write one stacks/<micrograph>_particles.mrcs per micrograph instead of one particles.mrcs."),
        force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
        ctf: Path = typer.Option(None, "--ctf", help="micrographs_ctf.star from `cryomap ctf`: attach its CTF (per-patch defocus where fitted) to every particle."),
    ) -> None:
        """Extract particles into one RELION 3.1 stack (particles.mrcs + particles.star)."""
        from cryomap.io.atomic import check_not_input
        from cryomap.particles.extract import extract_particles
        from cryomap.progress import summary

        check_not_input(out, [source, ctf])  # `extract SRC -o SRC --force` must never delete the source
        result = extract_particles(source, out, box, diameter=diameter, bin_factor=bin_factor, invert=invert,
                                   edge=edge, bg_radius=bg_radius, workers=workers, skip_bad=skip_bad,
                                   apix=apix, force=force, stack_per_micrograph=per_micrograph, ctf=ctf,
                                   phase_flip=phase_flip, scheduler=scheduler, resume=resume)
        summary(result.summary_line())

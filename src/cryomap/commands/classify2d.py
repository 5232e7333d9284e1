"""``cryomap classify2d``: reference-free 2D classification, or import of cryoSPARC / RELION classes."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("classify2d")
    def classify2d(
        particles: Path = typer.Argument(None, help="Particle STAR, .mrcs or cryoSPARC .cs (omit with --import-cryosparc/--import-relion)."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder: classes.mrcs, classes.star, particles.star, gallery.png, run.json."),
        classes: int = typer.Option(None, "--classes", "-K", help="Number of classes."),
        iterations: int = typer.Option(20, "--iterations", help="EM iterations (after the seeded start)."),
        top: int = typer.Option(None, "--top", help="Keep the k best-ranked classes in classes.mrcs/classes.star (ranked by FRC-0.143 resolution, then size)."),
        seed: int = typer.Option(0, "--seed", help="Random seed (subsets, halves, k-means)."),
        mask_diameter: float = typer.Option(None, "--mask-diameter", help="Circular mask diameter in Å (default 90 % of the box)."),
        psi_step: float = typer.Option(6.0, "--psi-step", help="In-plane rotation step in degrees."),
        offset_range: float = typer.Option(5.0, "--offset-range", help="Translation search radius in pixels of the input box."),
        ctf: str = typer.Option("wiener", "--ctf", help="wiener: CTF-weighted (Wiener) averages from each particle's CTF; phase-flip: phase-flipped input, plain averages; none: ignore the CTF (e.g. JPEG micrographs)."),
        work_box: int = typer.Option(None, "--work-box", help="Box (px) the search runs at, by Fourier cropping (default min(box, 64)); averages are made at the full box."),
        max_resolution: float = typer.Option(None, "--max-resolution", help="Band limit of the search in Å (default: Nyquist of the working box)."),
        apix: float = typer.Option(None, "--apix", help="Pixel size in Å/px (overrides the file's)."),
        threads: int = typer.Option(None, "--threads", help="torch threads (default: torch's)."),
        import_cryosparc: Path = typer.Option(None, "--import-cryosparc", help="Import a cryoSPARC 2D job: its particles .cs (with --classes-mrc)."),
        classes_mrc: Path = typer.Option(None, "--classes-mrc", help="cryoSPARC class-average stack (.mrc) for --import-cryosparc."),
        import_relion: Path = typer.Option(None, "--import-relion", help="Import a RELION Class2D run: its run_itNNN_model.star (the _data.star and _classes.mrcs beside it)."),
        force: bool = typer.Option(False, "--force", help="Replace an existing output folder written by cryomap."),
    ) -> None:
        """Classify particles in 2D (EM over in-plane rotations × shifts, CTF-aware), or import classes made elsewhere."""
        from cryomap.errors import BadInputError
        from cryomap.progress import summary

        modes = [x is not None for x in (particles, import_cryosparc, import_relion)]
        if sum(modes) != 1:
            raise BadInputError("give either particles to classify, or --import-cryosparc CS --classes-mrc MRC, "
                                "or --import-relion MODEL.star (exactly one)")
        if import_cryosparc is not None:
            from cryomap.classify2d.importers import import_cryosparc as run_import

            if classes_mrc is None:
                raise BadInputError("--import-cryosparc needs --classes-mrc (the class-average .mrc)")
            path = run_import(import_cryosparc, classes_mrc, out, top=top, mask_diameter_A=mask_diameter, apix=apix,
                              force=force, seed=seed)
            summary(_import_line("cryoSPARC", path))
            return
        if import_relion is not None:
            from cryomap.classify2d.importers import import_relion as run_import

            path = run_import(import_relion, out, top=top, mask_diameter_A=mask_diameter, apix=apix, force=force,
                              seed=seed)
            summary(_import_line("RELION", path))
            return
        if classes is None:
            raise BadInputError("--classes is required to classify particles")
        if ctf not in ("wiener", "phase-flip", "none"):
            raise BadInputError(f"--ctf must be wiener, phase-flip or none, got {ctf!r}")
        from cryomap.classify2d.em import Classify2DParams
        from cryomap.classify2d.run import classify_to_folder

        params = Classify2DParams(n_classes=classes, iterations=iterations, psi_step_deg=psi_step,
                                  offset_range_px=offset_range, mask_diameter_A=mask_diameter, ctf=ctf,  # type: ignore[arg-type]
                                  work_box=work_box, max_resolution_A=max_resolution, seed=seed, threads=threads)
        result = classify_to_folder(particles, out, params, top=top, apix=apix, force=force)
        summary(result.summary_line())


def _import_line(tool: str, out: Path) -> str:
    import json

    info = json.loads((out / "run.json").read_text())
    return (f"classify2d: imported {info['n_classes']} {tool} classes into {out} ({info['kept']} written; "
            f"resolution from {info['resolution_source']})")

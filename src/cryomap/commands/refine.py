"""``cryomap refine PARTICLES --reference MAP -o OUT``: gold-standard local refinement."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("refine")
    def refine_cmd(
        particles: Path = typer.Argument(..., help="Particles (RELION STAR or cryoSPARC .cs) with CTF and, ideally, starting poses (e.g. abinitio's particles.star)."),
        reference: Path = typer.Option(..., "--reference", help="Starting map (.mrc). On another grid it is Fourier-resampled and centre-cropped/padded to the particles' box and pixel size."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder: map.mrc, half1.mrc, half2.mrc, mask.mrc, particles.star, fsc.csv, fsc.png, log.csv."),
        symmetry: str = typer.Option("C1", "--symmetry", help="Point group as RELION names it: C1, Cn, Dn, T, O, I (I1–I4)."),
        iterations: int = typer.Option(10, "--iterations", help="Most refinement iterations."),
        initial_resolution: float = typer.Option(20.0, "--initial-resolution", help="Low-pass (Å) of the reference for the first iteration."),
        step: float = typer.Option(3.75, "--step", help="First angular step (degrees) of the local search; it halves down to --min-step."),
        min_step: float = typer.Option(0.5, "--min-step", help="Finest angular step (degrees)."),
        mask_diameter: float = typer.Option(None, "--mask-diameter", help="Diameter (Å) of the sphere the solvent mask is kept inside (default 0.9 × box)."),
        apix: float = typer.Option(None, "--reference-apix", help="Voxel size (Å) of a reference whose header has none."),
        no_ctf: bool = typer.Option(False, "--no-ctf", help="Ignore the CTF (particles without CTF columns are refused otherwise)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the half-set split (when the STAR has no rlnRandomSubset)."),
        force: bool = typer.Option(False, "--force", help="Replace an existing output folder written by cryomap."),
    ) -> None:
        """Refine poses in two independent half sets; write half maps, the FSC-weighted map and the FSC at 0.143."""
        import json
        import time

        import numpy as np
        import pandas as pd

        from cryomap.commands.abinitio import _write_poses
        from cryomap.errors import BadInputError
        from cryomap.evaluate.figures import fsc_figure
        from cryomap.io.atomic import atomic_dir, check_replaceable_dir
        from cryomap.io.mrc import read_map, write_mrc
        from cryomap.particles.source import open_particles
        from cryomap.progress import console, summary
        from cryomap.reconstruct.refine import RefineSettings, refine, reference_on_grid
        from cryomap.reconstruct.symmetry import canonical_name

        t0 = time.perf_counter()
        sym = canonical_name(symmetry)
        check_replaceable_dir(out, force)
        if iterations < 1:
            raise BadInputError(f"--iterations must be at least 1, got {iterations}")
        source = open_particles(particles)
        if not reference.exists():
            raise BadInputError("reference map not found", reference)
        ref = read_map(reference, apix=apix)
        try:
            reference_on_grid(ref.data, ref.apix, source.box, source.pixel_size)
        except BadInputError as exc:
            raise BadInputError(exc.message, reference) from None
        settings = RefineSettings(symmetry=sym, iterations=iterations, initial_resolution_A=initial_resolution,
                                  step_deg=step, min_step_deg=min_step, mask_diameter_A=mask_diameter, seed=seed)
        with console.status("refine") as status:
            res = refine(source, ref.data, ref.apix, settings, ctf=not no_ctf,
                         progress=lambda m: status.update(f"refine: {m}"))
        with atomic_dir(out, force=force) as tmp:
            write_mrc(tmp / "map.mrc", res.full, res.apix)
            write_mrc(tmp / "half1.mrc", res.half1, res.apix)
            write_mrc(tmp / "half2.mrc", res.half2, res.apix)
            write_mrc(tmp / "mask.mrc", res.mask, res.apix)
            _write_poses(source, tmp / "particles.star", res.rot, res.tilt, res.psi, res.shifts_A, res.sets)
            u, m = res.fsc_unmasked, res.fsc_masked
            pd.DataFrame({"shell": np.arange(len(u.fsc)), "frequency_per_A": u.frequency,
                          "resolution_A": np.where(u.frequency > 0, 1 / np.maximum(u.frequency, 1e-12), np.inf),
                          "fsc_unmasked": u.fsc, "fsc_masked": m.extra["fsc_masked"],
                          "fsc_phase_randomized": m.extra["fsc_phase_randomized"], "fsc_masked_corrected": m.fsc,
                          }).to_csv(tmp / "fsc.csv", index=False)
            fsc_figure({"unmasked": u, "masked (corrected)": m}, tmp / "fsc.png",
                       title=f"gold-standard FSC, {len(source)} particles")
            pd.DataFrame([vars(line) for line in res.log]).to_csv(tmp / "log.csv", index=False)
            (tmp / "settings.json").write_text(json.dumps({
                **settings.as_dict(), "particles": str(particles), "reference": str(reference),
                "resolution_fsc0143_masked_A": res.resolution, "resolution_fsc0143_unmasked_A": u.resolution(0.143),
                "notes": res.notes, "seconds": round(res.seconds, 1)}, indent=2))
        notes = "".join(f"; {n}" for n in res.notes)
        summary(f"refined {len(source)} particles ({sym}, {len(res.log)} iterations) → {out}: map.mrc, half1/2.mrc, "
                f"particles.star, fsc.csv, fsc.png; gold-standard FSC 0.143: {res.resolution:.1f} Å masked, "
                f"{u.resolution(0.143):.1f} Å unmasked{notes}; {time.perf_counter() - t0:.0f} s")

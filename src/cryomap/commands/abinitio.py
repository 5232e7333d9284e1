"""``cryomap abinitio PARTICLES -o OUT``: a map and poses from particles nobody has posed."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("abinitio")
    def abinitio_cmd(
        particles: Path = typer.Argument(..., help="Particles (RELION STAR, .mrcs or cryoSPARC .cs) with CTF columns; poses, if any, are ignored."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder: map.mrc, particles.star (estimated poses), log.csv, settings.json."),
        symmetry: str = typer.Option("C1", "--symmetry", help="Point group as RELION names it: C1, Cn, Dn, T, O, I (I1–I4)."),
        box: int = typer.Option(None, "--box", help="Working box (px) the particles are Fourier-cropped to for the search (default min(32, particle box))."),
        bin_factor: float = typer.Option(None, "--bin", help="Alternative to --box: working box = particle box / BIN."),
        seed: int = typer.Option(0, "--seed", help="Seed of the starts, mini-batches and half-set split."),
        iterations: int = typer.Option(40, "--iterations", help="Mini-batch iterations."),
        restarts: int = typer.Option(2, "--restarts", help="Independent starts run for the first third of the iterations; the best continues."),
        initial_resolution: float = typer.Option(35.0, "--initial-resolution", help="Resolution limit (Å) of the first iteration."),
        final_resolution: float = typer.Option(None, "--final-resolution", help="Resolution limit (Å) the search marches to (default 2.5 × working pixel size)."),
        mask_diameter: float = typer.Option(None, "--mask-diameter", help="Diameter (Å) of the soft spherical mask on the model (default 0.8 × box)."),
        no_ctf: bool = typer.Option(False, "--no-ctf", help="Ignore the CTF (particles without CTF columns are refused otherwise)."),
        max_particles: int = typer.Option(None, "--max-particles", help="Use at most this many particles (random subset, seeded)."),
        force: bool = typer.Option(False, "--force", help="Replace an existing output folder written by cryomap."),
    ) -> None:
        """Ab initio reconstruction: stochastic projection matching with frequency marching, then full-size half maps."""
        import json
        import time

        import pandas as pd

        from cryomap.errors import BadInputError
        from cryomap.evaluate.baselines import random_subset
        from cryomap.io.atomic import atomic_dir, check_replaceable_dir
        from cryomap.io.mrc import write_mrc
        from cryomap.particles.source import open_particles
        from cryomap.progress import console, summary
        from cryomap.reconstruct.abinitio import HAND_NOTE, AbinitioSettings, abinitio
        from cryomap.reconstruct.symmetry import canonical_name

        t0 = time.perf_counter()
        sym = canonical_name(symmetry)
        check_replaceable_dir(out, force)
        for name, v in (("--iterations", iterations), ("--restarts", restarts)):
            if v < 1:
                raise BadInputError(f"{name} must be at least 1, got {v}")
        source = random_subset(open_particles(particles), max_particles, seed)
        work = box
        if bin_factor is not None:
            if box is not None:
                raise BadInputError("give --box or --bin, not both")
            if not bin_factor >= 1:
                raise BadInputError(f"--bin must be ≥ 1, got {bin_factor}")
            work = int(round(source.box / bin_factor))
        settings = AbinitioSettings(box=work, iterations=iterations, restarts=restarts, symmetry=sym, seed=seed,
                                    initial_resolution_A=initial_resolution, final_resolution_A=final_resolution,
                                    mask_diameter_A=mask_diameter)
        with console.status("ab initio") as status:
            res = abinitio(source, settings, ctf=not no_ctf, progress=lambda m: status.update(f"ab initio: {m}"))
        rec = res.reconstruction
        apix = source.pixel_size
        with atomic_dir(out, force=force) as tmp:
            write_mrc(tmp / "map.mrc", rec.full, apix)
            write_mrc(tmp / "half1.mrc", rec.half1, apix)
            write_mrc(tmp / "half2.mrc", rec.half2, apix)
            _write_poses(source, tmp / "particles.star", res.rot, res.tilt, res.psi, res.shifts_A, res.sets)
            pd.DataFrame([vars(line) for line in res.log]).to_csv(tmp / "log.csv", index=False)
            (tmp / "settings.json").write_text(json.dumps({**settings.as_dict(), "particles": str(particles),
                                                           "n_particles": len(source), "hand": HAND_NOTE,
                                                           "seconds": round(res.seconds, 1)}, indent=2))
        summary(f"ab initio from {len(source)} particles ({sym}) → {out}/map.mrc ({rec.full.shape[0]}³, {apix:.4g} Å/voxel), "
                f"particles.star, log.csv; half-set FSC 0.143: {rec.resolution(0.143):.1f} Å; "
                f"{time.perf_counter() - t0:.0f} s. Note: {HAND_NOTE}")


def _write_poses(source, path: Path, rot, tilt, psi, shifts_A, sets) -> None:
    """The particles' table with the estimated poses and half sets (RELION 3.1), naming the existing stacks."""
    import numpy as np

    cols = {"rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi,
            "rlnOriginXAngst": shifts_A[:, 0], "rlnOriginYAngst": shifts_A[:, 1],
            "rlnRandomSubset": np.asarray(sets) + 1}
    if not source.ops and source.stack_paths:
        from cryomap.particles.writer import write_subset_star

        write_subset_star(source, path, columns=cols)
    else:  # pragma: no cover - an in-memory source has no image files to name
        from cryomap.io.star import write_star

        tab = source.table.copy()
        for k, v in cols.items():
            tab[k] = np.asarray(v)
        write_star(path, tab)

"""``cryomap reconstruct PARTICLES -o MAP.mrc``: direct Fourier reconstruction at the poses the table holds."""

from __future__ import annotations

from pathlib import Path

import typer


def half_map_paths(out: Path) -> tuple[Path, Path]:
    """MAP.mrc → (MAP_half1.mrc, MAP_half2.mrc)."""
    suffix = out.suffix or ".mrc"
    return out.with_name(f"{out.stem}_half1{suffix}"), out.with_name(f"{out.stem}_half2{suffix}")


def split_star_path(out: Path) -> Path:
    """MAP.mrc → MAP_particles.star (the particles with the half-set split written back)."""
    return out.with_name(f"{out.stem}_particles.star")


def register(app: typer.Typer) -> None:
    @app.command("reconstruct")
    def reconstruct(
        particles: Path = typer.Argument(..., help="Particles with poses: RELION STAR (rlnAngleRot/Tilt/Psi °, rlnOriginX/YAngst Å, CTF) or cryoSPARC .cs."),
        out: Path = typer.Option(..., "-o", "--out", help="Output map (.mrc), on the particles' box and pixel size (Å/voxel)."),
        half_sets: bool = typer.Option(False, "--half-sets", help="Also write the two half maps (MAP_half1/2.mrc); the split is rlnRandomSubset, or a seeded one written back to MAP_particles.star."),
        symmetry: str = typer.Option("C1", "--symmetry", help="Point group as RELION names it: C1, Cn, Dn, T, O, I (I1–I4)."),
        no_ctf: bool = typer.Option(False, "--no-ctf", help="Do not correct the CTF (particles without CTF columns are refused otherwise)."),
        wiener_constant: float = typer.Option(None, "--wiener-constant", help="λ of the Wiener division Σ CTF·F / (Σ CTF² + λ), in summed-CTF² units (default 0.1; see docs/reconstruct.md)."),
        mask_diameter: float = typer.Option(None, "--mask-diameter", help="Diameter (Å) of the soft spherical solvent mask (default: measured on the map; 0: only RELION's box/2 sphere)."),
        max_particles: int = typer.Option(None, "--max-particles", help="Use at most this many particles (random subset, seeded)."),
        workers: int = typer.Option(1, "--workers", help="Worker processes (each sums its share of the particles into its own grids)."),
        threads: int = typer.Option(2, "--threads", help="1: sum the two half sets one after the other; 2: at once, in two threads (the same bytes)."),
        seed: int = typer.Option(0, "--seed", help="Seed for the particle subset and the half-set split."),
        force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    ) -> None:
        """Backproject particles at their poses: CTF-corrected (Wiener), two half sets, symmetry, gold-standard FSC."""
        import time

        import numpy as np

        from cryomap.errors import BadInputError
        from cryomap.evaluate.baselines import random_subset
        from cryomap.io.atomic import check_output
        from cryomap.io.mrc import write_mrc
        from cryomap.particles.source import open_particles
        from cryomap.progress import progress_bar, summary
        from cryomap.reconstruct.backproject import DEFAULT_WIENER_CONSTANT, reconstruct_source
        from cryomap.reconstruct.symmetry import canonical_name

        t0 = time.perf_counter()
        sym = canonical_name(symmetry)  # an unknown group is refused before anything is read
        if workers < 1:
            raise BadInputError(f"--workers must be at least 1, got {workers}")
        if threads < 1:
            raise BadInputError(f"--threads must be at least 1, got {threads}")
        if max_particles is not None and max_particles < 1:
            raise BadInputError(f"--max-particles must be at least 1, got {max_particles}")
        lam = DEFAULT_WIENER_CONSTANT if wiener_constant is None else float(wiener_constant)
        if not np.isfinite(lam) or lam < 0:
            raise BadInputError(f"--wiener-constant must be a number ≥ 0, got {wiener_constant}")
        targets = [out, *(half_map_paths(out) if half_sets else ())]
        for p in targets:  # before any particle is read: an output that would replace an input is refused
            check_output(p, force, inputs=[particles], kind="file")
        source = random_subset(open_particles(particles), max_particles, seed)
        with progress_bar() as bar:
            task = bar.add_task("backprojecting", total=len(source))
            rec, sets, from_table = reconstruct_source(source, ctf=not no_ctf, symmetry=sym, wiener_constant=lam,
                                                       seed=seed, workers=workers, threads=min(threads, 2), mask_diameter_A=mask_diameter,
                                                       progress=lambda k: bar.advance(task, k))
        apix = source.pixel_size
        written = [out]
        write_mrc(out, rec.full, apix, force=force)
        if half_sets:
            h1, h2 = half_map_paths(out)
            write_mrc(h1, rec.half1, apix, force=force)
            write_mrc(h2, rec.half2, apix, force=force)
            written += [h1, h2]
            if not from_table and not source.ops and source.stack_paths:
                from cryomap.particles.writer import write_subset_star

                star = split_star_path(out)
                write_subset_star(source, star, force=force, columns={"rlnRandomSubset": sets + 1})
                written.append(star)
        if mask_diameter is not None and mask_diameter < 0:
            raise BadInputError(f"--mask-diameter must be ≥ 0 Å, got {mask_diameter}")
        line = (f"reconstructed {len(source)} particles ({rec.n_per_half[0]} + {rec.n_per_half[1]} in half sets, "
                f"{'rlnRandomSubset' if from_table else f'seeded split {seed}'}; {sym}; "
                f"{'no CTF correction' if no_ctf else f'Wiener λ {lam:g}'}; solvent sphere "
                f"{2 * rec.info['mask_radius_px'] * apix:.0f} Å) → {', '.join(p.name for p in written)} "
                f"({rec.full.shape[0]}³, {apix:.4g} Å/voxel); half-set FSC 0.143: {rec.resolution(0.143):.1f} Å, "
                f"0.5: {rec.resolution(0.5):.1f} Å; {time.perf_counter() - t0:.1f} s")
        summary(line)

"""``cryomap reconstruct PARTICLES.star -o MAP.mrc``: the oracle (true-pose) reconstruction baseline."""

from __future__ import annotations

from pathlib import Path

import typer


def half_map_paths(out: Path) -> tuple[Path, Path]:
    """MAP.mrc → (MAP_half1.mrc, MAP_half2.mrc)."""
    suffix = out.suffix or ".mrc"
    return out.with_name(f"{out.stem}_half1{suffix}"), out.with_name(f"{out.stem}_half2{suffix}")


def register(app: typer.Typer) -> None:
    @app.command("reconstruct")
    def reconstruct(
        particles: Path = typer.Argument(..., help="RELION STAR with the particles' true poses (rlnAngleRot/Tilt/Psi °, rlnOriginX/YAngst Å) and CTF."),
        out: Path = typer.Option(..., "-o", "--out", help="Output map (.mrc), on the particles' pixel size (Å/voxel) and box."),
        half_sets: bool = typer.Option(False, "--half-sets", help="Also reconstruct two random halves (MAP_half1/2.mrc) and print their gold-standard FSC."),
        max_particles: int = typer.Option(None, "--max-particles", help="Use at most this many particles (random subset, seeded)."),
        seed: int = typer.Option(0, "--seed", help="Seed for the particle subset and the half-set split."),
        force: bool = typer.Option(False, "--force", help="Overwrite existing output maps."),
    ) -> None:
        """Backproject particles with their true poses: the upper bound of what the particles hold."""
        import time

        from cryomap.evaluate.baselines import oracle_reconstruction, random_subset
        from cryomap.particles.source import open_particles
        from cryomap.evaluate.fsc import fsc
        from cryomap.io.atomic import check_writable
        from cryomap.io.mrc import write_mrc
        from cryomap.progress import summary

        t0 = time.perf_counter()
        targets = [out, *(half_map_paths(out) if half_sets else ())]
        for p in targets:
            check_writable(p, force)
        source = random_subset(open_particles(particles), max_particles, seed)
        apix = source.pixel_size
        maps = oracle_reconstruction(source, half_sets=half_sets, seed=seed)
        write_mrc(out, maps["full"], apix, force=force)
        line = f"reconstructed {len(source)} particles → {out} ({maps['full'].shape[0]}³, {apix:.4g} Å/voxel)"
        if half_sets:
            h1, h2 = half_map_paths(out)
            write_mrc(h1, maps["half1"], apix, force=force)
            write_mrc(h2, maps["half2"], apix, force=force)
            c = fsc(maps["half1"], maps["half2"], apix)
            line += f"; half-set FSC 0.143: {c.resolution(0.143):.1f} Å, 0.5: {c.resolution(0.5):.1f} Å"
        summary(line + f"; {time.perf_counter() - t0:.1f} s")

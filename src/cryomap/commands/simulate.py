"""``cryomap simulate``: CryoPPP-layout datasets from atomic models, with full ground truth."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("simulate")
    def simulate(
        structure: list[Path] = typer.Option(None, "--structure", help="Atomic model (.pdb/.cif, gzipped ok) or map (.mrc); repeat for several targets."),
        builtin: list[str] = typer.Option(None, "--builtin", help="Built-in structure name (see --list); repeat for several targets."),
        particles: int = typer.Option(1000, "--particles", help="Particles per target."),
        micrograph_size: int = typer.Option(1024, "--micrograph-size", help="Micrograph width = height in px."),
        apix: float = typer.Option(2.0, "--apix", help="Pixel size in Å/px (micrographs, particles and truth map)."),
        snr: float = typer.Option(0.1, "--snr", help="Signal variance / noise variance in the particle box (> 0)."),
        defocus: tuple[float, float] = typer.Option((10000.0, 25000.0), "--defocus", help="MIN MAX mean defocus per micrograph in Å (positive = underfocus)."),
        seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same dataset."),
        box: int = typer.Option(None, "--box", help="Particle box and truth-map size in px (default: even ≥ 1.5 × particle diameter)."),
        micrographs: int = typer.Option(None, "--micrographs", help="Micrographs per target (default: as many as 25 % disc packing needs)."),
        resolution: float = typer.Option(None, "--resolution", help="Low-pass the truth map to this resolution in Å."),
        bfactor: float = typer.Option(0.0, "--bfactor", help="CTF B-factor envelope in Å²."),
        voltage: float = typer.Option(300.0, "--voltage", help="Acceleration voltage in kV."),
        cs: float = typer.Option(2.7, "--cs", help="Spherical aberration in mm."),
        amplitude_contrast: float = typer.Option(0.1, "--amplitude-contrast", help="Amplitude contrast fraction."),
        dose: float = typer.Option(40.0, "--dose", help="Electron dose per micrograph in e⁻/Å²."),
        map_apix: float = typer.Option(None, "--map-apix", help="Voxel size in Å/px of a --structure map (.mrc) whose header has none."),
        out: Path = typer.Option(Path("simulated"), "-o", "--out", help="Output folder (one sub-folder per target)."),
        force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
        list_: bool = typer.Option(False, "--list", help="List the built-in structures and exit."),
    ) -> None:
        """Simulate micrographs, coordinates, STAR, truth map and clean particles from atomic models."""
        from cryomap.progress import summary
        from cryomap.simulate.structure_map import builtin_structures, model_extent

        if list_:
            for name, path in builtin_structures().items():
                diameter, mass = model_extent(path)
                typer.echo(f"{name}\t{mass:7.1f} kDa\t{diameter:5.0f} Å across\t{path.name}")
            return
        from cryomap.simulate.dataset import simulate_dataset

        sources = [*(structure or []), *(builtin or [])]
        if not sources:
            sources = ["7PBL"]
        import time

        t0 = time.perf_counter()
        folders = simulate_dataset(
            sources, out, n_particles=particles, micrograph_size=micrograph_size, apix=apix, snr=snr,
            defocus_range=defocus, seed=seed, box=box, force=force, n_micrographs=micrographs,
            resolution=resolution, bfactor=bfactor, voltage=voltage, cs=cs,
            amplitude_contrast=amplitude_contrast, dose=dose, map_apix=map_apix,
        )
        summary(f"simulated {len(folders)} target(s) × {particles} particles at {apix} Å/px, SNR {snr}, "
                f"in {time.perf_counter() - t0:.1f} s → {out}/ ({', '.join(f.name for f in folders)})")

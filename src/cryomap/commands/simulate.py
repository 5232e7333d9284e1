"""``cryomap simulate``: CryoPPP-layout datasets from atomic models, with full ground truth."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("simulate")
    def simulate(
        structure: list[Path] = typer.Option(None, "--structure", help="Atomic model (.pdb/.cif, gzipped ok) or map (.mrc); repeat for several targets."),
        builtin: list[str] = typer.Option(None, "--builtin", help="Built-in structure name (see --list); repeat for several targets."),
        procedural: int = typer.Option(0, "--procedural", min=0, help="Add N procedural protein-like pseudo-molecules (50–1,000 kDa, seeded by --seed); their mmCIF files go to OUT/structures/."),
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
        from cryomap.progress import counted, summary
        from cryomap.simulate.structure_map import builtin_structures, model_extent

        if list_:
            for name, path in builtin_structures().items():
                diameter, mass = model_extent(path)
                typer.echo(f"{name}\t{mass:7.1f} kDa\t{diameter:5.0f} Å across\t{path.name}")
            return
        from cryomap.errors import CryomapError
        from cryomap.io.atomic import check_output
        from cryomap.resources import check_micrograph_size

        if not structure and not builtin and not procedural:
            raise CryomapError("say what to simulate: --builtin NAME (see --list), --structure FILE or --procedural N")
        from cryomap.simulate.dataset import simulate_dataset

        # before any work: the output may not hold a --structure, nor replace a folder cryomap did not write
        check_output(out, force, inputs=structure or [], kind="folder")
        check_micrograph_size(micrograph_size)
        sources = [*(structure or []), *(builtin or [])]
        import shutil
        import tempfile
        import time

        t0 = time.perf_counter()
        made = None
        if procedural:
            from cryomap.simulate.procedural import write_procedural

            Path(out).absolute().parent.mkdir(parents=True, exist_ok=True)
            made = Path(tempfile.mkdtemp(prefix="cryomap_procedural_", dir=Path(out).absolute().parent))
            sources += [p for p, _ in write_procedural(procedural, seed, made)]
        try:
            folders = simulate_dataset(
                sources, out, n_particles=particles, micrograph_size=micrograph_size, apix=apix, snr=snr,
                defocus_range=defocus, seed=seed, box=box, force=force, n_micrographs=micrographs,
                resolution=resolution, bfactor=bfactor, voltage=voltage, cs=cs,
                amplitude_contrast=amplitude_contrast, dose=dose, map_apix=map_apix,
            )
            if made is not None:
                _keep_procedural(made, Path(out), folders)
        finally:
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
        summary(f"simulated {counted(len(folders), 'target')} × {particles} particles at {apix} Å/px, SNR {snr}, "
                f"in {time.perf_counter() - t0:.1f} s → {out}/ ({', '.join(f.name for f in folders)})")


def _keep_procedural(made: Path, out: Path, folders: list[Path]) -> None:
    """Move the procedural structures into OUT/structures/ and point each target's manifest at its file."""
    import json
    import shutil

    dest = out / "structures"
    dest.mkdir(exist_ok=True)
    moved = {}
    for p in sorted(made.iterdir()):
        shutil.move(str(p), dest / p.name)
        moved[str(p)] = dest / p.name
    for folder in folders:
        mf = folder / "manifest.json"
        info = json.loads(mf.read_text())
        src = info.get("source", {}).get("path")
        if src in moved:
            info["source"]["path"] = str(moved[src].resolve())
            info["source"]["procedural"] = True
            mf.write_text(json.dumps(info, indent=2))

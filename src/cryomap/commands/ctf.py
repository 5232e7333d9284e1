"""``cryomap ctf``: estimate the CTF of micrographs (CTFFIND4-style fit; optional per-patch defocus)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from cryomap.errors import BadInputError


def parse_patches(text: str | None) -> tuple[int, int] | None:
    """``"NxM"`` (N patches across, M down) → (rows M, columns N); None stays None."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not m:
        raise BadInputError(f"--patches takes NxM (patches across x down), e.g. 5x5; got {text!r}")
    return int(m.group(2)), int(m.group(1))


def register(app: typer.Typer) -> None:
    @app.command("ctf")
    def ctf(
        source: Path = typer.Argument(..., help="CryoPPP folder, a folder of micrographs, a STAR file naming micrographs (rlnMicrographName) or one micrograph."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder: micrographs_ctf.star, diagnostics/<micrograph>.png, patches/<micrograph>.star."),
        patches: str = typer.Option(None, "--patches", help="NxM: also fit the defocus in N×M patches (N across, M down) and smooth it over the micrograph (per-particle defocus)."),
        defocus: tuple[float, float] = typer.Option((5000.0, 50000.0), "--defocus", help="MIN MAX mean defocus searched, Å (positive = underfocus)."),
        resolution: tuple[float, float] = typer.Option((30.0, 5.0), "--resolution", help="LOW HIGH resolution of the fit band, Å (HIGH is capped just below Nyquist)."),
        tile: int = typer.Option(512, "--tile", help="Tile size in px for the averaged power spectrum (even; tiles overlap by half)."),
        workers: int = typer.Option(1, "--workers", help="Worker processes (micrographs in parallel)."),
        voltage: float = typer.Option(None, "--voltage", help="Acceleration voltage, kV (default: the STAR's, else 300)."),
        cs: float = typer.Option(None, "--cs", help="Spherical aberration, mm (default: the STAR's, else 2.7)."),
        amplitude_contrast: float = typer.Option(None, "--amplitude-contrast", help="Amplitude contrast fraction (default: the STAR's, else 0.1)."),
        apix: float = typer.Option(None, "--apix", help="Micrograph pixel size, Å/px (default: the file header, else the STAR)."),
        phase_shift: bool = typer.Option(False, "--phase-shift", help="Also fit a phase shift (phase-plate data), degrees."),
        max_astigmatism: float = typer.Option(3000.0, "--max-astigmatism", help="Largest astigmatism DefocusU − DefocusV searched, Å."),
        patch_degree: int = typer.Option(1, "--patch-degree", help="Degree of the polynomial smoothing the patch defoci: 0 constant, 1 plane, 2 quadratic."),
        allow_8bit: bool = typer.Option(False, "--allow-8bit", help="Fit 8-bit JPEG/PNG micrographs anyway (their Thon rings are not linear)."),
        force: bool = typer.Option(False, "--force", help="Replace an existing output folder written by cryomap."),
    ) -> None:
        """Fit defocus U/V, astigmatism angle (and phase shift) to every micrograph; RELION 3.1 micrographs_ctf.star."""
        from cryomap.ctf_estimation.estimate import estimate_ctf
        from cryomap.progress import summary

        result = estimate_ctf(source, out, patches=parse_patches(patches), defocus_range=defocus, resolution=resolution,
                              tile=tile, workers=workers, voltage=voltage, cs=cs, amplitude_contrast=amplitude_contrast,
                              apix=apix, phase_shift=phase_shift, max_astigmatism=max_astigmatism,
                              patch_degree=patch_degree, allow_8bit=allow_8bit, force=force)
        summary(result.summary_line())

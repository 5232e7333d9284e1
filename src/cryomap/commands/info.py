"""``cryomap info FILE``: what a map, stack, STAR or cryoSPARC .cs file holds."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("info")
    def info(
        path: Path = typer.Argument(..., help="An .mrc/.map/.mrcs, .star, .cs or coordinates file."),
        apix: float = typer.Option(None, "--apix", help="Voxel size in Å/px for maps whose header has none."),
    ) -> None:
        """Print shape, pixel size, particles, optics groups and columns of a file."""
        from cryomap.io.describe import describe

        typer.echo(describe(path, apix=apix))

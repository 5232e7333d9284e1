"""``cryomap labels MAP -o LABEL.mrc``: a density map as a training label (1 Å grid, box^3, [0, 1])."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("labels")
    def labels(
        map_path: Path = typer.Argument(..., metavar="MAP", help="Density map (.mrc/.map)."),
        output: Path = typer.Option(..., "-o", "--out", help="Label map to write (.mrc)."),
        apix: float = typer.Option(1.0, "--apix", help="Voxel size of the label in Å/voxel."),
        box: int = typer.Option(128, "--box", help="Label box edge in voxels (cubic)."),
        threshold: float = typer.Option(
            None, "--threshold", help="Binarise the normalised map: < t → 0, ≥ t → 1 (e.g. 0.9)."
        ),
        in_apix: float = typer.Option(
            None, "--in-apix", help="Voxel size of MAP in Å/voxel; overrides the header, needed when it has none."
        ),
        contour: float = typer.Option(
            None, "--contour",
            help="Density level (MAP units) outlining the molecule for the fit check; default: a quarter of Otsu's threshold.",
        ),
        force: bool = typer.Option(False, "--force", help="Overwrite OUTPUT if it exists."),
    ) -> None:
        """Resample MAP in Fourier space to --apix, crop/pad to --box^3 (centred), normalise like cryo2struct."""
        from cryomap.io.atomic import check_output
        from cryomap.labels.make import make_label_file
        from cryomap.progress import summary
        from cryomap.resources import check_label_box

        check_output(output, force, inputs=[map_path], kind="file")
        check_label_box(box)

        label = make_label_file(
            map_path, output, apix=apix, box=box, threshold=threshold, in_apix=in_apix, level=contour, force=force
        )
        kind = f"binary at {threshold:g}" if threshold is not None else "values in [0, 1]"
        summary(
            f"wrote {output}: {box}^3 at {apix:g} Å/voxel, {kind}, "
            f"{(label.data > 0).mean() * 100:.1f}% of voxels non-zero"
        )

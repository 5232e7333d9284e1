"""``cryomap evaluate PRED.mrc TRUTH.mrc -o OUT_DIR``: FSC and map metrics against a truth map."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate(
        pred: Path = typer.Argument(..., help="Predicted or reconstructed map (.mrc)."),
        truth: Path = typer.Argument(..., help="Truth map (.mrc) on the same grid (box and Å/voxel)."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder: metrics.json, fsc.csv, fsc.png."),
        mask: Path = typer.Option(None, "--mask", help="Soft mask (.mrc, values 0–1) for masked metrics and the mask-corrected FSC."),
        auto_mask: bool = typer.Option(False, "--auto-mask", help="Build a soft mask from the truth (15 Å low-pass, Otsu threshold, +3 Å, 6 Å cosine edge)."),
        threshold: float = typer.Option(None, "--threshold", help="Contour (truth units) for Dice/IoU; default: Otsu threshold of the truth."),
        align: bool = typer.Option(False, "--align", help="First align PRED onto TRUTH: global rotation, translation and hand search."),
        apix: float = typer.Option(None, "--apix", help="Voxel size in Å/voxel for maps whose header has none."),
        name: str = typer.Option(None, "--name", help="Label for this map in metrics and reports (default: PRED's file stem)."),
        save_aligned: bool = typer.Option(False, "--save-aligned", help="Also write the scored (aligned) map as scored_map.mrc."),
        force: bool = typer.Option(False, "--force", help="Overwrite OUT_DIR if it exists."),
    ) -> None:
        """Score a map against the truth: FSC (0.5 / 0.143 in Å), CC, MSE, SSIM, Dice, IoU."""
        from cryomap.errors import BadInputError
        from cryomap.evaluate.mask import auto_mask as make_mask
        from cryomap.evaluate.score import check_same_grid, score_map, write_evaluation
        from cryomap.io.atomic import check_output
        from cryomap.io.mrc import read_map
        from cryomap.progress import summary

        check_output(out, force, inputs=[pred, truth, mask], kind="folder")
        if mask is not None and auto_mask:
            raise BadInputError("give either --mask or --auto-mask, not both", mask)
        p = read_map(pred, apix)
        t = read_map(truth, apix)
        check_same_grid(p.shape, t.shape, p.apix, t.apix, pred)
        for path, m in ((pred, p), (truth, t)):
            if float(m.data.max()) == float(m.data.min()):  # FSC, CC and contours are undefined: refuse before writing
                raise BadInputError(f"map is constant (every voxel {float(m.data.flat[0]):g}); there is no density to score",
                                    path)
        m = None
        if mask is not None:
            m = read_map(mask, apix or t.apix).data
            if m.shape != t.shape:
                raise BadInputError(f"mask shape {m.shape} differs from the maps' {t.shape}", mask)
            if m.min() < -1e-3 or m.max() > 1 + 1e-3:
                raise BadInputError(f"mask values must lie in [0, 1], found {m.min():.3g}…{m.max():.3g}", mask)
        elif auto_mask:
            m = make_mask(t.data, t.apix)
        ev = score_map(p.data, t.data, t.apix, mask=m, contour=threshold, align=align, name=name or pred.stem)
        extra = {"mask": str(mask.resolve()) if mask else ("auto" if auto_mask else None)}
        write_evaluation(out, ev, force=force, pred_path=pred, truth_path=truth, extra_info=extra, save_scored_map=save_aligned or align)
        f = ev.metrics["fsc"]
        mm = ev.metrics["metrics"]
        r5, r143 = f["resolution_fsc0.5_A"], f["resolution_fsc0.143_A"]
        summary(
            f"{pred.name}: FSC 0.5 {r5:.1f} Å, 0.143 {r143:.1f} Å; CC {mm['cc_mean']:.3f}, SSIM {mm['ssim']:.3f}, "
            f"Dice {mm['dice']:.3f} at contour {mm['contour']:.3g} ({mm['dice_equal_volume']:.3f} at equal volume); aligned: {'yes' if align else 'no'}; "
            f"{ev.metrics['seconds']:.1f} s → {out}"
        )

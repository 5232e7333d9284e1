"""``cryomap report RUN_DIR -o report.html``: one self-contained HTML page for a run."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        run_dir: Path = typer.Argument(..., help="Run folder holding evaluation folders (metrics.json), training logs (metrics.csv) and figures."),
        out: Path = typer.Option(..., "-o", "--out", help="HTML file to write (images embedded, no other files)."),
        title: str = typer.Option(None, "--title", help="Page title (default: the run folder's name)."),
        force: bool = typer.Option(False, "--force", help="Overwrite the HTML file if it exists."),
    ) -> None:
        """Write an HTML report: metrics table, FSC curves, map slices/projections, loss curves."""
        from cryomap.evaluate.report import build_report
        from cryomap.io.atomic import check_output
        from cryomap.progress import summary

        check_output(out, force, inputs=[run_dir], kind="file")

        path = build_report(run_dir, out, force=force, title=title)
        summary(f"report: {path.resolve()} ({path.stat().st_size / 1e6:.1f} MB)")

"""``cryomap pipeline CONFIG.yaml -o OUT``: every stage from micrographs (or the simulator) to scored maps and a report."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("pipeline")
    def pipeline(
        config: Path = typer.Argument(..., help="Pipeline YAML (see configs/ and docs/pipeline.md)."),
        out: Path = typer.Option(..., "-o", "--out", help="Run folder; a finished stage with the same inputs is not redone."),
        force: bool = typer.Option(False, "--force", help="Allow OUT to be a folder cryomap wrote for something else."),
    ) -> None:
        """Run the method of a config: extract, preprocess, classes, latents, datasets, models, reconstruction, prediction, scores."""
        import json

        from cryomap.pipeline.config import load_config
        from cryomap.pipeline.run import headline_line, run_pipeline
        from cryomap.progress import summary

        cfg = load_config(config)
        report = run_pipeline(cfg, out, force=force, title=f"cryomap pipeline: {config.stem}")
        info = json.loads((out / "run_summary.json").read_text())
        summary(f"pipeline finished: {len(info['stages'])} stages ({len(info['ran'])} run now); {headline_line(info)}")
        typer.echo(f"report: {report.resolve()}")

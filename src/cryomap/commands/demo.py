"""``cryomap demo [-o DIR] [--quick]``: the whole method on the embedded structures, one HTML report."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("demo_out"), "-o", "--out", help="Output folder: every stage's folder, run_summary.json, report.html."),
        quick: bool = typer.Option(False, "--quick", help="Small sizes for CI (about 1.5 minutes on 2 CPU cores; the full demo about 11.5)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the simulation, splits and training."),
        force: bool = typer.Option(False, "--force", help="Replace OUT if it holds an earlier cryomap run (a finished stage is otherwise reused)."),
    ) -> None:
        """Simulate seen and unseen molecules, run every stage of the method, score it, write report.html."""
        import json
        import time

        from cryomap.pipeline.demo import run_demo
        from cryomap.pipeline.run import headline_line
        from cryomap.progress import summary

        t0 = time.perf_counter()
        report = run_demo(out, quick=quick, force=force, seed=seed)
        info = json.loads((out / "run_summary.json").read_text())
        summary(f"demo finished in {time.perf_counter() - t0:.0f} s; {headline_line(info)}")
        typer.echo(f"report: {report.resolve()}")

"""``cryomap demo [-o DIR] [--quick]``: simulate → extract → labels/dataset → train → predict → reconstruct → evaluate → report."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("demo_out"), "-o", "--out", help="Output folder (simulated data, particles, dataset, run, maps, evaluation, report.html)."),
        quick: bool = typer.Option(False, "--quick", help="Small sizes for CI: under 3 minutes on 2 CPU cores (the full demo takes under 15)."),
        force: bool = typer.Option(False, "--force", help="Replace OUT if it holds an earlier demo."),
    ) -> None:
        """Run the whole path on the embedded structures and write an HTML report."""
        import json
        import time

        from cryomap.evaluate.demo import run_demo
        from cryomap.progress import summary

        t0 = time.perf_counter()
        report = run_demo(out, quick=quick, force=force)
        info = json.loads((out / "run_summary.json").read_text())
        parts = []
        for name in ("U-Net prediction", "oracle (all particles)", "mean training label"):
            h = info.get("headline", {}).get(name)
            if h:
                parts.append(f"{name}: FSC0.143 {h['fsc0.143_A']:.1f} Å, Dice {h['dice']:.2f}")
        summary(f"demo finished in {time.perf_counter() - t0:.0f} s; " + "; ".join(parts))
        typer.echo(f"report: {report.resolve()}")

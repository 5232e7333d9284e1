"""``cryomap dataset build CONFIG.yaml -o DATASET_DIR`` and ``cryomap dataset show DATASET_DIR``."""

from __future__ import annotations

from pathlib import Path

import typer

dataset_app = typer.Typer(help="Build and inspect training datasets of (condition, label) pairs.", no_args_is_help=True)


@dataset_app.command("build")
def build(
    config: Path = typer.Argument(..., metavar="CONFIG.yaml", help="Dataset config (targets, label, condition, split, seed)."),
    output: Path = typer.Option(..., "-o", "--out", help="Dataset folder to write."),
    force: bool = typer.Option(False, "--force", help="Replace OUTPUT if it exists (only once the new one is complete)."),
) -> None:
    """Write labels, condition sources and a manifest for every target of CONFIG.yaml."""
    from cryomap.datasets.build import build_dataset
    from cryomap.datasets.config import load_config
    from cryomap.io.atomic import check_output

    cfg = load_config(config)  # refuses a bad config before anything is written
    inputs = [config] + [getattr(t, k) for t in cfg.targets for k in ("particles", "map", "class_averages", "latents")]
    check_output(output, force, inputs=inputs, kind="folder")
    build_dataset(config, output, force=force)


@dataset_app.command("show")
def show(dataset_dir: Path = typer.Argument(..., metavar="DATASET_DIR", help="A folder written by `dataset build`.")) -> None:
    """Print the targets, their split and particle subsets, the label grid and the condition mode."""
    from cryomap.datasets.manifest import Manifest

    m = Manifest.load(dataset_dir)
    lab, cond = m.data["label"], m.data["condition"]
    binary = "" if lab["threshold"] is None else f", binary at {lab['threshold']:g}"
    typer.echo(
        f"{dataset_dir}: labels {lab['box']}^3 at {lab['apix']:g} Å/voxel{binary}; "
        f"condition {cond['mode']} (n_images {cond['n_images'] or 'default'}, storage {cond['storage']}); "
        f"split by {m.data['split_by']}, seed {m.seed}"
    )
    typer.echo(f"{'target':<20} {'split':<7} {'particles':>9} {'train':>7} {'val':>7} {'heldout':>7}")
    for t in m.data["targets"]:
        s = t["subsets"]
        typer.echo(
            f"{t['name']:<20} {t['split']:<7} {t['n_particles']:>9} {len(s['train']):>7} {len(s['val']):>7} {len(s['heldout']):>7}"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(dataset_app, name="dataset")

"""``cryomap pairs build -o PAIRS_DIR`` and ``cryomap pairs show PAIRS_DIR``: half-map training pairs over a corpus."""

from __future__ import annotations

from pathlib import Path

import typer

pairs_app = typer.Typer(help="Training pairs (half-map reconstruction → truth) over a corpus of molecules, split by molecule.",
                        no_args_is_help=True)


@pairs_app.command("build")
def build(
    output: Path = typer.Option(..., "-o", "--out", help="Pair cache folder (resumed when it exists with the same settings)."),
    procedural: int = typer.Option(300, "--procedural", min=0, help="Procedural pseudo-molecules added to the corpus."),
    procedural_seed: int = typer.Option(0, "--procedural-seed", help="Seed of the procedural molecules."),
    shared: Path = typer.Option(None, "--shared", help="Shared data folder with structures/ and corpus/ (default ../shared/data)."),
    pairs_per_molecule: int = typer.Option(3, "--pairs-per-molecule", min=1, help="Pairs (orientation, particles, SNR, pose errors) per molecule."),
    box: int = typer.Option(48, "--box", min=16, help="Box of particles, half maps and labels (px)."),
    n_stack: int = typer.Option(48, "--stack-images", min=0, help="Particle images stored per pair for the stack condition."),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N corpus molecules (for a quick build)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every draw; the same seed gives the same pairs."),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the by-molecule split."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes (one torch thread each)."),
) -> None:
    """Simulate particles of every corpus molecule, reconstruct two half maps, store (condition, label) pairs."""
    import shlex
    import sys

    from cryomap.datasets.pairs import PairCache, build_pairs
    from cryomap.datasets.physics import SettingRanges
    from cryomap.progress import summary
    from cryomap.simulate.corpus import corpus_entries, split_entries

    entries = corpus_entries(shared, procedural=procedural, procedural_seed=procedural_seed)
    if limit:
        entries = entries[:limit]
    splits = split_entries(entries, seed=split_seed)
    command = "cryomap pairs " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else None
    out = build_pairs(output, entries, splits, pairs_per_molecule=pairs_per_molecule, seed=seed,
                      ranges=SettingRanges(box=box), n_stack=n_stack, workers=workers, command=command)
    c = PairCache.load(out).data
    summary(f"pairs in {out}: {len(c['molecules'])} molecules ({len(c['skipped'])} too large), "
            f"{c['counts']['train']} train / {c['counts']['val']} val / {c['counts']['test']} test pairs")


@pairs_app.command("show")
def show(pairs_dir: Path = typer.Argument(..., metavar="PAIRS_DIR", help="A folder written by `cryomap pairs build`.")) -> None:
    """Print the molecules of each split and the ranges the pairs were drawn from."""
    from cryomap.datasets.pairs import PairCache

    c = PairCache.load(pairs_dir)
    d = c.data
    typer.echo(f"{pairs_dir}: box {c.box}, ranges {d['ranges']}, seed {d['seed']}; command: {d.get('command')}")
    for split in ("train", "val", "test"):
        mols = c.molecules(split)
        mass = sorted(m["mass_kDa"] for m in mols)
        med = mass[len(mass) // 2] if mass else 0
        typer.echo(f"{split:<6} {len(mols):>4} molecules, {d['counts'][split]:>5} pairs, median {med:.0f} kDa "
                   f"(max {mass[-1] if mass else 0:.0f}); {', '.join(m['name'] for m in mols[:12])}{' …' if len(mols) > 12 else ''}")


def register(app: typer.Typer) -> None:
    app.add_typer(pairs_app, name="pairs")

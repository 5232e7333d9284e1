"""``cryomap select``: a diverse subset of particles (embeddings → k-means → spread over clusters)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("select")
    def select(
        inp: Path = typer.Argument(..., metavar="IN", help="Particles: a RELION STAR, a bare .mrcs stack or a cryoSPARC .cs file."),
        n: int = typer.Option(..., "-n", help="Number of particles to select (1 … number in IN)."),
        out: Path = typer.Option(..., "-o", "--out", help="Output STAR: the selected rows, naming the original stacks, with rlnCryomapCluster (1-based)."),
        embedding: str = typer.Option("pca", "--embedding", help="pca (default), resnet152 (needs --weights: a torchvision resnet152 state dict) or encoder (needs --weights: the `cryomap encode` encoder)."),
        weights: Path = typer.Option(None, "--weights", help="Weights file for resnet152 (.pth via torch.load(weights_only=True), or .safetensors) or encoder."),
        clusters: int = typer.Option(None, "--clusters", help="k-means clusters K. Default min(20, n, particles)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the PCA sample, k-means and the random within-cluster draw."),
        within: str = typer.Option("nearest", "--within", help="Particles taken in a cluster: 'nearest' the centre (default) or 'random' (seeded)."),
        dims: int = typer.Option(32, "--dims", help="PCA dimensions."),
        pca_size: int = typer.Option(32, "--pca-size", help="Box (px) images are Fourier-downsampled to before PCA (never up-sampled)."),
        resnet_size: int = typer.Option(224, "--resnet-size", help="ResNet input side (px, ≥ 32); images are Fourier-resized to it."),
        embedding_out: Path = typer.Option(None, "--embedding-out", help="Also write every particle's embedding (N × d float32, input row order) to this .npy."),
        apix: float = typer.Option(None, "--apix", help="Pixel size in Å/px for a bare stack whose header has none."),
        device: str = typer.Option("auto", "--device", help="Torch device for resnet152: auto (a GPU when there is one), cpu or cuda."),
        force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    ) -> None:
        """Select N particles spread over k-means clusters of their embeddings; write a subset STAR."""
        from cryomap.errors import BadInputError
        from cryomap.progress import summary
        from cryomap.select.run import select_particles

        from cryomap.io.atomic import check_output

        check_output(out, force, inputs=[inp, weights], kind="file")
        if embedding_out is not None:
            check_output(embedding_out, force, inputs=[inp, weights, out], kind="file", option="--embedding-out")
        if within not in ("nearest", "random"):
            raise BadInputError(f"unknown --within {within!r}; choose nearest or random")
        size = {"pca": pca_size, "resnet152": resnet_size}.get(embedding)
        result = select_particles(inp, n, out, method=embedding, weights=weights, clusters=clusters, seed=seed,
                                  within=within, dims=dims, size=size, embedding_out=embedding_out, apix=apix,
                                  device=device, force=force)  # type: ignore[arg-type]
        summary(result.summary_line())

"""``select_particles``: open particles, embed them, cluster, pick a diverse subset, write a subset STAR.

The STAR names the original stacks (no images are copied:
:func:`cryomap.particles.writer.write_subset_star`) and adds ``rlnCryomapCluster`` (1-based, 1 the
largest cluster). Everything is checked before any work, and outputs are atomic: a failed run
writes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryomap.errors import BadInputError
from cryomap.select.embed import check_method, embed
from cryomap.select.subset import Selection, Within, select_diverse

CLUSTER_COLUMN = "rlnCryomapCluster"


@dataclass
class SelectResult:
    """What :func:`select_particles` did."""

    star_path: Path
    n_total: int
    selection: Selection
    method: str
    dims: int
    embedding_path: Path | None
    seconds: float

    def summary_line(self) -> str:
        s = self.selection
        taken = s.quotas[s.quotas > 0]
        lo, hi = int(taken.min()), int(taken.max())
        each = f"{lo} taken from each" if lo == hi else f"{lo}–{hi} taken from each"
        if len(taken) < s.n_clusters:
            each = each.replace("from each", f"from {len(taken)} of them")
        sizes = f"{int(s.sizes.min()):,}" if s.sizes.min() == s.sizes.max() else f"{int(s.sizes.min()):,}–{int(s.sizes.max()):,}"
        extra = f", embeddings → {self.embedding_path}" if self.embedding_path else ""
        return (f"selected {len(s.rows):,} of {self.n_total:,} particles from {s.n_clusters} clusters "
                f"({self.method}, {self.dims} dims; clusters of {sizes} particles, {each}; {self.seconds:.1f} s) "
                f"→ {self.star_path}{extra}")


def select_particles(
    inp: str | Path,
    n: int,
    out: str | Path,
    *,
    method: str = "pca",
    weights: str | Path | None = None,
    clusters: int | None = None,
    seed: int = 0,
    within: Within = "nearest",
    dims: int = 32,
    size: int | None = None,
    embedding_out: str | Path | None = None,
    apix: float | None = None,
    device: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> SelectResult:
    """Write ``out`` (a STAR) with ``n`` particles of ``inp`` (STAR/.mrcs/.cs) spread over k-means clusters.

    ``method``/``weights``/``dims``/``size``: see :func:`cryomap.select.embed.embed`;
    ``clusters``/``seed``/``within``: see :func:`cryomap.select.subset.select_diverse`.
    ``embedding_out`` (``.npy``) receives the (N, d) float32 embedding of every input particle,
    row i for input row i.
    """
    from cryomap.io.atomic import atomic_path, check_writable
    from cryomap.particles.source import open_particles
    from cryomap.particles.writer import write_subset_star

    t0 = time.perf_counter()
    out = Path(out)
    check_method(method, weights)
    if out.suffix.lower() != ".star":
        raise BadInputError("the output must be a .star file", out)
    check_writable(out, force)
    emb_path = None if embedding_out is None else Path(embedding_out)
    if emb_path is not None:
        if emb_path.suffix.lower() != ".npy":
            raise BadInputError("--embedding-out must be a .npy file", emb_path)
        check_writable(emb_path, force)
    if n < 1:
        raise BadInputError(f"-n must be at least 1, got {n}")
    source = open_particles(inp, apix=apix)
    if n > len(source):
        raise BadInputError(f"cannot select {n:,} particles: the file holds {len(source):,}", source.path)
    if clusters is not None and not 1 <= clusters <= len(source):
        raise BadInputError(f"--clusters must be between 1 and the number of particles ({len(source):,}), "
                            f"got {clusters}", source.path)
    vectors = embed(source, method, weights=weights, dims=dims, size=size, seed=seed, device=device,
                    progress=progress)
    selection = select_diverse(vectors, n, clusters=clusters, seed=seed, within=within)
    chosen = source.subset(selection.rows)
    if emb_path is not None:
        with atomic_path(emb_path, force=force) as tmp:
            np.save(tmp, vectors)
            write_subset_star(chosen, out, force=force, columns={CLUSTER_COLUMN: selection.clusters + 1})
    else:
        write_subset_star(chosen, out, force=force, columns={CLUSTER_COLUMN: selection.clusters + 1})
    return SelectResult(out, len(source), selection, method, int(vectors.shape[1]), emb_path,
                        time.perf_counter() - t0)

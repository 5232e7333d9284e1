"""A diverse subset of particles: k-means on their embeddings, then ``n`` particles spread over the clusters.

The rule (:func:`select_diverse`):

1. **Clusters.** scikit-learn ``KMeans`` (k-means++ start, 4 seeded restarts) on the (N, d)
   embeddings; above :data:`MINIBATCH_ABOVE` particles ``MiniBatchKMeans`` (batches of 4096,
   3 seeded restarts), whose memory and time stay modest for millions of particles. Default
   ``K = min(20, n, N)`` (:func:`default_clusters`): no more clusters than particles to pick, so
   every cluster can be represented.
2. **Quotas** (:func:`allocate`): an equal share of ``n`` per cluster, capped by the cluster's
   size; what a small cluster cannot take is shared equally among the others, again capped
   ("water filling"); the last ``r < K`` particles that do not divide evenly go one each to the
   clusters with the most particles left (ties to the lower cluster number). Every cluster gets
   ``⌊n/K⌋`` or ``⌈n/K⌉`` particles unless it is smaller than that.
3. **Within a cluster** (``within``): ``"nearest"`` (default) takes the particles nearest the
   cluster centre (Euclidean distance in the embedding, ties to the lower row) — the most typical
   members, which in a PCA embedding are also those least displaced by noise; ``"random"`` a
   seeded uniform draw, which keeps the cluster's spread.

The selected rows are returned in ascending order (the input's order); clusters are numbered
by decreasing size (0 the largest), and written 1-based as ``rlnCryomapCluster``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from cryomap.errors import BadInputError

Within = Literal["nearest", "random"]
#: Default upper bound on the number of clusters.
DEFAULT_MAX_CLUSTERS = 20
#: Above this many particles k-means runs as MiniBatchKMeans.
MINIBATCH_ABOVE = 50_000


@dataclass(frozen=True)
class Selection:
    """Result of :func:`select_diverse`.

    ``rows`` (n,) selected 0-based rows, ascending; ``clusters`` (n,) their 0-based clusters;
    ``labels`` (N,) the cluster of every particle; ``sizes`` (K,) particles per cluster;
    ``quotas`` (K,) particles taken from each cluster; ``centres`` (K, d) cluster centres.
    """

    rows: np.ndarray
    clusters: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray
    quotas: np.ndarray
    centres: np.ndarray

    @property
    def n_clusters(self) -> int:
        return len(self.sizes)


def default_clusters(n_select: int, n_total: int, max_clusters: int = DEFAULT_MAX_CLUSTERS) -> int:
    """The default K: ``min(max_clusters, n_select, n_total)``, at least 1."""
    return max(1, min(int(max_clusters), int(n_select), int(n_total)))


def cluster_embeddings(vectors: np.ndarray, k: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means labels (N,) int64 and centres (K, d) float64, clusters renumbered by decreasing size.

    KMeans for up to :data:`MINIBATCH_ABOVE` rows, MiniBatchKMeans above (both scikit-learn, seeded).
    """
    x = np.asarray(vectors, dtype=np.float64)
    n = len(x)
    if k < 1 or k > n:
        raise ValueError(f"k must be in 1..{n}, got {k}")
    if k == 1:
        return np.zeros(n, np.int64), x.mean(axis=0, keepdims=True)
    if n > MINIBATCH_ABOVE:
        from sklearn.cluster import MiniBatchKMeans

        km = MiniBatchKMeans(n_clusters=k, batch_size=4096, n_init=3, random_state=seed).fit(x)
    else:
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x)
    labels = np.asarray(km.labels_, np.int64)
    centres = np.asarray(km.cluster_centers_, np.float64)
    counts = np.bincount(labels, minlength=k)
    order = np.lexsort((np.arange(k), -counts))  # largest first, ties by k-means' own number
    new = np.empty(k, np.int64)
    new[order] = np.arange(k)
    return new[labels], centres[order]


def allocate(sizes: np.ndarray, n: int) -> np.ndarray:
    """Particles to take from each cluster: equal shares capped by cluster size (water filling).

    ``sizes`` (K,) cluster sizes; returns quotas (K,) with ``quotas ≤ sizes`` and ``sum = n``
    (``n ≤ sum(sizes)``). The remainder that does not divide evenly goes one each to the clusters
    with the most particles left, ties to the lower index.
    """
    sizes = np.asarray(sizes, np.int64)
    if n < 0 or n > sizes.sum():
        raise ValueError(f"cannot take {n} particles from clusters holding {int(sizes.sum())}")
    quotas = np.zeros_like(sizes)
    left = int(n)
    while left > 0:
        room = sizes - quotas
        open_ = np.flatnonzero(room > 0)
        share = left // len(open_)
        if share == 0:
            # fewer particles left than open clusters: one each to those with the most room
            pick = open_[np.lexsort((open_, -room[open_]))][:left]
            quotas[pick] += 1
            break
        give = np.minimum(room[open_], share)
        quotas[open_] += give
        left -= int(give.sum())
    return quotas


def select_diverse(
    vectors: np.ndarray,
    n: int,
    *,
    clusters: int | None = None,
    seed: int = 0,
    within: Within = "nearest",
) -> Selection:
    """Pick ``n`` of the N embedded particles spread over ``clusters`` k-means clusters (see the module notes).

    ``vectors`` (N, d) embeddings; ``clusters`` K (default :func:`default_clusters`); ``seed``
    seeds k-means and the ``"random"`` draw.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, d), got shape {x.shape}")
    total = len(x)
    if n < 1:
        raise BadInputError(f"-n must be at least 1, got {n}")
    if n > total:
        raise BadInputError(f"cannot select {n:,} particles from {total:,}")
    k = default_clusters(n, total) if clusters is None else int(clusters)
    if k < 1 or k > total:
        raise BadInputError(f"--clusters must be between 1 and the number of particles ({total:,}), got {k}")
    if within not in ("nearest", "random"):
        raise BadInputError(f"unknown within-cluster rule {within!r}; choose nearest or random")
    labels, centres = cluster_embeddings(x, k, seed=seed)
    sizes = np.bincount(labels, minlength=k)
    quotas = allocate(sizes, n)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        q = int(quotas[c])
        if q == 0:
            continue
        if within == "nearest":
            dist = np.sum((x[members] - centres[c]) ** 2, axis=1)
            chosen.append(members[np.argsort(dist, kind="stable")[:q]])
        else:
            chosen.append(rng.choice(members, size=q, replace=False))
    rows = np.sort(np.concatenate(chosen))
    return Selection(rows=rows, clusters=labels[rows], labels=labels, sizes=sizes, quotas=quotas, centres=centres)

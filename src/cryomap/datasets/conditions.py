"""The condition tensor (C, D, D, D) the network sees, in every input mode of the report.

All image modes give C = 1: images are resized to D×D by Fourier crop/pad and standardised
per image (:mod:`cryomap.datasets.images`), then stacked along the first spatial axis (depth).

``stack``
    ``n_images`` (default D) particle images drawn at random from the pool — without
    replacement when the pool holds enough, else with replacement — and tiled cyclically along
    depth when ``n_images < D`` (slice ``k`` holds image ``k mod n``).
``classes-ordered``
    The top-k class averages (``n_images``, default 20, at most as many as given; the file lists
    them best-ranked first) in rank order, tiled cyclically to D slices.
``classes-shuffled``
    The same top-k, in random order: independent random permutations of the k classes are
    concatenated until D slices are filled (each class appears ⌊D/k⌋ or ⌈D/k⌉ times).
``class-repeated``
    The best-ranked class average repeated on all D slices (DISPR-style repetition);
    deterministic, no randomness.
``latents``
    Per-particle latent vectors (n, L): each latent dimension is standardised over the pool, the
    pool's particles are taken in a random order, their vectors concatenated and reshaped in C
    order to D×D×D (for D = 128 and L = 8: 262,144 particles). With too few particles
    (``n·L < D³``) ``latent_fill="tile"`` repeats the same shuffled sequence cyclically and
    ``"zero"`` pads with zeros (the standardised mean). With more, the first ``⌈D³/L⌉`` of the
    random order are used.
"""

from __future__ import annotations

import numpy as np

from cryomap.datasets.images import prepare_images, read_indexed

MODES = ("stack", "classes-shuffled", "classes-ordered", "class-repeated", "latents")

#: Top-k class averages used by the class modes when ``n_images`` is not given (the report's 20).
DEFAULT_TOP_K = 20


def _pool_indices(n_total: int, pool: np.ndarray | None) -> np.ndarray:
    idx = np.arange(n_total) if pool is None else np.asarray(pool, dtype=np.int64)
    if idx.size == 0:
        raise ValueError("no particles to draw from (empty pool)")
    return idx


def _tile_depth(images: np.ndarray, order: np.ndarray, depth: int) -> np.ndarray:
    """(depth, D, D) with slice k = images[order[k mod len(order)]]."""
    return images[order[np.arange(depth) % len(order)]]


def draw_stack_indices(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices from ``pool``: without replacement if it is large enough, else with."""
    return rng.choice(pool, size=n, replace=len(pool) < n)


def pack_latents(latents: np.ndarray, depth: int, fill: str = "tile") -> np.ndarray:
    """Concatenate latent vectors (n, L) in the given order and reshape to (depth,)*3 (C order)."""
    flat = np.asarray(latents, dtype=np.float32).reshape(-1)
    total = depth**3
    if flat.size >= total:
        flat = flat[:total]
    elif fill == "tile":
        flat = np.resize(flat, total)  # np.resize repeats the sequence cyclically
    elif fill == "zero":
        flat = np.concatenate([flat, np.zeros(total - flat.size, np.float32)])
    else:
        raise ValueError(f"latent_fill must be 'tile' or 'zero', got {fill!r}")
    return flat.reshape(depth, depth, depth)


def standardize_latents(latents: np.ndarray) -> np.ndarray:
    """Each latent dimension minus its mean over the rows, divided by its standard deviation."""
    lat = np.asarray(latents, dtype=np.float64)
    std = lat.std(axis=0)
    std[std == 0] = 1.0
    return ((lat - lat.mean(axis=0)) / std).astype(np.float32)


def build_condition(
    images: np.ndarray | None,
    mode: str,
    depth: int,
    rng: np.random.Generator | None,
    class_averages: np.ndarray | None = None,
    latents: np.ndarray | None = None,
    n_images: int | None = None,
    *,
    pool: np.ndarray | None = None,
    latent_fill: str = "tile",
) -> np.ndarray:
    """One condition tensor (1, depth, depth, depth) float32 in ``mode`` (see the module docstring).

    ``images`` (n, h, w) is the particle stack (a memmap or lazy stack is fine: only the drawn
    rows are read); ``pool`` restricts the draw to those row indices (a split's particle subset;
    it also selects the rows of ``latents``). ``class_averages`` (k, h, w) are ranked best first.
    ``rng`` drives every random choice, so equal seeds give equal conditions.
    """
    if mode not in MODES:
        raise ValueError(f"unknown condition mode {mode!r}; choose one of {MODES}")
    if depth < 1:
        raise ValueError(f"depth must be positive, got {depth}")
    if mode == "stack":
        if images is None:
            raise ValueError("mode stack needs particle images")
        n = depth if n_images is None else int(n_images)
        if not 1 <= n <= depth:
            raise ValueError(f"stack mode stacks 1 to D = {depth} images, got {n}")
        if rng is None:
            raise ValueError("mode stack draws at random: give rng")
        idx = draw_stack_indices(_pool_indices(len(images), pool), n, rng)
        prepared = prepare_images(read_indexed(images, idx), depth)
        out = prepared if n == depth else _tile_depth(prepared, np.arange(n), depth)
    elif mode in ("classes-shuffled", "classes-ordered", "class-repeated"):
        if class_averages is None or len(class_averages) == 0:
            raise ValueError(f"mode {mode} needs class averages")
        k = min(DEFAULT_TOP_K if n_images is None else int(n_images), len(class_averages))
        if mode == "class-repeated":
            k = 1
        top = prepare_images(np.asarray(class_averages[:k]), depth)
        if mode == "classes-shuffled":
            if rng is None:
                raise ValueError("mode classes-shuffled draws at random: give rng")
            reps = -(-depth // k)
            order = np.concatenate([rng.permutation(k) for _ in range(reps)])[:depth]
        else:
            order = np.arange(k)
        out = _tile_depth(top, order, depth)
    else:  # latents
        if latents is None:
            raise ValueError("mode latents needs per-particle latents (n, L)")
        lat = np.asarray(latents)
        if lat.ndim != 2:
            raise ValueError(f"latents must be (n_particles, L), got shape {lat.shape}")
        idx = _pool_indices(len(lat), pool)
        lat = standardize_latents(lat[idx])
        if rng is not None:
            lat = lat[rng.permutation(len(lat))]
        out = pack_latents(lat, depth, latent_fill)
    return np.ascontiguousarray(out, dtype=np.float32)[None]

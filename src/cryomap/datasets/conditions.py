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

One physics mode gives C = 2 (:mod:`cryomap.datasets.physics` makes the training pairs):

``halfmaps``
    The two half-map reconstructions of the particles (gold-standard half sets, CTF-corrected,
    Wiener-filtered), resampled to the label grid (:func:`halfmaps_on_grid`), as two channels,
    normalised together (:func:`normalise_halfmaps`): minus the mean of their average and divided
    by the *signal* amplitude, the square root of the two halves' covariance inside the box's
    inscribed sphere (their noise is independent, so the covariance estimates the signal
    variance whatever the noise level). A map with twice the particles keeps its scale; only
    its noise shrinks. Deterministic.
"""

from __future__ import annotations

import numpy as np

from cryomap.datasets.images import prepare_images, read_indexed

MODES = ("stack", "classes-shuffled", "classes-ordered", "class-repeated", "latents", "halfmaps")

#: Condition channels per mode.
CHANNELS = {mode: 2 if mode == "halfmaps" else 1 for mode in MODES}

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


def sphere_mask(box: int, radius: float | None = None) -> np.ndarray:
    """Boolean (box, box, box): voxels within ``radius`` (default box/2) of the centre voxel box//2."""
    ax = np.arange(box) - box // 2
    r2 = ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2
    return r2 <= (box / 2.0 if radius is None else float(radius)) ** 2


def normalise_halfmaps(half1: np.ndarray, half2: np.ndarray) -> np.ndarray:
    """The ``halfmaps`` condition (2, D, D, D) float32 of two half maps on the same grid (module docstring).

    Scale: ``s = sqrt(max(cov(h1, h2), 0.05 · (var h1 + var h2) / 2))`` inside the inscribed
    sphere — the signal amplitude, floored so that half maps with almost no common signal are
    not blown up.
    """
    a = np.asarray(half1, np.float64)
    b = np.asarray(half2, np.float64)
    if a.shape != b.shape or a.ndim != 3 or len(set(a.shape)) != 1:
        raise ValueError(f"half maps must be cubes of one shape, got {a.shape} and {b.shape}")
    inside = sphere_mask(a.shape[0])
    mu = 0.5 * (a[inside].mean() + b[inside].mean())
    da, db = a[inside] - a[inside].mean(), b[inside] - b[inside].mean()
    cov = float((da * db).mean())
    floor = 0.05 * 0.5 * float(da.var() + db.var())
    scale = np.sqrt(max(cov, floor, 1e-30))
    return np.stack([(a - mu) / scale, (b - mu) / scale]).astype(np.float32)


def halfmaps_on_grid(half1: np.ndarray, half2: np.ndarray, apix_in: float, apix_out: float, box_out: int) -> np.ndarray:
    """Half maps (box, Å/voxel ``apix_in``) Fourier-resampled to ``apix_out`` and centre-cropped/zero-padded to ``box_out``³.

    Returns the two maps stacked (2, box_out³), not normalised. Centres (voxel box//2) coincide.
    """
    from cryomap.labels.resample import resample_map

    out = []
    for h in (half1, half2):
        h = np.asarray(h, np.float32)
        v = h if np.isclose(apix_in, apix_out, rtol=1e-6) else resample_map(h, apix_in, apix_out)
        out.append(centre_fit(v, box_out))
    return np.stack(out)


def centre_fit(volume: np.ndarray, box: int) -> np.ndarray:
    """``volume`` centre-cropped or zero-padded to ``box``³ (voxel n//2 onto voxel box//2)."""
    v = np.asarray(volume, np.float32)
    n = v.shape[0]
    if n == box:
        return v.copy()
    out = np.zeros((box, box, box), np.float32)
    src0, dst0 = max(0, n // 2 - box // 2), max(0, box // 2 - n // 2)
    m = min(n - src0, box - dst0)
    out[dst0:dst0 + m, dst0:dst0 + m, dst0:dst0 + m] = v[src0:src0 + m, src0:src0 + m, src0:src0 + m]
    return out


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
    half_maps: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """One condition tensor (C, depth, depth, depth) float32 in ``mode`` (see the module docstring).

    C is 1, or 2 for ``halfmaps``, whose ``half_maps`` must already lie on the depth³ label grid
    (:func:`halfmaps_on_grid`); the other arguments are ignored in that mode.

    ``images`` (n, h, w) is the particle stack (a memmap or lazy stack is fine: only the drawn
    rows are read); ``pool`` restricts the draw to those row indices (a split's particle subset;
    it also selects the rows of ``latents``). ``class_averages`` (k, h, w) are ranked best first.
    ``rng`` drives every random choice, so equal seeds give equal conditions.
    """
    if mode not in MODES:
        raise ValueError(f"unknown condition mode {mode!r}; choose one of {MODES}")
    if depth < 1:
        raise ValueError(f"depth must be positive, got {depth}")
    if mode == "halfmaps":
        if half_maps is None:
            raise ValueError("mode halfmaps needs the two half maps (a reconstruction of the particles)")
        h1, h2 = half_maps
        if np.shape(h1) != (depth,) * 3:
            raise ValueError(f"half maps must lie on the {depth}³ label grid, got {np.shape(h1)} (use halfmaps_on_grid)")
        return normalise_halfmaps(h1, h2)
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

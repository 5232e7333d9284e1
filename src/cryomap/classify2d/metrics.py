"""Scores of a 2D classification against known views: purity, class-average correlation, the ceiling.

* **purity**: the fraction of particles whose class's majority view is their own view
  (Σ over classes of the largest view count ÷ N).
* **class-average correlation**: each class average against the clean projection of its majority
  view, after the best in-plane rotation and shift (Pearson correlation inside the mask).
* **ceiling**: the purity of assigning every particle to the known clean views with the same
  rotation × translation search and CTF model (one E-step against the truth) — what the
  classification could reach with perfect class averages.
"""

from __future__ import annotations

import numpy as np
import torch


def purity(classes: np.ndarray, truth: np.ndarray) -> float:
    """Σ_class max_view |class ∩ view| ÷ N."""
    classes, truth = np.asarray(classes), np.asarray(truth)
    total = 0
    for c in np.unique(classes):
        total += np.bincount(truth[classes == c]).max()
    return float(total / len(classes))


def majority_views(classes: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """The majority view of each class 0..k-1 (−1 for an empty class)."""
    out = np.full(k, -1)
    for c in range(k):
        sel = truth[classes == c]
        if len(sel):
            out[c] = int(np.bincount(sel).argmax())
    return out


def aligned_correlation(image: np.ndarray, reference: np.ndarray, *, psi_step_deg: float = 2.0,
                        max_shift_px: float = 4.0, mask_radius_px: float | None = None) -> float:
    """Best Pearson correlation of ``image`` with ``reference`` (both (D, D)) over in-plane rotations and shifts.

    Rotations of the reference on a ``psi_step_deg`` grid (bicubic, about pixel D//2), integer
    shifts up to ``max_shift_px`` found by FFT cross-correlation, correlation inside a circle of
    ``mask_radius_px`` (default 0.45 D).
    """
    d = image.shape[-1]
    r = 0.45 * d if mask_radius_px is None else mask_radius_px
    c = d // 2
    yy, xx = np.mgrid[:d, :d]
    mask = torch.as_tensor(((xx - c) ** 2 + (yy - c) ** 2 <= r * r).astype(np.float32))
    angles = np.arange(0.0, 360.0, psi_step_deg)
    ref = torch.as_tensor(np.asarray(reference, np.float32))[None, None].expand(len(angles), 1, d, d)
    th = torch.as_tensor(np.radians(angles), dtype=torch.float32)
    cos, sin = torch.cos(th), torch.sin(th)
    # affine_grid maps output → input coordinates; rotating the reference by +θ samples it at R(−θ) x
    theta = torch.stack([torch.stack([cos, sin, torch.zeros_like(cos)], -1),
                         torch.stack([-sin, cos, torch.zeros_like(cos)], -1)], 1)
    grid = torch.nn.functional.affine_grid(theta, (len(angles), 1, d, d), align_corners=False)
    rotated = torch.nn.functional.grid_sample(ref, grid, mode="bicubic", align_corners=False)[:, 0]
    img = torch.as_tensor(np.asarray(image, np.float32))
    # correlation at every shift: normalise with masked statistics of the shifted image window
    best = -1.0
    n_shift = int(np.floor(max_shift_px))
    for dy in range(-n_shift, n_shift + 1):
        for dx in range(-n_shift, n_shift + 1):
            if dx * dx + dy * dy > max_shift_px**2:
                continue
            a = torch.roll(img, shifts=(dy, dx), dims=(0, 1))[mask > 0]
            b = rotated[:, mask > 0]
            a = a - a.mean()
            b = b - b.mean(dim=1, keepdim=True)
            cc = (b @ a) / (torch.linalg.norm(b, dim=1) * torch.linalg.norm(a) + 1e-12)
            best = max(best, float(cc.max()))
    return best


def class_correlations(averages: np.ndarray, classes: np.ndarray, truth: np.ndarray, clean: np.ndarray,
                       **kw) -> np.ndarray:
    """:func:`aligned_correlation` of every non-empty class average with its majority view's clean projection."""
    k = len(averages)
    views = majority_views(classes, truth, k)
    out = np.full(k, np.nan)
    for c in range(k):
        if views[c] >= 0:
            out[c] = aligned_correlation(averages[c], clean[views[c]], **kw)
    return out


def ceiling_assignments(source, clean: np.ndarray, params) -> np.ndarray:
    """Each particle's best-fitting known view (N,) with classify's own search and CTF model.

    ``clean`` (n_views, D, D) are the views' projections; ``params`` a
    :class:`~cryomap.classify2d.em.Classify2DParams` (the same psi step, offsets, mask, CTF mode
    and working box). The projections' scale is fitted to the particles by least squares at the
    best poses of a first pass, whose residuals also give the noise spectrum; the second pass
    assigns. ``purity(ceiling_assignments(...), truth)`` is the ceiling of a classification.
    """
    from cryomap.classify2d.em import _check, _Data, _make_aligner
    from cryomap.core.fourier import resize_images

    mask_A = _check(source, params)
    al = _make_aligner(source, params, mask_A)
    data = _Data(source, al.box, params.ctf, params.chunk, params.cache_mb)
    refs_img = torch.as_tensor(resize_images(np.asarray(clean, np.float32), al.box))
    k, g = len(clean), al.grid
    log_pi = torch.full((k,), -float(np.log(k)), dtype=torch.float32)
    rows = np.arange(len(source))
    with torch.no_grad():
        power = sum(b.power.sum(0).double() for b in data.batches(rows, al))
        sigma2 = (power / (len(rows) * g.n_theta)).float()
        scale = 1.0
        for _ in range(2):
            refs = al.references(refs_img * scale)
            num = den = 0.0
            resid = torch.zeros(g.n_rho, dtype=torch.float64)
            labels = []
            for batch in data.batches(rows, al):
                e = al.expectation(batch, refs, sigma2, log_pi)
                ci, ki, ji, _, _ = e.map_pose()
                cross, norm = al.map_terms(e.pm, e.wm, refs, sigma2, ci, ki, ji)
                w = g.sample_weight[None] / sigma2[None]
                num += float((cross * w).sum())
                den += float((norm * w).sum())
                resid += (batch.power - 2 * cross + norm).sum(0).double()
                labels.append(ki.numpy())
            sigma2 = (resid / (len(rows) * g.n_theta)).float().clamp_min(1e-12)
            scale *= num / den if den > 0 else 1.0
    return np.concatenate(labels)

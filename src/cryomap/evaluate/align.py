"""Global alignment of a map onto a reference: rotation, translation and hand.

A map reconstructed or predicted from unposed particles is defined only up to a rotation, a
translation and the hand (mirror). :func:`align_maps` searches all three exhaustively:

1. both maps are z-scored, Fourier-cropped (torch-fourier-rescale) to ``coarse_box`` voxels for
   the global search and ``search_box`` voxels for refinement, and low-passed, so the search
   cost does not depend on the map size;
2. a uniform SO(3) grid (``torch_so3.get_uniform_euler_angles``, ZYZ, ``coarse_step_deg``) is
   applied to the moving map and to its mirror image; for every rotation the best translation
   comes from one FFT cross-correlation (all translations at once);
3. the best few candidates of each hand are refined on finer local grids of rotation vectors
   (the step halves each round), the hand with the higher score wins;
4. the rotation is applied at full size and the translation re-measured there (FFT
   cross-correlation with a parabolic sub-voxel peak).

Conventions: coordinates are (x, y, z) voxels about the box centre ``D // 2``; the transformed
map is ``out(r) = in(R^T r - ...)``, i.e. :func:`transform_map` rotates the content by ``R``
and then shifts it by ``shift_px`` (x, y, z voxels). The hand flip mirrors z (``vol[::-1]``)
before rotating.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation


@dataclass
class Alignment:
    """Result of :func:`align_maps` (apply with :func:`apply_alignment`)."""

    rotation: np.ndarray  # (3, 3) acting on (x, y, z)
    shift_px: np.ndarray  # (x, y, z) voxels at full size
    flipped: bool
    score: float  # normalised cross-correlation at the search size, chosen hand
    score_other_hand: float
    search_box: int

    @property
    def angle_deg(self) -> float:
        """Rotation angle of ``rotation`` in degrees."""
        return float(np.degrees(Rotation.from_matrix(self.rotation).magnitude()))

    def to_dict(self) -> dict:
        """JSON-friendly summary."""
        import warnings

        with warnings.catch_warnings():  # scipy warns at tilt 0 or 180° (gimbal lock); the angles still give the same rotation
            warnings.simplefilter("ignore", UserWarning)
            zyz = Rotation.from_matrix(self.rotation).as_euler("ZYZ", degrees=True)
        return {
            "rotation_matrix_xyz": np.round(self.rotation, 6).tolist(),
            "rotation_angle_deg": round(self.angle_deg, 3),
            "rotation_euler_zyz_deg": np.round(zyz, 3).tolist(),
            "shift_px_xyz": np.round(self.shift_px, 3).tolist(),
            "hand_flipped": bool(self.flipped),
            "score": round(self.score, 5),
            "score_other_hand": round(self.score_other_hand, 5),
            "search_box": self.search_box,
        }


def _centered_coords(box: int) -> torch.Tensor:
    """(box³, 3) voxel coordinates (x, y, z) relative to ``box // 2``, in (z, y, x) raster order."""
    ax = torch.arange(box, dtype=torch.float32) - box // 2
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    return torch.stack([x, y, z], dim=-1).reshape(-1, 3)


def rotate_batch(volume: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate one cubic ``volume`` (D, D, D) by each of ``rotations`` (B, 3, 3): (B, D, D, D).

    Trilinear interpolation (``grid_sample``) about voxel ``D // 2``; outside is 0.
    """
    box = volume.shape[-1]
    coords = _centered_coords(box)  # (N, 3)
    # out(r) = in(R^T r): as row vectors r @ R
    src = torch.einsum("nj,bjk->bnk", coords, rotations.to(torch.float32)) + box // 2
    grid = (2.0 * src / (box - 1) - 1.0).reshape(-1, box, box, box, 3)
    inp = volume[None, None].expand(grid.shape[0], 1, box, box, box)
    return F.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]


def _mirror(volume: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(volume[::-1])


def transform_map(volume: np.ndarray, rotation: np.ndarray, shift_px=(0.0, 0.0, 0.0), flipped: bool = False) -> np.ndarray:
    """Mirror (z) if ``flipped``, rotate by ``rotation`` about ``D // 2``, then shift by ``shift_px`` (x, y, z)."""
    from scipy.ndimage import fourier_shift

    vol = np.asarray(volume, dtype=np.float32)
    if flipped:
        vol = _mirror(vol)
    out = rotate_batch(torch.from_numpy(vol), torch.as_tensor(rotation, dtype=torch.float32)[None])[0].numpy()
    sx, sy, sz = (float(s) for s in shift_px)
    if sx or sy or sz:
        out = np.fft.ifftn(fourier_shift(np.fft.fftn(out), (sz, sy, sx))).real.astype(np.float32)
    return out


def apply_alignment(volume: np.ndarray, alignment: Alignment) -> np.ndarray:
    """``volume`` moved onto the reference found by :func:`align_maps`."""
    return transform_map(volume, alignment.rotation, alignment.shift_px, alignment.flipped)


def _prepare(volume: np.ndarray, box: int, lowpass_frac: float) -> torch.Tensor:
    """z-score, Fourier-crop to ``box`` and low-pass to ``lowpass_frac`` of the new Nyquist."""
    from torch_fourier_rescale import fourier_rescale_3d

    t = torch.as_tensor(np.asarray(volume, dtype=np.float32))
    t = (t - t.mean()) / (t.std() + 1e-12)
    if t.shape[-1] != box:
        t, _ = fourier_rescale_3d(t, target_shape=(box, box, box))
    if lowpass_frac < 1.0:
        f = torch.fft.fftfreq(box)
        fx = torch.fft.rfftfreq(box)
        r = torch.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fx[None, None, :] ** 2)
        filt = torch.exp(-0.5 * (r / (0.5 * lowpass_frac)) ** 2)
        t = torch.fft.irfftn(torch.fft.rfftn(t) * filt, s=t.shape)
    return t.contiguous()


def _scores(moving: torch.Tensor, ref_ft: torch.Tensor, ref_norm: float, rotations: torch.Tensor, chunk: int = 128):
    """Best normalised CC over all translations for each rotation: (scores (B,), shifts (B, 3) z,y,x)."""
    box = moving.shape[-1]
    scores, shifts = [], []
    for i in range(0, rotations.shape[0], chunk):
        rot = rotate_batch(moving, rotations[i : i + chunk])
        rot = rot - rot.mean(dim=(1, 2, 3), keepdim=True)
        norms = rot.flatten(1).norm(dim=1).clamp_min(1e-12)
        cc = torch.fft.irfftn(ref_ft[None] * torch.conj(torch.fft.rfftn(rot, dim=(1, 2, 3))), s=(box,) * 3, dim=(1, 2, 3))
        best, idx = cc.flatten(1).max(dim=1)
        scores.append(best / (norms * ref_norm))
        z, rem = idx // (box * box), idx % (box * box)
        shifts.append(torch.stack([z, rem // box, rem % box], dim=1))
    return torch.cat(scores), torch.cat(shifts)


def _local_grid(step_deg: float, n: int = 2) -> np.ndarray:
    """Rotation vectors on a (2n+1)³ cube of ``step_deg`` spacing (rad), as (M, 3)."""
    ax = np.radians(np.arange(-n, n + 1) * step_deg)
    g = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    return g


def _search_hand(coarse_maps, fine_maps, coarse: np.ndarray, coarse_step: float, n_candidates: int, rounds: int):
    """Coarse grid on the small maps, then local refinement of the best candidates on the larger ones."""
    scores, _ = _scores(*coarse_maps, torch.from_numpy(coarse))
    order = torch.argsort(scores, descending=True)[:n_candidates].numpy()
    best_score, best_rot = -np.inf, np.eye(3)
    for j in order:
        rot = coarse[j].astype(np.float64)
        score = -np.inf
        step = coarse_step / 2.0
        for _ in range(rounds):
            local = Rotation.from_rotvec(_local_grid(step, 1)).as_matrix()
            cands = np.einsum("mij,jk->mik", local, rot)
            s, _ = _scores(*fine_maps, torch.from_numpy(cands.astype(np.float32)))
            k = int(torch.argmax(s))
            if float(s[k]) >= score:
                score, rot = float(s[k]), cands[k]
            step /= 2.0
        if score > best_score:
            best_score, best_rot = score, rot
    return best_score, best_rot


def _full_size_shift(moved: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Shift (x, y, z voxels) that best overlays ``moved`` on ``reference``: FFT CC + parabolic peak."""
    a = np.asarray(reference, np.float64) - reference.mean()
    b = np.asarray(moved, np.float64) - moved.mean()
    cc = np.fft.irfftn(np.fft.rfftn(a) * np.conj(np.fft.rfftn(b)), s=a.shape, axes=(0, 1, 2))
    peak = np.array(np.unravel_index(int(np.argmax(cc)), cc.shape))
    sub = np.zeros(3)
    for ax in range(3):
        idx_m, idx_p = peak.copy(), peak.copy()
        idx_m[ax] = (peak[ax] - 1) % cc.shape[ax]
        idx_p[ax] = (peak[ax] + 1) % cc.shape[ax]
        ym, y0, yp = cc[tuple(idx_m)], cc[tuple(peak)], cc[tuple(idx_p)]
        den = ym - 2 * y0 + yp
        sub[ax] = 0.5 * (ym - yp) / den if den < 0 else 0.0
    box = np.array(cc.shape)
    zyx = peak + sub
    zyx = np.where(zyx > box / 2, zyx - box, zyx)
    return zyx[::-1].copy()


def align_maps(
    moving: np.ndarray,
    reference: np.ndarray,
    search_box: int = 32,
    coarse_box: int = 20,
    coarse_step_deg: float = 20.0,
    n_candidates: int = 3,
    refine_rounds: int = 6,
    check_hand: bool = True,
) -> Alignment:
    """Find the rotation, translation and hand that best overlay ``moving`` on ``reference``.

    Both maps are cubic with the same box. The coarse grid (``coarse_step_deg``, ZYZ,
    torch-so3) runs on maps Fourier-cropped to ``coarse_box`` voxels; the best ``n_candidates``
    per hand are refined on maps cropped to ``search_box`` voxels by ``refine_rounds`` rounds of
    a 3×3×3 local grid of rotation vectors whose step halves each round, from
    ``coarse_step_deg / 2`` down to ``coarse_step_deg / 2**refine_rounds`` degrees.
    """
    import torch_so3

    moving = np.asarray(moving, np.float32)
    reference = np.asarray(reference, np.float32)
    if moving.shape != reference.shape or moving.ndim != 3 or len(set(moving.shape)) != 1:
        raise ValueError(f"align needs two cubic maps of the same box, got {moving.shape} and {reference.shape}")
    box = moving.shape[0]
    sbox = min(box, search_box)
    cbox = min(sbox, coarse_box)

    def ref_terms(b: int, lp: float):
        ref = _prepare(reference, b, lp)
        ref = ref - ref.mean()
        return torch.fft.rfftn(ref), float(ref.norm())

    ref_c, ref_f = ref_terms(cbox, 0.6), ref_terms(sbox, 0.8)
    euler = torch_so3.get_uniform_euler_angles(psi_step=coarse_step_deg, theta_step=coarse_step_deg).numpy()
    coarse = Rotation.from_euler("ZYZ", euler, degrees=True).as_matrix().astype(np.float32)

    results = {}
    hands = (False, True) if check_hand else (False,)
    for flipped in hands:
        src = _mirror(moving) if flipped else moving
        coarse_maps = (_prepare(src, cbox, 0.6), *ref_c)
        fine_maps = (_prepare(src, sbox, 0.8), *ref_f)
        results[flipped] = _search_hand(coarse_maps, fine_maps, coarse, coarse_step_deg, n_candidates, refine_rounds)
    flipped = bool(check_hand and results[True][0] > results[False][0])
    score, rot = results[flipped]
    other = results[not flipped][0] if check_hand else float("nan")
    rotated = transform_map(moving, rot, flipped=flipped)
    shift = _full_size_shift(rotated, reference)
    return Alignment(np.asarray(rot, np.float64), shift, flipped, float(score), float(other), sbox)

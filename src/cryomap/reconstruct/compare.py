"""Pose errors of estimated poses against the truth, up to the global frame, the hand and the symmetry.

An ab initio map sits in a frame of its own: if ``V_est(r) = V_true(Q·r)`` the poses obey
``A_est = A_true·Q`` (RELION matrices map volume to image coordinates), and for the mirrored
hand (z mirror ``J``) ``A_est = J·A_true·J·Q``; a symmetric particle allows ``A_true·g`` for every
group element ``g``. :func:`pose_errors` finds ``Q`` and the hand robustly (the relative rotation of
the particle that agrees with most others, then the chordal mean of the inliers) and returns each
particle's angular error in degrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    tr = np.einsum("...ij,...ij->...", a, b)
    return np.degrees(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))


def _polar(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    if np.linalg.det(u @ vt) < 0:
        u[:, -1] *= -1
    return u @ vt


@dataclass
class PoseErrors:
    """Per-particle angular error (degrees), the frame rotation ``Q``, whether the hand is mirrored."""

    degrees: np.ndarray
    frame: np.ndarray
    mirrored: bool

    @property
    def median(self) -> float:
        return float(np.median(self.degrees))


def pose_errors(est: np.ndarray, true: np.ndarray, operators: np.ndarray | None = None, *,
                candidates: int = 200, seed: int = 0) -> PoseErrors:
    """Angular errors of estimated RELION matrices ``est`` (N, 3, 3) against ``true`` (N, 3, 3)."""
    ops = np.eye(3)[None] if operators is None else np.asarray(operators)
    j = np.diag([1.0, 1.0, -1.0])
    rng = np.random.default_rng(seed)
    best = None
    for mirrored in (False, True):
        t = j @ true @ j if mirrored else true
        # candidates for Q from single particles (and each symmetry mate)
        pick = rng.choice(len(est), min(candidates, len(est)), replace=False)
        qs = np.concatenate([np.einsum("nji,njk->nik", t[pick] @ g, est[pick]) for g in ops])
        # error of every particle under each candidate Q: min over g of angle(A_true g Q, A_est)
        def errs(q):
            return np.min(np.stack([_angles(t @ g @ q, est) for g in ops]), axis=0)
        sample = rng.choice(len(est), min(500, len(est)), replace=False)
        counts = [np.sum(np.min(np.stack([_angles(t[sample] @ g @ q, est[sample]) for g in ops]), 0) < 10.0) for q in qs]
        q = qs[int(np.argmax(counts))]
        for _ in range(3):  # refine on the inliers: chordal mean of A_true g* ⁻¹... relative rotations
            e = np.stack([_angles(t @ g @ q, est) for g in ops])
            gi = np.argmin(e, 0)
            inl = e[gi, np.arange(len(est))] < 10.0
            if inl.sum() < 3:
                break
            rel = np.einsum("nji,njk->nik", t[inl] @ ops[gi[inl]], est[inl])
            q = _polar(rel.sum(0))
        d = errs(q)
        if best is None or np.median(d) < np.median(best.degrees):
            best = PoseErrors(d, q, mirrored)
    return best

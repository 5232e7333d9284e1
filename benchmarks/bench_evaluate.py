"""Evaluation speed: FSC (cryomap's hard shells) vs teamtomo's torch-fourier-shell-correlation,
the full metric set, the mask-corrected FSC, and the global alignment search.

Prints a table of medians (s) and the peak resident memory, writes bench_out/bench_evaluate.json.
"""

from __future__ import annotations

import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np


def _median_time(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _blobs(box: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = (np.mgrid[:box, :box, :box] - box // 2).astype(np.float32)
    v = np.zeros((box,) * 3, np.float32)
    for _ in range(10):
        p = rng.uniform(-box / 4, box / 4, 3)
        s = rng.uniform(box / 24, box / 12)
        v += np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * s * s)).astype(np.float32)
    return v


def main() -> None:
    import torch
    from scipy.spatial.transform import Rotation
    from torch_fourier_shell_correlation import fourier_shell_correlation

    from cryomap.evaluate.align import align_maps, transform_map
    from cryomap.evaluate.fsc import fsc, masked_fsc
    from cryomap.evaluate.mask import auto_mask
    from cryomap.evaluate.metrics import map_metrics

    torch.set_num_threads(2)
    rows = []
    for box in (64, 128):
        a = _blobs(box)
        b = a + 0.3 * np.random.default_rng(1).normal(size=a.shape).astype(np.float32)
        t_ours = _median_time(lambda: fsc(a, b, 1.0))
        ta, tb = torch.as_tensor(a), torch.as_tensor(b)
        t_peer = _median_time(lambda: fourier_shell_correlation(ta, tb))
        t_metrics = _median_time(lambda: map_metrics(b, a), repeats=1)
        mask = auto_mask(a, 1.0)
        t_masked = _median_time(lambda: masked_fsc(b, a, mask, 1.0), repeats=1)
        rows.append({"box": box, "fsc_s": t_ours, "peer_tfsc_s": t_peer, "ratio_peer_over_ours": t_peer / t_ours,
                     "all_metrics_s": t_metrics, "masked_fsc_s": t_masked})
    align_rows = []
    for box in (32, 64):
        ref = _blobs(box)
        rot = Rotation.from_euler("ZYZ", [40, 70, -110], degrees=True).as_matrix()
        moved = transform_map(ref, rot, (1.0, -2.0, 1.5))
        t0 = time.perf_counter()
        al = align_maps(moved, ref)
        dt = time.perf_counter() - t0
        err = float(np.degrees(Rotation.from_matrix(al.rotation @ rot).magnitude()))
        align_rows.append({"box": box, "align_s": dt, "angle_error_deg": err, "hand_flipped": al.flipped})
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"{'box':>5} {'FSC ours (s)':>13} {'t-f-s-c (s)':>12} {'peer/ours':>10} {'all metrics (s)':>16} {'masked FSC (s)':>15}")
    for r in rows:
        print(f"{r['box']:>5} {r['fsc_s']:>13.4f} {r['peer_tfsc_s']:>12.4f} {r['ratio_peer_over_ours']:>10.2f} "
              f"{r['all_metrics_s']:>16.3f} {r['masked_fsc_s']:>15.3f}")
    print(f"{'box':>5} {'align (s)':>10} {'angle error (°)':>16} {'flipped':>8}")
    for r in align_rows:
        print(f"{r['box']:>5} {r['align_s']:>10.2f} {r['angle_error_deg']:>16.2f} {str(r['hand_flipped']):>8}")
    print(f"peak resident memory: {peak_mb:.0f} MB")
    out = Path("bench_out")
    out.mkdir(exist_ok=True)
    (out / "bench_evaluate.json").write_text(json.dumps({"fsc": rows, "align": align_rows, "peak_rss_mb": peak_mb}, indent=2))


if __name__ == "__main__":
    main()

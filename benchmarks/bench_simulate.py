"""Simulation and reconstruction throughput (issue 3): particles/s and peak memory.

Runs each dataset size in a fresh subprocess so its peak RSS is its own. The peer for the
projector is torch-fourier-slice's one-call ``project_3d_to_2d`` (re-does the 3D FFT per batch);
the peer for the dataset is the same run at 1k particles (scaling ratio 10k/1k).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from cryomap.simulate.dataset import simulate_dataset
n, out = int(sys.argv[1]), sys.argv[2]
t = time.perf_counter()
simulate_dataset(["7PBL"], out, n_particles=n, micrograph_size=1024, apix=2.0, seed=0, force=True, progress=False)
wall = time.perf_counter() - t
print(json.dumps({"n": n, "wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _dataset_run(n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([sys.executable, "-c", CHILD, str(n), str(Path(tmp) / "sim")], capture_output=True,
                             text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
        out = json.loads(res.stdout.strip().splitlines()[-1])
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
    out["particles_per_s"] = n / out["wall_s"]
    out["disk_mb"] = size / 2**20
    return out


def _projector_vs_library(n: int = 512, box: int = 96, batch: int = 64) -> dict:
    import numpy as np
    import torch
    from torch_fourier_slice import project_3d_to_2d

    from cryomap.simulate.angles import euler_to_matrix, random_euler_angles
    from cryomap.simulate.projection import Projector
    from cryomap.simulate.structure_map import structure_to_map

    vol = structure_to_map("7PBL", 2.0, box).data
    rot, tilt, psi = random_euler_angles(n, np.random.default_rng(0))
    t = time.perf_counter()
    Projector(vol).project(rot, tilt, psi, batch_size=batch)
    ours = time.perf_counter() - t
    mats = torch.as_tensor(euler_to_matrix(rot, tilt, psi).transpose(0, 2, 1).copy(), dtype=torch.float32)
    t = time.perf_counter()
    for s in range(0, n, batch):
        project_3d_to_2d(torch.as_tensor(vol), mats[s:s + batch])
    lib = time.perf_counter() - t
    return {"n": n, "box": box, "cryomap_projector_s": ours, "library_per_batch_s": lib, "speedup": lib / ours}


def _reconstruct_rate(n: int = 1000, box: int = 64) -> dict:
    import numpy as np

    from cryomap.evaluate.reconstruct import reconstruct
    from cryomap.simulate.angles import random_euler_angles
    from cryomap.simulate.projection import project
    from cryomap.simulate.structure_map import structure_to_map

    vol = structure_to_map("7PBL", 3.0, box).data
    rot, tilt, psi = random_euler_angles(n, np.random.default_rng(1))
    imgs = project(vol, rot, tilt, psi)
    t = time.perf_counter()
    reconstruct(imgs, rot, tilt, psi, None, 3.0)
    wall = time.perf_counter() - t
    return {"n": n, "box": box, "wall_s": wall, "particles_per_s": n / wall}


def main() -> None:
    rows = [_dataset_run(1000), _dataset_run(10000)]
    print("simulate 7PBL, 1024² micrographs, 2 Å/px, box 96")
    print(f"{'particles':>10} {'wall s':>8} {'particles/s':>12} {'peak RSS MB':>12} {'disk MB':>8}")
    for r in rows:
        print(f"{r['n']:>10} {r['wall_s']:>8.1f} {r['particles_per_s']:>12.1f} {r['peak_rss_mb']:>12.0f} {r['disk_mb']:>8.0f}")
    scaling = rows[1]["wall_s"] / rows[0]["wall_s"]
    print(f"10k/1k wall-time ratio: {scaling:.1f} (10 = linear)")
    from cryomap.simulate.threads import torch_threads

    with torch_threads(1):  # both sides single-threaded, as cryomap runs them
        proj = _projector_vs_library()
    print(f"projector, {proj['n']} × {proj['box']}²: cached DFT {proj['cryomap_projector_s']:.2f} s vs "
          f"project_3d_to_2d per batch {proj['library_per_batch_s']:.2f} s (×{proj['speedup']:.1f})")
    with torch_threads(1):
        rec = _reconstruct_rate()
    print(f"reconstruct {rec['n']} × {rec['box']}²: {rec['wall_s']:.1f} s ({rec['particles_per_s']:.0f} particles/s)")
    out = Path("bench_out")
    out.mkdir(exist_ok=True)
    (out / "bench_simulate.json").write_text(json.dumps(
        {"simulate": rows, "scaling_10k_over_1k": scaling, "projector": proj, "reconstruct": rec}, indent=2))


if __name__ == "__main__":
    main()

"""Simulation throughput and peak memory (issue 3), against a particle-level peer measured in the same run.

cryomap: ``simulate_dataset(["7PBL"], n_particles=N, micrograph_size=1024, apix=2.0)`` — the whole
CryoPPP-layout dataset (truth map, Fourier-slice projections, per-particle CTF in a 2×-padded box,
micrograph assembly with ice and Poisson noise, MRC + JPEG micrographs, CSV, STAR, clean stack).

Peer: what a quick particle-level script does (the cryoDRGN/cryoSRPNT style of simulation): the same
gemmi map, torch-fourier-slice ``project_3d_to_2d`` per batch, torch-ctf CTF multiplied in the box,
Gaussian noise at the same SNR, all images kept in memory and written once with mrcfile + starfile.
It makes no micrographs, so it does strictly less work; the ratio says what the micrograph-level
realism costs, and the peak-memory columns show which of the two grows with N.

Each (tool, N) runs in a fresh subprocess so its peak RSS (``ru_maxrss``) is its own; both run with
one torch thread (cryomap's default for this work, see :mod:`cryomap.core.threads`).
``python -m benchmarks simulate``; JSON in ``bench_out/bench_simulate.json``. Environment:
``CRYOMAP_BENCH_SIM_COUNTS`` (default ``1000,10000``), ``CRYOMAP_BENCH_REPEATS`` (default 1;
particles/s is the median over repeats, peak RSS the maximum).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STRUCTURE, APIX, MIC, SNR = "7PBL", 2.0, 1024, 0.1

CRYOMAP_CHILD = r"""
import json, resource, sys, time
t = time.perf_counter()
from cryomap.simulate.dataset import simulate_dataset
n, out = int(sys.argv[1]), sys.argv[2]
folders = simulate_dataset([sys.argv[3]], out, n_particles=n, micrograph_size=int(sys.argv[5]), apix=float(sys.argv[4]),
                           snr=float(sys.argv[6]), seed=0, force=True, progress=False, threads=1)
print(json.dumps({"n": n, "wall_s": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "box": json.load(open(folders[0] / "manifest.json"))["box_px"]}))
"""

PEER_CHILD = r"""
import json, resource, sys, time
t = time.perf_counter()
import mrcfile, numpy as np, pandas as pd, starfile, torch
from torch_ctf import calculate_ctf_2d
from torch_fourier_slice import project_3d_to_2d
from cryomap.core.euler import euler_to_matrix, random_euler_angles
from cryomap.simulate.structure_map import structure_to_map, model_extent
torch.set_num_threads(1)
n, out, name, apix, snr = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[6])
diameter, _ = model_extent(name)
box = max(32, int(np.ceil(1.5 * diameter / apix)) + int(np.ceil(1.5 * diameter / apix)) % 2)
vol = torch.as_tensor(structure_to_map(name, apix, box).data)
rng = np.random.default_rng(0)
rot, tilt, psi = random_euler_angles(n, rng)
defocus = rng.uniform(1.0, 2.5, n)  # µm
images = []
with torch.no_grad():
    for s in range(0, n, 256):
        e = min(n, s + 256)
        mats = torch.as_tensor(euler_to_matrix(rot[s:e], tilt[s:e], psi[s:e]).transpose(0, 2, 1).copy(), dtype=torch.float32)
        proj = project_3d_to_2d(vol, mats)
        ctf = calculate_ctf_2d(defocus=torch.as_tensor(defocus[s:e], dtype=torch.float32), astigmatism=0.0,
                               astigmatism_angle=0.0, voltage=300.0, spherical_aberration=2.7, amplitude_contrast=0.1,
                               phase_shift=0.0, pixel_size=apix, image_shape=(box, box), rfft=True, fftshift=False)
        img = torch.fft.irfft2(torch.fft.rfft2(proj) * ctf, s=(box, box))
        noise_sd = img.std(dim=(-2, -1), keepdim=True) / snr ** 0.5
        images.append((img + noise_sd * torch.randn(img.shape)).numpy())
stack = np.concatenate(images)
with mrcfile.new(out + ".mrcs", overwrite=True) as mrc:
    mrc.set_data(stack.astype(np.float32))
    mrc.voxel_size = apix
starfile.write(pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@peer.mrcs" for i in range(n)], "rlnAngleRot": rot,
                             "rlnAngleTilt": tilt, "rlnAnglePsi": psi, "rlnDefocusU": defocus * 1e4,
                             "rlnDefocusV": defocus * 1e4}), out + ".star", overwrite=True)
print(json.dumps({"n": n, "wall_s": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "box": box}))
"""


def _run(kind: str, n: int) -> dict:
    code = CRYOMAP_CHILD if kind == "cryomap" else PEER_CHILD
    with tempfile.TemporaryDirectory(prefix="cryomap_bench_sim_") as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-c", code, str(n), str(Path(tmp) / "out"), STRUCTURE, str(APIX),
                               str(MIC), str(SNR)], capture_output=True, text=True, env=env,
                              cwd=Path(__file__).resolve().parents[1])
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} child failed: {proc.stderr[-2000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["disk_mb"] = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file()) / 2**20
    res["particles_per_s"] = n / res["wall_s"]
    return res


def _projector_vs_library(n: int = 512, box: int = 96, batch: int = 64) -> dict:
    import numpy as np
    import torch
    from torch_fourier_slice import project_3d_to_2d

    from cryomap.core.euler import euler_to_matrix, random_euler_angles
    from cryomap.core.projector import Projector
    from cryomap.simulate.structure_map import structure_to_map

    vol = structure_to_map(STRUCTURE, APIX, box).data
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

    from cryomap.reconstruct.backproject import reconstruct
    from cryomap.core.euler import random_euler_angles
    from cryomap.core.projector import project
    from cryomap.simulate.structure_map import structure_to_map

    vol = structure_to_map(STRUCTURE, 3.0, box).data
    rot, tilt, psi = random_euler_angles(n, np.random.default_rng(1))
    imgs = project(vol, rot, tilt, psi)
    t = time.perf_counter()
    reconstruct(imgs, rot, tilt, psi, None, 3.0)
    wall = time.perf_counter() - t
    return {"n": n, "box": box, "wall_s": wall, "particles_per_s": n / wall}


def main() -> dict:
    counts = [int(c) for c in os.environ.get("CRYOMAP_BENCH_SIM_COUNTS", "1000,10000").split(",")]
    repeats = int(os.environ.get("CRYOMAP_BENCH_REPEATS", "1"))
    load_before = os.getloadavg()[0]
    rows = []
    for n in counts:
        row: dict = {"particles": n}
        for kind in ("cryomap", "peer"):
            runs = [_run(kind, n) for _ in range(repeats)]
            row[f"{kind}_particles_per_s"] = statistics.median(r["particles_per_s"] for r in runs)
            row[f"{kind}_wall_s"] = statistics.median(r["wall_s"] for r in runs)
            row[f"{kind}_peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
            row[f"{kind}_disk_mb"] = runs[0]["disk_mb"]
            row["box"] = runs[0]["box"]
        rows.append(row)
    print(f"simulate {STRUCTURE} (box {rows[0]['box']} px at {APIX} Å/px), SNR {SNR}; cryomap: {MIC}² micrographs, "
          "full CryoPPP layout; peer: particle-level script (project + CTF + Gaussian noise, stack in memory)")
    print(f"{'particles':>9} | {'cryomap s':>9} {'p/s':>7} {'RSS MB':>7} {'disk MB':>7} | {'peer s':>7} {'p/s':>7}"
          f" {'RSS MB':>7} | {'cryomap/peer speed':>18}")
    for r in rows:
        print(f"{r['particles']:>9} | {r['cryomap_wall_s']:>9.1f} {r['cryomap_particles_per_s']:>7.0f} "
              f"{r['cryomap_peak_rss_mb']:>7.0f} {r['cryomap_disk_mb']:>7.0f} | {r['peer_wall_s']:>7.1f} "
              f"{r['peer_particles_per_s']:>7.0f} {r['peer_peak_rss_mb']:>7.0f} | "
              f"{r['cryomap_particles_per_s'] / r['peer_particles_per_s']:>18.2f}")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        print(f"{b['particles']} vs {a['particles']} particles: wall time cryomap x{b['cryomap_wall_s'] / a['cryomap_wall_s']:.1f}, "
              f"peer x{b['peer_wall_s'] / a['peer_wall_s']:.1f}; peak RSS cryomap x{b['cryomap_peak_rss_mb'] / a['cryomap_peak_rss_mb']:.2f}, "
              f"peer x{b['peer_peak_rss_mb'] / a['peer_peak_rss_mb']:.2f}")
    from cryomap.core.threads import torch_threads

    with torch_threads(1):  # both sides single-threaded, as cryomap runs them
        proj = _projector_vs_library()
        rec = _reconstruct_rate()
    print(f"projector, {proj['n']} × {proj['box']}²: cached DFT {proj['cryomap_projector_s']:.2f} s vs "
          f"project_3d_to_2d per batch {proj['library_per_batch_s']:.2f} s (×{proj['speedup']:.1f})")
    print(f"reconstruct {rec['n']} × {rec['box']}²: {rec['wall_s']:.1f} s ({rec['particles_per_s']:.0f} particles/s)")
    load_after = os.getloadavg()[0]
    print(f"{'median of ' + str(repeats) + ' runs' if repeats > 1 else 'one run'} each, 1 torch thread; "
          f"1-min load average {load_before:.1f} before, {load_after:.1f} after, on {os.cpu_count()} CPUs")
    out = {"benchmark": "simulate", "structure": STRUCTURE, "apix": APIX, "micrograph_px": MIC, "snr": SNR,
           "repeats": repeats, "load_average_1min": [load_before, load_after], "cpus": os.cpu_count(),
           "results": rows, "projector": proj, "reconstruct": rec}
    Path("bench_out").mkdir(exist_ok=True)
    Path("bench_out/bench_simulate.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()

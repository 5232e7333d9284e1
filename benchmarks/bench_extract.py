"""Extraction throughput and peak memory on synthetic 4096x4096 MRC micrographs, 300 particles each.

For 2 and 20 micrographs, each measurement runs in its own subprocess so peak resident memory
(``resource.getrusage(...).ru_maxrss``) of one run does not mix with another. The peer, measured
in the same run on the same files, is a plain numpy crop loop (mrcfile read, slice, no
normalisation) that keeps the stack in memory and writes it at the end, the way a quick script
would. cryomap should stay flat in memory as the micrograph count grows; the peer grows.

``python -m benchmarks extract`` (or ``python benchmarks/bench_extract.py``); JSON goes to
``bench_out/bench_extract.json``. Environment: ``CRYOMAP_BENCH_COUNTS`` (default ``2,20``),
``CRYOMAP_BENCH_BOX`` (default 256), ``CRYOMAP_BENCH_REPEATS`` (default 2; particles/s is the
median over repeats, peak RSS the maximum).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIC = 4096
PER_MIC = 300


def make_dataset(root: Path, n: int, box: int, seed: int = 0) -> Path:
    """CryoPPP-layout folder with ``n`` 4096² float32 MRC micrographs and 300 CSV coordinates each."""
    import numpy as np
    import pandas as pd

    from cryomap.io.coords import write_cryoppp_csv
    from cryomap.io.mrc import write_mrc

    (root / "micrographs").mkdir(parents=True, exist_ok=True)
    (root / "ground_truth" / "particle_coordinates").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        mic = rng.standard_normal((MIC, MIC), dtype=np.float32)
        write_mrc(root / "micrographs" / f"mic_{i:03d}.mrc", mic, 1.0, force=True)
        xy = rng.integers(box // 2, MIC - box // 2, size=(PER_MIC, 2))
        write_cryoppp_csv(root / "ground_truth" / "particle_coordinates" / f"mic_{i:03d}.csv",
                          pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "diameter": box // 2}), force=True)
    return root


def subset(full: Path, root: Path, n: int) -> Path:
    """A folder with symlinks to the first ``n`` micrographs and coordinate files of ``full``."""
    (root / "micrographs").mkdir(parents=True)
    (root / "ground_truth" / "particle_coordinates").mkdir(parents=True)
    for i in range(n):
        (root / "micrographs" / f"mic_{i:03d}.mrc").symlink_to(full / "micrographs" / f"mic_{i:03d}.mrc")
        (root / "ground_truth" / "particle_coordinates" / f"mic_{i:03d}.csv").symlink_to(
            full / "ground_truth" / "particle_coordinates" / f"mic_{i:03d}.csv")
    return root


# --------------------------------------------------------------------------- measured in a child process

def _child_cryomap(dataset: str, out: str, box: int, workers: int) -> dict:
    from cryomap.particles.extract import extract_particles

    t0 = time.perf_counter()
    res = extract_particles(dataset, out, box, workers=workers, force=True, progress=False)
    return {"seconds": time.perf_counter() - t0, "particles": res.n_particles}


def _child_peer(dataset: str, out: str, box: int) -> dict:
    """Plain numpy: read each micrograph, slice every box, stack in memory, write once."""
    import mrcfile
    import numpy as np
    import pandas as pd

    t0 = time.perf_counter()
    images = []
    half = box // 2
    mics = sorted(Path(dataset, "micrographs").glob("*.mrc"))
    for mic_path in mics:
        with mrcfile.open(mic_path, permissive=True) as mrc:
            mic = np.asarray(mrc.data, dtype=np.float32)
        xy = pd.read_csv(Path(dataset, "ground_truth", "particle_coordinates", mic_path.stem + ".csv"))
        for x, y in zip(xy["X-Coordinate"], xy["Y-Coordinate"]):
            images.append(mic[y - half : y + half, x - half : x + half].copy())
    os.makedirs(out, exist_ok=True)
    with mrcfile.new(Path(out, "peer.mrcs"), overwrite=True) as mrc:
        mrc.set_data(np.stack(images))
    return {"seconds": time.perf_counter() - t0, "particles": len(images)}


def _child(argv: list[str]) -> None:
    import resource

    kind, dataset, out, box, workers = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4])
    res = _child_cryomap(dataset, out, box, workers) if kind == "cryomap" else _child_peer(dataset, out, box)
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # worker processes, if any
    res["peak_rss_mb"] = max(self_kb, kids_kb) / 1024
    res["peak_rss_children_mb"] = kids_kb / 1024
    print(json.dumps(res))


def _measure(kind: str, dataset: Path, out: Path, box: int, workers: int = 1) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", "import sys; from benchmarks.bench_extract import _child; _child(sys.argv[1:])",
           kind, str(dataset), str(out), str(box), str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} benchmark child failed: {proc.stderr[-2000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    return res


def main() -> dict:
    counts = [int(c) for c in os.environ.get("CRYOMAP_BENCH_COUNTS", "2,20").split(",")]
    box = int(os.environ.get("CRYOMAP_BENCH_BOX", "256"))
    repeats = int(os.environ.get("CRYOMAP_BENCH_REPEATS", "2"))
    results = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cryomap_bench_extract_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        full = make_dataset(tmp / "full", max(counts), box)
        print(f"made {max(counts)} synthetic {MIC}x{MIC} micrographs in {time.perf_counter() - t0:.1f} s", flush=True)
        for n in counts:
            ds = subset(full, tmp / f"n{n}", n)
            rows = {"micrographs": n, "box": box}
            for kind, workers in (("cryomap", 1), ("cryomap", 2), ("peer", 1)):
                runs = [_measure(kind, ds, tmp / f"out_{kind}_{n}_{workers}", box, workers) for _ in range(repeats)]
                label = kind if kind == "peer" else f"cryomap_w{workers}"
                rows[f"{label}_particles_per_s"] = statistics.median(r["particles"] / r["seconds"] for r in runs)
                rows[f"{label}_peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
                rows[f"{label}_particles"] = runs[0]["particles"]
            results.append(rows)
    print(f"\n{'mics':>5} {'particles':>9} | {'cryomap w1 p/s':>14} {'RSS MB':>7} | {'cryomap w2 p/s':>14} {'RSS MB':>7}"
          f" | {'peer p/s':>9} {'RSS MB':>7} | {'w1/peer speed':>13}")
    for r in results:
        print(f"{r['micrographs']:>5} {r['cryomap_w1_particles']:>9} | {r['cryomap_w1_particles_per_s']:>14.0f} "
              f"{r['cryomap_w1_peak_rss_mb']:>7.0f} | {r['cryomap_w2_particles_per_s']:>14.0f} {r['cryomap_w2_peak_rss_mb']:>7.0f}"
              f" | {r['peer_particles_per_s']:>9.0f} {r['peer_peak_rss_mb']:>7.0f} | "
              f"{r['cryomap_w1_particles_per_s'] / r['peer_particles_per_s']:>13.2f}")
    load_after = os.getloadavg()[0]
    print(f"median of {repeats} runs each; 1-min load average {load_before:.1f} before, {load_after:.1f} after, "
          f"on {os.cpu_count()} CPUs (w1/w2 = cryomap with 1/2 worker processes; peer = mrcfile + numpy crop loop, "
          "stack kept in memory)")
    if len(results) >= 2:
        growth = results[-1]["cryomap_w1_peak_rss_mb"] / results[0]["cryomap_w1_peak_rss_mb"]
        peer_growth = results[-1]["peer_peak_rss_mb"] / results[0]["peer_peak_rss_mb"]
        print(f"peak RSS {results[-1]['micrographs']} vs {results[0]['micrographs']} micrographs: "
              f"cryomap x{growth:.2f}, peer x{peer_growth:.2f}")
    out = {"benchmark": "extract", "micrograph_px": MIC, "particles_per_micrograph": PER_MIC, "repeats": repeats,
           "load_average_1min": [load_before, load_after], "cpus": os.cpu_count(), "results": results,
           "note": "peak RSS per measurement from a fresh subprocess (max of the process and its workers)"}
    Path("bench_out").mkdir(exist_ok=True)
    Path("bench_out/bench_extract.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()

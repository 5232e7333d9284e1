"""Dataset building and batch serving: memory-mapped resized images vs on-the-fly from the stack.

Two simulated targets (gemmi maps of 1BHL and 7PBL; particle stacks of noise images of 2·D px —
the content does not change the timing), for D = 64 and 128. For each D and each condition
storage (``resized``: images resized to D×D once at build time and memory-mapped;
``source``: read + Fourier-resized from the original stack per sample) it measures the build time,
the dataset's size on disk, the median time per batch of a DataLoader in the main process (warm
page cache, batch size 1 and 4), and the steady-state time per batch of 4 with 2 DataLoader
workers (where ``source`` does its reading and resizing). The peer is ``resized`` at the same D:
ratios are ``source`` / ``resized``. Prints the load average before and after (timings on a busy
machine are inflated). Writes ``bench_out/bench_datasets.json``.
"""

from __future__ import annotations

import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

N_PARTICLES = 512  # per target
N_BATCHES = 20
WORKERS = 2
#: Batches timed with workers: many, so that the batches prefetched during start-up weigh little.
N_BATCHES_WORKERS = 40


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:  # not Linux
        return "n/a"


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def make_raw(root: Path, depth: int) -> list[dict]:
    """Two targets: gemmi maps at 1.5 Å/px and stacks of N_PARTICLES noise images of 2·depth px."""
    from cryomap.io.mrc import write_mrc
    from cryomap.io.star import format_image_name, write_star
    from cryomap.simulate.structure_map import structure_to_map

    rng = np.random.default_rng(0)
    size = 2 * depth
    targets = []
    for name, box in (("1BHL", 64), ("7PBL", 112)):
        m = structure_to_map(name, apix=1.5, box=box)
        write_mrc(root / f"{name}.mrc", m.data, m.apix)
        write_mrc(root / f"{name}.mrcs", rng.standard_normal((N_PARTICLES, size, size), dtype=np.float32), 1.5)
        df = pd.DataFrame({"rlnImageName": [format_image_name(i + 1, f"{name}.mrcs") for i in range(N_PARTICLES)],
                           "rlnOpticsGroup": 1, "rlnImagePixelSize": 1.5, "rlnImageSize": size})
        write_star(root / f"{name}.star", df)
        targets.append({"name": name, "particles": f"{name}.star", "map": f"{name}.mrc"})
    return targets


def time_batches(dataset_dir: Path, batch_size: int, workers: int = 0) -> float:
    """Seconds per training batch: the median over N_BATCHES in the main process; with workers the
    steady-state mean (batches arrive in bursts from prefetching workers, so a median would hide the cost)."""
    from cryomap.datasets.datamodule import DensityDataModule

    n = N_BATCHES_WORKERS if workers else N_BATCHES
    dm = DensityDataModule(dataset_dir, batch_size=batch_size, samples_per_epoch=batch_size * (n + 2),
                           seed=0, num_workers=workers)
    loader = dm.train_dataloader()
    stamps = []
    for cond, label in loader:
        stamps.append(time.perf_counter())
        assert cond.shape == (batch_size, 1) + (dm.depth,) * 3 and label.shape == cond.shape
    # the first two batches open files, cache the labels and start the workers
    if workers:
        return (stamps[-1] - stamps[1]) / (len(stamps) - 2)
    return statistics.median(b - a for a, b in zip(stamps[1:-1], stamps[2:]))


def main() -> None:
    import torch

    from cryomap.datasets.build import build_dataset

    torch.set_num_threads(2)
    load_before = _loadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for depth, apix in ((64, 2.5), (128, 1.25)):
            raw = tmp / f"raw{depth}"
            raw.mkdir()
            targets = make_raw(raw, depth)
            raw_size = _dir_size(raw)
            for storage in ("resized", "source"):
                cfg = {"seed": 0, "label": {"apix": apix, "box": depth},
                       "condition": {"mode": "stack", "storage": storage},
                       "split": {"by": "particles", "val_fraction": 0.1, "particle_holdout": 0.1}, "targets": targets}
                cfg_path = raw / f"{storage}.yaml"
                cfg_path.write_text(yaml.safe_dump(cfg))
                out = tmp / f"ds{depth}_{storage}"
                t0 = time.perf_counter()
                build_dataset(cfg_path, out)
                build_s = time.perf_counter() - t0
                row = {"D": depth, "storage": storage, "build_s": round(build_s, 2),
                       "dataset_MiB": round(_dir_size(out) / 2**20, 1), "raw_stacks_MiB": round(raw_size / 2**20, 1)}
                for bs in (1, 4):
                    row[f"batch{bs}_s"] = round(time_batches(out, bs), 4)
                row[f"batch4_w{WORKERS}_s"] = round(time_batches(out, 4, WORKERS), 4)
                rows.append(row)
    for depth in (64, 128):
        res, src = (next(r for r in rows if r["D"] == depth and r["storage"] == s) for s in ("resized", "source"))
        for r in (res, src):
            r["ratio_b4"] = round(r["batch4_s"] / res["batch4_s"], 2)
            r[f"ratio_b4_w{WORKERS}"] = round(r[f"batch4_w{WORKERS}_s"] / res[f"batch4_w{WORKERS}_s"], 2)
    load_after = _loadavg()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cols = ["D", "storage", "build_s", "dataset_MiB", "raw_stacks_MiB", "batch1_s", "batch4_s",
            f"batch4_w{WORKERS}_s", "ratio_b4", f"ratio_b4_w{WORKERS}"]
    width = max(len(c) for c in cols)
    print(" | ".join(f"{c:>{width}}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r[c]!s:>{width}}" for c in cols))
    print(f"{N_PARTICLES} particles per target, 2 targets, source images 2·D px; batch*_s: seconds per training batch "
          f"(main process: median of {N_BATCHES}; w{WORKERS}: {WORKERS} workers, mean of {N_BATCHES_WORKERS}); "
          f"ratio = source / resized at the same D")
    print(f"peak RSS {peak_mib:.0f} MiB; load average before {load_before}, after {load_after}")
    out_dir = Path("bench_out")
    out_dir.mkdir(exist_ok=True)
    (out_dir / "bench_datasets.json").write_text(json.dumps(
        {"rows": rows, "peak_rss_MiB": round(peak_mib), "n_particles_per_target": N_PARTICLES,
         "loadavg_before": load_before, "loadavg_after": load_after}, indent=1))


if __name__ == "__main__":
    main()

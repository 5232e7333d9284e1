"""Preprocessing: speed against naive per-image baselines, Topaz's own batch rate, flat memory, and
what each step does to a particle's correlation with the truth.

Tables (all measured in the same run, one process per memory measurement):

1. **The report's classical chain** (standardise → CLAHE → guided filter) at box 128 and 256,
   particles/s: cryomap (OpenCV CLAHE on 8-bit and on 16-bit quantisation, the guided filter from
   OpenCV box filters) against a naive per-image scikit-image chain (``exposure.equalize_adapthist``
   and a box-filter guided filter written with ``scipy.ndimage.uniform_filter``), medians of 7
   alternating rounds — target ≥ 10×.
2. **Topaz denoising** (``unet``) with per-image normalisation (cryomap) against Topaz's own batched
   call (one mean/std for the whole batch, as ``topaz.denoise.Denoise._denoise`` does), particles/s.
3. **Peak memory** of ``cryomap preprocess`` (standardize, phase-flip, clahe, guided) on 1,000 and
   20,000 particles of 128 px, each in its own process (ru_maxrss) — target ratio ≤ 1.5.
4. **Accuracy**: median correlation with the simulator's clean projection, at SNR 0.1 and 1, of raw,
   phase-flipped, Wiener-filtered, each denoiser, both blends and the full chain (7PBL, 64 px,
   3.2 Å/px), plus the CLAHE 8/16-bit trade.

``python -m benchmarks preprocess``; JSON in ``bench_out/bench_preprocess.json``. Environment:
``CRYOMAP_BENCH_QUICK=1`` shrinks every size (a smoke run); ``CRYOMAP_BENCH_PRE_PARTS`` picks tables
(``speed,topaz,memory,accuracy``, the default all four; a partial run updates those tables in the JSON).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.tables import print_rows

QUICK = os.environ.get("CRYOMAP_BENCH_QUICK") == "1"


#: Alternating rounds of the speed table (the median of each is reported).
ROUNDS = 7


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _median_rate(fn, n: int, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times)


def _naive_guided(img, radius: int, eps: float):
    """He et al.'s guided filter with box means (scipy), guide = image: the textbook per-image version."""
    from scipy.ndimage import uniform_filter

    size = 2 * radius + 1
    mean_i = uniform_filter(img, size)
    var_i = uniform_filter(img * img, size) - mean_i * mean_i
    a = var_i / (var_i + eps)
    b = mean_i - a * mean_i
    return uniform_filter(a, size) * img + uniform_filter(b, size)


def _naive_chain(images):
    """Per image: standardise, skimage CLAHE (needs [0, 1]), box-filter guided filter."""
    import numpy as np
    from skimage import exposure

    out = np.empty_like(images)
    for k, im in enumerate(images):
        x = (im - im.mean()) / im.std()
        lo, hi = x.mean() - 3 * x.std(), x.mean() + 3 * x.std()
        u = np.clip((x - lo) / (hi - lo), 0, 1)
        c = exposure.equalize_adapthist(u, kernel_size=im.shape[-1] // 2, clip_limit=0.01) * (hi - lo) + lo
        out[k] = _naive_guided(c.astype(np.float32), 2, 0.2 * float(c.var()))
    return out


def speed_table() -> list[dict]:
    import numpy as np

    from cryomap.preprocess.clahe import clahe
    from cryomap.preprocess.guided import guided_filter
    from cryomap.preprocess.standardize import standardize

    rows = []
    for box in (128, 256):
        n = 64 if QUICK else (512 if box == 128 else 256)
        rng = np.random.default_rng(0)
        images = rng.normal(size=(n, box, box)).astype(np.float32)
        yy, xx = np.mgrid[:box, :box]
        images += 3 * np.exp(-((xx - box / 2) ** 2 + (yy - box / 2) ** 2) / (2 * (box / 8) ** 2)).astype(np.float32)
        naive_n = min(n, 64)
        # rounds alternate the naive chain and ours, so a change in the machine's speed during the
        # run (this shared 2-core machine drifts by up to 1.5x between runs) reaches both alike
        times: dict = {"naive": [], 8: [], 16: []}
        for _ in range(1 if QUICK else ROUNDS):
            times["naive"].append(_seconds(lambda: _naive_chain(images[:naive_n])))
            for bits in (8, 16):
                times[bits].append(_seconds(lambda: guided_filter(clahe(standardize(images), bits=bits))))
        naive = naive_n / statistics.median(times["naive"])
        for bits in (8, 16):
            rate = n / statistics.median(times[bits])
            rows.append({"box": box, "cryomap chain": f"OpenCV, {bits}-bit CLAHE", "particles/s": round(rate, 1),
                         "naive skimage particles/s": round(naive, 1), "speed-up": round(rate / naive, 1)})
    return rows


def topaz_table() -> list[dict]:
    import numpy as np
    import torch

    from cryomap.preprocess.denoise import denoise_topaz, load_topaz

    torch.set_num_threads(2)
    net = load_topaz("unet")
    rows = []
    for box in (128, 256):
        n = 8 if QUICK else (48 if box == 128 else 16)
        images = np.random.default_rng(1).normal(size=(n, box, box)).astype(np.float32)
        def ours_fn():
            denoise_topaz(images, "unet", batch=16)

        def theirs():  # topaz.denoise.Denoise._denoise: one mean and std for the whole batch
            with torch.no_grad():
                for s in range(0, n, 16):
                    x = torch.from_numpy(images[s:s + 16])
                    mu, sd = x.mean(), x.std()
                    (net(((x - mu) / sd)[:, None])[:, 0] * sd + mu).numpy()

        ours_fn(), theirs()  # warm both up (allocator, thread pool) before timing
        ours = _median_rate(ours_fn, n, repeats=3)
        rate = _median_rate(theirs, n, repeats=3)
        rows.append({"box": box, "cryomap (per-image normalisation) particles/s": round(ours, 2),
                     "Topaz batch normalisation particles/s": round(rate, 2), "ratio": round(ours / rate, 2)})
    return rows


def _child_memory(star: str, out: str) -> None:
    from cryomap.preprocess.run import run_preprocess

    run_preprocess(star, out, [{"step": s} for s in ("standardize", "phase-flip", "clahe", "guided")],
                   force=True, progress=False)
    print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _write_stack(root: Path, n: int, box: int) -> Path:
    import numpy as np
    import pandas as pd

    from cryomap.io.mrc import StackWriter
    from cryomap.io.star import format_image_name, write_star

    rng = np.random.default_rng(0)
    with StackWriter(root / "p.mrcs", n, box, 2.0) as w:
        for s in range(0, n, 1000):
            w.write(rng.normal(size=(min(1000, n - s), box, box)).astype(np.float32))
    write_star(root / "p.star", pd.DataFrame({
        "rlnImageName": [format_image_name(i + 1, "p.mrcs") for i in range(n)], "rlnImagePixelSize": 2.0,
        "rlnDefocusU": rng.uniform(1e4, 2.5e4, n), "rlnDefocusV": rng.uniform(1e4, 2.5e4, n), "rlnDefocusAngle": 0.0,
        "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1}))
    return root / "p.star"


def memory_table() -> list[dict]:
    rows = []
    box = 128
    with tempfile.TemporaryDirectory() as d:
        for n in ((200, 2000) if QUICK else (1000, 20000)):
            root = Path(d) / str(n)
            root.mkdir()
            star = _write_stack(root, n, box)
            t0 = time.perf_counter()
            code = f"import benchmarks.bench_preprocess as b; b._child_memory({str(star)!r}, {str(root / 'out')!r})"
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 cwd=Path(__file__).parent.parent)
            if res.returncode:
                raise RuntimeError(res.stderr[-2000:])
            rss = json.loads(res.stdout.strip().splitlines()[-1])["maxrss_mb"]
            rows.append({"particles": n, "box": box, "peak MB": round(rss), "seconds": round(time.perf_counter() - t0, 1)})
    rows.append({"particles": "ratio", "peak MB": round(rows[1]["peak MB"] / rows[0]["peak MB"], 2)})
    return rows


def accuracy_table() -> list[dict]:
    import numpy as np

    from cryomap.particles.extract import extract_particles
    from cryomap.particles.source import open_particles
    from cryomap.preprocess.chain import apply_chain
    from cryomap.preprocess.clahe import clahe
    from cryomap.simulate.dataset import simulate_dataset

    def pick(df, r):
        row = df.iloc[r]
        return Path(str(row["rlnMicrographName"])).name, round(float(row["rlnCoordinateX"])), round(float(row["rlnCoordinateY"]))

    def cc(a, b):
        a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
        b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
        return float(np.median((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))))

    rows = []
    n = 60 if QUICK else 300
    with tempfile.TemporaryDirectory() as d:
        for snr in (0.1, 1.0):
            root = Path(d) / str(snr)
            folder = simulate_dataset(["7PBL"], root / "sim", n_particles=n, micrograph_size=1024, apix=3.2, snr=snr,
                                      box=64, seed=1, progress=False)[0]
            src = open_particles(extract_particles(folder, root / "ext", box=64, invert=True, progress=False).star_path)
            clean_src = open_particles(folder / "clean" / "particles.star")
            where = {pick(clean_src.table, r): r for r in range(len(clean_src))}
            clean = clean_src.images([where[pick(src.table, r)] for r in range(len(src))])
            rows_all = np.arange(len(src))
            result = {"SNR": snr, "raw": cc(src.images(), clean)}
            result["phase-flip"] = cc(apply_chain(src, [{"step": "phase-flip"}]).images(), clean)
            result["wiener (c 0.1)"] = cc(apply_chain(src, [{"step": "wiener"}]).images(), clean)
            for method in ("lowpass", "affine", "fcnn", "unet-small", "unet"):
                steps = apply_chain(src, [{"step": "phase-flip"}, {"step": "denoise", "method": method},
                                          {"step": "blend", "weight": 0.5},
                                          {"step": "blend", "weight": 2 / 3, "original": "phase-flip", "key": "b23"}])
                got = steps.read_steps(rows_all)
                result[f"flip+{method}"] = cc(got["denoise"], clean)
                if method == "unet":
                    result["(D+O)/2 unet"] = cc(got["blend"], clean)
                    result["(2D+O)/3 unet"] = cc(got["b23"], clean)
            full = apply_chain(src, [{"step": s} for s in ("standardize", "phase-flip", "denoise", "blend", "clahe",
                                                           "guided")]).read_steps(rows_all)
            result["full chain"] = cc(full["guided"], clean)
            result["full chain before CLAHE"] = cc(full["blend"], clean)
            for bits in (8, 16):
                t0 = time.perf_counter()
                out = clahe(full["blend"], bits=bits)
                result[f"CLAHE {bits}-bit on the blend"] = cc(out, clean)
                result[f"CLAHE {bits}-bit ms/particle"] = 1000 * (time.perf_counter() - t0) / len(out)
            rows.append({k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()})
    return rows


def main() -> None:
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    parts = os.environ.get("CRYOMAP_BENCH_PRE_PARTS", "speed,topaz,memory,accuracy").split(",")
    dest = Path(__file__).parent.parent / "bench_out"
    previous = dest / "bench_preprocess.json"
    out = json.loads(previous.read_text()) if previous.exists() and len(parts) < 4 else {}  # a partial run updates its tables
    out["load_before"] = load
    for key, name, fn in (("speed", "classical chain speed", speed_table), ("topaz", "Topaz denoising", topaz_table),
                          ("memory", "peak memory, cryomap preprocess", memory_table),
                          ("accuracy", "accuracy vs clean projections", accuracy_table)):
        if key not in parts:
            continue
        t0 = time.perf_counter()
        rows = fn()
        print_rows(f"{name} ({time.perf_counter() - t0:.0f} s)", rows)
        out[name] = rows
    out["load_after"] = os.getloadavg()
    print(f"load average after: {out['load_after'][0]:.2f} {out['load_after'][1]:.2f} {out['load_after'][2]:.2f}")
    dest.mkdir(exist_ok=True)
    (dest / "bench_preprocess.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

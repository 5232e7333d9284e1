"""2D classification: accuracy against known views and against peers, throughput, memory.

1. **Accuracy** — simulated particles of the built-in 7PBL at 6 distinct views (100 each, 48 px at
   4 Å/px, each particle's own CTF, random psi, shifts ≤ 3 px), at SNR 1, 0.1 and 0.05:
   ``classify2d --classes 6`` purity, the ceiling (assigning every particle to the known clean
   views with the same search, :func:`cryomap.classify2d.metrics.ceiling_assignments`), the
   correlation of each class average with its view's clean projection after in-plane alignment,
   and wall time.
2. **Peers** on the same particles (SNR ``CRYOMAP_BENCH_C2D_PEER_SNR``, default 0.1), run once:
   RELION 3.1 ``relion_refine --K 6 --iter 25 --tau2_fudge 2 --psi_step 6 --offset_range 5 --ctf``
   (plus the particle diameter, zero mask, 2 threads), under a time budget, its result read back
   with cryomap's RELION importer; ASPIRE 0.14.3 ``RIRClass2D`` (bispectrum nearest neighbours)
   + ``BFRAverager2D`` class averaging on phase-flipped particles, in the benchmark-only
   environment ``.venv-peers`` (created with ``pip install aspire==0.14.3`` when missing). ASPIRE
   makes one class per particle (itself and its nearest neighbours), so its purity is the mean
   share of a class's members from the class's majority view, and its correlation is taken over a
   sample of its classes.
3. **Throughput** — particles per second per EM iteration at box 64 and 128 with 50 classes
   (pure-noise particles with CTFs: posteriors spread the most, so this is the slow case), from
   the second iteration's time.
4. **Memory** — peak resident memory of a whole run (seeding, 1 iteration, final averages) on a
   memory-mapped stack of 5,000 and 50,000 particles (64 px, 10 classes, 32 px working box), each
   in its own process; it must not grow with N beyond the per-particle assignments (~30 B each).
   Peak RSS counts the stack's memory-mapped pages the particle source reads (file-backed page
   cache, as large as the stack), so the anonymous part, sampled every 0.1 s, is reported too.

``python -m benchmarks classify2d``; JSON in ``bench_out/bench_classify2d.json``. Environment:
``CRYOMAP_BENCH_C2D_PARTS`` (default ``accuracy,peers,throughput,memory``),
``CRYOMAP_BENCH_C2D_SNRS`` (``1,0.1,0.05``), ``CRYOMAP_BENCH_C2D_PEERS`` (``relion,aspire``),
``CRYOMAP_BENCH_C2D_RELION_BUDGET`` (s, default 1800), ``CRYOMAP_BENCH_C2D_THROUGHPUT_N`` (1000),
``CRYOMAP_BENCH_C2D_MEM_COUNTS`` (``5000,50000``), ``CRYOMAP_BENCH_C2D_ITERATIONS`` (20),
``CRYOMAP_BENCH_C2D_ABLATION`` (``1``: also run the EM from a random start, without seeding).
Timings depend on the machine and its load; the load average is recorded before and after.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PEERS_VENV = ROOT / ".venv-peers"
RELION_CMD = ["--K", "6", "--iter", "25", "--tau2_fudge", "2", "--psi_step", "6", "--offset_range", "5", "--ctf"]


def _env(name: str, default: str) -> str:
    return os.environ.get(f"CRYOMAP_BENCH_C2D_{name}", default)


def _views(snr: float, seed: int = 0):
    from cryomap.classify2d.synthetic import simulate_views

    return simulate_views("7PBL", n_views=6, per_view=100, box=48, apix=4.0, snr=snr, max_shift_px=3.0, seed=seed)


def _params(iterations: int):
    from cryomap.classify2d.em import Classify2DParams

    return Classify2DParams(n_classes=6, iterations=iterations, psi_step_deg=6.0, offset_range_px=5.0, ctf="wiener")


def _class_cc(averages: np.ndarray, classes: np.ndarray, truth: np.ndarray, clean: np.ndarray) -> list[float]:
    from cryomap.classify2d.metrics import class_correlations
    from cryomap.core.fourier import resize_images

    cl = resize_images(clean, averages.shape[-1]) if clean.shape[-1] != averages.shape[-1] else clean
    return [round(float(c), 3) for c in class_correlations(averages, classes, truth, cl, max_shift_px=5.0)]


# --------------------------------------------------------------------------- 1. accuracy

def accuracy(snrs: list[float], iterations: int, work: Path, ablation: bool = True) -> list[dict]:
    from cryomap.classify2d.em import classify
    from cryomap.classify2d.metrics import ceiling_assignments, purity

    rows = []
    for snr in snrs:
        s = _views(snr)
        p = _params(iterations)
        t0 = time.perf_counter()
        res = classify(s.source, p)
        wall = time.perf_counter() - t0
        ceiling = purity(ceiling_assignments(s.source, s.clean, p), s.view)
        cc = _class_cc(res.averages, res.classes, s.view, s.clean)
        rows.append({"tool": "cryomap", "snr": snr, "purity": round(purity(res.classes, s.view), 4),
                     "ceiling": round(ceiling, 4), "class_cc_min": min(cc), "class_cc_mean": round(float(np.mean(cc)), 3),
                     "seconds": round(wall, 1)})
        print(f"  cryomap SNR {snr:g}: purity {rows[-1]['purity']:.3f} (ceiling {ceiling:.3f}), class-average "
              f"cc min {min(cc):.3f}, {wall:.0f} s", flush=True)
        if ablation:  # the same EM started from random-subset averages, without the seeded start
            from dataclasses import replace

            t0 = time.perf_counter()
            res = classify(s.source, replace(p, init="random"))
            wall = time.perf_counter() - t0
            cc = _class_cc(res.averages, res.classes, s.view, s.clean)
            rows.append({"tool": "cryomap, random-subset start (no seeding; ablation)", "snr": snr,
                         "purity": round(purity(res.classes, s.view), 4), "class_cc_min": min(cc),
                         "class_cc_mean": round(float(np.mean(cc)), 3), "seconds": round(wall, 1)})
            print(f"  cryomap, random start, SNR {snr:g}: purity {rows[-1]['purity']:.3f}", flush=True)
    return rows


# --------------------------------------------------------------------------- 2. peers

def relion(snr: float, work: Path, budget_s: float) -> dict:
    """RELION 3.1 Class2D on the particles (written as a RELION 3.1 STAR), read back with cryomap's importer."""
    from cryomap.classify2d.importers import import_relion
    from cryomap.classify2d.metrics import purity
    from cryomap.io.star import read_star
    from cryomap.particles.writer import write_particles

    exe = shutil.which("relion_refine")
    if exe is None:
        return {"tool": "relion", "skipped": "relion_refine not found (Debian package relion)"}
    s = _views(snr)
    write_particles(s.source, work / "relion_in", progress=False, force=True)
    (work / "relion_run").mkdir(exist_ok=True)
    cmd = [exe, "--i", str(work / "relion_in" / "particles.star"), "--o", str(work / "relion_run" / "run"), *RELION_CMD,
           "--particle_diameter", str(0.9 * 48 * 4.0), "--zero_mask", "--flatten_solvent",
           "--dont_combine_weights_via_disc", "--pool", "30", "--j", "2"]
    t0 = time.perf_counter()
    try:
        # RELION reads image names relative to its working folder: run it where the stack is
        proc = subprocess.run(cmd, cwd=work / "relion_in", capture_output=True, text=True, timeout=budget_s)
    except subprocess.TimeoutExpired:
        return {"tool": "relion", "snr": snr, "skipped": f"over the {budget_s:.0f} s budget"}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"tool": "relion", "snr": snr, "skipped": f"relion_refine failed: {proc.stderr.strip()[-300:]}"}
    model = sorted((work / "relion_run").glob("run_it*_model.star"))[-1]
    out = import_relion(model, work / "relion_imported", force=True, reaverage=False)
    parts = read_star(out / "particles.star").particles
    import mrcfile

    averages = mrcfile.read(out / "classes.mrcs")
    cls = parts["rlnClassNumber"].to_numpy() - 1
    cc = _class_cc(averages, cls, s.view, s.clean)
    row = {"tool": "relion 3.1 Class2D", "snr": snr, "purity": round(purity(cls, s.view), 4),
           "class_cc_min": min(cc), "class_cc_mean": round(float(np.mean(cc)), 3), "seconds": round(wall, 1),
           "command": " ".join(["relion_refine", *RELION_CMD])}
    print(f"  RELION SNR {snr:g}: purity {row['purity']:.3f}, class-average cc min {min(cc):.3f}, {wall:.0f} s", flush=True)
    return row


ASPIRE_SCRIPT = r"""
import json, sys, time
import numpy as np
from aspire.classification import RIRClass2D
from aspire.denoising import DebugClassAvgSource
from aspire.source import ArrayImageSource

images, apix, prefix = np.load(sys.argv[1]).astype(np.float64), float(sys.argv[2]), sys.argv[3]
n_nbor, n_show = int(sys.argv[4]), int(sys.argv[5])
t0 = time.perf_counter()
src = ArrayImageSource(images, pixel_size=apix).normalize_background()
rir = RIRClass2D(src, fspca_components=400, bispectrum_components=300, n_nbor=n_nbor, large_pca_implementation="legacy",
                 nn_implementation="sklearn", bispectrum_implementation="legacy", seed=0)
cavg = DebugClassAvgSource(src, n_nbor=n_nbor, classifier=rir)  # BFRAverager2D, every class in input order
averages = cavg.images[:n_show].asnumpy()
np.save(prefix + "_classes.npy", np.asarray(rir.classes))
np.save(prefix + "_averages.npy", averages)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def aspire(snr: float, work: Path, n_nbor: int = 50, n_show: int = 60) -> dict:
    """ASPIRE's RIRClass2D + class averaging on phase-flipped particles, in .venv-peers."""
    from cryomap.classify2d.metrics import aligned_correlation
    from cryomap.preprocess.ctf_correct import phase_flip

    py = PEERS_VENV / "bin" / "python"
    if not py.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
            subprocess.run([str(py), "-m", "pip", "install", "-q", "aspire==0.14.3", "torch==2.13.0"], check=True)
        except (subprocess.CalledProcessError, OSError) as exc:
            return {"tool": "aspire", "skipped": f"could not create {PEERS_VENV} with aspire ({exc})"}
    ok = subprocess.run([str(py), "-c", "import aspire"], capture_output=True).returncode == 0
    if not ok:
        return {"tool": "aspire", "skipped": f"aspire not importable in {PEERS_VENV}"}
    s = _views(snr)
    flipped = phase_flip(s.source.images(), s.source.ctf(), s.apix)
    np.save(work / "aspire_in.npy", flipped)
    (work / "run_aspire.py").write_text(ASPIRE_SCRIPT)  # not aspire.py: that would shadow the package
    t0 = time.perf_counter()
    proc = subprocess.run([str(py), str(work / "run_aspire.py"), str(work / "aspire_in.npy"), str(s.apix),
                           str(work / "aspire"), str(n_nbor), str(n_show)], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"tool": "aspire", "snr": snr, "skipped": f"aspire failed: {proc.stderr.strip()[-400:]}"}
    classes = np.load(work / "aspire_classes.npy")
    averages = np.load(work / "aspire_averages.npy")
    shares, cc = [], []
    for c in range(len(classes)):
        v = s.view[classes[c]]
        shares.append(np.bincount(v).max() / len(v))
    for c in range(len(averages)):
        v = np.bincount(s.view[classes[c]]).argmax()
        cc.append(aligned_correlation(averages[c], s.clean[v], max_shift_px=5.0))
    row = {"tool": f"aspire 0.14.3 RIRClass2D (n_nbor {n_nbor}) + class averages", "snr": snr,
           "purity": round(float(np.mean(shares)), 4), "class_cc_min": round(float(np.min(cc)), 3),
           "class_cc_mean": round(float(np.mean(cc)), 3), "seconds": round(wall, 1),
           "note": f"one class per particle; correlation over its first {len(averages)} classes"}
    print(f"  ASPIRE SNR {snr:g}: neighbour purity {row['purity']:.3f}, class-average cc mean {row['class_cc_mean']:.3f}, "
          f"{wall:.0f} s", flush=True)
    return row


# --------------------------------------------------------------------------- 3. throughput

def _noise_source(n: int, box: int, apix: float, seed: int = 0):
    import pandas as pd

    from cryomap.particles.source import ParticleSource

    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, box, box), dtype=np.float32)
    du = rng.uniform(10000, 25000, n)
    tab = pd.DataFrame({"rlnDefocusU": du, "rlnDefocusV": du, "rlnDefocusAngle": 0.0, "rlnVoltage": 300.0,
                        "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1})
    return ParticleSource.from_arrays(images, apix, tab)


def throughput(n: int) -> list[dict]:
    from cryomap.classify2d.em import Classify2DParams, classify

    rows = []
    for box in (64, 128):
        src = _noise_source(n, box, 2.0)
        p = Classify2DParams(n_classes=50, iterations=2, full_iterations=2, init="random", refine=False)
        res = classify(src, p)
        it = [h for h in res.history if h["stage"] == "em"][-1]
        rate = it["particles"] / it["seconds"]
        rows.append({"box": box, "work_box": min(box, 64), "classes": 50, "particles": it["particles"],
                     "seconds_per_iteration": it["seconds"], "particles_per_second": round(rate, 1),
                     "psi_step_deg": p.psi_step_deg, "offset_range_px": p.offset_range_px})
        print(f"  box {box} (working {min(box, 64)}), 50 classes: {rate:.0f} particles/s per iteration", flush=True)
    return rows


# --------------------------------------------------------------------------- 4. memory

def _rss_kb() -> dict:
    """VmRSS, RssAnon and RssFile (kB) of this process from /proc/self/status ({} where it does not exist)."""
    try:
        with open("/proc/self/status") as fh:
            return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in fh)
                    if k in ("VmRSS", "RssAnon", "RssFile")}
    except OSError:
        return {}


def _child_memory(n: int, folder: str) -> dict:
    """One whole classification; peak RSS, and the peak of its anonymous part sampled every 0.1 s.

    Memory-mapped reads of the stack count in RSS as file-backed pages (page cache the kernel may
    drop at any time), so the total grows with the stack size however little the program holds;
    the anonymous part is what the program itself keeps.
    """
    import threading

    from cryomap.classify2d.em import Classify2DParams
    from cryomap.classify2d.run import classify_to_folder

    peak = {"anon": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["anon"] = max(peak["anon"], _rss_kb().get("RssAnon", 0))
            done.wait(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    p = Classify2DParams(n_classes=10, iterations=1, full_iterations=1, work_box=32, refine=False)
    t0 = time.perf_counter()
    classify_to_folder(Path(folder) / "particles.star", Path(folder) / "out", p, progress=False, force=True)
    done.set()
    th.join()
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_anon_mb": peak["anon"] / 1024, "file_backed_mb_at_end": _rss_kb().get("RssFile", 0) / 1024}


def _write_noise_stack(n: int, folder: Path, box: int = 64) -> None:
    """A memory-mapped .mrcs of pure-noise particles and its STAR with CTF columns, written in chunks."""
    import pandas as pd

    from cryomap.io.mrc import StackWriter
    from cryomap.io.star import write_star

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w = StackWriter(folder / "particles.mrcs", n=n, box=box, apix=2.0, force=True)
    for start in range(0, n, 2048):
        w.write(rng.standard_normal((min(2048, n - start), box, box), dtype=np.float32))
    w.close()
    du = rng.uniform(10000, 25000, n)
    write_star(folder / "particles.star", pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@particles.mrcs" for i in range(n)], "rlnDefocusU": du, "rlnDefocusV": du,
        "rlnDefocusAngle": 0.0, "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1,
        "rlnImagePixelSize": 2.0, "rlnOpticsGroup": 1}), force=True)


def memory(counts: list[int], work: Path) -> list[dict]:
    rows = []
    for n in counts:
        folder = work / f"mem_{n}"
        _write_noise_stack(n, folder)
        code = (f"import json, benchmarks.bench_classify2d as b; "
                f"print(json.dumps(b._child_memory({n}, {str(folder)!r})))")
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            rows.append({"particles": n, "error": proc.stderr.strip()[-300:]})
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append({"particles": n, "peak_rss_mb": round(r["peak_rss_mb"], 1), "peak_anon_mb": round(r["peak_anon_mb"], 1),
                     "file_backed_mb_at_end": round(r["file_backed_mb_at_end"], 1), "seconds": round(r["seconds"], 1)})
        print(f"  {n} particles: peak RSS {r['peak_rss_mb']:.0f} MB (anonymous {r['peak_anon_mb']:.0f} MB; "
              f"memory-mapped stack pages {r['file_backed_mb_at_end']:.0f} MB at the end), {r['seconds']:.0f} s", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def main() -> None:
    parts = _env("PARTS", "accuracy,peers,throughput,memory").split(",")
    snrs = [float(x) for x in _env("SNRS", "1,0.1,0.05").split(",") if x]
    peers = [x for x in _env("PEERS", "relion,aspire").split(",") if x and x != "none"]
    iterations = int(_env("ITERATIONS", "20"))
    result: dict = {"load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench_c2d_") as d:
        work = Path(d)
        if "accuracy" in parts:
            print("accuracy (7PBL, 6 views x 100, 48 px, CTF, shifts <= 3 px):", flush=True)
            result["accuracy"] = accuracy(snrs, iterations, work, ablation=_env("ABLATION", "1") == "1")
        if "peers" in parts and peers:
            snr = float(_env("PEER_SNR", "0.1"))
            print(f"peers at SNR {snr:g} (run once):", flush=True)
            result["peers"] = []
            if "relion" in peers:
                result["peers"].append(relion(snr, work, float(_env("RELION_BUDGET", "1800"))))
            if "aspire" in peers:
                result["peers"].append(aspire(snr, work))
            for r in result["peers"]:
                if "skipped" in r:
                    print(f"  {r['tool']}: skipped — {r['skipped']}", flush=True)
        if "throughput" in parts:
            print("throughput (50 classes, psi step 6, offsets 5 px):", flush=True)
            result["throughput"] = throughput(int(_env("THROUGHPUT_N", "1000")))
        if "memory" in parts:
            print("peak memory (10 classes, 64 px, working box 32):", flush=True)
            result["memory"] = memory([int(x) for x in _env("MEM_COUNTS", "5000,50000").split(",") if x], work)
    result["load_average_after"] = os.getloadavg()
    out = ROOT / "bench_out"
    out.mkdir(exist_ok=True)
    (out / "bench_classify2d.json").write_text(json.dumps(result, indent=1))
    print(f"load average before {result['load_average_before']}, after {result['load_average_after']}")


if __name__ == "__main__":
    main()

"""CTF estimation accuracy and speed on simulated micrographs, against ASPIRE's ``estimate_ctf``.

The simulator (:func:`cryomap.simulate.dataset.simulate_dataset`) records each micrograph's CTF at
its centre (``manifest.json`` ``micrograph_ctf``) and each particle's own defocus (the STAR); the
specimen is tilted (``specimen_tilt``) so the defocus varies across a micrograph and per-patch
fitting has something to find. Measured, over micrographs spanning 0.8–3 µm:

- per micrograph: |mean defocus error| (Å and %), astigmatism-angle error (mod 180°) where the
  astigmatism U − V ≥ 300 Å, figure of merit;
- per particle: |particle defocus − estimate| for the micrograph's single value and for the
  ``--patches`` model at the particle's position;
- seconds per micrograph (the accuracy set) and per 4096² micrograph (a separate timing set),
  cryomap without pictures (the PNG is timed apart) and ASPIRE in the same run.

ASPIRE (``aspire==0.14.3``, numpy/scipy/finufft; not a cryomap dependency) runs from a separate
venv ``.venv-peers`` through a subprocess; when it is absent the peer rows are skipped with a
message (``CRYOMAP_BENCH_INSTALL_PEERS=1`` creates it with pip). ASPIRE's angle convention is not
documented; its angle is compared under the mapping (θ, −θ, 90° − θ, θ + 90°) that fits best,
and the table says which.

``python -m benchmarks ctf``; JSON to ``bench_out/bench_ctf.json``. Environment:
``CRYOMAP_BENCH_CTF_N`` micrographs (default 24), ``CRYOMAP_BENCH_CTF_SIZE`` px (default 2048),
``CRYOMAP_BENCH_CTF_TIMING`` 4096² micrographs timed (default 3, 0 to skip),
``CRYOMAP_BENCH_CTF_PEER`` (default 1; 0 skips ASPIRE).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / ".venv-peers"
APIX, VOLTAGE, CS, AMP = 2.0, 300.0, 2.7, 0.1


def simulate(out: Path, n: int, size: int, seed: int, tilt: float, per_mic: int = 24) -> Path:
    """A 1BHL dataset of ``n`` micrographs of ``size``² px, defocus 0.8–3 µm, astigmatism up to 1000 Å."""
    from cryomap.simulate.dataset import simulate_dataset

    return simulate_dataset(["1BHL"], out, n_particles=n * per_mic, micrograph_size=size, apix=APIX, snr=0.1,
                            defocus_range=(8000.0, 30000.0), seed=seed, n_micrographs=n, astigmatism=1000.0,
                            specimen_tilt=tilt, progress=False)[0]


def angle_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a − b| modulo 180°, in [0, 90]."""
    d = np.abs((np.asarray(a) - np.asarray(b) + 90.0) % 180.0 - 90.0)
    return d


def truth_tables(folder: Path):
    import pandas as pd

    from cryomap.io.star import read_star

    man = json.loads((folder / "manifest.json").read_text())
    mics = pd.DataFrame(man["micrograph_ctf"])
    parts = read_star(next((folder / "ground_truth").glob("*_particles_selected.star"))).particles
    return mics, parts


def score_cryomap(folder: Path, out: Path, patches: tuple[int, int]) -> dict:
    """Run ``estimate_ctf`` (with patches, pictures off for the timing, then one picture timed) and score it."""
    import pandas as pd
    import torch

    from cryomap.ctf_estimation.attach import EstimatedCtf
    from cryomap.ctf_estimation.diagnostics import write_diagnostic_png
    from cryomap.ctf_estimation.estimate import estimate_micrograph, plan_tasks
    from cryomap.ctf_estimation.fit import FitSettings

    torch.set_num_threads(1)
    tasks, _ = plan_tasks(folder, tile=512)
    settings = FitSettings()
    rows = []
    t0 = time.perf_counter()
    for t in tasks:
        res = estimate_micrograph(t, settings, 512, patches, 1, None)
        rows.append(res["row"])
    seconds = (time.perf_counter() - t0) / len(tasks)
    table = pd.DataFrame(rows)
    # one diagnostic picture, timed apart
    from cryomap.ctf_estimation.fit import fit_spectrum
    from cryomap.ctf_estimation.model import Optics
    from cryomap.ctf_estimation.power_spectrum import average_spectra
    from cryomap.io.micrograph import read_micrograph

    m = read_micrograph(tasks[0].path, mmap=True)
    fit, _ = fit_spectrum(average_spectra(m.data, m.apix, 512).total, Optics(VOLTAGE, CS, AMP, m.apix), settings)
    out.mkdir(parents=True, exist_ok=True)
    tp = time.perf_counter()
    write_diagnostic_png(out / "example.png", fit, title=tasks[0].name)
    png_seconds = time.perf_counter() - tp

    mics, parts = truth_tables(folder)
    merged = mics.merge(table, left_on="micrograph", right_on="rlnMicrographName")
    truth_mean = (merged.defocus_u + merged.defocus_v) / 2
    est_mean = (merged.rlnDefocusU + merged.rlnDefocusV) / 2
    err = np.abs(est_mean - truth_mean)
    astig = merged.defocus_u - merged.defocus_v
    big = astig >= 300
    ang = angle_error(merged.rlnDefocusAngle, merged.defocus_angle)[big]
    # per particle: the micrograph's one value against the patch model at each particle
    star = out / "micrographs_ctf.star"
    from cryomap.io.star import write_star

    write_star(star, table.assign(rlnVoltage=VOLTAGE, rlnSphericalAberration=CS, rlnAmplitudeContrast=AMP,
                                  rlnMicrographPixelSize=APIX), block="micrographs", force=True)
    ctf = EstimatedCtf.load(star)
    per_mic, per_patch = [], []
    for name, g in parts.groupby("rlnMicrographName"):
        truth_p = (g.rlnDefocusU + g.rlnDefocusV).to_numpy() / 2
        row = table[table.rlnMicrographName == name].iloc[0]
        per_mic.append(np.abs(truth_p - (row.rlnDefocusU + row.rlnDefocusV) / 2))
        cols = ctf.columns_for(name, g.rlnCoordinateX.to_numpy(), g.rlnCoordinateY.to_numpy())
        per_patch.append(np.abs(truth_p - (cols.rlnDefocusU + cols.rlnDefocusV).to_numpy() / 2))
    per_mic, per_patch = np.concatenate(per_mic), np.concatenate(per_patch)
    return {
        "n": int(len(merged)), "defocus_min": float(truth_mean.min()), "defocus_max": float(truth_mean.max()),
        "median_abs_err_A": float(np.median(err)), "median_rel_err_pct": float(np.median(err / truth_mean) * 100),
        "max_abs_err_A": float(err.max()),
        "n_astig_ge_300": int(big.sum()), "median_angle_err_deg": float(np.median(ang)) if big.any() else None,
        "max_angle_err_deg": float(ang.max()) if big.any() else None,
        "median_fom": float(table.rlnCtfFigureOfMerit.median()),
        "per_particle_err_micrograph_A": float(np.median(per_mic)),
        "per_particle_err_patches_A": float(np.median(per_patch)),
        "seconds_per_micrograph": seconds, "png_seconds": png_seconds,
    }


def time_cryomap(folder: Path) -> float:
    import torch

    from cryomap.ctf_estimation.estimate import estimate_micrograph, plan_tasks
    from cryomap.ctf_estimation.fit import FitSettings

    torch.set_num_threads(1)
    tasks, _ = plan_tasks(folder, tile=512)
    estimate_micrograph(tasks[0], FitSettings(), 512, None, 1, None)  # warm-up (imports, caches)
    t0 = time.perf_counter()
    for t in tasks:
        estimate_micrograph(t, FitSettings(), 512, None, 1, None)
    return (time.perf_counter() - t0) / len(tasks)


# --------------------------------------------------------------------------- ASPIRE, in its own venv

_ASPIRE_CHILD = r"""
import json, os, sys, time, tempfile
os.environ.setdefault("OMP_NUM_THREADS", "1")
from aspire.ctf import estimate_ctf
folder, apix, cs, amp, volt = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
n = len([f for f in os.listdir(folder) if f.endswith(".mrc")])
t0 = time.perf_counter()
with tempfile.TemporaryDirectory() as out:
    res = estimate_ctf(folder, pixel_size=apix, cs=cs, amplitude_contrast=amp, voltage=volt, psd_size=512,
                       g_min=30, g_max=5, output_dir=out)
sec = (time.perf_counter() - t0) / max(n, 1)
print(json.dumps({"seconds_per_micrograph": sec, "results": {k: {kk: float(vv) for kk, vv in v.items()} for k, v in res.items()}}))
"""


def peer_python() -> Path | None:
    """``.venv-peers/bin/python`` if it imports ASPIRE (created when CRYOMAP_BENCH_INSTALL_PEERS=1), else None."""
    py = PEERS / "bin" / "python"
    if not py.exists() and os.environ.get("CRYOMAP_BENCH_INSTALL_PEERS") == "1":
        subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "aspire==0.14.3"], check=True)
    if not py.exists():
        return None
    ok = subprocess.run([str(py), "-c", "import aspire.ctf"], capture_output=True).returncode == 0
    return py if ok else None


def run_aspire(py: Path, folder: Path, timeout: float = 3600) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([str(py), "-c", _ASPIRE_CHILD, str(folder), str(APIX), str(CS), str(AMP), str(VOLTAGE)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"ASPIRE failed: {proc.stderr[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def score_aspire(py: Path, folder: Path) -> dict:
    res = run_aspire(py, folder / "micrographs")
    mics, _ = truth_tables(folder)
    u = np.array([res["results"][Path(m).name]["defocus_u"] for m in mics.micrograph])
    v = np.array([res["results"][Path(m).name]["defocus_v"] for m in mics.micrograph])
    a = np.degrees([res["results"][Path(m).name]["defocus_ang"] for m in mics.micrograph])
    uu, vv = np.maximum(u, v), np.minimum(u, v)
    a = np.where(u >= v, a, a + 90.0)
    truth_mean = (mics.defocus_u + mics.defocus_v).to_numpy() / 2
    err = np.abs((uu + vv) / 2 - truth_mean)
    big = (mics.defocus_u - mics.defocus_v).to_numpy() >= 300
    best = None
    for label, mapped in (("θ", a), ("−θ", -a), ("90°−θ", 90 - a), ("θ+90°", a + 90)):
        e = angle_error(mapped, mics.defocus_angle.to_numpy())[big]
        if best is None or np.median(e) < best[1]:
            best = (label, float(np.median(e)) if big.any() else None)
    return {"n": int(len(mics)), "median_abs_err_A": float(np.median(err)),
            "median_rel_err_pct": float(np.median(err / truth_mean) * 100), "max_abs_err_A": float(err.max()),
            "median_angle_err_deg": best[1], "angle_mapping": best[0],
            "seconds_per_micrograph": res["seconds_per_micrograph"]}


def main() -> dict:
    n = int(os.environ.get("CRYOMAP_BENCH_CTF_N", "24"))
    size = int(os.environ.get("CRYOMAP_BENCH_CTF_SIZE", "2048"))
    n_timing = int(os.environ.get("CRYOMAP_BENCH_CTF_TIMING", "3"))
    with_peer = os.environ.get("CRYOMAP_BENCH_CTF_PEER", "1") != "0"
    results: dict = {"settings": {"n": n, "size": size, "apix": APIX, "tilt_deg": 6.0, "tile": 512}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        folder = simulate(tmp / "acc", n, size, seed=11, tilt=6.0)
        print(f"simulated {n} micrographs of {size}² px in {time.perf_counter() - t0:.0f} s", flush=True)
        grid = (3, 3) if size >= 1536 else (2, 2)
        results["settings"]["patches"] = f"{grid[1]}x{grid[0]}"
        results["cryomap"] = score_cryomap(folder, tmp / "out", grid)
        py = peer_python() if with_peer else None
        if py is None:
            msg = ("ASPIRE skipped: .venv-peers with aspire==0.14.3 not found (create it with "
                   "`python -m venv .venv-peers && .venv-peers/bin/pip install aspire==0.14.3`, or run with "
                   "CRYOMAP_BENCH_INSTALL_PEERS=1)") if with_peer else "ASPIRE skipped (CRYOMAP_BENCH_CTF_PEER=0)"
            print(msg, flush=True)
            results["aspire"] = {"skipped": msg}
        else:
            results["aspire"] = score_aspire(py, folder)
        if n_timing > 0:
            tfolder = simulate(tmp / "timing", n_timing, 4096, seed=12, tilt=0.0, per_mic=8)
            results["timing_4096"] = {"cryomap_seconds": time_cryomap(tfolder)}
            if py is not None:
                results["timing_4096"]["aspire_seconds"] = run_aspire(py, tfolder / "micrographs")["seconds_per_micrograph"]
    _print(results)
    out = ROOT / "bench_out"
    out.mkdir(exist_ok=True)
    (out / "bench_ctf.json").write_text(json.dumps(results, indent=2))
    return results


def _fmt(v, spec=".1f"):
    return "—" if v is None else format(v, spec)


def _print(r: dict) -> None:
    c, a = r["cryomap"], r.get("aspire", {})
    print(f"\nCTF estimation: {c['n']} simulated micrographs, {r['settings']['size']}² px at {APIX} Å/px, "
          f"defocus {c['defocus_min']:.0f}–{c['defocus_max']:.0f} Å, specimen tilt {r['settings']['tilt_deg']}°")
    print(f"{'':34s} {'cryomap':>12s} {'ASPIRE':>12s}")
    rows = [
        ("median |defocus error| (Å)", c["median_abs_err_A"], a.get("median_abs_err_A"), ".0f"),
        ("median |defocus error| (%)", c["median_rel_err_pct"], a.get("median_rel_err_pct"), ".2f"),
        ("max |defocus error| (Å)", c["max_abs_err_A"], a.get("max_abs_err_A"), ".0f"),
        (f"median angle error, astig≥300 Å (°) [{c['n_astig_ge_300']}]", c["median_angle_err_deg"],
         a.get("median_angle_err_deg"), ".2f"),
        ("max angle error, astig≥300 Å (°)", c["max_angle_err_deg"], None, ".2f"),
        ("median FOM", c["median_fom"], None, ".3f"),
        ("per-particle error, micrograph (Å)", c["per_particle_err_micrograph_A"], None, ".0f"),
        (f"per-particle error, {r['settings']['patches']} patches (Å)", c["per_particle_err_patches_A"], None, ".0f"),
        (f"s / {r['settings']['size']}² micrograph", c["seconds_per_micrograph"], a.get("seconds_per_micrograph"), ".2f"),
        ("s / diagnostic PNG", c["png_seconds"], None, ".2f"),
    ]
    t = r.get("timing_4096")
    if t:
        rows.append(("s / 4096² micrograph", t.get("cryomap_seconds"), t.get("aspire_seconds"), ".2f"))
    for label, x, y, spec in rows:
        print(f"{label:34s} {_fmt(x, spec):>12s} {_fmt(y, spec):>12s}")
    if "angle_mapping" in a:
        print(f"(ASPIRE's angle compared as {a['angle_mapping']}, the mapping that fits it best)")
    if "skipped" in a:
        print(a["skipped"])


if __name__ == "__main__":
    main()

"""The reconstruction engine against RELION and cryoDRGN on the same simulated particles (issue 16).

Data: ``simulate_dataset`` (7PBL and 4JSV; 64-px boxes at 3.2 Å/px, SNR 0.1, defocus 1–2.5 µm,
1024² micrographs) then ``extract_particles`` (contrast inverted): the CryoPPP path the rest of
cryomap uses. Cached under ``bench_out/reconstruct_data/``.

Parts (``CRYOMAP_BENCH_RECON_PARTS``, default ``reconstruct,abinitio,peers``):

* **reconstruct** — the same STAR + stack, as they are, through ``cryomap reconstruct`` with
  ``--threads 1`` and ``--threads 2`` (the default: the two half sets summed at once; the same
  bytes), ``relion_reconstruct --ctf`` (RELION 3.1, which has one thread) and
  ``cryodrgn backproject_voxel`` (cryoDRGN 4.3.1 in ``.venv-peers``; its STAR gets an
  ``rlnPhaseShift`` column, without which its ``parse_ctf_star`` writes NaN phase shifts, and its
  map's sign is flipped when it comes out inverted). Wall time, peak RSS (``wait4``), FSC against
  the truth per shell and whether cryomap's is at least as high at every shell up to ¾ Nyquist.
  ``CRYOMAP_BENCH_RECON_N`` particles (default 10000); each tool ``CRYOMAP_BENCH_RECON_REPEATS``
  times (default 3), the median wall time reported.
* **abinitio** — ``cryomap abinitio`` then ``cryomap refine`` per target
  (``CRYOMAP_BENCH_ABINITIO_N``, default 5000; ``CRYOMAP_BENCH_ABINITIO_TARGETS``, default
  ``7PBL,4JSV``): FSC against the truth after ``align_maps`` (both hands) at 0.5 and 0.143, the
  half-set FSC, the oracle (true poses, ``cryomap reconstruct``) and the ratio of FSC-0.5
  resolutions, and the median angular error of the estimated poses (:mod:`cryomap.reconstruct.compare`).
* **peers** — on the first target: RELION's ``relion_refine --denovo_3dref --sgd`` (25/50/25
  iterations) then ``--auto_refine``, and ``cryodrgn abinit --zdim 0``, each stopped after
  ``CRYOMAP_BENCH_PEER_CAP_S`` seconds (default 3600); their last map is scored as above, and so
  is the last map each had written when cryomap's ab initio + refine had finished (equal wall time).

Every tool runs in its own process with ``OMP_NUM_THREADS=1``; the 1-minute load average is
printed beside the numbers. JSON in ``bench_out/bench_reconstruct.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench_out"
DATA = OUT / "reconstruct_data"
PEERS = ROOT / ".venv-peers"
APIX, BOX, SNR, DEFOCUS = 3.2, 64, 0.1, (10000.0, 25000.0)
CRYOMAP = [sys.executable, "-m", "cryomap"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_measured(cmd: list[str], cwd: Path | None = None, timeout: float | None = None) -> dict:
    """Run ``cmd``; wall seconds, peak RSS (MB, this child only), return code, last output lines."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        timed_out = True
    wall = time.perf_counter() - t0
    # communicate() reaped the child; its rusage is in the children's total only, so read /proc-less:
    # run again through wait4 is impossible, hence the wrapper below for peak memory
    return {"wall_s": wall, "rc": proc.returncode, "timed_out": timed_out, "tail": out[-3000:] if out else ""}


_RSS_WRAPPER = r"""
import os, resource, subprocess, sys, json
p = subprocess.Popen(sys.argv[1:])
_, status, ru = os.wait4(p.pid, 0)
print("__RSS_MB__", json.dumps(ru.ru_maxrss / 1024), flush=True)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_with_rss(cmd: list[str], cwd: Path | None = None, timeout: float | None = None) -> dict:
    """:func:`run_measured` through a tiny wrapper that reports the child's own peak RSS (``wait4``)."""
    res = run_measured([sys.executable, "-c", _RSS_WRAPPER, *cmd], cwd, timeout)
    rss = None
    for line in res["tail"].splitlines():
        if line.startswith("__RSS_MB__"):
            rss = float(line.split()[1])
    res["peak_rss_mb"] = rss
    return res


REPEATS = int(os.environ.get("CRYOMAP_BENCH_RECON_REPEATS", "3"))


def repeated(run, repeats: int | None = None) -> dict:
    """``run()`` ``repeats`` times: the median wall time, the largest peak RSS, the last run's other fields."""
    results = [run() for _ in range(REPEATS if repeats is None else repeats)]
    out = dict(results[-1])
    ok = [r for r in results if r["rc"] == 0]
    if ok:
        out["wall_s"] = float(np.median([r["wall_s"] for r in ok]))
        out["wall_s_runs"] = [r["wall_s"] for r in results]
        rss = [r.get("peak_rss_mb") for r in ok if r.get("peak_rss_mb") is not None]
        out["peak_rss_mb"] = max(rss) if rss else None
    return out


def dataset(target: str, n: int) -> tuple[Path, Path]:
    """(extracted particles.star, truth map) of ``n`` simulated particles of ``target`` (cached)."""
    from cryomap.particles.extract import extract_particles
    from cryomap.simulate.dataset import simulate_dataset

    folder = DATA / f"{target}_{n}"
    star = folder / "particles" / "particles.star"
    truth = folder / "sim" / target / "maps" / f"{target}_truth.mrc"
    if star.exists() and truth.exists():
        return star, truth
    folder.mkdir(parents=True, exist_ok=True)
    sims = simulate_dataset([target], folder / "sim", n_particles=n, micrograph_size=1024, apix=APIX, snr=SNR,
                            defocus_range=DEFOCUS, seed=0, box=BOX, force=True, progress=False)
    res = extract_particles(sims[0], folder / "particles", box=BOX, invert=True, force=True, progress=False)
    return res.star_path, truth


def fsc_truth(path: Path, truth: np.ndarray, align: bool = False) -> dict:
    """FSC of a map against the truth (optionally after alignment, both hands), sign fixed."""
    from cryomap.evaluate.align import align_maps, apply_alignment
    from cryomap.evaluate.fsc import fsc
    from cryomap.io.mrc import read_map

    m = read_map(path).data.astype(np.float32)
    if m.shape != truth.shape:
        from cryomap.reconstruct.maps import resize_map

        m = resize_map(m, truth.shape[0])
    if np.corrcoef(m.ravel(), truth.ravel())[0, 1] < 0 and not align:
        m = -m
    info = {}
    if align:
        al = align_maps(m, truth)
        if al.score < 0:
            al = align_maps(-m, truth)
            m = -m
        m = apply_alignment(m, al)
        info["hand_flipped"] = bool(al.flipped)
    c = fsc(m, truth, APIX)
    return {"fsc": c.fsc.tolist(), "fsc0.5_A": c.resolution(0.5), "fsc0.143_A": c.resolution(0.143), **info}


def peer_python() -> Path | None:
    """``.venv-peers/bin/python`` when it has cryoDRGN (``CRYOMAP_BENCH_INSTALL_PEERS=1`` installs it), else None."""
    py = PEERS / "bin" / "python"
    if os.environ.get("CRYOMAP_BENCH_INSTALL_PEERS") == "1" and not _has_cryodrgn(py):
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
        # torch pinned to the CPU wheel on disk, else pip fetches a CUDA build
        subprocess.run([str(py), "-m", "pip", "install", "torch==2.13.0", "cryodrgn==4.3.1"], check=True)
    return py if _has_cryodrgn(py) else None


def _has_cryodrgn(py: Path) -> bool:
    return py.exists() and subprocess.run([str(py), "-c", "import cryodrgn"], capture_output=True).returncode == 0


def _cryodrgn(py: Path) -> list[str]:
    return [str(py), "-m", "cryodrgn.command_line"]


def _star_for_cryodrgn(star: Path, out: Path) -> Path:
    """A copy of ``star`` with rlnPhaseShift (cryoDRGN's parse_ctf_star makes NaN without it) and absolute image paths."""
    from cryomap.io.star import read_star, write_star
    from cryomap.particles.source import open_particles

    src = open_particles(star)
    tab = read_star(star).particles.copy()
    tab["rlnImageName"] = src.image_names()
    if "rlnPhaseShift" not in tab:
        tab["rlnPhaseShift"] = 0.0
    return write_star(out, tab, force=True)


def part_reconstruct(n: int, load: list) -> dict:
    from cryomap.io.mrc import read_map

    star, truth_path = dataset("7PBL", n)
    truth = read_map(truth_path).data
    work = DATA / f"recon_{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows = {}
    load.append(os.getloadavg()[0])
    for threads in (1, 2):  # 2 (the default) sums the two half sets at once; RELION's relion_reconstruct has one thread
        r = repeated(lambda: run_with_rss([*CRYOMAP, "reconstruct", str(star), "-o", str(work / "cryomap.mrc"), "--force",
                                           "--threads", str(threads)]))
        rows[f"cryomap --threads {threads}"] = {**r, **fsc_truth(work / "cryomap.mrc", truth)} if r["rc"] == 0 else r
    if shutil.which("relion_reconstruct"):
        r = repeated(lambda: run_with_rss(["relion_reconstruct", "--i", str(star.name), "--o", str(work / "relion.mrc"),
                                           "--ctf"], cwd=star.parent))
        rows["relion_reconstruct"] = {**r, **fsc_truth(work / "relion.mrc", truth)} if r["rc"] == 0 else r
    else:
        print("relion_reconstruct skipped: RELION is not installed (apt-get install relion)")
    py = peer_python()
    if py is not None:
        s2 = _star_for_cryodrgn(star, work / "drgn.star")
        D = str(BOX)
        for cmd in (["parse_pose_star", str(s2), "-o", str(work / "pose.pkl"), "-D", D, "--Apix", str(APIX)],
                    ["parse_ctf_star", str(s2), "-o", str(work / "ctf.pkl"), "-D", D, "--Apix", str(APIX)]):
            subprocess.run([str(py.parent / "cryodrgn"), *cmd], env=_env(), capture_output=True, check=True)
        r = repeated(lambda: run_with_rss([str(py.parent / "cryodrgn"), "backproject_voxel", str(s2), "--poses",
                                           str(work / "pose.pkl"), "--ctf", str(work / "ctf.pkl"), "-o", str(work / "drgn")]))
        maps = sorted((work / "drgn").glob("backproject*.mrc")) if (work / "drgn").is_dir() else []
        if r["rc"] == 0 and maps:
            rows["cryodrgn backproject_voxel"] = {**r, **fsc_truth(maps[0], truth)}
        else:
            rows["cryodrgn backproject_voxel"] = r
    else:
        print("cryodrgn backproject_voxel skipped: .venv-peers has no cryodrgn==4.3.1 "
              "(run with CRYOMAP_BENCH_INSTALL_PEERS=1 to create it)")
    load.append(os.getloadavg()[0])
    nyq = BOX // 2
    upto = int(np.floor(0.75 * nyq))
    ours = np.array(rows["cryomap --threads 1"].get("fsc", [np.nan] * (nyq + 1)))
    verdict = {}
    for name, row in rows.items():
        if name.startswith("cryomap") or "fsc" not in row:
            continue
        theirs = np.array(row["fsc"])
        margin = ours[1:upto + 1] - theirs[1:upto + 1]
        verdict[name] = {"cryomap_ge_every_shell_to_3/4_nyquist": bool(np.all(margin >= -1e-4)),
                         "worst_margin": float(margin.min()), "worst_shell": int(np.argmin(margin) + 1),
                         "speed_ratio_threads1": row["wall_s"] / rows["cryomap --threads 1"]["wall_s"],
                         "speed_ratio_threads2": row["wall_s"] / rows["cryomap --threads 2"]["wall_s"]}
    print(f"\nreconstruct: {n} particles of 7PBL, {BOX} px at {APIX} Å/px, SNR {SNR}; whole process, median of "
          f"{REPEATS} runs (RSS: the largest)")
    print(f"{'tool':<28} {'wall s':>8} {'RSS MB':>8} {'FSC@1/4':>8} {'FSC@1/2':>8} {'FSC@3/4':>8} {'0.5 Å':>7}")
    for name, row in rows.items():
        if "fsc" in row:
            f = row["fsc"]
            print(f"{name:<28} {row['wall_s']:>8.1f} {row['peak_rss_mb'] or 0:>8.0f} {f[nyq // 4]:>8.3f} {f[nyq // 2]:>8.3f} "
                  f"{f[upto]:>8.3f} {row['fsc0.5_A']:>7.1f}")
        else:
            print(f"{name:<28} failed (rc {row['rc']}): {row['tail'][-300:]}")
    for name, v in verdict.items():
        print(f"cryomap vs {name}: FSC ≥ at every shell to ¾ Nyquist: {v['cryomap_ge_every_shell_to_3/4_nyquist']} "
              f"(worst margin {v['worst_margin']:+.4f} at shell {v['worst_shell']}); {name} took "
              f"{v['speed_ratio_threads1']:.2f}× the time of cryomap with one thread, "
              f"{v['speed_ratio_threads2']:.2f}× with two")
    return {"n": n, "rows": {k: {kk: vv for kk, vv in v.items() if kk != "tail"} for k, v in rows.items()},
            "verdict": verdict}


def _poses_error(est_star: Path, true_star: Path, symmetry: str = "C1") -> float:
    from cryomap.core.euler import euler_to_matrix
    from cryomap.particles.source import open_particles
    from cryomap.reconstruct.compare import pose_errors
    from cryomap.reconstruct.symmetry import symmetry_operators

    e, t = open_particles(est_star).poses(), open_particles(true_star).poses()
    return pose_errors(euler_to_matrix(e.rot, e.tilt, e.psi), euler_to_matrix(t.rot, t.tilt, t.psi),
                       symmetry_operators(symmetry)).median


def part_abinitio(targets: list[str], n: int, load: list) -> dict:
    from cryomap.io.mrc import read_map

    out = {}
    for target in targets:
        star, truth_path = dataset(target, n)
        truth = read_map(truth_path).data
        work = DATA / f"abinitio_{target}_{n}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        load.append(os.getloadavg()[0])
        ab = run_with_rss([*CRYOMAP, "abinitio", str(star), "-o", str(work / "ab")])
        ref = run_with_rss([*CRYOMAP, "refine", str(work / "ab" / "particles.star"), "--reference",
                            str(work / "ab" / "map.mrc"), "-o", str(work / "refine")]) if ab["rc"] == 0 else ab
        orc = run_with_rss([*CRYOMAP, "reconstruct", str(star), "-o", str(work / "oracle.mrc")])
        row = {"abinitio_s": ab["wall_s"], "refine_s": ref["wall_s"], "rc": [ab["rc"], ref["rc"], orc["rc"]]}
        if ab["rc"] == 0 and ref["rc"] == 0 and orc["rc"] == 0:
            row["abinitio"] = fsc_truth(work / "ab" / "map.mrc", truth, align=True)
            row["refine"] = fsc_truth(work / "refine" / "map.mrc", truth, align=True)
            row["oracle"] = fsc_truth(work / "oracle.mrc", truth)
            row["ratio_fsc05_refine_over_oracle"] = row["refine"]["fsc0.5_A"] / row["oracle"]["fsc0.5_A"]
            row["median_angular_error_abinitio_deg"] = _poses_error(work / "ab" / "particles.star", star)
            row["median_angular_error_refine_deg"] = _poses_error(work / "refine" / "particles.star", star)
            settings = json.loads((work / "refine" / "settings.json").read_text())
            row["refine_half_set_fsc0143_masked_A"] = settings["resolution_fsc0143_masked_A"]
            print(f"\n{target}, {n} particles: ab initio {ab['wall_s']:.0f} s → FSC-0.5 vs truth "
                  f"{row['abinitio']['fsc0.5_A']:.1f} Å (median pose error {row['median_angular_error_abinitio_deg']:.1f}°); "
                  f"refine {ref['wall_s']:.0f} s → {row['refine']['fsc0.5_A']:.1f} Å (0.143 vs truth "
                  f"{row['refine']['fsc0.143_A']:.1f} Å, half sets {row['refine_half_set_fsc0143_masked_A']:.1f} Å masked; "
                  f"pose error {row['median_angular_error_refine_deg']:.2f}°, hand flipped "
                  f"{row['refine']['hand_flipped']}); oracle {row['oracle']['fsc0.5_A']:.1f} Å; ratio "
                  f"{row['ratio_fsc05_refine_over_oracle']:.2f} (goal ≤ 1.5)")
        else:
            print(f"\n{target}: a step failed: {ab['tail'][-500:]} {ref['tail'][-500:]}")
        load.append(os.getloadavg()[0])
        out[target] = row
    return out


def _latest_before(folder: Path, pattern: str, start: float, seconds: float | None) -> Path | None:
    maps = [p for p in folder.rglob(pattern) if seconds is None or p.stat().st_mtime - start <= seconds]
    return max(maps, key=lambda p: p.stat().st_mtime) if maps else None


def part_peers(target: str, n: int, cap: float, cryomap_seconds: float | None, load: list) -> dict:
    from cryomap.io.mrc import read_map

    star, truth_path = dataset(target, n)
    truth = read_map(truth_path).data
    work = DATA / f"peers_{target}_{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out = {}
    diameter = str(int(0.8 * BOX * APIX))
    if shutil.which("relion_refine"):
        (work / "relion").mkdir()
        start = time.time()
        # --j 2 for both RELION steps: the two cores cryomap (torch) and cryoDRGN use on this machine too
        sgd = run_measured(["relion_refine", "--o", str(work / "relion" / "sgd"), "--i", str(star), "--sgd",
                            "--denovo_3dref", "--sgd_ini_iter", "25", "--sgd_inbetween_iter", "50", "--sgd_fin_iter",
                            "25", "--sgd_write_iter", "1", "--ctf", "--K", "1", "--sym", "C1", "--zero_mask",
                            "--particle_diameter", diameter, "--oversampling", "1", "--healpix_order", "1",
                            "--offset_range", "6", "--offset_step", "2", "--pad", "1", "--j", "2",
                            "--dont_combine_weights_via_disc", "--pool", "3"], cwd=star.parent, timeout=cap)
        last = _latest_before(work / "relion", "sgd_it*_class001.mrc", start, None)
        left = cap - (time.time() - start)
        if last is not None and left > 60:
            run_measured(["relion_refine", "--o", str(work / "relion" / "refine"), "--i", str(star), "--ref", str(last),
                          "--auto_refine", "--split_random_halves", "--ini_high", "40", "--ctf", "--firstiter_cc",
                          "--particle_diameter", diameter, "--flatten_solvent", "--zero_mask", "--oversampling", "1",
                          "--healpix_order", "2", "--auto_local_healpix_order", "4", "--offset_range", "5",
                          "--offset_step", "2", "--sym", "C1", "--low_resol_join_halves", "40", "--norm", "--scale",
                          "--j", "2", "--pad", "2", "--dont_combine_weights_via_disc", "--pool", "3"],
                         cwd=star.parent, timeout=left)
        final = _latest_before(work / "relion", "*class001.mrc", start, None)
        equal = _latest_before(work / "relion", "*class001.mrc", start, cryomap_seconds)
        out["relion sgd + auto_refine"] = {
            "wall_s": time.time() - start, "sgd_rc": sgd["rc"], "timed_out": sgd["timed_out"],
            "final": fsc_truth(final, truth, align=True) if final else None,
            "at_cryomap_time": fsc_truth(equal, truth, align=True) if equal else None}
    else:
        print("RELION peers skipped: relion_refine not installed")
    py = peer_python()
    if py is not None:
        s2 = _star_for_cryodrgn(star, work / "drgn.star")
        subprocess.run([str(py.parent / "cryodrgn"), "parse_ctf_star", str(s2), "-o", str(work / "ctf.pkl"), "-D",
                        str(BOX), "--Apix", str(APIX)], env=_env(), capture_output=True, check=True)
        start = time.time()
        r = run_measured([str(py.parent / "cryodrgn"), "abinit", str(s2), "--ctf", str(work / "ctf.pkl"), "--zdim", "0",
                          "-o", str(work / "drgn")], timeout=cap)
        final = _latest_before(work / "drgn", "*.mrc", start, None)
        equal = _latest_before(work / "drgn", "*.mrc", start, cryomap_seconds)
        out["cryodrgn abinit --zdim 0"] = {
            "wall_s": time.time() - start, "rc": r["rc"], "timed_out": r["timed_out"],
            "final": fsc_truth(final, truth, align=True) if final else None,
            "at_cryomap_time": fsc_truth(equal, truth, align=True) if equal else None}
    else:
        print("cryodrgn abinit skipped: .venv-peers has no cryodrgn==4.3.1 (CRYOMAP_BENCH_INSTALL_PEERS=1 creates it)")
    load.append(os.getloadavg()[0])
    for name, row in out.items():
        f, e = row.get("final"), row.get("at_cryomap_time")
        at_end = f"{f['fsc0.5_A']:.1f} Å" if f else "no map written yet"
        at_equal = f"{e['fsc0.5_A']:.1f} Å" if e else "no map written yet"
        print(f"{name}: {row['wall_s']:.0f} s{' (stopped at the cap)' if row.get('timed_out') else ''}; FSC-0.5 vs truth "
              f"after alignment {at_end} at the end, {at_equal} at cryomap's wall time")
    return out


def main() -> dict:
    parts = os.environ.get("CRYOMAP_BENCH_RECON_PARTS", "reconstruct,abinitio,peers").split(",")
    n_rec = int(os.environ.get("CRYOMAP_BENCH_RECON_N", "10000"))
    n_ab = int(os.environ.get("CRYOMAP_BENCH_ABINITIO_N", "5000"))
    targets = os.environ.get("CRYOMAP_BENCH_ABINITIO_TARGETS", "7PBL,4JSV").split(",")
    cap = float(os.environ.get("CRYOMAP_BENCH_PEER_CAP_S", "3600"))
    load: list = []
    result: dict = {"benchmark": "reconstruct", "apix": APIX, "box": BOX, "snr": SNR, "cpus": os.cpu_count()}
    if "reconstruct" in parts:
        result["reconstruct"] = part_reconstruct(n_rec, load)
    cryomap_s = None
    if "abinitio" in parts:
        result["abinitio"] = part_abinitio(targets, n_ab, load)
        first = result["abinitio"].get(targets[0], {})
        if "abinitio_s" in first:
            cryomap_s = first["abinitio_s"] + first["refine_s"]
    if "peers" in parts:
        result["peers"] = part_peers(targets[0], n_ab, cap, cryomap_s, load)
    result["load_average_1min"] = load
    print(f"1-min load average during the runs: {', '.join(f'{v:.1f}' for v in load)} on {os.cpu_count()} CPUs")
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_reconstruct.json").write_text(json.dumps(result, indent=2, default=float))
    return result


if __name__ == "__main__":
    main()

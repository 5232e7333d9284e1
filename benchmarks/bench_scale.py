"""Extraction at scale, side by side with the field's tools, and memory flat in the particle count.

Same input for everyone: 20 micrographs of 4096² float32 MRC, 300 particles each, a CTF per
micrograph. Every measurement runs in its own process (wall time of the job, peak RSS from
``ru_maxrss``), all in the same run, three rounds taking the tools in turn (medians; the largest
RSS):

* **cryomap** ``extract`` (the command, 1 worker): cut + RELION background normalisation, and the
  same + phase flip (``--phase-flip``), box 128 and 256, writing ``particles.mrcs`` + ``particles.star``;
* **ASPIRE 0.14.3** ``CentersCoordinateSource(...).normalize_background()`` and
  ``.phase_flip().normalize_background()`` (ASPIRE fails on the other order), ``save`` to a stack;
  from the benchmark-only venv ``.venv-peers`` (skipped with a message when absent);
* **RELION 3.1** ``relion_preprocess --extract --norm [--phase_flip]`` (Debian's ``relion``; one
  process; skipped when absent);
* **numpy floor**: a plain script — memory-map each micrograph, slice the boxes, normalise the
  background ring, write the stack — the least work Python can do for the job;
* **read floor**: touching every byte of the same memory-mapped micrographs once;
* **write floor**: writing the stack's bytes (16 MiB positioned writes of one buffer) into a new file,
  in the same rotation as the tools: what this machine charges any tool for its output.

Then cryomap's extraction + preprocessing (standardize, phase-flip, clahe, guided) of 1,000 and
100,000 particles (64 px; micrographs reused through links), peak memory of each, ratio ≤ 1.5.

Before every measured run the benchmark flushes dirty pages (``os.sync``), so a tool does not pay
for the previous tool's writes, then waits :data:`SETTLE_S` seconds, so every tool starts in the
same memory state (see :func:`_settle`). ``python -m benchmarks scale``; JSON in ``bench_out/bench_scale.json``. ``CRYOMAP_BENCH_QUICK=1``
uses 4 micrographs and 1k/10k particles (a smoke run).
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

from benchmarks.tables import print_rows

QUICK = os.environ.get("CRYOMAP_BENCH_QUICK") == "1"
MIC = 4096
PER_MIC = 300
APIX = 1.0
#: Rounds of every tool in every setting (medians reported); ``CRYOMAP_BENCH_SCALE_REPEATS``
REPEATS = int(os.environ.get("CRYOMAP_BENCH_SCALE_REPEATS", "1" if QUICK else "3"))
ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / ".venv-peers" / "bin" / "python"
#: Seconds to wait after flushing, before each measured run (``CRYOMAP_BENCH_SETTLE_S``; see :func:`_settle`).
SETTLE_S = float(os.environ.get("CRYOMAP_BENCH_SETTLE_S", "1" if QUICK else "10"))


def make_data(root: Path, n_mics: int, box_max: int = 256, mic: int = MIC, per_mic: int = PER_MIC, seed: int = 0) -> Path:
    """A CryoPPP folder (MRC micrographs, CSV coordinates, a particle STAR with CTF) plus the files
    ASPIRE (.coord) and RELION (micrographs STAR, per-micrograph coordinate STARs) read."""
    import numpy as np
    import pandas as pd

    from cryomap.io.coords import write_cryoppp_csv
    from cryomap.io.mrc import write_mrc
    from cryomap.io.star import write_star

    rng = np.random.default_rng(seed)
    for sub in ("micrographs", "ground_truth/particle_coordinates", "coords"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    particles, mics = [], []
    for i in range(n_mics):
        name = f"mic_{i:03d}"
        write_mrc(root / "micrographs" / f"{name}.mrc", rng.standard_normal((mic, mic), dtype=np.float32), APIX)
        xy = rng.integers(box_max // 2 + 1, mic - box_max // 2 - 1, size=(per_mic, 2))
        write_cryoppp_csv(root / "ground_truth" / "particle_coordinates" / f"{name}.csv",
                          pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "diameter": box_max // 2}), force=True)
        np.savetxt(root / "coords" / f"{name}.coord", xy, fmt="%d")
        du = float(rng.uniform(10000, 25000))
        mics.append({"rlnMicrographName": f"micrographs/{name}.mrc", "rlnDefocusU": du, "rlnDefocusV": du - 200.0,
                     "rlnDefocusAngle": 30.0, "rlnCtfMaxResolution": 4.0, "rlnCtfFigureOfMerit": 0.3})
        pd.DataFrame({"rlnCoordinateX": xy[:, 0], "rlnCoordinateY": xy[:, 1]}).pipe(
            lambda df: _write_relion_coords(root / "micrographs" / f"{name}_pick.star", df))
        for x, y in xy:
            particles.append({"rlnMicrographName": f"micrographs/{name}.mrc", "rlnCoordinateX": float(x),
                              "rlnCoordinateY": float(y), "rlnDefocusU": du, "rlnDefocusV": du - 200.0,
                              "rlnDefocusAngle": 30.0})
    optics = {"rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1,
              "rlnMicrographPixelSize": APIX, "rlnMicrographOriginalPixelSize": APIX, "rlnImagePixelSize": APIX}
    write_star(root / "ground_truth" / "10999_particles_selected.star",
               pd.DataFrame(particles).assign(**optics), force=True)
    write_star(root / "micrographs_ctf.star", pd.DataFrame(mics).assign(**{k: v for k, v in optics.items()
                                                                            if k != "rlnImagePixelSize"}),
               force=True, block="micrographs")
    return root


def _write_relion_coords(path: Path, df) -> None:
    import starfile

    starfile.write({"": df}, path, overwrite=True)


# --------------------------------------------------------------------------- measured children

def _report(t0: float, n: int, seconds: float | None = None) -> None:
    import resource

    print(json.dumps({"seconds": time.perf_counter() - t0 if seconds is None else seconds, "particles": n,
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def child_cryomap(data: str, out: str, box: int, flip: bool) -> None:
    """The ``cryomap extract`` command itself (what a user runs), in this process."""
    t0 = time.perf_counter()
    from cryomap.cli import main

    rc = main(["extract", data, "-o", out, "--box", str(box), "--force", *(["--phase-flip"] if flip else [])])
    if rc:
        raise SystemExit(rc)
    seconds = time.perf_counter() - t0
    from cryomap.io.mrc import read_stack

    n = read_stack(Path(out) / "particles.mrcs", mmap=True).data.shape[0]
    _report(t0, n, seconds)


def child_numpy(data: str, out: str, box: int) -> None:
    """Plain numpy: mmap, slice, normalise the background ring, write one stack."""
    t0 = time.perf_counter()
    import mrcfile
    import numpy as np
    import pandas as pd

    yy, xx = np.mgrid[:box, :box]
    ring = (xx - box // 2) ** 2 + (yy - box // 2) ** 2 > (0.75 * box / 2) ** 2
    mics = sorted((Path(data) / "micrographs").glob("*.mrc"))
    n = 0
    with open(Path(out) / "stack.raw", "wb") as fh:
        for m in mics:
            xy = pd.read_csv(Path(data) / "ground_truth" / "particle_coordinates" / f"{m.stem}.csv").to_numpy()[:, :2]
            with mrcfile.mmap(m, mode="r") as mrc:
                img = mrc.data
                boxes = np.stack([img[y - box // 2:y + box // 2, x - box // 2:x + box // 2] for x, y in xy.astype(int)])
            bg = boxes[:, ring]
            boxes = (boxes - bg.mean(1)[:, None, None]) / bg.std(1)[:, None, None]
            fh.write(boxes.astype(np.float32).tobytes())
            n += len(boxes)
    _report(t0, n)


def child_write_floor(out: str, n_bytes: int) -> None:
    """Write ``n_bytes`` into a new file with 16 MiB positioned writes of one buffer: the cost of the output alone."""
    t0 = time.perf_counter()
    import numpy as np

    buf = np.random.default_rng(0).standard_normal((16 << 20) // 4, dtype=np.float32).view(np.uint8)
    fd = os.open(Path(out) / "stack.raw", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        for pos in range(0, n_bytes, len(buf)):
            os.pwrite(fd, buf[: min(len(buf), n_bytes - pos)], pos)
    finally:
        os.close(fd)
    _report(t0, 0)


def child_read_floor(data: str) -> None:
    t0 = time.perf_counter()
    import numpy as np

    from cryomap.io.mrc import read_mrc

    total = 0.0
    for m in sorted((Path(data) / "micrographs").glob("*.mrc")):
        total += float(np.asarray(read_mrc(m, mmap=True).data).sum(dtype=np.float64))
    _report(t0, 0)


ASPIRE_CODE = r'''
import json, resource, sys, time
from pathlib import Path
t0 = time.perf_counter()
import logging; logging.disable(logging.CRITICAL)
from aspire.source import CentersCoordinateSource
data, out, box, flip = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
files = [(str(m), str(data / "coords" / (m.stem + ".coord"))) for m in sorted((data / "micrographs").glob("*.mrc"))]
src = CentersCoordinateSource(files, pixel_size=1.0, particle_size=box)
if flip:
    src.import_relion_ctf(str(data / "micrographs_ctf.star"))
    src = src.phase_flip()
src = src.normalize_background()
src.save(str(out / "particles.star"), batch_size=512, overwrite=True)
print(json.dumps({"seconds": time.perf_counter() - t0, "particles": src.n,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def _settle() -> None:
    """Before a measured run: flush every dirty page to disk, then wait :data:`SETTLE_S` seconds.

    The flush: so that no tool pays for the writes and deletions of the one before it (without it
    the first tool after a row's clean-up took 7.4 s instead of 2.1–2.7 s at box 128).

    The wait: on this machine (a Firecracker VM with free page reporting, ``page_reporting``
    on the kernel command line) memory freed in the guest goes back to the host within seconds,
    and a page the host has taken back costs a fault on the host when the guest next uses it.
    Writing a new file into the page cache ran at ~4 GB/s right after 1.6 GB had been freed
    (the pages were still there), ~0.9 GB/s 2 s later, ~0.56 GB/s after 5 s and 0.42–0.44 GB/s
    after 10–20 s. The outputs of the run before (0.4–1.6 GB) are deleted just before each
    run, so without the wait a tool that starts writing within a second or two (cryomap, RELION,
    the numpy script) wrote into warm pages and one that imports for seconds first (ASPIRE) into
    cold ones. After 10 s every tool starts cold; the write floor shows what that costs.
    """
    os.sync()
    time.sleep(SETTLE_S)


def _run(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> dict:
    _settle()
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd or ROOT, env=env)
    if res.returncode:
        return {"error": (res.stderr or res.stdout)[-400:].strip().splitlines()[-1:]}
    lines = [ln for ln in res.stdout.strip().splitlines() if ln.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    return {"seconds": time.perf_counter() - t0}


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def run_relion(data: Path, out: Path, box: int, flip: bool) -> dict:
    """relion_preprocess on the same micrographs and coordinates; wall time and peak RSS (GNU time)."""
    if shutil.which("relion_preprocess") is None:
        return {"error": "relion_preprocess not installed (Debian package relion)"}
    # --coord_dir ./ : RELION 3.1.3 otherwise prepends its default's literal text "ASINPUT" to the path
    cmd = ["relion_preprocess", "--i", "micrographs_ctf.star", "--coord_dir", "./", "--coord_suffix", "_pick.star", "--part_star",
           str(out / "particles.star"), "--part_dir", str(out / "Particles") + "/", "--extract", "--extract_size",
           str(box), "--norm", "--bg_radius", str(int(0.75 * box / 2))] + (["--phase_flip"] if flip else [])
    timer = shutil.which("time") or "/usr/bin/time"
    _settle()
    t0 = time.perf_counter()
    if Path(timer).exists():
        res = subprocess.run([timer, "-f", "%M", *cmd], capture_output=True, text=True, cwd=data)
        rss = float(res.stderr.strip().splitlines()[-1]) / 1024 if res.returncode == 0 else None
    else:
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=data)
        rss = None
    if res.returncode:
        return {"error": (res.stderr or res.stdout).strip().splitlines()[-1:]}
    if not list((out / "Particles").rglob("*.mrcs")):
        return {"error": "relion_preprocess wrote no particles: " + res.stdout.strip().splitlines()[-2]}
    return {"seconds": time.perf_counter() - t0, "maxrss_mb": rss}


def _one_run(tool: str, data: Path, d: Path, box: int, flip: bool) -> dict:
    """One measured run of ``tool`` writing into the fresh folder ``d``."""
    if tool == "cryomap":
        return _run(_py(f"import benchmarks.bench_scale as b; b.child_cryomap({str(data)!r}, {str(d)!r}, {box}, {flip})"))
    d.mkdir()
    if tool == "ASPIRE":
        if not PEERS.exists():
            return {"error": "ASPIRE not installed: python -m venv .venv-peers && .venv-peers/bin/pip install aspire==0.14.3"}
        return _run([str(PEERS), "-c", ASPIRE_CODE, str(data), str(d), str(box), "1" if flip else "0"], cwd=d)
    if tool == "RELION":
        return run_relion(data, d, box, flip)
    if tool == "write floor":
        n_bytes = len(list((data / "micrographs").glob("*.mrc"))) * PER_MIC * box * box * 4
        return _run(_py(f"import benchmarks.bench_scale as b; b.child_write_floor({str(d)!r}, {n_bytes})"))
    return _run(_py(f"import benchmarks.bench_scale as b; b.child_numpy({str(data)!r}, {str(d)!r}, {box})"))


def _median_run(runs: list[dict]) -> dict:
    """The median wall time and the largest peak RSS of repeated runs (an error if any run failed)."""
    bad = [r for r in runs if "seconds" not in r]
    if bad:
        return bad[0]
    rss = [r["maxrss_mb"] for r in runs if r.get("maxrss_mb")]
    return {"seconds": float(statistics.median(r["seconds"] for r in runs)), "maxrss_mb": max(rss) if rss else None,
            "all_seconds": [round(r["seconds"], 2) for r in runs]}


def extraction_table(data: Path, work: Path) -> list[dict]:
    """Every tool in every setting, :data:`REPEATS` rounds taking the tools in turn; medians and ratios."""
    rows = []
    n_particles = len(list((data / "micrographs").glob("*.mrc"))) * PER_MIC
    floor = _run(_py(f"import benchmarks.bench_scale as b; b.child_read_floor({str(data)!r})"))
    for box in (128, 256):
        for flip in (False, True):
            tools = ["cryomap", "ASPIRE", "RELION"] + ([] if flip else ["numpy floor", "write floor"])
            runs: dict[str, list[dict]] = {t: [] for t in tools}
            for rep in range(REPEATS):
                for t in tools:
                    if runs[t] and "error" in runs[t][-1]:  # a missing or failing peer is not retried
                        continue
                    d = work / f"{t.replace(' ', '_')}_{box}_{flip}_{rep}"
                    runs[t].append(_one_run(t, data, d, box, flip))
                    shutil.rmtree(d, ignore_errors=True)
            out = {t: _median_run(r) for t, r in runs.items()}
            cm = out["cryomap"].get("seconds")
            row = {"box": box, "phase flip": flip, "particles": n_particles}
            for name, r in out.items():
                row[f"{name} s"] = round(r["seconds"], 2) if "seconds" in r else r.get("error")
                if r.get("maxrss_mb"):
                    row[f"{name} MB"] = round(r["maxrss_mb"])
                if name not in ("cryomap", "write floor") and cm and "seconds" in r:
                    row[f"{name}/cryomap"] = round(r["seconds"] / cm, 2)
            row["read floor s"] = round(floor.get("seconds", float("nan")), 2)
            row["runs s"] = {t: r.get("all_seconds") for t, r in out.items()}
            rows.append(row)
    return rows


def child_scale(data: str, out: str) -> None:
    """Extraction + preprocessing (standardize, phase-flip, clahe, guided) of everything in ``data``."""
    t0 = time.perf_counter()
    from cryomap.particles.extract import extract_particles
    from cryomap.preprocess.run import run_preprocess

    res = extract_particles(data, Path(out) / "ext", 64, force=True, progress=False)
    run_preprocess(res.star_path, Path(out) / "pre", [{"step": s} for s in ("standardize", "phase-flip", "clahe", "guided")],
                   force=True, progress=False)
    _report(t0, res.n_particles)


def memory_table(work: Path) -> list[dict]:
    """1k and 100k particles (64 px) from 2048² micrographs of 300 particles each (20 real files, linked)."""
    import shutil as sh

    base = make_data(work / "base", 20, box_max=64, mic=2048, seed=2)
    rows = []
    for n in ((1000, 10000) if QUICK else (1000, 100000)):
        n_mics = -(-n // PER_MIC)
        root = work / f"n{n}"
        for sub in ("micrographs", "ground_truth/particle_coordinates"):
            (root / sub).mkdir(parents=True)
        import pandas as pd

        from cryomap.io.star import read_star, write_star

        star = read_star(base / "ground_truth" / "10999_particles_selected.star").particles
        parts = []
        for i in range(n_mics):
            src = i % 20
            (root / "micrographs" / f"m{i:05d}.mrc").symlink_to(base / "micrographs" / f"mic_{src:03d}.mrc")
            sh.copy(base / "ground_truth" / "particle_coordinates" / f"mic_{src:03d}.csv",
                    root / "ground_truth" / "particle_coordinates" / f"m{i:05d}.csv")
            parts.append(star[star.rlnMicrographName == f"micrographs/mic_{src:03d}.mrc"].assign(
                rlnMicrographName=f"micrographs/m{i:05d}.mrc"))
        write_star(root / "ground_truth" / "10999_particles_selected.star", pd.concat(parts, ignore_index=True))
        r = _run(_py(f"import benchmarks.bench_scale as b; b.child_scale({str(root)!r}, {str(work / f'o{n}')!r})"))
        rows.append({"particles": r.get("particles", n), "peak MB": round(r.get("maxrss_mb", float("nan"))),
                     "seconds": round(r.get("seconds", float("nan")), 1), **({"error": r["error"]} if "error" in r else {})})
        sh.rmtree(work / f"o{n}", ignore_errors=True)
    if all("error" not in r for r in rows):
        rows.append({"particles": "ratio", "peak MB": round(rows[1]["peak MB"] / rows[0]["peak MB"], 2)})
    return rows


def main() -> None:
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    result = {"load_before": load}
    with tempfile.TemporaryDirectory(dir=os.environ.get("CRYOMAP_BENCH_TMP")) as d:
        d = Path(d)
        data = make_data(d / "data", 4 if QUICK else 20)
        (d / "work").mkdir()
        t0 = time.perf_counter()
        result["extraction"] = extraction_table(data, d / "work")
        print_rows(f"extraction, {result['extraction'][0]['particles']} particles from 4096² micrographs, "
                   f"medians of {REPEATS} ({time.perf_counter() - t0:.0f} s)",
                   [{k: v for k, v in r.items() if k != "runs s"} for r in result["extraction"]])
        for r in result["extraction"]:
            print(f"  box {r['box']}, flip {r['phase flip']}: every run (s) {r['runs s']}")
        shutil.rmtree(data)
        t0 = time.perf_counter()
        result["memory"] = memory_table(d)
        print_rows(f"extraction + preprocessing, peak memory ({time.perf_counter() - t0:.0f} s)", result["memory"])
    result["load_after"] = os.getloadavg()
    print(f"load average after: {result['load_after'][0]:.2f} {result['load_after'][1]:.2f} {result['load_after'][2]:.2f}")
    out = ROOT / "bench_out"
    out.mkdir(exist_ok=True)
    (out / "bench_scale.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

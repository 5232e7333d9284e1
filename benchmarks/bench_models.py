"""Models: training steps/s and peak memory at D = 64 and 128 (batch 1, CPU), DDIM time per step.

Rows: the report's U-Net (16-32-64 / 256, attention gates), the diffusion denoiser (hybrid
loss, learned σ), and the peer MONAI ``BasicUNet`` of similar width (features 16-32-64-128-256,
BCE loss). MONAI is not a cryomap dependency; ``make bench`` installs the version pinned in
``benchmarks/requirements-bench.txt`` into the venv with ``pip install --no-deps`` (its core needs
only torch and numpy, both pinned there already; ``--no-deps`` keeps pip from touching the pinned
torch, and no torchvision is involved). Without monai, cryomap's plain U-Net without attention (same widths) stands in and the
table says so.

Each measurement runs in a fresh process so ``ru_maxrss`` (peak resident memory) belongs to one
model; ``peak_mb`` is that peak, ``delta_mb`` the growth over the process after building the
model. Times are medians over a few steps after one warm-up step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

SIZES = (64, 128)
#: timed steps per size (median reported), after one untimed warm-up step; ~5 min in all on 2 cores
STEPS = {64: 3, 128: 2}
WARMUP = {64: True, 128: True}
THREADS = 2


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time_steps(step, n: int, warmup: bool = True) -> float:
    if warmup:
        step()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def worker(kind: str, d: int) -> dict:
    """One measurement in this process: kind ∈ unet, diffusion, ddim, plain, monai."""
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    cond = torch.randn(1, 1, d, d, d)
    label = (torch.rand(1, 1, d, d, d) > 0.7).float()
    n = STEPS[d]
    if kind == "monai":
        from monai.networks.nets import BasicUNet

        net = BasicUNet(spatial_dims=3, in_channels=1, out_channels=1, features=(16, 32, 64, 128, 256, 16))
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        base = _rss_mb()

        def step():
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(cond), label)
            opt.zero_grad()
            loss.backward()
            opt.step()

        sec = _time_steps(step, n, WARMUP[d])
        return {"sec_per_step": sec, "peak_mb": _rss_mb(), "delta_mb": _rss_mb() - base}

    from cryomap.models.losses import unet_loss
    from cryomap.models.registry import build_model

    if kind in ("unet", "plain"):
        net = build_model("unet3d" if kind == "unet" else "unet3d_plain", 1)
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        base = _rss_mb()

        def step():
            loss = unet_loss("dice_bce", net.logits(cond), label)
            opt.zero_grad()
            loss.backward()
            opt.step()

        sec = _time_steps(step, n, WARMUP[d])
        return {"sec_per_step": sec, "peak_mb": _rss_mb(), "delta_mb": _rss_mb() - base}

    from cryomap.models.diffusion.gaussian_diffusion import GaussianDiffusion

    # 4 levels (D, D/2, D/4, D/8), self-attention at D/8 (8³ or 16³ tokens) and the middle block
    net = build_model("diffusion", 1, model_channels=16, channel_mult=(1, 2, 4, 4),
                      attention_resolutions=(d // 8,), input_size=d)
    diffusion = GaussianDiffusion.from_schedule("cosine", 1000)
    base = _rss_mb()
    if kind == "diffusion":
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        x0 = label * 2 - 1

        def step():
            t = torch.randint(0, 1000, (1,))
            loss = diffusion.training_losses(net, x0, cond, t)["loss"].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        sec = _time_steps(step, n, WARMUP[d])
        return {"sec_per_step": sec, "peak_mb": _rss_mb(), "delta_mb": _rss_mb() - base}
    # ddim: seconds per sampling step (one network evaluation), no gradients
    net.eval()
    proc = diffusion.respaced(n + 1)
    with torch.no_grad():
        if WARMUP[d]:
            proc.ddim_sample_loop(net, cond, (1, 1, d, d, d))
        t0 = time.perf_counter()
        proc.ddim_sample_loop(net, cond, (1, 1, d, d, d))
        sec = (time.perf_counter() - t0) / proc.num_timesteps
    return {"sec_per_step": sec, "peak_mb": _rss_mb(), "delta_mb": _rss_mb() - base}


def _has_monai(python: str) -> bool:
    """Whether ``import monai.networks.nets`` works in ``python``."""
    ok = subprocess.run([python, "-c", "from monai.networks.nets import BasicUNet"], capture_output=True, timeout=300)
    return ok.returncode == 0


def _run(python: str, kind: str, d: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
    here = Path(__file__).resolve()
    env["PYTHONPATH"] = os.pathsep.join([str(here.parents[1] / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([python, str(here), "--worker", kind, str(d)], capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> dict:
    if _has_monai(sys.executable):
        peer_kind, peer_py, peer_name = "monai", sys.executable, "MONAI BasicUNet 16-32-64-128-256"
    else:
        print("monai is not installed (pip install --no-deps -r benchmarks/requirements-bench.txt, or make bench): "
              "cryomap's plain U-Net stands in as the peer")
        peer_kind, peer_py, peer_name = "plain", sys.executable, "plain U-Net, no attention (monai not installed)"
    rows = []
    for d in SIZES:
        for kind, py, name in (("unet", sys.executable, "cryomap U-Net + attention gates"),
                               ("diffusion", sys.executable, "cryomap diffusion (hybrid loss)"),
                               (peer_kind, peer_py, peer_name)):
            r = _run(py, kind, d)
            rows.append({"model": name, "kind": kind, "D": d, **r})
        r = _run(sys.executable, "ddim", d)
        rows.append({"model": "diffusion DDIM sampling step", "kind": "ddim", "D": d, **r})
    print(f"{'model':45s} {'D':>4s} {'steps/s':>8s} {'s/step':>8s} {'peak MB':>8s} {'Δ MB':>8s} {'vs peer':>8s}")
    for row in rows:
        if "error" in row:
            print(f"{row['model']:45s} {row['D']:4d}  failed: {row['error']}")
            continue
        peer = next((p for p in rows if p["kind"] == peer_kind and p["D"] == row["D"] and "error" not in p), None)
        ratio = f"{peer['sec_per_step'] / row['sec_per_step']:.2f}x" if peer and row["kind"] != "ddim" else "-"
        row["speed_vs_peer"] = None if ratio == "-" else float(ratio[:-1])
        print(f"{row['model']:45s} {row['D']:4d} {1 / row['sec_per_step']:8.3f} {row['sec_per_step']:8.2f} "
              f"{row['peak_mb']:8.0f} {row['delta_mb']:8.0f} {ratio:>8s}")
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    print(f"batch 1, {THREADS} threads, CPU; medians of {STEPS} timed steps after a warm-up; load average {load}")
    out = {"threads": THREADS, "batch": 1, "peer": peer_name, "loadavg": load, "rows": rows}
    Path("bench_out").mkdir(exist_ok=True)
    Path("bench_out/bench_models.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], int(sys.argv[3]))))
    else:
        main()

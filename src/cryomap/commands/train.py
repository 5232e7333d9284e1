"""``cryomap train CONFIG.yaml``: train the U-Net or the diffusion model into a run folder."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        config: Path = typer.Argument(..., help="Training config (YAML): model, data, optim, trainer, loss, diffusion."),
        out: Path = typer.Option(None, "-o", "--out", help="Run folder (default: runs/<config name>)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from RUN/checkpoints/last.ckpt with the same results as an uninterrupted run."),
        force: bool = typer.Option(False, "--force", help="Replace an existing run folder."),
        devices: str = typer.Option(None, "--devices", help="Processes/GPUs per node (overrides trainer.devices); >1 runs DDP."),
        accelerator: str = typer.Option(None, "--accelerator", help="cpu, gpu or auto (overrides trainer.accelerator)."),
        strategy: str = typer.Option(None, "--strategy", help="Lightning strategy, e.g. ddp (overrides trainer.strategy)."),
        num_nodes: int = typer.Option(None, "--num-nodes", help="Nodes for multi-node DDP (overrides trainer.num_nodes)."),
        max_steps: int = typer.Option(None, "--max-steps", help="Optimizer steps to train for (overrides trainer.max_steps)."),
        seed: int = typer.Option(None, "--seed", help="Random seed (overrides trainer.seed)."),
    ) -> None:
        """Train a model; writes checkpoints (best, last), the resolved config, CSV and TensorBoard logs."""
        from cryomap.progress import summary
        from cryomap.train.config import load_config
        from cryomap.train.run import launch_rank, train

        over: dict = {}
        t = {}
        if devices is not None:
            t["devices"] = int(devices) if devices.isdigit() else devices
        for key, val in (("accelerator", accelerator), ("strategy", strategy), ("num_nodes", num_nodes),
                         ("max_steps", max_steps), ("seed", seed)):
            if val is not None:
                t[key] = val
        if t:
            over["trainer"] = t
        cfg = load_config(config, over)
        run_dir = out or Path("runs") / config.stem
        model = train(cfg, run_dir, resume=resume, force=force)
        if launch_rank() == 0:
            summary(f"trained {cfg.model.name} → {run_dir} (weights {model.name}, checkpoints in {run_dir / 'checkpoints'})")

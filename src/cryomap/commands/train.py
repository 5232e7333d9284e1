"""``cryomap train CONFIG.yaml``: train the U-Net or the diffusion model into a run folder."""

from __future__ import annotations

from pathlib import Path

import typer


def check_model_fits(cfg, config_path: Path) -> None:
    """Refuse, before a run folder exists, a model whose levels do not divide the label box D.

    D is ``data.synthetic.depth`` or the dataset's label box; the U-Net halves the grid once per
    encoder level (``model.widths``: D must divide by 2^levels), the diffusion U-Net once per level
    after the first (``model.channel_mult``: 2^(levels − 1)). Model keywords the network does not
    take are refused here too.
    """
    from cryomap.errors import BadInputError
    from cryomap.models.diffusion.unet import DiffusionUNet3d
    from cryomap.models.unet3d import UNet3D
    from cryomap.train.modules import build_network

    if cfg.data.synthetic is not None:
        depth, where = int(cfg.data.synthetic.depth), "data.synthetic.depth"
    elif cfg.data.pairs_dir is not None:  # a pair cache: the training crop (or the stack mode's D)
        from cryomap.datasets.pairs import PairCache

        extra = cfg.data.model_extra or {}
        if extra.get("mode") == "stack":
            depth, where = int(extra.get("depth", 32)), "data.depth"
        else:
            depth = int(extra.get("crop") or PairCache.load(cfg.data.pairs_dir).box)
            where = "data.crop" if extra.get("crop") else f"the pair box of {cfg.data.pairs_dir}"
    else:
        from cryomap.datasets.manifest import Manifest

        try:
            depth = Manifest.load(cfg.data.dataset_dir).depth
        except (ValueError, KeyError, TypeError) as exc:
            raise BadInputError(f"manifest.json is not a cryomap dataset manifest ({exc})", cfg.data.dataset_dir) from exc
        where = f"the label box of {cfg.data.dataset_dir}"
    hparams = cfg.model_dump(mode="json")
    hparams["meta"] = {"depth": depth}
    try:
        net = build_network(hparams, 1)
    except (TypeError, ValueError, KeyError) as exc:
        raise BadInputError(f"model: {exc}", config_path) from exc
    if isinstance(net, UNet3D):
        factor, knob = 2 ** net.depth, f"model.widths ({net.depth} levels)"
    elif isinstance(net, DiffusionUNet3d):
        factor, knob = 2 ** (net.levels - 1), f"model.channel_mult ({net.levels} levels)"
    else:
        return
    if depth < factor or depth % factor:
        raise BadInputError(f"{knob} needs a box D divisible by {factor}, but D = {depth} ({where}); "
                            f"use fewer levels or a box of {max(factor, (depth // factor) * factor)} or "
                            f"{(depth // factor + 1) * factor}", config_path)


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
        import shutil

        from cryomap.io.atomic import check_not_input, check_replaceable_dir, is_cryomap_output

        cfg = load_config(config, over)
        run_dir = out or Path("runs") / config.stem
        check_model_fits(cfg, config)
        if not resume:  # --force replaces the run folder: never one that holds the config or the dataset
            check_not_input(run_dir, [config, cfg.data.dataset_dir])
            if force:
                check_replaceable_dir(run_dir, force)
        existed = run_dir.exists()
        try:
            model = train(cfg, run_dir, resume=resume, force=force)
        except BaseException:
            # a fresh run that failed before its first checkpoint leaves nothing behind (one with a
            # checkpoint stays, for --resume)
            if (not existed and not resume and launch_rank() == 0 and is_cryomap_output(run_dir)
                    and not (run_dir / "checkpoints" / "last.ckpt").exists()):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        if launch_rank() == 0:
            summary(f"trained {cfg.model.name} → {run_dir} (weights {model.name}, checkpoints in {run_dir / 'checkpoints'})")

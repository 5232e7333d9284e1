"""``run_pipeline(config, OUT)``: every stage of the method, each stage's output feeding the next, resumable.

Stages (each writes ``OUT/<stage>/`` and a ``.stage.json`` with what it was run with; a finished
stage whose inputs did not change is not redone):

``simulate`` (or the CryoPPP folders as given) → ``extract`` → ``preprocess`` (the report's
Figures 2 and 10) → ``classify2d`` and ``encode`` per target (when a model needs classes or latents)
→ ``datasets`` (one per condition mode, split by particles over the seen targets) → ``train``
(every model) → ``reconstruct`` (the seen target from its true poses: the physics oracle; the
unseen target by ab initio + refine from its unposed particles) → ``predict`` (every model on the
seen target's held-out particles; the learned physics-conditioned model and every trained model on
the unseen target) → ``evaluate`` (every map against its truth label) → ``report``.

``run_summary.json`` names every stage that ran, its seconds, and the headline numbers under
``seen`` (a molecule the models were trained on, particles held out) and ``unseen`` (a molecule in
no training set).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


from cryomap.pipeline.config import PipelineConfig
from cryomap.progress import console

STAGE_RECORD = ".stage.json"


@dataclass
class Context:
    """What the stages share: the config, the run folder, what each stage produced, timings."""

    cfg: PipelineConfig
    out: Path
    force: bool = False
    outputs: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)

    def folder(self, stage: str) -> Path:
        return self.out / stage


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_stage(ctx: Context, name: str, fn: Callable[[Context, Path], Any], inputs: Any) -> Any:
    """Run ``fn(ctx, OUT/name)`` unless a finished run of it with the same ``inputs`` is there.

    A stage writes into ``OUT/name`` (which it may replace) and returns JSON-ready outputs; they
    are recorded in ``OUT/name/.stage.json`` with the digest of ``inputs``, so a resumed pipeline
    reuses them instead of redoing the stage.
    """
    folder = ctx.folder(name)
    record = folder / STAGE_RECORD
    key = _digest(inputs)
    if record.is_file():
        try:
            done = json.loads(record.read_text())
        except ValueError:
            done = {}
        if done.get("inputs") == key:
            ctx.outputs[name] = done["outputs"]
            ctx.seconds[name] = done.get("seconds", 0.0)
            console.print(f"[dim]{name}: done before, reused[/dim]", highlight=False)
            return done["outputs"]
    console.rule(f"[bold]{name}", style="dim")
    if folder.exists():
        import shutil

        from cryomap.io.atomic import check_replaceable_dir

        check_replaceable_dir(folder, force=True)  # only a folder the pipeline wrote
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    from cryomap.io.atomic import mark_output

    mark_output(folder, f"pipeline stage {name}")
    t0 = time.perf_counter()
    outputs = fn(ctx, folder)
    seconds = round(time.perf_counter() - t0, 1)
    record.write_text(json.dumps({"inputs": key, "outputs": outputs, "seconds": seconds}, indent=1, default=str))
    ctx.outputs[name], ctx.seconds[name] = outputs, seconds
    ctx.ran.append(name)
    return outputs


def run_pipeline(cfg: PipelineConfig, out_dir: str | Path, *, force: bool = False, title: str = "cryomap pipeline") -> Path:
    """Run every stage ``cfg`` asks for into ``out_dir`` (resuming a previous run there); return report.html."""
    from cryomap.io.atomic import check_replaceable_dir, is_cryomap_output, mark_output
    from cryomap.pipeline import stages

    t_start = time.perf_counter()
    out = Path(out_dir).absolute()
    if out.exists() and any(out.iterdir()) and not is_cryomap_output(out):
        check_replaceable_dir(out, force=True)  # refuses a folder cryomap did not write
    out.mkdir(parents=True, exist_ok=True)
    mark_output(out, "pipeline")
    (out / "pipeline.yaml").write_text(_yaml(cfg))
    ctx = Context(cfg, out, force)
    c = cfg.model_dump(mode="json")
    run_stage(ctx, "simulate", stages.simulate, c["data"] | {"seed": c["seed"]})
    run_stage(ctx, "extract", stages.extract, [ctx.outputs["simulate"], c["extract"]])
    run_stage(ctx, "preprocess", stages.preprocess, [ctx.outputs["extract"], c["preprocess"]])
    modes = {m.condition for m in cfg.models}
    if cfg.classify2d is not None and any(m.startswith("class") for m in modes):
        run_stage(ctx, "classify2d", stages.classify2d, [ctx.outputs["extract"], c["classify2d"], c["seed"]])
    if cfg.encode is not None and "latents" in modes:
        run_stage(ctx, "encode", stages.encode, [ctx.outputs["extract"], c["encode"], c["seed"]])
    if cfg.models:
        run_stage(ctx, "datasets", stages.datasets, [ctx.outputs["extract"], ctx.outputs.get("classify2d"),
                                                     ctx.outputs.get("encode"), c["labels"], c["seen"],
                                                     c["preprocess"]["steps"], sorted(modes), c["seed"]])
        run_stage(ctx, "train", stages.train, [ctx.outputs["datasets"], c["models"], c["seed"]])
    run_stage(ctx, "reconstruct", stages.reconstruct, [ctx.outputs["extract"], c["seen"], c["unseen"], c["seed"]])
    run_stage(ctx, "predict", stages.predict, [ctx.outputs.get("train"), ctx.outputs.get("datasets"),
                                               ctx.outputs["reconstruct"], c["unseen"], c["seed"]])
    run_stage(ctx, "evaluate", stages.evaluate, [ctx.outputs["predict"], ctx.outputs["reconstruct"], c["labels"]])
    summary_info = {
        "stages": list(ctx.seconds),
        "ran": ctx.ran,
        "stage seconds": ctx.seconds,
        "seen": ctx.outputs["evaluate"].get("seen", {}),
        "unseen": ctx.outputs["evaluate"].get("unseen", {}),
        "notes": ctx.outputs["evaluate"].get("notes", {}),
        "config": c,
        "seconds before the report": round(time.perf_counter() - t_start, 1),
    }
    (out / "run_summary.json").write_text(json.dumps(summary_info, indent=2, default=str))
    t0 = time.perf_counter()
    report = stages.report(ctx, summary_info, title)
    ctx.seconds["report"] = round(time.perf_counter() - t0, 1)
    summary_info["stage seconds"] = ctx.seconds
    summary_info["stages"] = list(ctx.seconds)
    summary_info["total seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "run_summary.json").write_text(json.dumps(summary_info, indent=2, default=str))
    return report


def _yaml(cfg: PipelineConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def headline_line(run_summary: dict) -> str:
    """One line: the seen and the unseen molecule's best learned map and the physics map, FSC-0.5 and CC."""
    parts = []
    for key in ("seen", "unseen"):
        rows = run_summary.get(key) or {}
        if not rows:
            continue
        bits = []
        for name, m in rows.items():
            if m.get("fsc0.5_A") is None:
                continue
            bits.append(f"{name} {m['fsc0.5_A']:.1f} Å / CC {m.get('cc', float('nan')):.2f}")
        if bits:
            parts.append(f"{key}: " + ", ".join(bits[:4]))
    return "; ".join(parts)


__all__ = ["Context", "headline_line", "run_pipeline", "run_stage"]

"""The preprocessing chain: step names ↔ ops, configs (YAML / ``--steps``) ↔ a mapped particle source.

A chain is a list of steps, each ``{"step": NAME, **parameters}``, applied in order as the particles
are read::

    steps:
      - {step: standardize}                 # region: box (default) | ring
      - {step: phase-flip}
      - {step: denoise, method: unet}       # unet | unet-small | fcnn | affine | lowpass
      - {step: blend, weight: 0.5}          # (D + O)/2; 0.667 gives (2D + O)/3
      - {step: clahe, clip_limit: 2.0, tile_grid: 2, bits: 8}
      - {step: guided, radius: 2, eps: 0.2}

The same list is what ``cryomap preprocess`` records (STAR block ``data_cryomap_preprocess`` and
``preprocess.json``), what a dataset config's ``preprocess:`` takes, and what a trained model keeps,
so that ``predict`` applies to new particles exactly what training saw. A step used twice gets a
``key`` of its own (``{step: denoise, key: denoise2}``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cryomap.errors import BadInputError
from cryomap.particles.source import ParticleSource
from cryomap.preprocess.base import Op
from cryomap.preprocess.blend import Blend
from cryomap.preprocess.clahe import Clahe
from cryomap.preprocess.ctf_correct import PhaseFlip, Wiener
from cryomap.preprocess.denoise import Denoise
from cryomap.preprocess.guided import Guided
from cryomap.preprocess.standardize import Standardize

#: Every step, by the name ``--steps`` and configs use.
STEPS: dict[str, type[Op]] = {op.step: op for op in (Standardize, PhaseFlip, Wiener, Denoise, Blend, Clahe, Guided)}


def parse_steps(text: str) -> list[dict[str, Any]]:
    """``"standardize,phase-flip,denoise"`` → ``[{"step": "standardize"}, ...]`` (default parameters)."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise BadInputError("--steps names no step; choose from " + ", ".join(STEPS))
    return [{"step": n} for n in names]


def make_op(spec: dict[str, Any]) -> Op:
    """One op from ``{"step": NAME, "key": optional, **parameters}``; a bad name or parameter is one line."""
    from pydantic import TypeAdapter, ValidationError

    if not isinstance(spec, dict) or "step" not in spec:
        raise BadInputError(f"a preprocessing step must be a mapping with a 'step' name, got {spec!r}")
    params = {k: v for k, v in spec.items() if k not in ("step", "key")}
    name = str(spec["step"])
    if name not in STEPS:
        raise BadInputError(f"unknown preprocessing step {name!r}; choose from {', '.join(STEPS)}")
    cls = STEPS[name]
    try:
        op = TypeAdapter(cls).validate_python(params)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or name}: {e['msg']}" for e in exc.errors())
        raise BadInputError(f"step {name}: {problems}") from exc
    except ValueError as exc:
        raise BadInputError(f"step {name}: {exc}") from exc
    if "key" in spec:
        op.named(str(spec["key"]))
    return op


def apply_chain(source: ParticleSource, steps: list[dict[str, Any]]) -> ParticleSource:
    """``source`` mapped through every step in order (each checked against the source first)."""
    out = source
    for spec in steps:
        op = make_op(spec)
        try:
            out = out.map(op)
        except ValueError as exc:  # a repeated key
            raise BadInputError(str(exc)) from exc
        except BadInputError as exc:
            raise BadInputError(exc.message, exc.path or source.path) from exc
    return out


def chain_spec(source: ParticleSource) -> list[dict[str, Any]]:
    """The steps of a mapped source as data (``{"step": name, "key": key, **parameters}``)."""
    out = []
    for op in source.ops:
        entry = {"step": type(op).step, **op.describe()}
        if op.key != type(op).step:
            entry["key"] = op.key
        out.append(entry)
    return out


def steps_table(steps: list[dict[str, Any]]) -> pd.DataFrame:
    """The chain as a STAR block: one row per step, parameters as ``name=value;...`` (no spaces)."""
    def fmt(v: Any) -> str:
        return "None" if v is None else str(v).replace(" ", "")

    return pd.DataFrame({
        "cryomapStep": [s["step"] for s in steps],
        "cryomapStepKey": [s.get("key", s["step"]) for s in steps],
        "cryomapParameters": [";".join(f"{k}={fmt(v)}" for k, v in s.items() if k not in ("step", "key")) or "-"
                              for s in steps],
    })


def load_chain_config(path: str | Path) -> list[dict[str, Any]]:
    """Read the ``steps:`` list of a preprocessing YAML (or a bare list); errors name the file."""
    from cryomap.io.yamlfile import read_yaml

    path = Path(path)
    raw = read_yaml(path, "preprocessing config")
    steps = raw.get("steps") if isinstance(raw, dict) else raw
    if not isinstance(steps, list) or not steps:
        raise BadInputError("expected a 'steps:' list of preprocessing steps", path)
    try:
        for s in steps:
            make_op(s)
    except BadInputError as exc:
        raise BadInputError(exc.message, path) from exc
    return steps

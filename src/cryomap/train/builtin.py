"""Models shipped inside the package: ``cryomap predict --model builtin[:NAME]``.

Each lives in ``cryomap/data/models/<NAME>/`` as ``model.safetensors`` + ``model.json`` (what
:func:`cryomap.train.predict.load_model` reads) + ``README.md`` (the corpus it saw, the command
and the seed that made it). ``cryomap/data/models/DEFAULT`` names the model ``builtin`` means.
Nothing is downloaded: the weights are package data.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from cryomap.errors import BadInputError

PREFIX = "builtin"


def models_root() -> Path:
    return Path(str(resources.files("cryomap") / "data" / "models"))


def builtin_models() -> dict[str, Path]:
    """Shipped model name → its folder."""
    root = models_root()
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / "model.safetensors").exists() and (p / "model.json").exists()}


def default_model() -> str | None:
    p = models_root() / "DEFAULT"
    return p.read_text().strip() if p.exists() else None


def is_builtin(spec: str | Path | None) -> bool:
    s = str(spec) if spec is not None else ""
    return s == PREFIX or s.startswith(PREFIX + ":")


def resolve_model(spec: str | Path) -> Path:
    """``builtin`` → the default shipped model's folder, ``builtin:NAME`` → that one; a path is returned as is."""
    if not is_builtin(spec):
        return Path(spec)
    models = builtin_models()
    name = str(spec)[len(PREFIX) + 1:] if str(spec) != PREFIX else default_model()
    if not models:
        raise BadInputError("this cryomap ships no trained model (cryomap/data/models is empty)")
    if name not in models:
        raise BadInputError(f"no built-in model {name!r} (built-ins: {', '.join(models)})")
    return models[name]

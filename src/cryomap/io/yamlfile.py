"""YAML config files (dataset, training, preprocessing configs): one reader, one error line.

``yaml.safe_load`` raises several kinds of error for a bad file — ``YAMLError`` for bad syntax,
``UnicodeDecodeError`` for binary content, ``ValueError`` for an impossible date such as
``2024-13-45``, ``RecursionError`` for absurd nesting — and returns any type for a file that
parses. :func:`read_yaml_mapping` turns all of them into one :class:`BadInputError` naming the
file and the line, and insists on a mapping at the top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryomap.errors import BadInputError


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """Parse a YAML file safely (no Python objects); every failure is a :class:`BadInputError`."""
    import yaml

    from cryomap.io.atomic import note_input

    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{what} file not found", path)
    if path.is_dir():
        raise BadInputError(f"is a folder, not a YAML {what} file", path)
    note_input(path)
    raw = path.read_bytes()
    if b"\x00" in raw[: 1 << 16]:
        raise BadInputError(f"is not a YAML {what} (binary content)", path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInputError(f"is not a YAML {what} (not UTF-8 text at byte {exc.start})", path) from exc
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise BadInputError(f"not valid YAML ({where}{exc.problem or exc})", path) from exc
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise BadInputError(f"not valid YAML ({type(exc).__name__}: {exc})", path) from exc


def read_yaml_mapping(path: str | Path, what: str = "config", *, empty_ok: bool = False) -> dict[str, Any]:
    """:func:`read_yaml` for a config: the top level must be a mapping with text keys (``{}`` if empty and ``empty_ok``)."""
    raw = read_yaml(path, what)
    if raw is None and empty_ok:
        return {}
    if not isinstance(raw, dict):
        found = "an empty file" if raw is None else f"a {type(raw).__name__}"
        raise BadInputError(f"a {what} must be a YAML mapping (key: value lines), found {found}", path)
    bad = [k for k in raw if not isinstance(k, str)]
    if bad:
        raise BadInputError(f"{what} keys must be names, found {bad[0]!r}", path)
    return raw

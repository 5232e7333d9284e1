"""Plain-text tables the benchmarks print (one row a dict; the columns are the union of the keys)."""

from __future__ import annotations


def print_rows(title: str, rows: list[dict]) -> None:
    """``title``, then a ``|``-separated header and one line per row (missing cells empty)."""
    print(f"\n{title}")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(str(r.get(k, "")) for k in keys))

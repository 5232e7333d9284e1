"""Run every ``benchmarks/bench_*.py`` (each defines ``main()``); ``python -m benchmarks [NAME ...]``.

Results print as tables and are written as JSON under ``bench_out/``. Absolute times vary between
machines; compare the ratios against the peer each benchmark measures in the same run.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    if argv:
        names = [n for n in names if any(a in n for a in argv)]
    failed = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        # one process per benchmark: peak resident memory (ru_maxrss) never falls, and a child
        # inherits its parent's, so benchmarks sharing a process would report each other's peaks
        code = f"import benchmarks.{name} as b; b.main()"
        rc = subprocess.run([sys.executable, "-c", code], cwd=here.parent).returncode
        if rc != 0:  # keep going: one broken benchmark should not hide the others
            print(f"{name} failed (exit {rc})", flush=True)
            failed.append(name)
        print(f"({name}: {time.perf_counter() - t0:.1f} s)", flush=True)
    print(f"\n{len(names) - len(failed)} benchmarks ran, {len(failed)} failed" + (f": {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

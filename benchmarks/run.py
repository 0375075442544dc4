"""Run the benchmarks (``make bench``): every ``benchmarks/*.py`` but this one, or those named.

    .venv/bin/python benchmarks/run.py [NAME ...]      # e.g. batch predictionlog

Files whose name starts with an underscore are helpers, not benchmarks. Each benchmark runs in
its own process with its default arguments and writes its own section of BENCHMARKS.md; the
first failure stops the run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    wanted = set(sys.argv[1:])
    scripts = [
        script
        for script in sorted(HERE.glob("*.py"))
        if script.name != Path(__file__).name and not script.name.startswith("_")
    ]
    unknown = wanted - {s.stem for s in scripts}
    if unknown:
        print(f"no benchmark named {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    for script in scripts:
        if wanted and script.stem not in wanted:
            continue
        print(f"== {script.name}", flush=True)
        code = subprocess.call([sys.executable, str(script)])
        if code:
            print(f"{script.name} failed with status {code}", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())

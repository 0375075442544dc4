"""What every benchmark script shares: the machine's description and BENCHMARKS.md sections."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
from pathlib import Path

# A missing tool (nproc, free, /proc) only makes the machine line vaguer.
_MISSING = (OSError, subprocess.SubprocessError, ValueError, IndexError)


def machine() -> str:
    cpus = os.cpu_count() or 0
    with contextlib.suppress(*_MISSING):
        cpus = int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(*_MISSING):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "unknown memory"
    with contextlib.suppress(*_MISSING):
        free = subprocess.run(["free", "-h"], capture_output=True, text=True, check=True).stdout
        memory = free.splitlines()[1].split()[1] + " RAM"
    return f"{model}, {cpus} CPUs, {memory}"


def write_section(text: str, path: Path, section: str) -> None:
    """Replace the ``section`` heading's block in ``path`` with ``text``, or append it."""
    content = path.read_text() if path.exists() else f"# Benchmarks\n\nMachine: {machine()}.\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(content):
        content = pattern.sub(lambda _: text, content, count=1)
    else:
        content = content.rstrip("\n") + "\n\n" + text
    path.write_text(content.rstrip("\n") + "\n")

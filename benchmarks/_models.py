"""What the benchmarks share: the model one runs on (the user's file, or a torchvision model
exported into ``folder``), and timing a whole process (``timed_process``).

The export runs in a child process. A benchmark that measures other processes' peak memory must
stay small itself: a child's ``ru_maxrss`` starts from its parent's resident size at the fork (the
kernel keeps the high-water mark across ``exec``), so a parent holding torch and a VGG16 would
raise the floor of every measured child to its own size.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"


def exported(arch: str, folder: Path) -> Path:
    """torchvision ``arch`` with realistic-scale random weights, legacy exporter, opset 17 (needs the test extra)."""
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); from tv_export import export; "
            f"print(export({arch!r}, 'legacy', 17, __import__('pathlib').Path({str(folder)!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


def model_or_vgg16(path: Path | None, folder: Path) -> Path:
    return path if path is not None else exported("vgg16", folder)


def timed_process(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one process, interpreter start included; exits with its
    error output if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return wall, usage.ru_maxrss / 1024

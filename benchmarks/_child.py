"""Child processes with a time budget, for the benchmark drivers.

A driver runs every measurement in a fresh Python process (so that no method sees
another's caches, thread pools or memory high-water mark). The child writes its result
as JSON after every phase; when it runs past its budget the parent kills it and keeps
the phases that finished, saying where it stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

#: The thread pools a method may use (torch's OpenMP, BLAS, numexpr, Rust's rayon).
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "RAYON_NUM_THREADS",
)


def thread_env(threads: int) -> dict[str, str]:
    """Environment variables that pin every thread pool a method may use."""
    return {name: str(threads) for name in THREAD_VARIABLES}


def child_env(threads: int, root: Path) -> dict[str, str]:
    """This process's environment with the thread pools pinned and ``root`` importable."""
    env = dict(os.environ)
    env.update(thread_env(threads))
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_budgeted(
    cmd: list[str],
    out: Path,
    budget: float,
    label: str,
    env: dict[str, str],
    preexec_fn: Callable[[], None] | None = None,
) -> dict:
    """Run ``cmd`` (which writes its JSON result to ``out``) for at most ``budget`` s.

    Its output goes to ``out`` with suffix ``.log``. Returns the child's result, with
    ``status`` set to ``timeout (> B s, in <phase>)`` when it was killed, or
    ``crashed (exit N, in <phase>): <last output>`` when it died before finishing;
    ``child_wall_s`` is its wall time. The result is written back to ``out``.
    """
    if out.exists():
        out.unlink()
    start = time.perf_counter()
    log_path = out.with_suffix(".log")
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec_fn
        )
        try:
            rc = proc.wait(timeout=budget)
            timed_out = False
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            timed_out = True
    wall = time.perf_counter() - start
    result = json.loads(out.read_text()) if out.exists() else {}
    result.setdefault("method", label)
    if timed_out:
        result["status"] = f"timeout (> {budget:.0f} s, in {result.get('phase', 'start')})"
    elif rc != 0 and result.get("phase") != "done":
        tail = log_path.read_text()[-300:].strip().replace("\n", " | ")
        if rc == -9 and not tail:
            tail = "killed by SIGKILL, most likely the kernel's out-of-memory killer"
        result["status"] = f"crashed (exit {rc}, in {result.get('phase', 'start')}): {tail}"
    result["child_wall_s"] = wall
    out.write_text(json.dumps(result, indent=1))
    return result


def reusable(out: Path) -> dict | None:
    """A saved child result worth keeping under ``--resume`` (finished or timed out)."""
    if not out.exists():
        return None
    previous = json.loads(out.read_text())
    if previous.get("phase") == "done" or "timeout" in previous.get("status", ""):
        return previous
    return None


def write_json(path: Path, result: dict) -> None:
    """Write ``result`` atomically, so that a parent never reads half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=float))
    tmp.replace(path)

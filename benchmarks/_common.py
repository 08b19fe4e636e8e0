"""Shared helpers of the benchmark scripts: paths, thread settings, table output."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PUBLISHED = ROOT / "docs" / "results"  # committed copies that the docs pages include
sys.path.insert(0, str(ROOT / "tests"))  # the seeded problem generators live with the tests


def results_dir() -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS


def publish(*names: str) -> None:
    """Copy result files (names inside ``benchmarks/results/``) to ``docs/results/``,
    where the documentation includes them; run with ``--publish`` on a quiet machine."""
    PUBLISHED.mkdir(parents=True, exist_ok=True)
    for name in names:
        (PUBLISHED / name).write_bytes((RESULTS / name).read_bytes())
        print(f"published docs/results/{name}")


def machine_line() -> str:
    """One line naming the machine state a result was measured in."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__} with {torch.get_num_threads()} thread(s), load {load:.1f}"
    )


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub-flavoured markdown table."""

    def fmt(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def thread_count() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))


#: The solvers and layer libraries whose versions a report records.
PACKAGES = (
    "cvxpy",
    "cvxpylayers",
    "diffcp",
    "proxsuite",
    "qpth",
    "moreau",
    "clarabel",
    "osqp",
    "piqp",
    "scipy",
    "numpy",
)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_commit() -> str:
    """The library's commit; "(modified)" when ``altdiff_modeling/`` differs from it (the
    library is measured as the working tree was when each child started)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "altdiff_modeling"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return head + (" (modified)" if dirty else "")


def environment(packages: tuple[str, ...] = PACKAGES) -> dict:
    """What a result was measured with: machine, load, date, versions, commit."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in packages:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = "not installed"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "cpu": cpu_model(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "versions": versions,
        "altdiff_commit": library_commit(),
    }

"""Shared helpers of the benchmark scripts: paths, thread settings, table output."""

from __future__ import annotations

import os
import platform
import sys
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

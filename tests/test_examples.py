"""The tutorials in ``examples/`` run in their fast mode and their results make sense.

Each tutorial is a script with ``main(argv) -> dict`` of its key numbers; it is loaded
from its file and run in-process with ``--fast --out <tmp>`` (so the committed figures
under ``docs/figures`` are never overwritten). The assertions check what each tutorial
claims: losses go down, gradients match closed forms, errors follow the tolerance.
The last tests check that every tutorial has its docs page, committed figure and output.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from altdiff_modeling import SolverSettings

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = (
    "optnet_digits",
    "sparsemax",
    "portfolio",
    "mpc",
    "truncation",
    "constrained_least_squares",
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny solves run faster on one thread, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"tutorial_{name}", ROOT / "examples" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_fast(name: str, out: Path) -> Any:
    """Run a tutorial's fast mode into ``out``; check that it wrote its figure."""
    results = load(name).main(["--fast", "--out", str(out)])
    figure = out / f"{name}.png"
    assert figure.read_bytes()[:8] == PNG_MAGIC
    assert figure.stat().st_size > 10_000  # three panels, not an empty canvas
    return results


def test_optnet_digits(tmp_path: Path) -> None:
    r = run_fast("optnet_digits", tmp_path)
    assert r["qp_final_loss"] < r["qp_first_loss"]
    assert r["baseline_final_loss"] < r["baseline_first_loss"]
    assert r["qp_accuracy"] > 0.3  # chance is 0.1; the fast mode trains for a few steps
    assert r["mean_active"] > 0  # the learned constraints shape the output
    assert r["z0_feasible"]


def test_sparsemax(tmp_path: Path) -> None:
    r = run_fast("sparsemax", tmp_path)
    assert r["value_error"] < 1e-8
    assert r["grad_error"] < 1e-8
    assert r["final_loss"] < 0.2 * r["initial_loss"]
    assert r["capped_max"] <= 0.4 + 1e-6  # the caps hold
    assert r["capped_sum"] == pytest.approx(1.0, abs=1e-8)


def test_portfolio(tmp_path: Path) -> None:
    r = run_fast("portfolio", tmp_path)
    assert r["regret_two_stage"] < r["regret_equal"]
    assert r["regret_decision_focused"] < 0.7 * r["regret_two_stage"]


def test_mpc(tmp_path: Path) -> None:
    r = run_fast("mpc", tmp_path)
    assert r["final_loss"] < 0.5 * r["initial_loss"]
    assert r["final_model_error"] < 0.5 * r["initial_model_error"]
    assert r["learned_cost"] < r["initial_cost"]


def test_truncation(tmp_path: Path) -> None:
    r = run_fast("truncation", tmp_path)
    plain = r["reverse, no polish"]
    # Alt-Diff's claim: the truncated gradient's error is of the order of the tolerance.
    for eps, primal, grad in zip(plain["eps"], plain["primal"], plain["grad"]):
        assert primal < 10 * eps
        assert grad < 10 * eps
    assert plain["grad"] == sorted(plain["grad"], reverse=True)
    polished = r["reverse, polish (default)"]
    assert polished["grad"][-1] < 1e-6


def test_constrained_least_squares(tmp_path: Path) -> None:
    r = run_fast("constrained_least_squares", tmp_path)
    assert r["final_loss"] < 0.8 * r["initial_loss"]
    assert r["weight_at_jumps"] < 0.5 * r["weight_elsewhere"]  # it found where jumps are
    assert r["error_learned_weights"] < r["error_best_single_weight"]
    assert r["error_best_single_weight"] < r["error_noisy_measurement"]


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_is_documented(name: str) -> None:
    """Each tutorial has a docs page that shows its committed figure, output and code."""
    page = ROOT / "docs" / "tutorials" / f"{name.replace('_', '-')}.md"
    text = page.read_text()
    assert f"../figures/{name}.png" in text
    assert f'--8<-- "docs/outputs/{name}.txt"' in text
    assert f'--8<-- "examples/{name}.py"' in text
    assert (ROOT / "docs" / "figures" / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    assert (ROOT / "docs" / "outputs" / f"{name}.txt").read_text().strip()
    nav = (ROOT / "mkdocs.yml").read_text()
    assert re.search(rf"tutorials/{re.escape(page.name)}", nav)


def code_blocks(page: Path) -> list[str]:
    """The ``python`` fenced blocks of a Markdown page, dedented (tabs indent them)."""
    blocks = re.findall(r"^( *)```python\n(.*?)^\1```", page.read_text(), flags=re.S | re.M)
    return [
        textwrap.dedent("".join(line[len(indent) :] for line in body.splitlines(True)))
        for indent, body in blocks
    ]


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_page_code_is_from_the_script(name: str) -> None:
    """Code quoted on a tutorial page is the script's own code, line for line."""
    page = ROOT / "docs" / "tutorials" / f"{name.replace('_', '-')}.md"
    script_lines = {
        line.strip() for line in (ROOT / "examples" / f"{name}.py").read_text().splitlines()
    }
    quoted = [block for block in code_blocks(page) if "--8<--" not in block]
    assert quoted, f"{page.name} quotes no code"
    for block in quoted:
        for line in block.splitlines():
            assert not line.strip() or line.strip() in script_lines, f"{page.name}: {line!r}"


@pytest.mark.parametrize(
    "page",
    [
        "index.md",
        "installation.md",
        "quickstart.md",
        "migrating/qpth.md",
    ],
)
def test_docs_examples_run(page: str) -> None:
    """The self-contained examples of the docs run (peers' code is not run here; the
    cvxpylayers guide's snippets run in test_cvxpylayers_compat.py, both libraries')."""
    namespace: dict[str, Any] = {}
    blocks = [
        block
        for block in code_blocks(ROOT / "docs" / page)
        if not any(skip in block for skip in ("--8<--", "qpth", "cvxpylayers"))
    ]
    assert blocks
    for block in blocks:
        exec(compile(block, page, "exec"), namespace)


def test_solver_args_page_lists_every_setting_with_its_default() -> None:
    """The table of docs/guide/solver-args.md matches SolverSettings' fields and defaults."""
    text = (ROOT / "docs" / "guide" / "solver-args.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", text, flags=re.M))
    defaults = {f.name: f.default for f in dataclasses.fields(SolverSettings)}
    missing, extra = sorted(set(defaults) - set(rows)), sorted(set(rows) - set(defaults))
    assert not missing and not extra, f"document {missing}, remove {extra}"
    for key, default in defaults.items():
        assert rows[key].replace('"', "'") == repr(default), key

"""Shared test setup: deterministic seeds and the test helpers on ``sys.path``."""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

# The test helpers (reference.py, families.py) are imported as top-level modules,
# whatever pytest's import mode.
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)


def seed_for(nodeid: str) -> int:
    """A stable per-test seed: the same test always sees the same random numbers."""
    return zlib.crc32(nodeid.encode("utf-8"))


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A numpy Generator seeded from the test's node id."""
    return np.random.default_rng(seed_for(request.node.nodeid))


@pytest.fixture(autouse=True)
def _seed_torch(request: pytest.FixtureRequest) -> None:
    """Seed torch's global generator per test (tests never change the default dtype)."""
    torch.manual_seed(seed_for(request.node.nodeid))


@pytest.fixture
def unlimited_polishing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Polishing whenever the plan picks instances, whatever it costs, through the
    shared factor wherever the batch has one, no interior-point fallback, and a layer's
    active-set memory whatever it costs: the solver
    decides these from measured times, and a test of what polishing leads to (the
    iteration a batch ends at, results equal bit for bit across layers and their copies,
    which carry the polish times the layer's calls measured) must not depend on how busy
    the machine is."""
    import math

    from altdiff_modeling import _active_sets, _admm, _costs

    monkeypatch.setattr(_costs, "POLISH_SHARE", math.inf)
    monkeypatch.setattr(_admm, "_shared_is_cheaper", lambda *args: True)
    # The interior-point fallback starts once the solve has spent its predicted time,
    # measured too: it never starts here (these tests' problems do not need it).
    monkeypatch.setattr(_admm, "TYPICAL_STEPS", math.inf)
    # A layer's active-set memory keeps to a budget of measured times: here it is never
    # short of one, so that which calls it answers depends on the data alone.
    monkeypatch.setattr(_active_sets.ActiveSetMemory, "_affordable", lambda self: True)


@pytest.fixture
def whole_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    """Layers solve their whole canonical problem, without the presolve (`Presolve`):
    for tests of the solver's handling of CVXPY's auxiliary variables (free epigraphs
    pinned, weakly active epigraph rows, tied rows), which it still meets where the
    presolve cannot take them out, written on the simplest problems, which it can."""
    from altdiff_modeling import _presolve

    monkeypatch.setattr(_presolve.Epigraphs, "of", staticmethod(lambda form, hidden: None))
    monkeypatch.setattr(_presolve.FixedVariables, "of", staticmethod(lambda form: None))

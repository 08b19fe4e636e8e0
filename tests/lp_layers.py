"""LP layers as users write them, for tests of the solver's handling of degenerate
vertices (more active rows than variables)."""

from __future__ import annotations

import numpy as np


def grid_shortest_path(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Node-edge incidence of a k x k grid (edges right and down) with every
    conservation row (one is redundant), and one unit of supply from corner to corner."""
    index = np.arange(k * k).reshape(k, k)
    edges = [(index[i, j], index[i, j + 1]) for i in range(k) for j in range(k - 1)]
    edges += [(index[i, j], index[i + 1, j]) for i in range(k - 1) for j in range(k)]
    N = np.zeros((k * k, len(edges)))
    for e, (u, v) in enumerate(edges):
        N[u, e], N[v, e] = 1.0, -1.0
    supply = np.zeros(k * k)
    supply[0], supply[-1] = 1.0, -1.0
    return N, supply

"""Which backend a layer with ``backend="auto"`` solves a call with.

The problem's structure decides where it can: a large sparse problem goes to the sparse
backend, any other to the dense one (`choose_backend`). It cannot where the data is
sparse but not large and the call's matrices depend on batched parameters: the dense
backend then factors one dense matrix per instance, the sparse backend one sparse LDL'
per instance over a shared symbolic analysis, and which is faster depends on the
pattern, the batch size and the machine. (Measured on one machine, forward + backward:
the sparse backend 6.8x faster on a ReLU layer whose canonical problem has n + m = 880
at B = 64; the dense one 3x faster on an MPC layer with n + m = 146 at B = 8 and 1.2x
on one with n + m = 348 at B = 64.) Such calls are timed: the first calls of a kind
(batch size, dtype, device) try each backend twice, the first of each paying its
one-time setup untimed, and the later ones take the backend whose timed forward was
faster. The forward alone is timed (the backward runs after the call returns); on the
layers above, the backward's costs stood in the same proportion as the forward's.
"""

from __future__ import annotations

__all__ = ["BackendChoice"]

_BACKENDS = ("dense", "sparse")
_TRIES = 2  # calls per backend before the choice: an untimed one, then a timed one


class BackendChoice:
    """A layer's structural backend, and the measured choice where structure cannot tell.

    Args:
        structural: ``"dense"`` or ``"sparse"``, from `choose_backend`.
        sparse_pattern: Whether P and C are sparse enough for the sparse backend to
            compete (`sparse_pattern`): only then are calls timed.
    """

    def __init__(self, structural: str, sparse_pattern: bool) -> None:
        self.structural = structural
        #: Whether calls whose matrices are the instances' own are timed.
        self.timed = structural == "dense" and sparse_pattern
        self._calls: dict[tuple, dict[str, int]] = {}
        self._seconds: dict[tuple, dict[str, float]] = {}

    def pick(self, kind: tuple) -> str:
        """The backend for a call of ``kind`` (batch size, dtype, device type) whose
        matrices are the instances' own."""
        if not self.timed:
            return self.structural
        calls = self._calls.setdefault(kind, dict.fromkeys(_BACKENDS, 0))
        for backend in _BACKENDS:
            if calls[backend] < _TRIES:
                return backend
        seconds = self._seconds[kind]
        return min(_BACKENDS, key=seconds.__getitem__)

    def record(self, kind: tuple, backend: str, seconds: float) -> None:
        """Count a call that `pick` gave ``backend``, and its forward's ``seconds``."""
        calls = self._calls.get(kind)
        if calls is None or calls[backend] >= _TRIES:
            return
        calls[backend] += 1
        if calls[backend] == _TRIES:  # the first paid the setup; this one is timed
            self._seconds.setdefault(kind, {})[backend] = seconds

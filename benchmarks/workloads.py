"""Seeded QP workloads for the peer comparison (``benchmarks/run_all.py``).

Every workload is plain numpy data for ``min 1/2 x'Px + q'x  s.t.  Ax = b,  Gx <= h``:
blocks named in ``Workload.batched`` carry a leading batch dimension B, the others are
shared by the batch. ``Workload.grad_wrt`` names the blocks whose gradients every method
returns, and ``Workload.weights`` is the fixed random linear loss ``L = sum(w * x)``.

Data follow the reference implementation's ``param_random`` (``P = M'M`` with ``M`` an
``n x n`` standard normal matrix, every other block standard normal), with one change to
guarantee feasibility: with ``x0`` the least-norm solution of ``A x = b``, every row of
``G x <= h`` that ``x0`` violates (or meets within 0.1) gets ``h_i = G_i x0 + |z_i|``,
``z_i`` standard normal; ``x0`` is then strictly feasible.

Workloads (``--quick`` scales every size down, for validating the harness):

1. ``w1-<n>``: single instances (n, n_eq, n_ineq) = (1000, 500, 200), (3000, 1000, 500),
   (5000, 2000, 1000); parameters q, b, h.
2. ``w2-B<B>-n<n>``: layer-style batches, B in (64, 256), n in (100, 500), n/2
   equalities, n inequalities; P, A, G shared; q, b, h batched.
3. ``w3-AG-B64-n100``: per-instance A and G (and q, b, h); ``w3-P-B64-n100``: per-instance
   P (and q, b, h).
4. The OptNet digits epoch lives in ``benchmarks/optnet_digits.py``.

Usage: python benchmarks/workloads.py [--quick]   (prints the list with sizes)
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BLOCKS = ("P", "q", "A", "b", "G", "h")


@dataclass
class Workload:
    """One benchmark problem (or batch of problems) with its loss weights.

    Attributes:
        name: Short identifier, e.g. ``"w2-B64-n100"``.
        group: Which of the issue's workloads it belongs to (1, 2 or 3).
        description: One line for the tables.
        n, n_eq, n_ineq: Sizes of one instance.
        batch: B, or None for a single unbatched instance.
        data: The six blocks; batched ones are ``(B, ...)``.
        batched: Names of the blocks with a batch dimension.
        grad_wrt: Names of the blocks whose gradients are compared.
        weights: ``(B, n)`` or ``(n,)``: the loss is ``sum(weights * x)``.
        seed: The generator's seed.
    """

    name: str
    group: int
    description: str
    n: int
    n_eq: int
    n_ineq: int
    batch: int | None
    data: dict[str, np.ndarray]
    batched: tuple[str, ...]
    grad_wrt: tuple[str, ...]
    weights: np.ndarray
    seed: int
    extra: dict = field(default_factory=dict)

    def sizes(self) -> str:
        b = f"B={self.batch}, " if self.batch else ""
        return f"{b}n={self.n}, n_eq={self.n_eq}, n_ineq={self.n_ineq}"

    def instance(self, i: int) -> dict[str, np.ndarray]:
        """The data of instance ``i`` (unbatched blocks as they are)."""
        return {k: (v[i] if k in self.batched else v) for k, v in self.data.items()}

    def save(self, path: Path) -> None:
        meta = np.array(
            [
                self.name,
                str(self.group),
                self.description,
                str(self.n),
                str(self.n_eq),
                str(self.n_ineq),
                str(self.batch or 0),
                ",".join(self.batched),
                ",".join(self.grad_wrt),
                str(self.seed),
            ]
        )
        np.savez(path, meta=meta, weights=self.weights, **self.data)

    @classmethod
    def load(cls, path: Path) -> Workload:
        with np.load(path) as f:
            meta = [str(s) for s in f["meta"]]
            data = {k: f[k] for k in BLOCKS}
            weights = f["weights"]
        batch = int(meta[6]) or None
        return cls(
            name=meta[0],
            group=int(meta[1]),
            description=meta[2],
            n=int(meta[3]),
            n_eq=int(meta[4]),
            n_ineq=int(meta[5]),
            batch=batch,
            data=data,
            batched=tuple(s for s in meta[7].split(",") if s),
            grad_wrt=tuple(s for s in meta[8].split(",") if s),
            weights=weights,
            seed=int(meta[9]),
        )


def random_psd(rng: np.random.Generator, n: int) -> np.ndarray:
    """``M'M`` with ``M`` an ``n x n`` standard normal matrix (the reference's P)."""
    M = rng.standard_normal((n, n))
    return M.T @ M


def feasible_rhs(
    rng: np.random.Generator, A: np.ndarray, G: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Standard normal ``b, h``, with ``h`` lifted where the least-norm ``x0`` violates it."""
    b = rng.standard_normal(A.shape[0])
    h = rng.standard_normal(G.shape[0])
    lift = np.abs(rng.standard_normal(G.shape[0]))
    x0 = np.linalg.lstsq(A, b, rcond=None)[0]
    gx = G @ x0
    h = np.where(gx + 0.1 <= h, h, gx + lift)
    return b, h


def single_instance(n: int, n_eq: int, n_ineq: int, seed: int) -> Workload:
    """Workload 1: one dense random QP with parameters q, b, h."""
    rng = np.random.default_rng(seed)
    P = random_psd(rng, n)
    q = rng.standard_normal(n)
    A = rng.standard_normal((n_eq, n))
    G = rng.standard_normal((n_ineq, n))
    b, h = feasible_rhs(rng, A, G)
    w = rng.standard_normal(n)
    return Workload(
        name=f"w1-{n}",
        group=1,
        description="single instance, dense random (P = M'M), parameters q, b, h",
        n=n,
        n_eq=n_eq,
        n_ineq=n_ineq,
        batch=None,
        data={"P": P, "q": q, "A": A, "b": b, "G": G, "h": h},
        batched=(),
        grad_wrt=("q", "b", "h"),
        weights=w,
        seed=seed,
    )


def layer_batch(
    batch: int, n: int, seed: int, per_instance: tuple[str, ...] = (), tag: str = ""
) -> Workload:
    """Workloads 2 and 3: B instances with n/2 equalities and n inequalities.

    q, b, h are always batched; ``per_instance`` adds matrices (``"P"``, ``"A"``, ``"G"``)
    that differ between instances (and whose gradients are then compared too).
    """
    n_eq, n_ineq = n // 2, n
    rng = np.random.default_rng(seed)

    def matrices() -> dict[str, np.ndarray]:
        return {
            "P": random_psd(rng, n),
            "A": rng.standard_normal((n_eq, n)),
            "G": rng.standard_normal((n_ineq, n)),
        }

    shared = matrices()
    per = [matrices() for _ in range(batch)] if per_instance else []
    data: dict[str, np.ndarray] = {}
    for name in ("P", "A", "G"):
        if name in per_instance:
            data[name] = np.stack([m[name] for m in per])
        else:
            data[name] = shared[name]
    qs, bs, hs = [], [], []
    for i in range(batch):
        A = data["A"][i] if "A" in per_instance else data["A"]
        G = data["G"][i] if "G" in per_instance else data["G"]
        qs.append(rng.standard_normal(n))
        b, h = feasible_rhs(rng, A, G)
        bs.append(b)
        hs.append(h)
    data.update(q=np.stack(qs), b=np.stack(bs), h=np.stack(hs))
    w = rng.standard_normal((batch, n))
    group = 3 if per_instance else 2
    matrices_text = ", ".join(per_instance) if per_instance else "none"
    prefix = f"w3-{tag}" if per_instance else "w2"
    return Workload(
        name=f"{prefix}-B{batch}-n{n}",
        group=group,
        description=(
            "batch, shared P, A, G; batched q, b, h"
            if not per_instance
            else f"batch, per-instance {matrices_text} (and q, b, h)"
        ),
        n=n,
        n_eq=n_eq,
        n_ineq=n_ineq,
        batch=batch,
        data={k: data[k] for k in BLOCKS},
        batched=("q", "b", "h", *per_instance),
        grad_wrt=("q", "b", "h", *per_instance),
        weights=w,
        seed=seed,
    )


def workload_specs(quick: bool) -> list[tuple[str, callable]]:
    """``(name, factory)`` pairs, cheapest first within each group."""
    if quick:
        singles = [(100, 50, 20), (300, 100, 50), (500, 200, 100)]
        batches = [(8, 20), (16, 20), (8, 50), (16, 50)]
        w3 = (8, 20)
    else:
        singles = [(1000, 500, 200), (3000, 1000, 500), (5000, 2000, 1000)]
        batches = [(64, 100), (256, 100), (64, 500), (256, 500)]
        w3 = (64, 100)
    specs: list[tuple[str, callable]] = []
    for i, (n, p, m) in enumerate(singles):
        specs.append((f"w1-{n}", lambda n=n, p=p, m=m, i=i: single_instance(n, p, m, 100 + i)))
    for i, (B, n) in enumerate(batches):
        specs.append((f"w2-B{B}-n{n}", lambda B=B, n=n, i=i: layer_batch(B, n, 200 + i)))
    B, n = w3
    specs.append(
        (f"w3-AG-B{B}-n{n}", lambda: layer_batch(B, n, 300, per_instance=("A", "G"), tag="AG"))
    )
    specs.append((f"w3-P-B{B}-n{n}", lambda: layer_batch(B, n, 301, per_instance=("P",), tag="P")))
    return specs


def make_workloads(quick: bool = False) -> list[Workload]:
    return [factory() for _, factory in workload_specs(quick)]


def main() -> None:
    parser = argparse.ArgumentParser(description="List the benchmark workloads.")
    parser.add_argument("--quick", action="store_true", help="the scaled-down sizes")
    args = parser.parse_args()
    for wl in make_workloads(args.quick):
        print(f"{wl.name:20s} group {wl.group}  {wl.sizes():40s} {wl.description}")


if __name__ == "__main__":
    main()

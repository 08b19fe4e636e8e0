"""Distributed data-parallel training with the layer (``torch.distributed``, gloo).

The test starts two processes on localhost (loopback only), each holding a replica of a
``Linear -> AltDiffLayer`` model wrapped in ``DistributedDataParallel`` and half of a
batch. DDP averages the replicas' gradients; with a mean loss over equal halves that
average is the gradient of the mean loss over the whole batch, so three SGD steps must
give, step by step, the gradients and weights of single-process training on the full
batch (to 1e-10: the layer solves to 1e-12, and its Alt-Diff gradients are exact up to
the solver's accuracy).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import cvxpy as cp
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from altdiff_modeling import AltDiffLayer

F64 = torch.float64
N, FEATURES, BATCH, STEPS, WORLD = 6, 3, 8, 3, 2
_DEADLINE = 300.0  # seconds; the replicas take about 8
SOLVER_ARGS = {"eps_abs": 1e-12, "eps_rel": 1e-12, "max_iter": 50_000, "backward_eps": 1e-13}


class _Model(torch.nn.Module):
    """Features -> q -> projection-like QP over a capped simplex, with learnable caps."""

    def __init__(self) -> None:
        super().__init__()
        x = cp.Variable(N, name="x")
        q = cp.Parameter(N, name="q")
        u = cp.Parameter(N, name="u")
        constraints = [cp.sum(x) == 1, x >= 0, x <= u]
        problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x) + q @ x), constraints)
        self.layer = AltDiffLayer(problem, [q, u], [x], solver_args=SOLVER_ARGS)
        generator = torch.Generator().manual_seed(0)
        self.linear = torch.nn.Linear(FEATURES, N, dtype=F64)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(N, FEATURES, dtype=F64, generator=generator))
            self.linear.bias.copy_(0.1 * torch.randn(N, dtype=F64, generator=generator))
        self.caps = torch.nn.Parameter(torch.full((N,), 0.4, dtype=F64))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        (x,) = self.layer(self.linear(features), self.caps)
        return x


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(BATCH, FEATURES, dtype=F64, generator=generator)
    target = torch.softmax(torch.randn(BATCH, N, dtype=F64, generator=generator), dim=-1)
    return features, target


def _train(model: torch.nn.Module, params, features, target) -> list[list[torch.Tensor]]:
    """Three SGD steps on a mean loss; the gradients of every step."""
    optimizer = torch.optim.SGD(params, lr=0.5)
    history = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = ((model(features) - target) ** 2).mean()
        loss.backward()
        history.append([p.grad.detach().clone() for p in params])
        optimizer.step()
    return history


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        _train_replica(rank, out_dir)
    finally:
        # Only after the replica's DDP wrapper is gone: destroying the process group
        # under a live wrapper left its teardown waiting on the group, about one run in
        # ten, until the deadline.
        dist.destroy_process_group()


def _train_replica(rank: int, out_dir: str) -> None:
    model = _Model()
    ddp = DistributedDataParallel(model)
    features, target = _batch()
    half = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    params = list(model.parameters())
    history = _train(ddp, params, features[half], target[half])
    final = [p.detach().clone() for p in params]
    torch.save({"grads": history, "params": final}, Path(out_dir) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_workers(out_dir: Path) -> None:
    """Run the replicas; fail (instead of hanging the suite) if they have not finished
    within `_DEADLINE` seconds: a replica left waiting on a collective whose peer died
    would otherwise wait forever."""
    context = mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + _DEADLINE
    while not context.join(timeout=1.0):  # raises if a replica failed
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"the DDP replicas did not finish within {_DEADLINE} s")


def test_ddp_gradients_match_single_process_training(tmp_path):
    assert dist.is_available() and dist.is_gloo_available()
    _run_workers(tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _Model()
        features, target = _batch()
        params = list(model.parameters())
        expected = _train(model, params, features, target)
    finally:
        torch.set_num_threads(threads)

    worst = 0.0
    for step in range(STEPS):
        for name, single, *replicas in zip(
            ("weight", "bias", "caps"), expected[step], *(r["grads"][step] for r in ranks)
        ):
            assert single.abs().max() > 1e-6, f"step {step}: {name} has no gradient to compare"
            for rank, replica in enumerate(replicas):
                error = float((replica - single).abs().max() / single.abs().max())
                worst = max(worst, error)
                assert error <= 1e-10, (
                    f"step {step}, {name}, rank {rank}: relative error {error:.2e}"
                )
    for single, *replicas in zip(params, *(r["params"] for r in ranks)):
        for replica in replicas:
            assert torch.allclose(replica, single.detach(), rtol=0, atol=1e-10)
    print(f"DDP (2 x gloo) vs single process, {STEPS} steps: max relative error {worst:.1e}")

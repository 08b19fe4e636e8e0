"""Workload 4: one training epoch of an OptNet-style classifier on scikit-learn's digits.

Model: ``64 -> 128 (ReLU) -> 200`` gives the linear term q of a QP layer
``x* = argmin 1/2 x'Px + q'x  s.t.  Ax = b, Gx <= h`` with n = 200, 50 equalities and 50
inequalities (P, A, b, G, h fixed, seeded, feasible; ``P = M'M / n + 0.1 I``), then
``200 -> 10`` logits and cross-entropy; Adam (lr 1e-3), batch 64, one epoch over the
training split (1437 images, 22 full batches; the remainder is dropped so every batch
has B = 64). Every method starts from the same weights and sees the same batches, so
their losses agree when their gradients do.

Reported per method: construction time, epoch time (forward + backward + optimizer step
of every batch), loss of the final batch, test accuracy after the epoch, the error of the
final batch's solution and gradients against the Clarabel/KKT reference, and peak memory.

Usage: python benchmarks/optnet_digits.py --method altdiff-layer [--out r.json] [--quick]
       python benchmarks/optnet_digits.py --method all      (every method, one process each)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

N, N_EQ, N_INEQ, BATCH, HIDDEN = 200, 50, 50, 64, 128


def qp_workload(q_batch):
    """The layer's QP as a peers.Workload whose only parameter is the batched q."""
    import numpy as np
    from workloads import Workload, feasible_rhs

    rng = np.random.default_rng(400)
    M = rng.standard_normal((N, N))
    P = M.T @ M / N + 0.1 * np.eye(N)
    A = rng.standard_normal((N_EQ, N))
    G = rng.standard_normal((N_INEQ, N))
    b, h = feasible_rhs(rng, A, G)
    weights = rng.standard_normal(q_batch.shape)
    return Workload(
        name="digits",
        group=4,
        description="OptNet digits layer",
        n=N,
        n_eq=N_EQ,
        n_ineq=N_INEQ,
        batch=q_batch.shape[0],
        data={"P": P, "q": q_batch, "A": A, "b": b, "G": G, "h": h},
        batched=("q",),
        grad_wrt=("q",),
        weights=weights,
        seed=400,
    )


def run(method_name: str, threads: int, quick: bool, out: Path | None) -> dict:
    import numpy as np
    import torch
    from peers import METHODS, _peak_mb, accuracy_status, compare, compute_reference
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    torch.set_num_threads(threads)
    torch.set_default_dtype(torch.float64)
    result: dict = {
        "method": method_name,
        "threads": torch.get_num_threads(),
        "status": "running",
        "phase": "start",
        "setup": f"MLP 64-{HIDDEN}-QP(n={N}, {N_EQ} eq, {N_INEQ} ineq)-10, batch {BATCH}, Adam",
    }

    def save() -> None:
        if out is not None:
            out.write_text(json.dumps(result, indent=1, default=float))

    save()
    digits = load_digits()
    X = (digits.data / 16.0 - 0.5).astype(np.float64)
    X_train, X_test, y_train, y_test = train_test_split(
        X, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    batches = len(X_train) // BATCH
    if quick:
        batches = 3
    order = np.random.default_rng(0).permutation(len(X_train))

    torch.manual_seed(0)
    body = torch.nn.Sequential(
        torch.nn.Linear(64, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, N)
    )
    head = torch.nn.Linear(N, 10)
    params = [*body.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)

    wl = qp_workload(np.zeros((BATCH, N)))
    method = METHODS[method_name](threads)
    reason = method.unavailable(wl)
    if reason:
        result.update(status=f"unavailable: {reason}", phase="done")
        save()
        return result
    try:
        method.prepare()
        t0 = time.perf_counter()
        method.construct(wl)
        result["construct_s"] = time.perf_counter() - t0
        result["phase"] = "epoch"
        save()
        losses = []
        t0 = time.perf_counter()
        for k in range(batches):
            idx = order[k * BATCH : (k + 1) * BATCH]
            xb = torch.from_numpy(X_train[idx])
            yb = torch.from_numpy(y_train[idx])
            q = body(xb)
            x = method.forward({"q": q})
            loss = torch.nn.functional.cross_entropy(head(x), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            result.update(batches_done=k + 1, elapsed_s=time.perf_counter() - t0)
            save()
        result["epoch_s"] = time.perf_counter() - t0
        result["batches"] = batches
        result["final_batch_loss"] = losses[-1]
        result["mean_loss"] = float(np.mean(losses))
        result["peak_mb"] = _peak_mb()
        result["phase"] = "test"
        save()
        with torch.no_grad():
            correct = 0
            test = X_test[: 2 * BATCH] if quick else X_test
            labels = y_test[: len(test)]
            for k in range(0, len(test), BATCH):
                xb = torch.from_numpy(test[k : k + BATCH])
                x = method.forward({"q": body(xb)})
                correct += int((head(x).argmax(1).numpy() == labels[k : k + BATCH]).sum())
        result["test_accuracy"] = correct / len(test)
        # Accuracy of the final batch's solution and gradient (loss sum(w * x)).
        result["phase"] = "check"
        save()
        q_last = body(torch.from_numpy(X_train[order[(batches - 1) * BATCH : batches * BATCH]]))
        check = qp_workload(q_last.detach().numpy())
        method.construct(check)
        q_leaf = q_last.detach().clone().requires_grad_(True)
        x = method.forward({"q": q_leaf})
        (grad,) = torch.autograd.grad((torch.from_numpy(check.weights) * x).sum(), [q_leaf])
        ref = compute_reference(check, log=lambda *a: None)
        result["errors"] = compare(check, ref, x.detach().numpy(), {"q": grad.detach().numpy()})
        result["status"] = accuracy_status(result["errors"])
    except Exception as exc:
        import traceback

        result["status"] = f"error: {type(exc).__name__}: {str(exc).strip()[:300]}"
        result["traceback"] = traceback.format_exc()[-3000:]
        result["peak_mb"] = _peak_mb()
    result["phase"] = "done"
    save()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="all")
    parser.add_argument("--out", default="")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="three batches only")
    args = parser.parse_args()
    if args.method == "all":
        from _child import thread_env
        from peers import LIBRARY_METHODS, PEER_METHODS

        for name in (*LIBRARY_METHODS, *PEER_METHODS):
            cmd = [sys.executable, __file__, "--method", name, "--threads", str(args.threads)]
            if args.quick:
                cmd.append("--quick")
            subprocess.run(cmd, check=False, env={**os.environ, **thread_env(args.threads)})
        return
    result = run(args.method, args.threads, args.quick, Path(args.out) if args.out else None)
    shown = {k: v for k, v in result.items() if k != "traceback"}
    print(json.dumps(shown, indent=1, default=float))


if __name__ == "__main__":
    main()

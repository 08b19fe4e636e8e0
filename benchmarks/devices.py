"""This library on the CPU and on a CUDA device, beside qpth on the same device.

Times forward + backward of the layer (`AltDiffLayer`) and of `solve_qp` with the
data on each device, and qpth's ``QPFunction`` on the CUDA device (proxsuite's
QPLayer and cvxpylayers run on the CPU only), float64, median of the timed calls after
one warm-up, with ``torch.cuda.synchronize`` around each call. The reference for the
errors is this library's CPU layer in the same run, whose own errors against Clarabel
the CPU table (`run_all.py`) reports.

Usage: python benchmarks/devices.py [--only w2-B64-n100,...] [--repeats 5] [--out DIR]
Writes ``devices.md`` and ``devices.json`` to ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from peers import AltDiffLayerMethod, AltDiffSolveQP, QpthMethod, _as_torch
from workloads import workload_specs

DEFAULT = "w2-B64-n100,w2-B256-n100,w2-B64-n500,w2-B256-n500,w3-AG-B64-n100,w3-P-B64-n100"


def _time_calls(method, wl, device: str, repeats: int) -> dict:
    """Forward and backward seconds of ``method`` on ``device``, and its last x and
    gradients (on the CPU)."""
    weights = torch.from_numpy(np.ascontiguousarray(wl.weights)).to(device)
    fixed = getattr(method, "fixed", None)
    if fixed is not None:
        method.fixed = {k: v.to(device) for k, v in fixed.items()}

    def sync() -> None:
        if device != "cpu":
            torch.cuda.synchronize()

    def one_call():
        t = {k: v.to(device).requires_grad_(True) for k, v in _as_torch(wl, wl.grad_wrt).items()}
        sync()
        t0 = time.perf_counter()
        x = method.forward(t)
        sync()
        t1 = time.perf_counter()
        grads = torch.autograd.grad((weights * x).sum(), [t[k] for k in wl.grad_wrt])
        sync()
        t2 = time.perf_counter()
        return x, grads, t1 - t0, t2 - t1

    x, grads, first_f, first_b = one_call()
    fwd, bwd = [], []
    for _ in range(repeats):
        x, grads, f, b = one_call()
        fwd.append(f)
        bwd.append(b)
    return {
        "first_s": first_f + first_b,
        "forward_s": statistics.median(fwd),
        "backward_s": statistics.median(bwd),
        "total_s": statistics.median([f + b for f, b in zip(fwd, bwd, strict=True)]),
        "x": x.detach().cpu().numpy(),
        "grads": [g.detach().cpu().numpy() for g in grads],
    }


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=DEFAULT)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    specs = dict(workload_specs(False))
    rows = []
    for name in args.only.split(","):
        wl = specs[name]()
        reference = None
        for device in devices:
            for cls in (AltDiffLayerMethod, AltDiffSolveQP, QpthMethod):
                if cls is QpthMethod and device == "cpu":
                    continue  # the CPU table has it
                method = cls(1)
                method.prepare()
                method.construct(wl)
                try:
                    timed = _time_calls(method, wl, device, args.repeats)
                except Exception as exc:  # record what happened, exactly
                    rows.append(
                        {
                            "workload": name,
                            "method": cls.name,
                            "device": device,
                            "status": f"error: {type(exc).__name__}: {exc}"[:200],
                        }
                    )
                    continue
                if reference is None:
                    reference = timed
                row = {"workload": name, "method": cls.name, "device": device, "status": "ok"}
                row.update({k: timed[k] for k in ("first_s", "forward_s", "backward_s", "total_s")})
                row["x_vs_cpu_layer"] = _relative(timed["x"], reference["x"])
                row["grad_vs_cpu_layer"] = max(
                    _relative(g, r) for g, r in zip(timed["grads"], reference["grads"], strict=True)
                )
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    header = (
        f"float64, forward + backward, median of {args.repeats} calls after one warm-up, "
        f"one CPU thread; torch {torch.__version__}; device: {name}. Errors are relative "
        "to this library's CPU layer in the same run."
    )
    lines = [
        "# This library on the CPU and on CUDA",
        "",
        header,
        "",
        "| workload | method | device | forward s | backward s | total s | first call s "
        "| x vs CPU layer | gradient vs CPU layer | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(
                f"| {r['workload']} | {r['method']} | {r['device']} | - | - | - | - "
                f"| - | - | {r['status']} |"
            )
            continue
        lines.append(
            f"| {r['workload']} | {r['method']} | {r['device']} | {r['forward_s']:.4g} "
            f"| {r['backward_s']:.4g} | {r['total_s']:.4g} | {r['first_s']:.4g} "
            f"| {r['x_vs_cpu_layer']:.1e} | {r['grad_vs_cpu_layer']:.1e} | ok |"
        )
    (out / "devices.md").write_text("\n".join(lines) + "\n")
    (out / "devices.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Tables, verdicts and plots of ``benchmarks/families.py`` from its recorded runs.

``records`` maps a case name to ``{"meta": {...}, "runs": {"<method>@<threads>": result}}``
(a result is a child's JSON, ``benchmarks/family_child.py``). Every verdict is computed
from these numbers; none is written by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _common import markdown_table
from family_child import BACKWARD_VARIANTS, LIBRARY, PEERS
from layer_families import FAMILY_TITLES
from peers import OK_TOL

LAYER = "altdiff-layer"
CVXPYLAYERS = ("cvxpylayers-diffcp", "cvxpylayers-moreau")
#: The targets of the benchmark (issues 20 and 21).
SPEEDUP_PEER = 3.0  # at least 3x the fastest peer that reaches 1e-5 gradient accuracy
SPEEDUP_CVXPYLAYERS = 3.0  # LP families, family c, and family g against each backend
TINY_CALL_S = 1e-3  # family e: per call, forward + backward


def _num(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not np.isfinite(v):
        return "inf"
    return f"{v:.{digits}g}"


def _ratio(t: float | None, ref_t: float | None) -> float | None:
    return t / ref_t if t is not None and ref_t else None


def _short(status: str) -> str:
    return status.split(":")[0].split(" (")[0]


def answered(r: dict | None) -> bool:
    """A run that finished its calls with an answer that is not wrong."""
    return (
        bool(r)
        and r.get("total_median_s") is not None
        and _short(r["status"])
        in (
            "ok",
            "inaccurate",
        )
    )


def grad_error(r: dict) -> float | None:
    return (r.get("errors") or {}).get("gradient")


def reaches(r: dict | None) -> bool:
    """Answered, with every referenced gradient within ``OK_TOL``."""
    g = grad_error(r) if r else None
    return answered(r) and g is not None and g <= OK_TOL


def _fastest(runs: dict, methods, threads: int, keep) -> tuple[str | None, float | None]:
    best: tuple[str | None, float | None] = (None, None)
    for m in methods:
        r = runs.get(f"{m}@{threads}")
        if keep(r) and (best[1] is None or r["total_median_s"] < best[1]):
            best = (m, r["total_median_s"])
    return best


def comparisons(runs: dict, threads: int) -> dict:
    """The peers a case's library row is compared with, at one thread count."""
    return {
        "accurate_peer": _fastest(runs, PEERS, threads, reaches),
        "any_peer": _fastest(runs, PEERS, threads, answered),
        "cvxpylayers": _fastest(runs, CVXPYLAYERS, threads, answered),
    }


def thread_counts(entry: dict) -> list[int]:
    return sorted({int(k.split("@")[1]) for k in entry.get("runs", {})})


# ----------------------------------------------------------------------------- tables


def case_table(name: str, entry: dict) -> str:
    meta, runs = entry.get("meta", {}), entry.get("runs", {})
    ref = meta.get("reference") or {}
    lines = [
        f"### {name}",
        "",
        f"{meta.get('description', '')}. Draws: {meta.get('distribution', '')}.",
    ]
    if meta.get("error"):
        lines += ["", f"Not run: {meta['error']}", ""]
        return "\n".join(lines)
    if ref:
        fd = ref.get("crosscheck_fd") or []
        fd_text = ", ".join(f"{a:.6g} vs {b:.6g}" for a, b in fd)
        lines[-1] += (
            f" Reference: {ref.get('pairs')} (call, instance) pairs, Clarabel "
            f"{', '.join(ref.get('statuses', [])) or 'through CVXPY'}"
            + (
                f", smallest complementarity margin {ref['complementarity_min']:.2g}"
                if ref.get("complementarity_min") is not None
                else ""
            )
            + (
                f", conic KKT gradients (smallest KKT rcond {ref['kkt_rcond_min']:.2g}, "
                f"largest residual after polishing {ref['kkt_residual_max']:.2g})"
                if ref.get("kkt_rcond_min") is not None
                else ""
            )
            + (
                f", {len(ref['unavailable'])} pairs without a unique gradient"
                if ref.get("unavailable")
                else ""
            )
            + (
                f"; {'cone program' if ref.get('gradient_reference') == 'conic KKT' else 'raw QP'} "
                f"vs CVXPY: solutions {max(ref['crosscheck_solution']):.1g} apart"
                if ref.get("crosscheck_solution")
                else ""
            )
            + (f", directional derivative vs finite difference {fd_text}" if fd_text else "")
            + "."
        )
    header = [
        "method",
        "threads",
        "construct s",
        "median fwd+bwd s",
        "max fwd+bwd s",
        "time / fastest 1e-5 peer's",
        "time / cvxpylayers'",
        "solution err",
        "gradient err",
        "max amplification",
        "peak - baseline MB",
        "timed calls",
        "not solved",
        "backward not converged",
        "status",
    ]
    rows = []
    order = [*LIBRARY, *PEERS, *BACKWARD_VARIANTS]
    for threads in thread_counts(entry):
        comp = comparisons(runs, threads)
        for m in order:
            r = runs.get(f"{m}@{threads}")
            if r is None:
                continue
            total = r.get("total_median_s")
            err = r.get("errors") or {}
            gradient = _num(err.get("gradient"), 2)
            if err.get("kind") == "directional" and err.get("gradient") is not None:
                gradient += " (dir.)"
            not_solved = unconverged = None
            if r.get("statuses") is not None:
                not_solved = sum(v for k, v in r["statuses"].items() if k != "solved")
            if r.get("backward_statuses") is not None:
                unconverged = sum(v for k, v in r["backward_statuses"].items() if k != "converged")
            rows.append(
                [
                    m,
                    threads,
                    _num(r.get("construct_s")),
                    _num(total),
                    _num(r.get("total_max_s")),
                    _num(_ratio(total, comp["accurate_peer"][1])),
                    _num(_ratio(total, comp["cvxpylayers"][1])),
                    _num(err.get("solution"), 2),
                    gradient,
                    _num(r.get("amplification_max"), 3),
                    _num(r.get("peak_delta_mb"), 4),
                    r.get("timed_calls", "-"),
                    "-" if not_solved is None else not_solved,
                    "-" if unconverged is None else unconverged,
                    r.get("status", "-").replace("|", "/")[:160],
                ]
            )
    lines += ["", markdown_table(header, rows), ""]
    return "\n".join(lines)


def _verdict(ok: bool | None) -> str:
    return {True: "met", False: "not met", None: "n/a"}[ok]


def verdict_rows(records: dict) -> list[list]:
    """One row per (case, threads, target) for the library's layer."""
    rows = []
    for name, entry in records.items():
        meta, runs = entry.get("meta", {}), entry.get("runs", {})
        family = meta.get("family", name[0])
        for threads in thread_counts(entry) or [None]:
            r = runs.get(f"{LAYER}@{threads}") if threads else None
            if not r or r.get("total_median_s") is None:
                status = (r or {}).get("status") or meta.get("error") or "not run"
                rows.append(
                    [family, name, threads, "finishes its calls", status[:120], "", _verdict(False)]
                )
                continue
            t = r["total_median_s"]
            comp = comparisons(runs, threads)
            g = grad_error(r)
            rows.append(
                [
                    family,
                    name,
                    threads,
                    f"gradient error <= {OK_TOL:g}",
                    _num(g, 2),
                    "",
                    _verdict(g is not None and g <= OK_TOL),
                ]
            )
            peer, peer_t = comp["accurate_peer"]
            rows.append(
                [
                    family,
                    name,
                    threads,
                    f">= {SPEEDUP_PEER:g}x the fastest peer reaching {OK_TOL:g}",
                    f"speed-up {peer_t / t:.3g}x" if peer_t else "no peer reaches it",
                    f"{peer} {peer_t:.3g} s" if peer else "",
                    _verdict(peer_t / t >= SPEEDUP_PEER if peer_t else None),
                ]
            )
            peer, peer_t = comp["any_peer"]
            rows.append(
                [
                    family,
                    name,
                    threads,
                    "never slower than any peer",
                    f"speed-up {peer_t / t:.3g}x" if peer_t else "no peer answered",
                    f"{peer} {peer_t:.3g} s" if peer else "",
                    _verdict(t <= peer_t if peer_t else None),
                ]
            )
            if family in ("b", "c"):
                peer, peer_t = comp["cvxpylayers"]
                rows.append(
                    [
                        family,
                        name,
                        threads,
                        f">= {SPEEDUP_CVXPYLAYERS:g}x cvxpylayers",
                        f"speed-up {peer_t / t:.3g}x" if peer_t else "cvxpylayers did not answer",
                        f"{peer} {peer_t:.3g} s" if peer else "",
                        _verdict(peer_t / t >= SPEEDUP_CVXPYLAYERS if peer_t else None),
                    ]
                )
            if family == "g":
                rows += _per_backend_rows(family, name, threads, r, runs)
            if family == "d":
                statuses = r.get("statuses") or {}
                calls = r.get("calls_done", 0)
                rows.append(
                    [
                        family,
                        name,
                        threads,
                        "every call solved (default tolerance)",
                        f"{calls - r.get('unsolved_calls', 0)} of {calls} calls",
                        ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())),
                        _verdict(r.get("unsolved_calls", 1) == 0 and set(statuses) == {"solved"}),
                    ]
                )
            if family == "e":
                rows.append(
                    [
                        family,
                        name,
                        threads,
                        f"median fwd+bwd per call <= {TINY_CALL_S * 1e3:g} ms",
                        f"{t * 1e3:.3g} ms",
                        f"max {r['total_max_s'] * 1e3:.3g} ms",
                        _verdict(t <= TINY_CALL_S),
                    ]
                )
    return rows


def _per_backend_rows(family: str, name: str, threads: int, r: dict, runs: dict) -> list[list]:
    """Family g (issue: SOC layers): at least 3x faster than each cvxpylayers backend
    whose answer is not wrong, with both gradient errors beside the speed-up."""
    rows = []
    t, ours = r["total_median_s"], grad_error(r)
    for backend in CVXPYLAYERS:
        peer = runs.get(f"{backend}@{threads}")
        target = f">= {SPEEDUP_CVXPYLAYERS:g}x {backend}"
        peer_t = (peer or {}).get("total_median_s")
        if peer_t is None:
            reason = (peer or {}).get("status", "not run")
            rows.append([family, name, threads, target, "no answer", reason[:80], _verdict(None)])
            continue
        against = f"{peer_t:.3g} s, gradient err {_num(grad_error(peer), 2)}"
        if not answered(peer):  # timed, but not compared with: its answer is wrong
            value = f"not compared (answer {_short(peer['status'])}); gradient err {_num(ours, 2)}"
            rows.append([family, name, threads, target, value, against, _verdict(None)])
            continue
        value = f"speed-up {peer_t / t:.3g}x; gradient err {_num(ours, 2)}"
        rows.append(
            [
                family,
                name,
                threads,
                target,
                value,
                against,
                _verdict(peer_t / t >= SPEEDUP_CVXPYLAYERS),
            ]
        )
    return rows


def targets(records: dict) -> str:
    """Per family: each target met on every case and thread count, or not."""
    rows = verdict_rows(records)
    lines = [
        "## Targets",
        "",
        "Each verdict is computed from the rows below: a family meets a target only if "
        "every (case, threads) of it does.",
        "",
    ]
    summary = []
    for family, title in FAMILY_TITLES.items():
        mine = [r for r in rows if r[0] == family]
        if not mine:
            continue
        for target in dict.fromkeys(r[3] for r in mine):
            of = [r for r in mine if r[3] == target]
            failed = [f"{r[1]}@{r[2]}" for r in of if r[6] == "not met"]
            na = [r for r in of if r[6] == "n/a"]
            evaluated = len(of) - len(na)
            if failed:
                verdict = "not met"
            elif evaluated:
                verdict = "met"
            else:
                verdict = "n/a"
            detail = f"{evaluated - len(failed)} of {evaluated} (case, threads) met"
            if na:
                detail += f"; {len(na)} not evaluable"
            if failed:
                detail += (
                    "; not met: " + ", ".join(failed[:6]) + (" ..." if len(failed) > 6 else "")
                )
            summary.append([f"{family}: {title}", target, detail, verdict])
    lines += [markdown_table(["family", "target", "detail", "verdict"], summary), ""]
    lines += ["### Every (case, threads)", ""]
    lines += [
        markdown_table(
            ["family", "case", "threads", "target", "value", "against", "verdict"], rows
        ),
        "",
    ]
    return "\n".join(lines)


def amplification_table(records: dict) -> str:
    """Issue 21: the largest ``||dL/dtheta|| / ||w||`` per family and backward method."""
    methods = [(LAYER, "auto (default)")] + [(m, v) for m, v in BACKWARD_VARIANTS.items()]
    rows = []
    for family, title in FAMILY_TITLES.items():
        cases = {n: e for n, e in records.items() if e.get("meta", {}).get("family") == family}
        if not cases:
            continue
        row = [f"{family}: {title}"]
        for m, _ in methods:
            best = None
            for name, entry in cases.items():
                for key, r in entry.get("runs", {}).items():
                    amp = r.get("amplification_max") if key.split("@")[0] == m else None
                    if amp is not None and (best is None or amp > best[0]):
                        best = (amp, name)
            row.append(f"{best[0]:.3g} ({best[1]})" if best else "-")
        ref = [
            (e["meta"]["reference"]["amplification_max"], n)
            for n, e in cases.items()
            if (e.get("meta", {}).get("reference") or {}).get("amplification_max") is not None
        ]
        row.append(f"{max(ref)[0]:.3g} ({max(ref)[1]})" if ref else "-")
        rows.append(row)
    header = [
        "family",
        *[f"backward_method {v}" for _, v in methods],
        "exact (KKT, referenced instances)",
    ]
    return "\n".join(
        [
            "## Largest gradient amplification",
            "",
            "Per family, the largest ||dL/dtheta_i|| / ||w_i|| over every instance of every "
            "call (all cases, all thread counts), for each backward method of the layer, with "
            "the case it occurred on; the last column is the same ratio for the exact KKT "
            "gradient, over the referenced instances only.",
            "",
            markdown_table(header, rows),
            "",
        ]
    )


def cases_table(records: dict) -> str:
    rows = [
        [name, e.get("meta", {}).get("description", ""), e.get("meta", {}).get("distribution", "")]
        for name, e in records.items()
    ]
    return "\n".join(
        [
            "## Cases and their draws",
            "",
            markdown_table(["case", "problem", "parameter draws per call"], rows),
            "",
        ]
    )


def report(records: dict, env: dict, settings: dict, images: list[str] = ()) -> str:
    """The whole report; ``images``: the plots' paths as the page that shows it sees them."""
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    load = env.get("load_average") or []
    parts = [
        f"# Layer families{' (quick validation sizes)' if settings['quick'] else ''}",
        "",
        f"`{settings['command']}` on {env['cpu']} ({env['machine']}), load average at writing "
        f"{', '.join(f'{x:.1f}' for x in load)}, {env['date']}; altdiff-modeling at "
        f"{env['altdiff_commit']}; Python {env['python']}, torch {env['torch']}, {versions}.",
        "",
        f"float64 on the CPU; {', '.join(map(str, settings['threads']))} thread(s), the same for "
        "every method in a row group. Every call draws new parameter values (the table below "
        "says how), one warm-up call, then the timed calls; fwd+bwd is the forward call plus "
        "`torch.autograd.grad` of sum(w * x) with new weights w each call. Errors are the "
        "worst over the referenced (call, instance) pairs: solutions against Clarabel at "
        "tolerance 1e-12, gradients against implicit differentiation of the KKT conditions "
        "(family g: of the conic KKT conditions, at Clarabel's solution polished by Newton "
        "steps on them; relative; where the exact gradient vanishes, relative to ||w||, and where the exact "
        "solution vanishes, relative to the case's median solution norm), or for the large "
        "sparse problems the directional derivative against a finite difference ('dir.'). "
        f"Status: ok = within {OK_TOL:g}; inaccurate = within 1e-2; wrong = beyond. "
        "'time / fastest 1e-5 peer's' divides a row's median fwd+bwd by that of the fastest "
        f"peer (same threads) whose gradient error is within {OK_TOL:g}; 'time / "
        "cvxpylayers'' by that of the faster cvxpylayers backend whose answer is not wrong; "
        "a speed-up is the inverse. "
        f"Budget {settings['budget']:.0f} s per run. See benchmarks/README.md for how each "
        "number is obtained.",
        "",
        targets(records),
        amplification_table(records),
        cases_table(records),
    ]
    if images:
        parts += [
            "## Plots",
            "",
            "Per case and method, the median fwd+bwd per call (bar) and the maximum (tick), "
            f"log scale; a hatched bar's gradient error is not within {OK_TOL:g} (or was not "
            "measured).",
            "",
        ]
        parts += [f"![family {Path(i).stem.rsplit('-', 1)[-1]}]({i})" for i in images]
        parts += [""]
    parts += [
        "## Results per case",
        "",
    ]
    for name, entry in records.items():
        parts.append(case_table(name, entry))
    return "\n".join(parts)


# ----------------------------------------------------------------------------- plots

COLORS = {
    "altdiff-layer": "tab:blue",
    "altdiff-solve_qp": "tab:cyan",
    "proxsuite-qplayer": "tab:orange",
    "qpth": "tab:green",
    "cvxpylayers-diffcp": "tab:red",
    "cvxpylayers-moreau": "tab:purple",
}


def plot_family(records: dict, family: str, path: Path) -> None:
    """Median fwd+bwd per call (bars) and the maximum (ticks) per case and method, one
    panel per thread count, log scale; hatched: the answer was not within 1e-5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [n for n, e in records.items() if e.get("meta", {}).get("family") == family]
    threads = sorted({t for n in cases for t in thread_counts(records[n])})
    if not cases or not threads:
        return
    methods = [
        m
        for m in COLORS
        if any(f"{m}@{t}" in records[n].get("runs", {}) for n in cases for t in threads)
    ]
    width = 0.8 / max(len(methods), 1)
    fig, axes = plt.subplots(
        len(threads), 1, figsize=(max(6, 0.9 * len(cases) + 2), 3.2 * len(threads)), squeeze=False
    )
    for ax, t in zip(axes[:, 0], threads):
        for j, m in enumerate(methods):
            for i, n in enumerate(cases):
                r = records[n].get("runs", {}).get(f"{m}@{t}")
                if not r or r.get("total_median_s") is None:
                    continue
                x = i + (j - (len(methods) - 1) / 2) * width
                ok = reaches(r)
                ax.bar(
                    x,
                    r["total_median_s"],
                    width,
                    color=COLORS[m],
                    hatch=None if ok else "//",
                    edgecolor="white" if ok else "black",
                    linewidth=0.3,
                    label=m,
                )
                ax.plot(
                    [x - width / 2, x + width / 2], [r["total_max_s"]] * 2, color="black", lw=0.8
                )
        ax.set_yscale("log")
        ax.set_xticks(range(len(cases)), cases, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("fwd+bwd per call, s")
        ax.set_title(f"family {family}: {FAMILY_TITLES[family]} ({t} thread(s))", fontsize=9)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=6, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

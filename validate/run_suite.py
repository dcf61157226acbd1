"""Run the validation suite and print the README's agreement table (markdown).

Usage::

    python validate/run_suite.py [--suites validate/suites] [--out out/validate_suite]
                                 [--widths 64,256,1024] [--linearised] [--json FILE]
                                 [--metrics test_loss,param_dist]

For every ``*.toml`` in the suite folder (topology x algorithm), runs
:func:`ntkdyn.validate` over the configuration's widths (full outputs, overlay
figures included, in ``OUT/<name>/``) and prints, per configuration and width,
the pointwise relative error of the network-mean test loss and parameter
distance of the nonlinear network against the analytic and the empirical NTK
predictions (``max_t |pred_t - obs_t| / |obs_t|``, :mod:`ntkdyn.validation.agreement`) with
the fitted slope against width (over the widths whose statuses are ok; the others
are listed), then the same error at the horizon and the lenient
``max_t |pred - obs| / max_t |obs|`` reported before, and the wall time.
``--linearised`` also trains the linearised networks (about three times the cost).
``--metrics`` chooses the tabulated metrics (any of :data:`ntkdyn.validation.agreement.METRICS`;
default ``test_loss,param_dist``; the cross-entropy suite uses ``test_loss,test_acc``).
Each metric's slope is fitted over the same widths as the harness's (statuses ok).

The cross-entropy suite (nine configurations, ring / torus / complete x DGD / ATC / CTA)::

    python validate/run_suite.py --suites validate/suites/cross_entropy --metrics test_loss,test_acc
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _fmt(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.2f}%"


def _topology_label(cfg) -> str:
    t = cfg.topology
    if t.sequence:
        return "+".join(t.sequence) + " (periodic)"
    if t.gossip == "edges":
        return f"{t.name}, gossip p={t.gossip_p:g}"
    if t.gossip:
        return f"{t.name}, one-edge gossip"
    return t.name


def _algorithm_label(cfg) -> str:
    t = cfg.training
    if t.loss == "cross_entropy":
        return f"{t.algorithm}, cross-entropy"
    if t.algorithm == "p2pl":
        return f"p2pl ({t.local_steps} local + {t.consensus_steps} combine)"
    if t.algorithm == "momentum":
        return f"momentum (beta {t.momentum:g})"
    return t.algorithm


DEFAULT_METRICS = ("test_loss", "param_dist")
LABELS = {"test_loss": "test loss", "param_dist": "||theta - theta_0||",
          "test_acc": "test accuracy", "train_loss": "train loss", "train_acc": "train accuracy"}
KERNELS = ("analytic", "empirical")


def errors_of(run, figure: str, metrics) -> dict:
    """``{kernel: {metric: error}}`` of the network mean of the nonlinear network against
    each prediction of ``run`` (a :class:`ntkdyn.validation.harness.WidthResult`), for any
    recorded ``metrics`` (``WidthResult.headline`` gives the test loss and the parameter
    distance only); ``figure`` is a key of :func:`ntkdyn.validation.agreement.compare`'s
    per-metric entries (``"mean"``, ``"mean_at_horizon"``, ...)."""
    return {k: {m: run.agreement[f"nonlinear vs {k}"]["metrics"].get(m, {}).get(figure)
                for m in metrics} for k in run.predicted}


def slopes_of(widths, headline: dict, fitted: dict, metrics) -> dict:
    """Least-squares slope of log error against log width per ``"<metric> vs <kernel>"``,
    over the widths ``fitted[kernel]`` (those whose statuses are ok; all when absent)."""
    from ntkdyn.validation import agreement

    out = {}
    for k in KERNELS:
        use = [w for w in widths if w in fitted.get(k, widths)]
        for m in metrics:
            errs = [headline.get(str(w), {}).get(k, {}).get(m) for w in use]
            if all(e is None for e in errs):
                continue
            errs = [float("nan") if e is None else e for e in errs]
            out[f"{m} vs {k}"] = agreement.fit_slope(use, errs)[0]
    return out


def table(rows: list[dict], widths: list[int], figure: str = "headline",
          horizon: int | None = None, metrics=DEFAULT_METRICS) -> str:
    """Markdown: one row per (topology, algorithm), columns width x (analytic / empirical).

    ``figure``: ``"headline"`` (pointwise relative error, max over the records),
    ``"at_horizon"`` (the same at the last record) or ``"max_gap_over_max_obs"``;
    ``horizon``: the last recorded step, named in the title when the rows share it.
    """
    words = {"headline": "Pointwise relative error (max over t of |pred - obs| / |obs|)",
             "at_horizon": "Relative error at the horizon ("
                           + (f"step {horizon})" if horizon is not None else "last record)"),
             "max_gap_over_max_obs": "Lenient max |pred - obs| / max |obs|"}[figure]
    out = []
    for metric in metrics:
        label = LABELS.get(metric, metric)
        head = "| topology | algorithm | " + " | ".join(f"width {w}" for w in widths) + \
               (" | slope (analytic / empirical) |" if figure == "headline" else " |")
        out += [f"{words} of the network-mean {label} "
                "(analytic NTK / empirical NTK):", "", head,
                "|" + "---|" * (len(widths) + 2 + (figure == "headline"))]
        for r in rows:
            cells = []
            for w in widths:
                h = r[figure].get(str(w), {})
                cells.append(" / ".join(_fmt(h.get(k, {}).get(metric))
                                        for k in ("analytic", "empirical")))
            slopes = " / ".join(f"{r['slopes'].get(f'{metric} vs {k}', float('nan')):.2f}"
                                for k in ("analytic", "empirical"))
            head, _, tail = r["algorithm"].partition(" (")
            name = head.upper().replace("_", " ") + (f" ({tail}" if tail else "")
            out.append(f"| {r['topology']} | {name} | " + " | ".join(cells)
                       + (f" | {slopes} |" if figure == "headline" else " |"))
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", default=str(HERE / "suites"))
    parser.add_argument("--out", default="out/validate_suite")
    parser.add_argument("--widths", default=None, help="override the configs' widths")
    parser.add_argument("--linearised", action="store_true")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    parser.add_argument("--only", default="", help="comma-separated config-name prefixes")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                        help="comma-separated metrics to tabulate (default %(default)s)")
    args = parser.parse_args(argv)
    from ntkdyn.validation.agreement import METRICS

    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    bad = [m for m in metrics if m not in METRICS]
    if not metrics or bad:
        parser.error(f"--metrics: expected a non-empty subset of {METRICS}, got {args.metrics!r}")

    import ntkdyn as nd
    from ntkdyn.config import load_config

    files = sorted(Path(args.suites).glob("*.toml"))
    if args.only:
        files = [f for f in files if any(f.name.startswith(p) for p in args.only.split(","))]
    if not files:
        print(f"no *.toml in {args.suites}", file=sys.stderr)
        return 2
    rows, widths, start = [], None, time.perf_counter()
    for f in files:
        cfg = load_config(f)
        tic = time.perf_counter()
        res = nd.validate(cfg, out=Path(args.out) / f.stem, widths=args.widths,
                          linearised=args.linearised)
        wall = time.perf_counter() - tic
        widths = list(res.widths)
        rows.append({"name": f.stem, "topology": _topology_label(cfg),
                     "algorithm": _algorithm_label(cfg),
                     "headline": {str(r.width): errors_of(r, "mean", metrics)
                                  for r in res.runs},
                     "at_horizon": {str(r.width): errors_of(r, "mean_at_horizon", metrics)
                                    for r in res.runs},
                     "max_gap_over_max_obs": {str(r.width): errors_of(
                         r, "mean_max_gap_over_max_obs", metrics) for r in res.runs},
                     "status": {str(r.width): r.observed.status for r in res.runs},
                     "status_predicted": {str(r.width): {k: p.status for k, p in
                                                         r.predicted.items()}
                                          for r in res.runs},
                     "slopes": slopes_of(list(res.widths), {str(r.width): errors_of(
                         r, "mean", metrics) for r in res.runs}, {
                         k: res.sweep.get("fitted_widths", {}).get(f"test_loss vs {k}",
                                                                   list(res.widths))
                         for k in KERNELS}, metrics),
                     "left_out": res.sweep.get("left_out", {}), "wall_s": wall,
                     "horizon": int(res.runs[0].observed.steps[-1]),
                     "steps_per_s": {str(r.width): r.timings.get("train_nonlinear_steps_per_s")
                                     for r in res.runs}})
        print(f"{f.stem}: {wall:.0f} s", file=sys.stderr, flush=True)
    total = time.perf_counter() - start
    order = {"ring": 0, "torus": 1, "complete": 2}
    rows.sort(key=lambda r: (order.get(r["topology"], 9), r["topology"].startswith("ring,"),
                             r["topology"], r["algorithm"]))
    horizons = {r["horizon"] for r in rows}
    horizon = horizons.pop() if len(horizons) == 1 else None
    for figure in ("headline", "at_horizon", "max_gap_over_max_obs"):
        print(table(rows, widths, figure, horizon, metrics))
    for r in rows:
        for key, why in r["left_out"].items():
            for w, reason in why.items():
                print(f"{r['name']}: {key}: width {w} left out of the slope: {reason}")
    print(f"Suite wall time: {total / 60:.1f} min for {len(rows)} configurations.")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "total_s": total}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

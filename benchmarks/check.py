"""Benchmark ``ntkdyn check`` on a configuration (default: ``examples/default.toml``).

    python benchmarks/check.py [CONFIG.toml] [--repeats 3]

Prints

* the wall time of the command as a user runs it (a fresh process: imports, kernel,
  stability, sweep and JIT compilation included), best and median of ``--repeats``,
  with the report's own breakdown (kernel / stability / prediction);
* in one warm process, the time of one prediction and of the 10-rate sweep that the
  report runs (same problem, same steps, compiled beforehand), and their ratio.

* ``ntkdyn predict`` of the same configuration in fresh processes (same repeats,
  interleaved with the checks) and the ratio check / predict (medians; target <= 2);
* the import cost: ``import ntkdyn`` against ``import jax, numpy, scipy.linalg``, each
  timed inside a fresh interpreter (median of 5, interleaved), and their ratio;
* the spectral radius at the configured rate for DGD and ATC (what the report needs
  beyond ``lr*``), old (ARPACK on ``A(s)``) against new (shift-invert through the
  rank-``m`` structure, :mod:`ntkdyn.dynamics.radius`), interleaved, medians, their
  ratio and the largest difference of the two radii; and the load average.

A timing script, never a test: the figures go into the README.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "ntkdyn"]


def import_times(repeats: int = 5) -> dict:
    """Median import time of ``ntkdyn`` and of its base (jax, numpy, scipy.linalg),
    each in a fresh interpreter (interleaved, so both see the same load)."""
    stmts = {"ntkdyn": "import ntkdyn", "base": "import jax, numpy, scipy.linalg"}
    times: dict[str, list[float]] = {k: [] for k in stmts}
    for _ in range(repeats):
        for key, stmt in stmts.items():
            code = f"import time; t = time.perf_counter(); {stmt}; print(time.perf_counter() - t)"
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                  check=True)
            times[key].append(float(proc.stdout))
    out = {f"{k}_s": statistics.median(v) for k, v in times.items()}
    out["ratio"] = out["ntkdyn_s"] / out["base_s"]
    return out


def cold_runs(config: Path, repeats: int) -> list[dict]:
    """Run ``ntkdyn check CONFIG --json`` in fresh processes; wall time and breakdown."""
    out = []
    for _ in range(repeats):
        tic = time.perf_counter()
        proc = subprocess.run([*CLI, "check", str(config), "--json"],
                              capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - tic
        if proc.returncode == 2:
            raise SystemExit(f"check failed:\n{proc.stderr}")
        report = json.loads(proc.stdout)
        out.append({"wall_s": wall, "exit": proc.returncode, **report["timings"]})
    return out


def predict_runs(config: Path, repeats: int) -> list[float]:
    """Wall time of ``ntkdyn predict CONFIG --quiet`` in fresh processes."""
    import tempfile

    out = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            tic = time.perf_counter()
            proc = subprocess.run([*CLI, "predict", str(config),
                                   "--quiet", "--out", str(Path(tmp) / "p")],
                                  capture_output=True, text=True, cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
            out.append(time.perf_counter() - tic)
        if proc.returncode != 0:
            raise SystemExit(f"predict failed:\n{proc.stderr}")
    return out


def sweep_ratio(config: Path, repeats: int) -> dict:
    """Warm timings of one prediction and of the report's 10-rate sweep."""
    sys.path.insert(0, str(ROOT))
    from ntkdyn.config.experiment import from_config
    from ntkdyn.config.schema import load_config
    from ntkdyn.dynamics.run import run_problem
    from ntkdyn.prediction import build_problem
    from ntkdyn.preflight import SWEEP_FRACTIONS

    cfg = load_config(config)
    exp = from_config(cfg)
    problem = build_problem(exp.arch, exp.parts, exp.mixing, kernel=cfg.prediction.kernel,
                            seed=cfg.seed, rates=len(SWEEP_FRACTIONS))
    lr = cfg.training.lr
    rates = [lr * f for f in SWEEP_FRACTIONS]

    def timed(lrs):
        run_problem(problem, exp.algorithm, lrs, cfg.steps, check_stability=False,
                    reference=False)  # compile
        best = float("inf")
        for _ in range(repeats):
            tic = time.perf_counter()
            run_problem(problem, exp.algorithm, lrs, cfg.steps, check_stability=False,
                        reference=False)
            best = min(best, time.perf_counter() - tic)
        return best

    one, sweep = timed([lr]), timed(rates)
    out = {"one_prediction_s": one, "sweep_s": sweep, "rates": len(rates), "ratio": sweep / one}
    # the other pieces of the report, in the same process (first call = as check runs them)
    from ntkdyn.dynamics import stability as spectrum
    from ntkdyn.dynamics.steady_state import fixed_point

    for key, fn in (("fixed_point", lambda: fixed_point(problem, exp.algorithm, lr)),
                    ("stability_dgd", lambda: spectrum.stability(problem, "dgd", lr)),
                    ("stability_atc", lambda: spectrum.stability(problem, "atc", lr))):
        tic = time.perf_counter()
        fn()
        out[f"{key}_s"] = time.perf_counter() - tic
    return out


def radius_times(config: Path, repeats: int) -> dict:
    """Old (ARPACK) against new (structured) spectral radius at the configured rate, for
    DGD and ATC, each on a fresh operator (form detection and compilation included),
    interleaved; medians over ``repeats``."""
    sys.path.insert(0, str(ROOT))
    from ntkdyn.algorithms import get_algorithm
    from ntkdyn.config.experiment import from_config
    from ntkdyn.config.schema import load_config
    from ntkdyn.dynamics.stability import StepOperator
    from ntkdyn.prediction import build_problem

    cfg = load_config(config)
    exp = from_config(cfg)
    problem = build_problem(exp.arch, exp.parts, exp.mixing, kernel=cfg.prediction.kernel,
                            seed=cfg.seed)
    lr = cfg.training.lr
    times: dict[str, list[float]] = {"old": [], "new": []}
    diff = 0.0
    for _ in range(repeats):
        radii = {}
        for key, method in (("old", "arpack"), ("new", "auto")):
            tic = time.perf_counter()
            radii[key] = [StepOperator(problem, get_algorithm(a)).spectral_radius(lr, method)
                          for a in ("dgd", "atc")]
            times[key].append(time.perf_counter() - tic)
        diff = max(diff, *(abs(a - b) for a, b in zip(radii["old"], radii["new"], strict=True)))
    out = {f"{k}_s": statistics.median(v) for k, v in times.items()}
    out.update(ratio=out["old_s"] / out["new_s"], max_diff=diff, radii=radii["new"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default=str(ROOT / "examples" / "default.toml"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    config = Path(args.config)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    imp = import_times()
    print(f"import ntkdyn {imp['ntkdyn_s']:.2f} s, import jax, numpy, scipy.linalg "
          f"{imp['base_s']:.2f} s (median of 5 fresh processes): ratio {imp['ratio']:.2f} "
          "(target <= 1.5)", flush=True)
    runs, predicts = [], []
    for _ in range(args.repeats):  # interleaved: both see the same load
        runs += cold_runs(config, 1)
        predicts += predict_runs(config, 1)
    walls = [r["wall_s"] for r in runs]
    print(f"ntkdyn check {config.name}: wall best {min(walls):.2f} s, median "
          f"{statistics.median(walls):.2f} s over {len(walls)} fresh processes "
          f"(exit {runs[0]['exit']})")
    best = min(runs, key=lambda r: r["wall_s"])
    print("  breakdown of the best run: " + ", ".join(
        f"{k} {v:.2f} s" for k, v in best.items() if k.endswith("_s") and k != "wall_s"))
    ratio = statistics.median(walls) / statistics.median(predicts)
    print(f"ntkdyn predict {config.name}: wall best {min(predicts):.2f} s, median "
          f"{statistics.median(predicts):.2f} s; check / predict (medians) {ratio:.2f} "
          "(target <= 2)")
    s = sweep_ratio(config, args.repeats)
    print(f"warm: one prediction {s['one_prediction_s']:.3f} s, {s['rates']}-rate sweep "
          f"{s['sweep_s']:.3f} s, ratio {s['ratio']:.2f}")
    print(f"same process: fixed point {s['fixed_point_s']:.2f} s, stability of DGD "
          f"{s['stability_dgd_s']:.2f} s, of ATC/CTA {s['stability_atc_s']:.2f} s")
    r = radius_times(config, args.repeats)
    print(f"spectral radius at lr (DGD + ATC, fresh operators, median of {args.repeats}): "
          f"old ARPACK {r['old_s']:.2f} s, new structured {r['new_s']:.2f} s, ratio "
          f"{r['ratio']:.1f}; radii {r['radii'][0]:.10f}, {r['radii'][1]:.10f}, largest "
          f"difference {r['max_diff']:.1e}")
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

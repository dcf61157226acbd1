"""Coverage of the predicted band over initialisations by real networks (issue 14).

Usage::

    python validate/coverage.py [--configs ring_dgd,torus_atc,...] [--widths 128,256,512]
                                [--seeds 20] [--samples 512] [--width-samples 16]
                                [--out out/coverage] [--report-only] [--figure PNG]
                                [--raw RAW.npz] [--from-raw RAW.npz]

For every configuration (digits, ``--n-train`` / ``--n-test``, ``--agents`` agents, a
one-hidden-layer ReLU ``MLP``, squared loss, ``--steps`` steps recorded every
``--every``), predicts the 5-95 % band of every agent's test loss and test accuracy
over initialisations at infinite width (``nd.predict(..., f0="random", samples=P)``,
seed 1000: draws independent of the networks trained), trains ``--seeds`` real networks
(seeds ``0 .. S-1``, float32, :func:`ntkdyn.train.train`) at every width, and reports
the coverage: the fraction of ``(seed, record t >= 1, agent)`` at which the real value
lies inside the band (:func:`ntkdyn.validation.coverage.coverage`), per configuration
and width; at ``t = 0`` (not counted) the coverage checks that the band's ``f_0``
distribution is the networks' initialisation.

With ``--width-samples S > 0`` it also predicts the finite-width band (``width=n``,
``S`` empirical kernels of networks seeded ``1000 ..``, none of them trained here) and
reports the coverage of the band with both spreads, variances added
(:func:`ntkdyn.validation.coverage.add_width_band`).

Calibration vs held-out: the configurations marked ``calibration`` below fit ONE
widening factor ``c`` (band = median -/+ c times each side's half-width) so that the
pooled coverage of the test loss at widths >= 256 is 90 %
(:func:`ntkdyn.validation.coverage.fit_widening`); the widened band's coverage is then
reported on the ``held-out`` configurations, which never enter the fit.

Every configuration x width is saved as it finishes (``OUT/<config>_w<width>.npz``, the
band ``OUT/<config>_band.npz``), so an interrupted run keeps what it did,
``--report-only`` rebuilds the table, ``OUT/coverage.json`` and the figure from them, and
a rerun with more ``--seeds`` trains only the seeds not saved yet.

``--raw RAW.npz`` writes every raw array behind the table into one file (not committed):
per configuration the band's draws over initialisations, and per width the real networks'
per-seed, per-record, per-agent trajectories, the finite-width draws and the plain and
combined bands (``lo, mid, hi``); ``--from-raw RAW.npz`` rebuilds every table from that
file alone (:func:`load_raw`), so calibration is post-processing.

Calibration of the **combined** band (the band over initialisations with the finite-width
band added, :func:`calibrate`): one factor ``c`` and one law ``c(n) = 1 + a n^{-1/2}``,
both fitted on the calibration configurations' test loss at widths >= 256 over all
records, then reported on every configuration and width, over all records and at the
horizon (the last record) apart.  :func:`centre_shift` compares the real networks' mean
final test loss with the infinite-width expected loss and the width-``n`` band's centre.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: name -> (topology, algorithm, lr, role); rates about half of each one's lr* on this
#: problem (ring DGD lr* 0.83, torus ATC 3.1, complete CTA 3.2, ring gradient tracking 2.4)
CONFIGS = {
    "ring_dgd": ("ring", "dgd", 0.4, "calibration"),
    "torus_atc": ("torus", "atc", 0.8, "calibration"),
    "complete_cta": ("complete", "cta", 0.8, "held-out"),
    "ring_gradient_tracking": ("ring", "gradient_tracking", 0.4, "held-out"),
}
METRICS = ("test_loss", "test_acc")
BAND_SEED = 1000
#: widths at and above which the widening is fitted and the target (85-95 %) applies
FIT_FROM_WIDTH = 256
TARGET = 0.9


def problem(args, name: str):
    import ntkdyn as nd

    topo, algorithm, lr, _ = CONFIGS[name]
    data = nd.data.digits(classes=range(10), n_train=args.n_train, n_test=args.n_test, seed=0)
    parts = nd.data.partition(data, agents=args.agents, scheme="iid", seed=0)
    W = nd.graphs.mixing(nd.graphs.topology(topo, args.agents), rule="metropolis")
    return parts, W, algorithm, lr


def arch_of(width: int):
    import ntkdyn as nd

    return nd.models.MLP(hidden=(int(width),), out=10, activation="relu", W_std=1.4,
                         b_std=0.1)


def steps_of(args) -> range:
    return range(0, args.steps + 1, args.every)


def predict_band(args, name: str, out: Path) -> dict:
    """Infinite-width draws over initialisations, ``(P, T, Q)`` per metric (cached)."""
    import ntkdyn as nd

    path = out / f"{name}_band.npz"
    res = dict(np.load(path)) if path.exists() else {}
    if res and (f"paired_{METRICS[0]}" in res or not args.width_samples):
        return res
    parts, W, algorithm, lr = problem(args, name)
    if not res:
        t0 = time.time()
        traj = nd.predict(arch_of(1024), parts, W, lr, algorithm, steps_of(args),
                          kernel="analytic", f0="random", samples=args.samples,
                          seed=BAND_SEED)
        res = {m: np.asarray(traj.draws[m]) for m in METRICS}
        res.update({f"mean_network_{m}": np.asarray(getattr(traj.mean_network, m))
                    for m in METRICS})
        res["seconds"] = np.float64(time.time() - t0)
    if args.width_samples:
        # the same standard-normal draws as every finite-width sample (same seed and count):
        # the finite-width shift of the mean is measured against these (common random numbers)
        traj = nd.predict(arch_of(1024), parts, W, lr, algorithm, steps_of(args),
                          kernel="analytic", f0="random",
                          samples=args.width_band_init_samples, seed=BAND_SEED)
        res.update({f"paired_{m}": np.asarray(traj.draws[m]) for m in METRICS})
    np.savez(path, **res)
    return res


def run_width(args, name: str, width: int, out: Path) -> dict:
    """Real networks ``(S, T, Q)`` per metric at ``width`` (and the finite-width draws)."""
    import ntkdyn as nd

    path = out / f"{name}_w{width}.npz"
    res: dict = dict(np.load(path)) if path.exists() else {}
    done = int(res["test_loss"].shape[0]) if res else 0
    if done >= args.seeds:
        return res
    parts, W, algorithm, lr = problem(args, name)
    arch = arch_of(width)
    steps = steps_of(args)
    t0 = time.time()
    runs = [nd.train.train(arch, parts, W, lr, algorithm, steps, seed=s, dtype="float32")
            for s in range(done, args.seeds)]   # a saved run with fewer seeds is extended
    for m in METRICS:
        new = np.stack([np.asarray(getattr(r, m), dtype=np.float64) for r in runs])
        res[m] = np.concatenate([res[m], new]) if done else new
    res["train_seconds"] = np.float64(time.time() - t0 + float(res.get("train_seconds", 0)))
    if args.width_samples and "width_test_loss" not in res:
        t0 = time.time()
        traj = nd.predict(arch, parts, W, lr, algorithm, steps, kernel="analytic",
                          f0="random", samples=args.width_band_init_samples, seed=BAND_SEED,
                          width=width, width_samples=args.width_samples)
        for m in METRICS:
            res[f"width_{m}"] = np.asarray(traj.width_draws[m])
        res["width_seconds"] = np.float64(time.time() - t0)
    np.savez(path, **res)
    return res


def load_results(out: Path, names, widths) -> dict:
    res = {}
    for name in names:
        band = out / f"{name}_band.npz"
        if not band.exists():
            continue
        res[name] = {"band": dict(np.load(band)), "widths": {}}
        for w in widths:
            p = out / f"{name}_w{w}.npz"
            if p.exists():
                res[name]["widths"][w] = dict(np.load(p))
    return res


def report(res: dict, seeds_note: str = "") -> dict:
    """Coverage per configuration x width and metric; the fitted widening; markdown."""
    from ntkdyn.validation.coverage import (
        band_from_draws,
        coverage,
        fit_widening,
        required_factors,
        widen,
    )

    rows, fit_points = [], []
    for name, r in res.items():
        for w, real in sorted(r["widths"].items()):
            row = {"config": name, "role": CONFIGS[name][3], "width": int(w),
                   "seeds": int(real["test_loss"].shape[0])}
            for m in METRICS:
                lo, mid, hi = band_from_draws(r["band"][m])
                row[m] = coverage(real[m], lo, hi)
                row[f"{m}_t0"] = float(np.mean((real[m][:, 0] >= lo[0])
                                               & (real[m][:, 0] <= hi[0])))
                row[f"{m}_factors"] = required_factors(real[m], lo, mid, hi)
                row[f"{m}_below"] = float(np.mean(real[m][:, 1:] < lo[1:]))
                row[f"{m}_above"] = float(np.mean(real[m][:, 1:] > hi[1:]))
                if f"width_{m}" in real:
                    blo, _, bhi = combined_band(r, real, m)
                    row[f"{m}_with_width"] = coverage(real[m], blo, bhi)
            row["_band"] = {m: band_from_draws(r["band"][m]) for m in METRICS}
            row["_real"] = {m: real[m] for m in METRICS}
            rows.append(row)
            if row["role"] == "calibration" and w >= FIT_FROM_WIDTH:
                fit_points.append(row["test_loss_factors"])
    c = fit_widening(fit_points, TARGET) if fit_points else float("nan")
    c_used = max(c, 1.0) if np.isfinite(c) else float("nan")
    for row in rows:
        for m in METRICS:
            if np.isfinite(c_used):
                lo, hi = widen(*row["_band"][m], c_used)
                row[f"{m}_widened"] = coverage(row["_real"][m], lo, hi)
    fits = calibrate(rows, res)
    summary = {"fitted_c": c, "c_used": c_used, "target": TARGET,
               "fit_from_width": FIT_FROM_WIDTH, "note": seeds_note, "combined_fit": fits,
               "centre": centre_shift(res),
               "rows": [{k: v for k, v in row.items() if not k.startswith("_")
                         and not k.endswith("_factors")} for row in rows]}
    return summary, rows


def combined_band(r: dict, real: dict, m: str):
    """The band over initialisations with the finite-width band of ``real``'s width added
    (``None`` without finite-width draws)."""
    from ntkdyn.validation.coverage import add_width_band

    if f"width_{m}" not in real:
        return None
    return add_width_band(r["band"][m], real[f"width_{m}"],
                          paired_draws=r["band"].get(f"paired_{m}"))


def calibrate(rows: list, res: dict) -> dict:
    """Fit ONE factor ``c`` and ONE law ``a`` (``c(n) = 1 + a n^{-1/2}``) on the combined
    band's test loss, calibration configurations, widths >= ``FIT_FROM_WIDTH``; add to
    every row the coverage (all records, and ``_final``: the horizon) of the plain band,
    the combined band, and the combined band widened by ``c`` and by ``c(n)``."""
    from ntkdyn.validation.coverage import (
        band_from_draws,
        coverage,
        final_coverage,
        fit_widening,
        fit_widening_law,
        required_factors,
        widen,
        widening_factor,
    )

    combined, by_width = {}, {}
    for row in rows:
        r, real = res[row["config"]], res[row["config"]]["widths"][row["width"]]
        combined[id(row)] = {m: combined_band(r, real, m) for m in METRICS}
        band = combined[id(row)]["test_loss"]
        if band is not None and row["role"] == "calibration" and row["width"] >= FIT_FROM_WIDTH:
            by_width.setdefault(row["width"], []).append(
                required_factors(real["test_loss"], *band))
    if not by_width:
        return {}
    c = fit_widening([f for fs in by_width.values() for f in fs], TARGET)
    a = fit_widening_law(by_width, TARGET)
    per_width = {int(w): fit_widening(fs, TARGET) for w, fs in by_width.items()}
    for row in rows:
        real = res[row["config"]]["widths"][row["width"]]
        for m in METRICS:
            plain = band_from_draws(res[row["config"]]["band"][m])
            bands = {"plain": (plain[0], plain[2])}
            if combined[id(row)][m] is not None:
                lo, mid, hi = combined[id(row)][m]
                bands["combined"] = (lo, hi)
                if np.isfinite(c):
                    bands["combined_c"] = widen(lo, mid, hi, c)
                if np.isfinite(a) and 1 + a * row["width"] ** -0.5 > 0:
                    bands["combined_law"] = widen(lo, mid, hi,
                                                  widening_factor(row["width"], a))
            for k, (lo, hi) in bands.items():
                row[f"{m}_{k}"] = coverage(real[m], lo, hi)
                row[f"{m}_{k}_final"] = final_coverage(real[m], lo, hi)
    return {"c": c, "a": a, "per_width_c": per_width, "target": TARGET,
            "fit_from_width": FIT_FROM_WIDTH, "metric": "test_loss",
            "configs": sorted({n for n in res if CONFIGS[n][3] == "calibration"})}


def centre_shift(res: dict) -> list:
    """Per configuration x width: the real networks' final test loss (mean over agents),
    mean and standard error over seeds, against the infinite-width expected loss (mean of
    the band's draws) and the width-``n`` centre: that plus the finite-width shift of the
    mean (mean of the finite-width draws minus the infinite-width prediction from the same
    draws of ``f_0``, when the band has them; standard error over the kernels)."""
    out = []
    for name, r in res.items():
        inf = float(np.mean(r["band"]["test_loss"][:, -1]))
        paired = r["band"].get("paired_test_loss")
        ref = inf if paired is None else float(np.mean(paired[:, -1]))
        for w, real in sorted(r["widths"].items()):
            x = real["test_loss"][:, -1].mean(axis=1)
            wd = real.get("width_test_loss")
            row = {"config": name, "role": CONFIGS[name][3], "width": int(w),
                   "real": float(x.mean()), "real_se": float(x.std(ddof=1) / np.sqrt(x.size)),
                   "infinite": inf, "width_centre": None, "paired": paired is not None}
            if wd is not None:
                k = wd[:, -1].mean(axis=1)
                row["width_centre"] = inf + float(k.mean()) - ref
                row["width_centre_se"] = float(k.std(ddof=1) / np.sqrt(k.size))
            if row["width_centre"] is not None and row["width_centre"] != inf:
                # 0: real networks at the infinite-width value; 1: at the width-n centre
                row["followed"] = (inf - row["real"]) / (inf - row["width_centre"])
            out.append(row)
    return out


def save_raw(res: dict, path: Path, every: int) -> None:
    """Every raw array behind the tables into one ``.npz`` (keys ``config/band/metric``,
    ``config/w<width>/real/metric``, ``.../width_draws/metric``, ``.../plain/metric`` and
    ``.../combined/metric`` as ``(3, T, Q)`` ``lo, mid, hi``), readable by :func:`load_raw`."""
    from ntkdyn.validation.coverage import band_from_draws

    arrays = {"every": np.int64(every), "fit_from_width": np.int64(FIT_FROM_WIDTH)}
    for name, r in res.items():
        arrays[f"{name}/role"] = np.array(CONFIGS[name][3])
        for k, v in r["band"].items():
            arrays[f"{name}/band/{k}"] = np.asarray(v)
        for w, real in r["widths"].items():
            key = f"{name}/w{int(w)}"
            for m in METRICS:
                arrays[f"{key}/real/{m}"] = real[m]
                arrays[f"{key}/plain/{m}"] = np.stack(band_from_draws(r["band"][m]))
                if f"width_{m}" in real:
                    arrays[f"{key}/width_draws/{m}"] = real[f"width_{m}"]
                    arrays[f"{key}/combined/{m}"] = np.stack(combined_band(r, real, m))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def load_raw(path: Path) -> dict:
    """The results dict of :func:`load_results` from a :func:`save_raw` file."""
    res: dict = {}
    with np.load(path) as z:
        for key in z.files:
            parts = key.split("/")
            if len(parts) == 3 and parts[1] == "band":
                res.setdefault(parts[0], {"band": {}, "widths": {}})["band"][parts[2]] = z[key]
            elif len(parts) == 4 and parts[2] in ("real", "width_draws"):
                r = res.setdefault(parts[0], {"band": {}, "widths": {}})
                w = r["widths"].setdefault(int(parts[1][1:]), {})
                w[parts[3] if parts[2] == "real" else f"width_{parts[3]}"] = z[key]
    return res


def markdown(summary: dict) -> str:
    def pct(x):
        return "-" if x is None or not np.isfinite(x) else f"{100 * x:.0f} %"

    lines = ["| configuration | role | width | seeds | test loss | (below / above) | "
             "test loss, widened | test loss, + width band | test acc | test acc, widened "
             "| f_0 at t=0 (loss) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary["rows"]:
        lines.append(
            f"| {r['config']} | {r['role']} | {r['width']} | {r['seeds']} | "
            f"{pct(r['test_loss'])} | {pct(r['test_loss_below'])} / "
            f"{pct(r['test_loss_above'])} | {pct(r.get('test_loss_widened'))} | "
            f"{pct(r.get('test_loss_with_width'))} | {pct(r['test_acc'])} | "
            f"{pct(r.get('test_acc_widened'))} | {pct(r['test_loss_t0'])} |")
    lines.append("")
    lines.append(f"fitted widening factor c = {summary['fitted_c']:.3f} (used: "
                 f"{summary['c_used']:.3f}; calibration configurations, test loss, widths >= "
                 f"{summary['fit_from_width']}, target {100 * summary['target']:.0f} %)")
    return "\n".join(lines)


def calibration_markdown(summary: dict) -> str:
    """Test-loss coverage of the plain, combined and calibrated combined bands (all
    records / horizon), and the centre shift of the final test loss."""
    fit = summary.get("combined_fit") or {}
    if not fit:
        return ""

    def pct(r, k):
        x, f = r.get(f"test_loss_{k}"), r.get(f"test_loss_{k}_final")
        if x is None:
            return "-"
        return f"{100 * x:.0f} / {100 * f:.0f} %"

    c, a = fit["c"], fit["a"]
    lines = ["| configuration | role | width | plain | combined | combined x c = "
             f"{c:.2f} | combined x c(n) = 1 + {a:.2f} n^-1/2 |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in summary["rows"]:
        lines.append(f"| {r['config']} | {r['role']} | {r['width']} | {pct(r, 'plain')} | "
                     f"{pct(r, 'combined')} | {pct(r, 'combined_c')} | "
                     f"{pct(r, 'combined_law')} |")
    lines += ["", "(coverage of the test loss: all records t >= 1 / the horizon alone)",
              f"combined band: fitted c = {c:.3f}, law a = {a:.3f}; per width "
              + ", ".join(f"{w}: {v:.3f}" for w, v in sorted(fit["per_width_c"].items()))
              + f" (calibration configurations {', '.join(fit['configs'])}, widths >= "
              f"{fit['fit_from_width']})", "",
              "| configuration | width | real final test loss (+- se) | infinite-width "
              "expected | width-n centre | followed (0: infinite, 1: width-n) |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in summary["centre"]:
        wc = ("-" if r["width_centre"] is None else
              f"{r['width_centre']:.3f} +- {r['width_centre_se']:.3f}")
        fol = f"{r['followed']:.2f}" if "followed" in r else "-"
        lines.append(f"| {r['config']} | {r['width']} | {r['real']:.3f} +- "
                     f"{r['real_se']:.3f} | {r['infinite']:.3f} | {wc} | {fol} |")
    return "\n".join(lines)


def figure(rows: list, path: Path, c: float, config: str, width: int, n_show: int = 5,
           combined_c: float = float("nan")) -> None:
    """Network-mean test loss: the predicted band, the band with the finite-width band added
    (and, with a finite ``combined_c``, that combined band widened by the factor fitted on
    it; else the plain band widened by ``c``) and ``n_show`` real networks; left
    the whole run (log scale), right the second half (linear)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ntkdyn.validation.coverage import add_width_band

    row = next((r for r in rows if r["config"] == config and r["width"] == width), None)
    if row is None:
        print(f"figure: no results for {config} at width {width}", file=sys.stderr)
        return
    real = row["_real"]["test_loss"].mean(axis=2)            # (S, T) network mean
    net = row["_draws"]["test_loss"].mean(axis=2)            # (P, T) per sampled network
    steps = np.arange(real.shape[1]) * row["every"]
    lo, mid, hi = np.quantile(net, [0.05, 0.5, 0.95], axis=0)
    inside = np.mean((real[:, 1:] >= lo[1:]) & (real[:, 1:] <= hi[1:]))
    comb = None
    if row.get("_width_draws") is not None:
        paired = row["_draws"].get("paired_test_loss")
        comb = [b[:, 0] for b in add_width_band(
            net[..., None], row["_width_draws"].mean(axis=2)[..., None],
            paired_draws=None if paired is None else paired.mean(axis=2)[..., None])]
    note = ""
    if comb is not None and np.isfinite(combined_c):
        cn = combined_c
        clo, chi = comb[1] - cn * (comb[1] - comb[0]), comb[1] + cn * (comb[2] - comb[1])
        note = (f"; {100 * np.mean((real[:, 1:] >= clo[1:]) & (real[:, 1:] <= chi[1:])):.0f}"
                " % inside the calibrated combined band")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    half = len(steps) // 2
    for k, ax in enumerate(axes):
        sl = slice(0, None) if k == 0 else slice(half, None)
        if note:
            wlo, whi = clo, chi
            ax.fill_between(steps[sl], wlo[sl], whi[sl], color="C2", alpha=0.15,
                            label=f"combined band x {cn:.2f} (calibrated)")
        elif np.isfinite(c) and c > 1:
            wlo, whi = mid - c * (mid - lo), mid + c * (hi - mid)
            ax.fill_between(steps[sl], wlo[sl], whi[sl], color="C0", alpha=0.12,
                            label=f"band widened by c = {c:.2f} (fitted)")
        ax.fill_between(steps[sl], lo[sl], hi[sl], color="C0", alpha=0.35,
                        label="predicted 5-95 % over initialisations (infinite width)")
        ax.plot(steps[sl], mid[sl], color="C0", lw=1.5, ls="--", label="predicted median")
        if comb is not None:
            ax.plot(steps[sl], comb[0][sl], color="C2", lw=1.1, ls=":")
            ax.plot(steps[sl], comb[2][sl], color="C2", lw=1.1, ls=":",
                    label=f"+ finite-width band (width {width}, variances added)")
        if k == 0:
            mean_net = row["_mean_network"].mean(axis=1)
            ax.plot(steps, mean_net, color="k", lw=1.2, ls="-.")
            ax.annotate("mean network (f_0 = 0): the old prediction", (steps[half], mean_net[half]),
                        xytext=(0, 14), textcoords="offset points", fontsize=8, ha="center")
        for s in range(min(n_show, real.shape[0])):
            ax.plot(steps[sl], real[s, sl], color="C3", lw=1.0, alpha=0.9,
                    label=(f"real networks, width {width}, seeds 0-"
                           f"{min(n_show, real.shape[0]) - 1}" if s == 0 else None))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("test loss, mean over agents\n(0.5 |f - y|^2 per test example)")
    axes[0].set_title("whole run (log scale)", fontsize=10)
    axes[1].set_title(f"steps {steps[half]}-{steps[-1]} (linear)", fontsize=10)
    axes[1].set_ylabel("test loss, mean over agents")
    # below the panels: inside the right panel it covered the band's top and a real network
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7.5, loc="lower center", ncol=2, frameon=False)
    topo, algo = (config.split("_", 1) + [""])[:2]
    fig.suptitle(f"{algo.upper()} on a {topo}, width {width}, lr {row['lr']:g}, 8 agents, "
                 "digits 200/100:\n"
                 f"{100 * inside:.0f} % of the network-mean points of all {real.shape[0]} "
                 f"seeds (steps >= 10) inside the 5-95 % band{note}", fontsize=9)
    fig.tight_layout(rect=(0, 0.14, 1, 1))  # room for the legend below
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--widths", default="128,256,512,1024")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--samples", type=int, default=512,
                   help="sampled initialisations behind the band")
    p.add_argument("--width-samples", type=int, default=16,
                   help="empirical kernels per width for the finite-width band (0: none)")
    p.add_argument("--width-band-init-samples", type=int, default=32)
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--agents", type=int, default=8)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--out", default="out/coverage")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--figure", default="", help="PNG path for the band figure (empty: none)")
    p.add_argument("--figure-config", default="ring_dgd")
    p.add_argument("--figure-width", type=int, default=1024)
    p.add_argument("--raw", default="", help="write every raw array into this .npz")
    p.add_argument("--from-raw", default="",
                   help="rebuild the tables from a --raw file (no training, no --out)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    names = [n for n in args.configs.split(",") if n]
    for n in names:
        if n not in CONFIGS:
            raise SystemExit(f"--configs: unknown {n!r}; expected among {sorted(CONFIGS)}")
    widths = [int(w) for w in args.widths.split(",") if w]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_raw:
        args.report_only = True
    if not args.report_only:
        for name in names:
            t0 = time.time()
            predict_band(args, name, out)
            print(f"{name}: band {time.time() - t0:.1f} s", flush=True)
        for w in widths:                    # widths outer: a cut run lacks the widest only
            for name in names:
                t0 = time.time()
                run_width(args, name, w, out)
                print(f"{name} width {w}: {time.time() - t0:.1f} s", flush=True)
    if args.from_raw:
        res = {n: r for n, r in load_raw(Path(args.from_raw)).items() if n in names}
    else:
        res = load_results(out, names, widths)
    if args.raw:
        save_raw(res, Path(args.raw), args.every)
    summary, rows = report(res, f"{args.seeds} seeds requested")
    for row in rows:
        row["every"] = args.every
        row["lr"] = CONFIGS[row["config"]][2]
        row["_draws"] = res[row["config"]]["band"]
        row["_mean_network"] = res[row["config"]]["band"]["mean_network_test_loss"]
        row["_width_draws"] = res[row["config"]]["widths"][row["width"]].get(
            "width_test_loss")
    summary["settings"] = {k: v for k, v in vars(args).items()}
    (out / "coverage.json").write_text(json.dumps(summary, indent=1, default=float))
    print(markdown(summary))
    print(calibration_markdown(summary))
    if args.figure:
        figure(rows, Path(args.figure), summary["c_used"], args.figure_config,
               args.figure_width,
               combined_c=summary["combined_fit"].get("c", float("nan")))
        print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

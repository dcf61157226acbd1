"""Figures of the validation harness (matplotlib is imported on use only).

* :func:`overlay_figure`: every metric panel of :func:`ntkdyn.plotting.plot_trajectory`
  with the prediction dashed and the observed trajectory solid (thin coloured
  lines per agent, thick black the network mean); a divergence is written in
  the title and marked by a red vertical line at its step.
* :func:`width_sweep_figure`: pointwise relative error (``max_t |pred_t - obs_t| /
  |obs_t|``, :mod:`ntkdyn.validation.agreement`) against width, log-log, with the least-squares
  slope, the error at the horizon (hollow markers) and the theory's ``-1/2`` for
  reference.

Both write ``<stem>.png`` and ``<stem>.pdf``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from ntkdyn.plotting import plot_trajectory, pyplot
from ntkdyn.trajectory import Trajectory
from ntkdyn.validation.agreement import HEADLINE, fit_slope

_LABELS = {"test_loss": "test loss (network mean)",
           "param_dist": r"$\|\theta_q-\theta_0\|$ (network mean)"}


_NAMES = {"dgd": "DGD", "atc": "ATC", "cta": "CTA", "gd": "GD", "p2pl": "P2PL",
          "gradient_tracking": "gradient tracking", "diging": "DIGing", "extra": "EXTRA",
          "momentum": "heavy-ball momentum"}


def _plural(n, word: str) -> str:
    return f"{n:g} {word}" + ("" if n == 1 else "s")


def algorithm_title(algorithm) -> str:
    """A readable name for an :class:`~ntkdyn.algorithms.Algorithm` (or its name):
    ``"P2PL (5 local steps, 2 combines)"``, ``"heavy-ball momentum (beta 0.5, on DGD)"``,
    ``"gradient tracking"``; options of other schedules as ``key value``."""
    name = getattr(algorithm, "name", str(algorithm))
    opts = dict(getattr(algorithm, "options", ()) or ())
    words = _NAMES.get(name, name.replace("_", " "))
    if name == "p2pl" and opts:
        local, comb = opts.get("local_steps", 1), opts.get("consensus_steps", 1)
        return f"{words} ({_plural(local, 'local step')}, {_plural(comb, 'combine')})"
    if name == "momentum" and opts:
        base = _NAMES.get(str(opts.get("base", "dgd")), opts.get("base"))
        return f"{words} (beta {opts.get('beta', 0.9):g}, on {base})"
    if opts:
        return f"{words} (" + ", ".join(f"{k.replace('_', ' ')} {v}"
                                         for k, v in opts.items()) + ")"
    return words


def _status(name: str, traj: Trajectory) -> str | None:
    if traj.status == "diverged":
        return f"{name} diverged at step {traj.diverged_at}"
    if traj.status == "unstable":
        return f"{name}: linearised dynamics unstable (prediction does not apply)"
    return None


def _central_labels(fig, pred: Trajectory, obs: Trajectory, predicted_label: str,
                    observed_label: str) -> None:
    """Say which centralised reference is drawn: the prediction's (dotted grey), and the
    observed one (the training harness runs it too) solid grey; rebuild the legend."""
    from ntkdyn.plotting import PANELS

    plt = pyplot()
    by_label = {ax.get_ylabel(): ax for ax in fig.axes if ax.has_data()}
    names = {"network mean (predicted)": f"network mean ({predicted_label})",
             "network mean (observed)": f"network mean ({observed_label})"}
    for ax in by_label.values():
        for line in ax.get_lines():
            if line.get_label() in names:
                line.set_label(names[line.get_label()])
    for _name, label, central, log in PANELS:
        ax = by_label.get(label)
        if ax is None or central is None:
            continue
        for line in ax.get_lines():
            if line.get_label() == "centralised reference":
                line.set_label(f"centralised run ({predicted_label})")
        ref = getattr(obs, central, None)
        if ref is not None:
            y = np.where(ref > 0, ref, np.nan) if log else ref
            ax.plot(obs.steps, y, "-", color="0.6", lw=1.2,
                    label=f"centralised run ({observed_label})")
    handles, labels = [], []
    for ax in fig.axes:  # every labelled line once (a panel may lack a reference)
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if not handles:
        return
    for leg in list(fig.legends):
        leg.remove()
    handles.append(plt.Line2D([], [], color=plt.get_cmap("tab10")(0), lw=0.8))
    labels.append(f"agents 1..{obs.num_agents} (one colour each)")
    fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False,
               fontsize=8)


def _scales(fig, unstable: bool) -> None:
    """No offset notation (``x1e7``) on linear panels; on a run that is not ok, a linear
    panel whose largest value exceeds 100 x its median goes to a log scale like the others."""
    for ax in fig.axes:
        if not ax.has_data() or ax.get_yscale() != "linear":
            continue
        ys = np.concatenate([np.asarray(line.get_ydata(), float).ravel()
                             for line in ax.get_lines()] or [np.zeros(0)])
        pos = ys[np.isfinite(ys) & (ys > 0)]
        if unstable and pos.size and pos.max() > 100 * np.median(pos):
            for line in ax.get_lines():
                y = np.asarray(line.get_ydata(), float)
                line.set_ydata(np.where(y > 0, y, np.nan))
            ax.set_yscale("log")
        else:
            ax.ticklabel_format(axis="y", useOffset=False, style="plain")


def _save(fig, stem: Path) -> list[Path]:
    plt = pyplot()
    stem = Path(stem)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=130)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def overlay_figure(pred: Trajectory, obs: Trajectory, stem: str | Path | None, title: str,
                   predicted_label: str = "prediction", observed_label: str = "observed"):
    """Predicted (dashed) against observed (solid), one panel per metric.

    Returns the figure when ``stem`` is ``None``, else the written paths.
    """
    lines = [title, f"dashed: {predicted_label}, solid: {observed_label}; "
             "thin coloured: agents, thick black: network mean"]
    notes = list(obs.metadata.get("notes", []))
    events = [s for s in (_status(observed_label, obs), _status(predicted_label, pred)) if s]
    if events:
        lines.append("  |  ".join(events))
    if notes:
        lines.append("; ".join(notes))
    fig = plot_trajectory(pred, None, title="\n".join(lines), observed=obs)
    fig._suptitle.set_text("\n".join(lines))  # the statuses are in the lines already
    # one line per item, never wrapped: the font shrinks until the longest line fits
    width_pt = fig.get_figwidth() * 72.0
    fig._suptitle.set_fontsize(min(12.0, max(6.0, width_pt / (0.56 * max(map(len, lines))))))
    _central_labels(fig, pred, obs, predicted_label, observed_label)
    _scales(fig, unstable=any(t.status != "ok" for t in (pred, obs)))
    marks = {}  # step -> who diverged there (one red line and label per step)
    for t, lab in ((obs, observed_label), (pred, predicted_label)):
        if t.diverged:
            marks.setdefault(t.diverged_at, []).append(lab)
    marks = [(step, " and ".join(labs)) for step, labs in marks.items()]
    for ax in fig.axes:
        if not ax.has_data():
            continue
        for line in ax.get_lines():
            if len(line.get_xdata()) <= 3:  # a run that stopped early: show its points
                line.set_marker("o")
                line.set_markersize(4)
        if marks:
            ax.set_xlim(left=0, right=max(max(s for s, _ in marks) * 1.05,
                                          ax.get_xlim()[1]))
        for step, lab in marks:
            ax.axvline(step, color="red", lw=1.2, alpha=0.8)
            ax.annotate(f"{lab}\ndiverged at step {step}", (step, 0.5),
                        xycoords=("data", "axes fraction"), color="red", fontsize=7,
                        ha="right", va="center", rotation=90)
    if stem is None:
        return fig
    return _save(fig, Path(stem))


def width_sweep_figure(sweep: dict, stem: str | Path | None, subtitle: str = ""):
    """Pointwise relative error of the network mean against width (log-log), with slopes."""
    plt = pyplot()
    widths = np.asarray(sweep["widths"], float)
    fig, axes = plt.subplots(1, len(HEADLINE), figsize=(11, 5.4), constrained_layout=True)
    kernels = sorted({key.split(" vs ")[1] for key in sweep["errors"]})
    colours = {"analytic": "tab:blue", "empirical": "tab:orange"}
    for ax, metric in zip(np.atleast_1d(axes), HEADLINE, strict=True):
        notes = []
        for kernel in kernels:
            key = f"{metric} vs {kernel}"
            errs = np.asarray(sweep["errors"][key], float)
            used = np.isin(widths, sweep.get("fitted_widths", {}).get(key, widths))
            slope, coef = fit_slope(widths[used], errs[used])
            colour = colours.get(kernel)
            ax.plot(widths[used], errs[used], "o-", color=colour,
                    label=f"{kernel} NTK, max over t (fitted slope {slope:.2f})")
            at_end = sweep.get("errors_at_horizon", {}).get(key)
            if at_end is not None:
                # larger open rings drawn on top: visible where they equal the maximum
                ax.plot(widths[used], np.asarray(at_end, float)[used], "o", mfc="none",
                        ms=11, mew=1.5, zorder=4, color=colour,
                        label=f"{kernel} NTK, at the horizon")
            if (~used).any():
                shown = np.where(np.isfinite(errs) & (errs > 0), errs, np.nan)[~used]
                ax.plot(widths[~used], shown, "x", color=colour, ms=9, mew=2,
                        label=f"{kernel} NTK, left out of the fit (status not ok)")
                notes += [f"{kernel}, width {w}: {why}"
                          for w, why in sweep.get("left_out", {}).get(key, {}).items()]
            if np.isfinite(slope):
                ax.plot(widths, coef * widths**slope, "--", color=colour, lw=1, alpha=0.7)
        if notes:
            ax.text(0.01, 0.01, "left out:\n" + "\n".join(
                    textwrap.shorten(n, 90, placeholder="...") for n in notes),
                    transform=ax.transAxes, fontsize=6, va="bottom", color="0.3")
        firsts = []
        for k in kernels:
            key = f"{metric} vs {k}"
            e = np.asarray(sweep["errors"][key], float)
            used = np.flatnonzero(np.isin(widths, sweep.get("fitted_widths", {}).get(key,
                                                                                     widths)))
            if used.size:
                firsts.append((widths[used[0]], e[used[0]]))
        if firsts:
            w0, first = max(firsts, key=lambda p: (-p[0], p[1]))
            if np.isfinite(first) and first > 0:
                ax.plot(widths, first * (widths / w0) ** -0.5, ":", color="0.4",
                        label="slope -1/2 (theory)")
        _finish_sweep_axis(ax, widths, metric)
    fig.suptitle("Predicted vs observed (nonlinear network) against width"
                 + (f"\n{subtitle}" if subtitle else ""))
    if stem is None:
        return fig
    return _save(fig, Path(stem))


def _finish_sweep_axis(ax, widths: np.ndarray, metric: str) -> None:
    """Scales, ticks at the widths, labels and the legend of one width-sweep panel."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(widths, [str(int(w)) for w in widths])
    ax.set_xlabel("width")
    ax.set_ylabel(r"$\max_t\,|\mathrm{pred}_t-\mathrm{obs}_t|\,/\,|\mathrm{obs}_t|$")
    ax.set_title(_LABELS.get(metric, metric), fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.plot([], [], "--", color="0.5", lw=1, label="fitted power law (thin dashed)")
    # below the panel (constrained layout makes room): inside, it covered markers
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2,
              frameon=False)


__all__ = ["algorithm_title", "overlay_figure", "width_sweep_figure"]

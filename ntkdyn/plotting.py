"""Figures of trajectories (matplotlib is imported here only, never at package import).

Conventions: one colour per agent (``tab10``/``tab20``, the same in every
figure), thin lines per agent, a thick black line for the network mean; the
centralised reference is grey and dotted; predicted curves are dashed and
observed ones solid when both are shown.  A random-gossip prediction
(:class:`~ntkdyn.trajectory.GossipTrajectory`) adds, per agent, the 5-95 % band
over the sampled mixing sequences (shaded in the agent's colour) and the exact
network mean of the mean state (the ``E[W]`` recursion, black dash-dot).  A one-random-
network prediction (:class:`~ntkdyn.trajectory.RandomNetworkTrajectory`) likewise adds
the 5-95 % band over sampled initialisations and the mean network (``f_0 = 0``, grey
dash-dot).  A prediction with a finite-width band (``nd.predict(..., width=n)``,
``traj.width_draws``) adds the 5-95 % band of the *network mean* over the ``S``
width-``n`` networks' empirical kernels, hatched in black with thin black edges, so that
it stays apart from the per-agent, colour-shaded band over initialisations.  With random
gossip or mini-batch SGD a one-random-network prediction's per-agent band is over
initialisations and sequences jointly (labelled so); the band of the network mean over
initialisations alone (blue, hatched) and over the sequences alone (orange, dotted hatch) are
drawn apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ntkdyn.trajectory import Trajectory, zero_run_name

PANELS = (
    ("train_loss", "train loss", "central_train_loss", True),
    ("test_loss", "test loss", "central_test_loss", True),
    ("test_acc", "test accuracy", "central_test_acc", False),
    ("param_dist", r"$\|\theta_q-\theta_0\|$", "central_param_dist", False),
    ("consensus_dist", r"$\|\theta_q-\bar\theta\|$ (consensus)", None, True),
    ("central_dist", r"$\|\theta_q-\theta_c\|$ (to centralised)", None, True),
)


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend, imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def agent_colours(q: int):
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if q <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(q)]


def _positive(y):
    return np.where(y > 0, y, np.nan)


def _any_positive(arrays) -> bool:
    """Whether any of ``arrays`` has a finite value > 0: a log-scaled panel needs one (a run
    that diverged before its second record has only step 0, where the distances are 0;
    matplotlib raises on a log axis with no positive value)."""
    for arr in arrays:
        a = np.asarray(arr, dtype=float)
        if np.any(np.isfinite(a) & (a > 0)):
            return True
    return False


def _has_levels(traj) -> bool:
    levels = np.round(np.asarray(traj.quantile_levels, dtype=float), 12)
    return 0.05 in levels and 0.95 in levels


def _band_label(traj) -> str:
    if _has_levels(traj):
        lo, hi = 5, 95
    else:
        lo, hi = (round(100 * float(v)) for v in (traj.quantile_levels[0],
                                                  traj.quantile_levels[-1]))
    return f"{lo}-{hi} % over {traj.samples} {_what_sampled(traj)} (each agent)"


def _what_sampled(traj) -> str:
    from ntkdyn.trajectory import RandomNetworkTrajectory

    if isinstance(traj, RandomNetworkTrajectory):
        joint = traj.metadata.get("band_over", "init")
        if joint != "init":
            kind = "mini-batch" if joint == "init+batch" else "mixing"
            return f"sampled initialisations and {kind} sequences jointly"
        return "sampled initialisations"
    if traj.metadata.get("sampled") == "mini-batch":
        return "sampled mini-batch sequences"
    return "sampled sequences"


def _width_band(ax, traj, name: str, log: bool) -> None:
    """The finite-width band of ``name``'s network mean (5-95 % over the ``S`` empirical
    kernels of ``traj.width_draws``), hatched black, when the trajectory has one."""
    draws = (getattr(traj, "width_draws", None) or {}).get(name)
    if draws is None or draws.shape[0] < 2:
        return
    info = traj.metadata.get("finite_width", {})
    rows = min(len(traj.steps), draws.shape[1])
    low, high = np.nanquantile(np.asarray(draws, float)[:, :rows].mean(axis=2), [0.05, 0.95],
                               axis=0)
    x = np.asarray(traj.steps)[:rows]
    low, high = (_positive(low), _positive(high)) if log else (low, high)
    ax.fill_between(x, low, high, facecolor="none", edgecolor="black", hatch="////", lw=0,
                    alpha=0.45, label=f"network mean: 5-95 % over {draws.shape[0]} networks "
                    f"of width {info.get('width', '?')} (empirical kernels at init)")
    for edge in (low, high):
        ax.plot(x, edge, "-", color="black", lw=0.6, alpha=0.8)


def _split_bands(ax, traj, name: str, log: bool) -> None:
    """With a joint band (initialisations and sequences), the two bands apart, of the network
    mean: over initialisations alone (the expected dynamics from each ``f_0``,
    ``init_band_run``; blue, hatched ``\\``) and over the sequences alone (the mean
    network's sequences; orange, hatched ``..``)."""
    run = getattr(traj, "init_band_run", None)
    mean_net = getattr(traj, "mean_network", None)
    per_seq = getattr(mean_net, "per_sample", None) or {}
    kind = "mini-batch" if traj.metadata.get("band_over") == "init+batch" else "mixing"
    parts = []
    if run is not None and run.draws and name in run.draws:
        parts.append((run.draws[name], "tab:blue", "\\\\", "network mean: 5-95 % over "
                      f"{run.samples} initialisations alone (expected dynamics from each f0)"))
    if traj.metadata.get("band_over", "init") != "init" and name in per_seq:
        parts.append((per_seq[name], "tab:orange", "..", "network mean: 5-95 % over "
                      f"{per_seq[name].shape[0]} {kind} sequences alone (f0 = 0)"))
    for draws, colour, hatch, label in parts:
        rows = min(len(traj.steps), draws.shape[1])
        low, high = np.quantile(np.asarray(draws, float)[:, :rows].mean(axis=2), [0.05, 0.95],
                                axis=0)
        x = np.asarray(traj.steps)[:rows]
        low, high = (_positive(low), _positive(high)) if log else (low, high)
        ax.fill_between(x, low, high, facecolor="none", edgecolor=colour, hatch=hatch, lw=0,
                        alpha=0.6, label=label)
        for edge in (low, high):
            ax.plot(x, edge, "-", color=colour, lw=0.8)


def _panel(ax, traj, observed, name: str, label: str, central, log: bool, colours,
           unit: str) -> None:
    """One metric's panel: every agent (predicted dashed when ``observed`` is drawn too,
    solid otherwise), the network mean, the bands (per agent over initialisations or
    sequences, the width band), the exact expectation or the mean network, and the
    centralised reference."""
    if log and not _any_positive(getattr(src, name) for src in (traj, observed)
                                 if src is not None):
        log = False  # nothing a log axis can show (e.g. zero distances at step 0 only)
    quantiles = getattr(traj, "quantiles", None) or {}
    expected = getattr(traj, "expected", None)
    mean_network = getattr(traj, "mean_network", None)
    samples = getattr(traj, "samples", 0)
    pred_style = "--" if observed is not None else "-"
    for source, style, tag in ((traj, pred_style, "predicted"),
                               (observed, "-", "observed")):
        if source is None:
            continue
        arr = getattr(source, name)
        for q in range(arr.shape[1]):
            ax.plot(source.steps, _positive(arr[:, q]) if log else arr[:, q], style,
                    color=colours[q], lw=0.8, alpha=0.7)
        mean = arr.mean(axis=1)
        if observed is not None:
            mean_label = f"network mean ({tag})"
        elif samples:
            mean_label = (f"network mean, average over {samples} "
                          f"{_what_sampled(traj)}")
        else:
            mean_label = "network mean"
        ax.plot(source.steps, _positive(mean) if log else mean, style, color="black",
                lw=2.0, label=mean_label)
    if name in quantiles and quantiles[name].shape[0] > 1 and samples != 1:
        # (one sampled sequence, e.g. validate's sequence 0, has no band)
        low, high = traj.band(name) if _has_levels(traj) else (quantiles[name][0],
                                                              quantiles[name][-1])
        for q in range(low.shape[1]):
            ax.fill_between(traj.steps, _positive(low[:, q]) if log else low[:, q],
                            _positive(high[:, q]) if log else high[:, q],
                            color=colours[q], alpha=0.15, lw=0)
        # the legend's swatch in a neutral shade: the agents' bands overlap in every colour
        ax.fill_between([], [], [], color="0.55", alpha=0.35, lw=0, label=_band_label(traj))
    _width_band(ax, traj, name, log)
    _split_bands(ax, traj, name, log)
    if expected is not None and getattr(expected, name, None) is not None:
        exact = getattr(expected, name).mean(axis=1)
        words = ("network mean of full-batch training (exact expected state)"
                 if traj.metadata.get("sampled") == "mini-batch" else
                 "network mean of the mean state (E[W] recursion, exact)")
        ax.plot(expected.steps, _positive(exact) if log else exact, "-.", color="black",
                lw=1.4, label=words)
    if mean_network is not None and getattr(mean_network, name, None) is not None:
        arr = getattr(mean_network, name).mean(axis=1)
        ce = traj.metadata.get("loss") == "cross_entropy"  # f0 = 0 is not the mean network
        ax.plot(mean_network.steps, _positive(arr) if log else arr, "-.", color="0.25",
                lw=1.4, label=zero_run_name("cross_entropy") if ce else
                "mean network (f0 = 0; not one network)")
    if central is not None and getattr(traj, central) is not None:
        ax.plot(traj.steps, getattr(traj, central), ":", color="0.45", lw=1.5,
                label="centralised reference")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(unit)
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)


#: characters of legend text across the six-panel figure (13 in at the default font size;
#: measured: three columns of 85-character labels ran past both edges)
LEGEND_CHARS = 170
#: longest legend line before it is wrapped
LEGEND_WRAP = 62


def legend_layout(labels: list[str], chars: int = LEGEND_CHARS,
                  wrap: int = LEGEND_WRAP) -> tuple[list[str], int]:
    """``(labels, ncol)`` for a figure-wide legend: labels longer than ``wrap`` characters
    wrapped onto several lines, and as many columns (at most 4) as fit ``chars`` characters
    of the longest line plus its marker, so that no entry runs past the figure's edges."""
    import textwrap

    wrapped = [textwrap.fill(lab, wrap) for lab in labels]
    longest = max((len(line) for lab in wrapped for line in lab.splitlines()), default=1)
    return wrapped, max(1, min(4, len(labels), chars // (longest + 8)))


def _mark_divergence(axes, traj) -> None:
    """Where the run diverged, a vertical line at that step in every panel, and markers on
    every curve when a single record is left (a run that diverged before its second record:
    a one-point line is not drawn)."""
    div = traj.diverged_at
    single = len(traj.steps) == 1
    for i, ax in enumerate(axes):
        if single:
            for line in ax.get_lines():
                line.set_marker("o")
        if div is not None and div > 0:
            ax.axvline(div, color="tab:red", ls=":", lw=1.2,
                       label=f"diverged at step {div} (later records dropped)" if i == 0
                       else None)


def plot_trajectory(traj: Trajectory, path: str | Path | None = None, title: str = "",
                    observed: Trajectory | None = None):
    """Six panels (losses, accuracy, distances) per agent and network mean.

    With ``observed``, the observed trajectory is drawn solid and ``traj``
    (the prediction) dashed.  Saves to ``path`` (PNG or PDF) when given and
    returns the figure.
    """
    plt = pyplot()
    panels = [p for p in PANELS if getattr(traj, p[0]) is not None]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.2), constrained_layout=True)
    colours = agent_colours(traj.num_agents)
    unit = "time (steps)" if traj.continuous else "step"
    for ax, (name, label, central, log) in zip(axes.flat, panels, strict=False):
        _panel(ax, traj, observed, name, label, central, log, colours, unit)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if observed is None:  # an overlay marks both runs' divergence itself (validation.overlay)
        _mark_divergence(list(axes.flat)[:len(panels)], traj)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], color="0.5", lw=0.8))
    labels.append(f"agents 1..{traj.num_agents} (one colour each)")
    labels, ncol = legend_layout(labels)
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False)
    status = "" if traj.status == "ok" else f" [{traj.status}]"
    if traj.diverged_at is not None and traj.diverged_at > 0:
        status = f" [{traj.status} at step {traj.diverged_at}]"
    algo = traj.metadata.get("algorithm", "").upper()
    lr = traj.metadata.get("lr")
    lr_txt = f", lr={np.max(lr):.3g}" if lr is not None else ""
    fig.suptitle((title or f"{algo} prediction{lr_txt}") + status)
    if path is not None:
        fig.savefig(path, dpi=130)
        plt.close(fig)
    return fig

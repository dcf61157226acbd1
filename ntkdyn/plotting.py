"""Figures of trajectories (matplotlib is imported here only, never at package import).

Conventions: one colour per agent (``tab10``/``tab20``, the same in every
figure), thin lines per agent, a thick black line for the network mean; the
centralised reference is grey and dotted; predicted curves are dashed and
observed ones solid when both are shown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .trajectory import Trajectory

PANELS = (
    ("train_loss", "train loss", "central_train_loss", True),
    ("test_loss", "test loss", "central_test_loss", True),
    ("test_acc", "test accuracy", "central_test_acc", False),
    ("param_dist", r"$\|\theta_q-\theta_0\|$", "central_param_dist", False),
    ("consensus_dist", r"$\|\theta_q-\bar\theta\|$ (consensus)", None, True),
    ("central_dist", r"$\|\theta_q-\theta_c\|$ (to centralised)", None, True),
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def agent_colours(q: int):
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if q <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(q)]


def _positive(y):
    return np.where(y > 0, y, np.nan)


def plot_trajectory(traj: Trajectory, path: str | Path | None = None, title: str = "",
                    observed: Trajectory | None = None):
    """Six panels (losses, accuracy, distances) per agent and network mean.

    With ``observed``, the observed trajectory is drawn solid and ``traj``
    (the prediction) dashed.  Saves to ``path`` (PNG or PDF) when given and
    returns the figure.
    """
    plt = _pyplot()
    panels = [p for p in PANELS if getattr(traj, p[0]) is not None]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.2), constrained_layout=True)
    colours = agent_colours(traj.num_agents)
    unit = "time (steps)" if traj.continuous else "step"
    for ax, (name, label, central, log) in zip(axes.flat, panels, strict=False):
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
            ax.plot(source.steps, _positive(mean) if log else mean, style, color="black",
                    lw=2.0, label=f"network mean ({tag})" if observed is not None else
                    "network mean")
        if central is not None and getattr(traj, central) is not None:
            ax.plot(traj.steps, getattr(traj, central), ":", color="0.45", lw=1.5,
                    label="centralised reference")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel(unit)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], color=colours[0], lw=0.8))
    labels.append(f"agents 1..{traj.num_agents} (one colour each)")
    fig.legend(handles, labels, loc="outside lower center", ncol=4, frameon=False)
    status = "" if traj.status == "ok" else f" [{traj.status}]"
    algo = traj.metadata.get("algorithm", "").upper()
    lr = traj.metadata.get("lr")
    lr_txt = f", lr={np.max(lr):.3g}" if lr is not None else ""
    fig.suptitle((title or f"{algo} prediction{lr_txt}") + status)
    if path is not None:
        fig.savefig(path, dpi=130)
        plt.close(fig)
    return fig

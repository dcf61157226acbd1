"""Predicted (or observed) learning trajectories, and their ``.npz`` files.

Conventions (the same everywhere in ntkdyn, for predictions and for the
training harness):

* loss of outputs ``F`` on samples ``S``: ``1/(2|S|) sum_{i in S} ||F_i - y_i||^2``
  (half the mean over samples of the squared error summed over outputs);
* ``train_loss[t, q]``: agent ``q``'s model on the pooled training set;
  ``local_loss[t, q]``: on its own shard, ``L_q(theta_q)``; ``objective[t, q]``:
  the global objective ``L(theta_q) = (1/Q) sum_p L_p(theta_q)`` that
  centralised training minimises (equal to ``train_loss`` for equal shards);
* accuracies use ``argmax`` of the outputs against ``argmax`` of the targets;
* ``param_dist = ||theta_q - theta_0||``,
  ``consensus_dist = ||theta_q - mean_p theta_p||``,
  ``central_dist = ||theta_q - theta_c||`` where ``theta_c`` follows the same
  algorithm run centrally (one agent holding all the data, learning rate the
  mean of the agents', same steps; ``None`` when run with ``reference=False``);
* ``central_*`` arrays (``(T,)``) describe that centralised reference and
  ``mean_model_*`` the network-averaged model ``mean_q theta_q``;
* time is counted in steps (iterations); for a gradient-flow prediction
  ``steps`` holds the (real) times, in the same unit.

A divergent run is reported, not returned as NaNs: ``status`` is
``"diverged"``, ``diverged_at`` the first step at which the state left every
reasonable bound, and the arrays end at the last record before it.  A run
whose linearised dynamics are unstable but had not blown up by the horizon has
``status = "unstable"``; both carry the stability report (spectral radius,
exact largest stable rate ``lr_star``, margin) in ``metadata["stability"]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

AGENT_METRICS = (
    "train_loss", "local_loss", "objective", "train_acc", "test_loss", "test_acc",
    "param_dist", "consensus_dist", "central_dist",
)
REFERENCE_METRICS = ("train_loss", "objective", "train_acc", "test_loss", "test_acc",
                     "param_dist")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Trajectory:
    """Per-agent learning trajectory at the recorded steps.

    Per-agent arrays have shape ``(T, Q)``; ``central_*`` and ``mean_model_*``
    arrays ``(T,)``; optional outputs ``(T, Q, N, K)`` (training samples in
    the caller's order) and ``(T, Q, M, K)`` (test).  Test metrics are
    ``None`` when no test data was given.
    """

    steps: np.ndarray
    train_loss: np.ndarray
    local_loss: np.ndarray
    objective: np.ndarray
    train_acc: np.ndarray
    param_dist: np.ndarray
    consensus_dist: np.ndarray
    mean_model_train_loss: np.ndarray
    mean_model_train_acc: np.ndarray
    central_dist: np.ndarray | None = None
    central_train_loss: np.ndarray | None = None
    central_objective: np.ndarray | None = None
    central_train_acc: np.ndarray | None = None
    central_param_dist: np.ndarray | None = None
    test_loss: np.ndarray | None = None
    test_acc: np.ndarray | None = None
    central_test_loss: np.ndarray | None = None
    central_test_acc: np.ndarray | None = None
    mean_model_test_loss: np.ndarray | None = None
    mean_model_test_acc: np.ndarray | None = None
    train_outputs: np.ndarray | None = None
    test_outputs: np.ndarray | None = None
    status: str = "ok"
    diverged_at: int | None = None
    continuous: bool = False
    lr: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ views
    @property
    def num_agents(self) -> int:
        return int(self.train_loss.shape[1])

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    def network_mean(self, metric: str) -> np.ndarray:
        """Mean over agents of a per-agent metric, shape ``(T,)``."""
        arr = getattr(self, metric)
        if arr is None:
            raise ValueError(f"metric: {metric!r} was not recorded (no test data?)")
        if arr.ndim != 2:
            raise ValueError(f"metric: {metric!r} is not a per-agent metric")
        return arr.mean(axis=1)

    def final(self, metric: str) -> np.ndarray:
        """Last recorded value of ``metric`` (``(Q,)`` or scalar)."""
        return getattr(self, metric)[-1]

    def summary(self) -> str:
        """A few lines describing the trajectory's end point."""
        t = self.steps[-1]
        unit = "time" if self.continuous else "step"
        lines = [f"{self.num_agents} agents, last record at {unit} {t:g}, status: {self.status}"]
        if self.diverged:
            lines.append(f"diverged at step {self.diverged_at}")
        if "divergence" in self.metadata:
            lines.append(self.metadata["divergence"])
        if not len(self.steps):
            return "\n".join(lines + ["no record before divergence"])
        central = ("" if self.central_train_loss is None
                   else f", centralised {self.central_train_loss[-1]:.6g}")
        lines.append(f"train loss (mean over agents) {self.train_loss[-1].mean():.6g}{central}")
        if self.test_loss is not None:
            lines.append(f"test loss {self.test_loss[-1].mean():.6g}, test accuracy "
                         f"{self.test_acc[-1].mean():.4f}")
        lines.append(f"||theta - theta0|| {self.param_dist[-1].mean():.6g}, consensus distance "
                     f"{self.consensus_dist[-1].mean():.3g}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Trajectory(T={len(self.steps)}, Q={self.num_agents}, status={self.status!r})"

    # -------------------------------------------------------------------- I/O
    def save(self, path: str | Path) -> Path:
        """Write to ``path`` (``.npz``) atomically; metadata as JSON inside."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        arrays = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                arrays[f.name] = v
        meta = {
            "format_version": FORMAT_VERSION,
            "status": self.status,
            "diverged_at": self.diverged_at,
            "continuous": self.continuous,
            "metadata": self.metadata,
        }
        arrays["__meta__"] = np.array(json.dumps(meta, default=_json_default))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trajectory:
        """Read a trajectory written by :meth:`save`."""
        with np.load(Path(path), allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
            kwargs = {k: data[k] for k in data.files if k != "__meta__"}
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"path: {path} was written by a newer ntkdyn (format "
                             f"{meta['format_version']})")
        return cls(status=meta["status"], diverged_at=meta["diverged_at"],
                   continuous=meta["continuous"], metadata=meta["metadata"], **kwargs)


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)

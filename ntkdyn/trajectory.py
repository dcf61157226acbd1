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
  ``steps`` holds the (real) times, in the same unit.  What a step is depends
  on the algorithm (:mod:`ntkdyn.algorithms`): one round for P2PL;
* a schedule recorded after each of its phases (P2PL: ``"local"`` then
  ``"consensus"``) has ``P`` rows per recorded step, ``phase[i]`` the index of
  row ``i``'s phase in ``metadata["phases"]``; :meth:`Trajectory.at_phase`
  keeps one phase.  At step 0 every phase row holds the initial state;
* random gossip (:mod:`ntkdyn.graphs.sequences`): :class:`GossipTrajectory`, whose fields
  are the means over the sampled mixing sequences of each metric (mean of the
  loss), with quantile bands, and ``expected``, the exact trajectory of the
  mean state (recursion with ``E[W]``: loss of the mean output).  The two differ
  by the variance the randomness adds: outputs agree in expectation, losses and
  distances do not.

A divergent run is reported, not returned as NaNs: ``status`` is
``"diverged"``, ``diverged_at`` the first step at which the state left every
reasonable bound, and the arrays end at the last record before it.  A run
whose linearised dynamics are unstable but had not blown up by the horizon has
``status = "unstable"``; both carry the stability report (spectral radius,
exact largest stable rate ``lr_star``, margin) in ``metadata["stability"]``.
"""

from __future__ import annotations

import dataclasses
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
    phase: np.ndarray | None = None
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

    @property
    def phases(self) -> list[str]:
        """Names of the phases recorded per step (``[]`` for single-phase schedules)."""
        return list(self.metadata.get("phases", [])) if self.phase is not None else []

    def at_phase(self, phase: str | int) -> Trajectory:
        """The records taken after one phase (``"local"``, ``"consensus"``, or its index)."""
        if self.phase is None:
            raise ValueError("phase: this trajectory has one record per step (no phases)")
        names = self.phases
        idx = names.index(phase) if isinstance(phase, str) and phase in names else phase
        if not isinstance(idx, int | np.integer) or not 0 <= idx < max(len(names), 1):
            raise ValueError(f"phase: expected one of {names} or an index, got {phase!r}")
        keep = np.flatnonzero(self.phase == idx)
        arrays = {f.name: getattr(self, f.name)[keep] for f in fields(self)
                  if isinstance(getattr(self, f.name), np.ndarray) and f.name not in
                  ("lr", "quantile_levels", "phase") and getattr(self, f.name).ndim >= 1
                  and getattr(self, f.name).shape[0] == len(self.phase)}
        meta = dict(self.metadata, phase_kept=names[idx] if names else int(idx))
        return dataclasses.replace(self, **arrays, phase=None, metadata=meta)

    def final(self, metric: str) -> np.ndarray:
        """Last recorded value of ``metric`` (``(Q,)`` or scalar)."""
        return getattr(self, metric)[-1]

    def summary(self) -> str:
        """A few lines describing the trajectory's end point."""
        t = self.steps[-1]
        unit = "time" if self.continuous else "step"
        lines = [f"{self.num_agents} agents, last record at {unit} {t:g}, status: {self.status}"]
        if "quantity" in self.metadata:
            lines.append(f"describes: {self.metadata['quantity']}")
        if self.phase is not None:
            lines.append("records after each phase per step: " + ", ".join(self.phases)
                         + f" (last: {self.phases[int(self.phase[-1])]})")
        if isinstance(self, GossipTrajectory) and self.metadata.get("sampled") == "mini-batch":
            mb = self.metadata.get("minibatch", {})
            lines.append(f"mini-batch SGD (batch {mb.get('batch_size')}): means over "
                         f"{self.samples} sampled batch sequences (seed {mb.get('seed')}); "
                         + ("'.expected' is full-batch training (the exact mean for the "
                            "squared loss)" if self.expected is not None else
                            "no closed-form expectation (cross-entropy)"))
        elif isinstance(self, GossipTrajectory):
            lines.append(f"random gossip: means over {self.samples} sampled mixing sequences; "
                         "'.expected' is the exact mean-state (E[W]) trajectory")
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
    def _payload(self) -> tuple[dict, dict]:
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
        return arrays, meta

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` (``.npz``) atomically; metadata as JSON inside."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        arrays, meta = self._payload()
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
        return _from_payload(kwargs, meta)


#: every recorded metric of a :class:`Trajectory`, defined once (the dataclass fields): the
#: kernel-space solver and real-network training both fill each one (tested); a new metric
#: is a new field here plus its record in both engines
METRICS = tuple(f.name for f in fields(Trajectory) if f.name not in (
    "steps", "phase", "status", "diverged_at", "continuous", "lr", "metadata",
    "train_outputs", "test_outputs"))


def _from_payload(kwargs: dict, meta: dict) -> Trajectory:
    plain = {k: v for k, v in kwargs.items() if "/" not in k}
    common = dict(status=meta["status"], diverged_at=meta["diverged_at"],
                  continuous=meta["continuous"], metadata=meta["metadata"])
    if meta.get("kind") != "gossip":
        return Trajectory(**common, **plain)
    quantiles = {k.split("/", 1)[1]: v for k, v in kwargs.items() if k.startswith("quantiles/")}
    expected = None
    if "expected_meta" in meta:
        expected = _from_payload({k.split("/", 1)[1]: v for k, v in kwargs.items()
                                  if k.startswith("expected/")}, meta["expected_meta"])
    per_sample = {k.split("/", 1)[1]: v for k, v in kwargs.items()
                  if k.startswith("per_sample/")} or None
    return GossipTrajectory(**common, **plain, samples=meta["samples"], quantiles=quantiles,
                            expected=expected, per_sample=per_sample)


@dataclass(frozen=True)
class GossipTrajectory(Trajectory):
    """Prediction over sampled sequences (random mixing, mini-batches): a distribution.

    Every metric field holds the **mean over the ``samples`` sampled sequences** of
    that metric (for losses: the mean of the loss); ``quantiles[metric]`` has shape
    ``(L, ...)`` for the levels ``quantile_levels`` (default 5, 25, 50, 75, 95 %);
    ``expected`` is the exact trajectory of the **mean state** (the recursion with
    ``E[W]``, :mod:`ntkdyn.graphs.sequences`): its outputs are the exact mean outputs, its losses
    the loss of the mean output, which is below the mean loss by the outputs'
    variance.  Mini-batch SGD (``metadata["sampled"] == "mini-batch"``): sampled batch
    sequences; ``expected`` is full-batch training, the exact mean state for the squared
    loss (``None`` for cross-entropy).  ``per_sample[metric]`` holds every sequence's
    values ``(S, ...)``; :meth:`sequence` gives sequence ``s`` as a :class:`Trajectory`.
    """

    samples: int = 0
    quantile_levels: np.ndarray | None = None
    quantiles: dict | None = None
    expected: Trajectory | None = None
    per_sample: dict | None = None

    def sequence(self, s: int) -> Trajectory:
        """Sampled sequence ``s`` alone (the one ``ntkdyn.train.train`` runs with
        ``gossip_sample=s`` / ``batch_sample=s``)."""
        if not self.per_sample:
            raise ValueError("s: this trajectory keeps no per-sequence values")
        if isinstance(s, bool) or not isinstance(s, int | np.integer) or \
                not 0 <= s < self.samples:
            raise ValueError(f"s: expected a sequence index in [0, {self.samples}), got {s!r}")
        arrays = {k: v[s] for k, v in self.per_sample.items()}
        plain = {f.name: getattr(self, f.name) for f in fields(Trajectory)
                 if f.name not in arrays and f.name not in ("metadata",)}
        for k in arrays:
            plain.pop(k, None)
        return Trajectory(**plain, **arrays, metadata=dict(self.metadata, sequence=int(s)))

    def band(self, metric: str, low: float = 0.05, high: float = 0.95) -> tuple:
        """``(low, high)`` quantile curves of ``metric`` (levels among ``quantile_levels``)."""
        levels = list(np.round(np.asarray(self.quantile_levels), 12))
        try:
            i, j = levels.index(round(low, 12)), levels.index(round(high, 12))
        except ValueError:
            raise ValueError(f"low/high: expected levels among {levels}") from None
        q = self.quantiles[metric]
        return q[i], q[j]

    def at_phase(self, phase: str | int) -> GossipTrajectory:
        out = super().at_phase(phase)
        keep = np.flatnonzero(self.phase == self.phases.index(phase)) if isinstance(phase, str) \
            else np.flatnonzero(self.phase == phase)
        quantiles = {k: v[:, keep] for k, v in (self.quantiles or {}).items()}
        per_sample = {k: v[:, keep] for k, v in (self.per_sample or {}).items()} or None
        expected = None if self.expected is None else self.expected.at_phase(phase)
        return dataclasses.replace(out, quantiles=quantiles, expected=expected,
                                   per_sample=per_sample)

    def _payload(self) -> tuple[dict, dict]:
        arrays, meta = super()._payload()
        meta.update(kind="gossip", samples=self.samples)
        for k, v in (self.quantiles or {}).items():
            arrays[f"quantiles/{k}"] = v
        for k, v in (self.per_sample or {}).items():
            arrays[f"per_sample/{k}"] = v
        if self.expected is not None:
            ea, em = self.expected._payload()
            arrays.update({f"expected/{k}": v for k, v in ea.items()})
            meta["expected_meta"] = em
        return arrays, meta

    def __repr__(self) -> str:
        return (f"GossipTrajectory(T={len(self.steps)}, Q={self.num_agents}, "
                f"samples={self.samples}, status={self.status!r})")



def quantity_words(mean: bool, given: bool = False, seed: int | None = None) -> str:
    """What a prediction describes, in words (``metadata["quantity"]``; DESIGN.md section 8).

    ``mean``: started from ``f_0 = 0``, the *mean network* over random initialisations
    (infinite width): its loss is not the expected loss of one random network, which is
    larger by the outputs' variance (``ntkdyn.initialisation``).  Otherwise the network
    whose ``f_0`` was used: the given ``params``, or the one initialised with ``seed``.
    """
    if mean:
        return ("mean network over random initialisations (f0 = 0): the loss of the mean "
                "output, not the expected loss of one random network (larger; "
                "ntkdyn.initialisation)")
    if given:
        return "the given network (params): its own f0, linearised dynamics"
    return (f"one network, initialised with seed {seed}: its own f0, linearised dynamics"
            if seed is not None else "the network whose f0 was given: linearised dynamics")

def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)

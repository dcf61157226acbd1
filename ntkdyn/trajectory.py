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

#: the summary's words where the accuracies are not reported (one output)
ONE_OUTPUT_WORDS = ("no accuracy: with one output (K = 1) the argmax accuracy is 1 by "
                    "construction")

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
    ``None`` when no test data was given.  Accuracies are the fraction of samples whose
    largest output is the target's; with one output (``K = 1``, regression) that is 1 by
    construction, so :meth:`summary` does not report them there.
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
    quantile_levels: np.ndarray | None = None
    quantiles: dict | None = None
    width_draws: dict | None = None

    # ------------------------------------------------------------------ views
    def band(self, metric: str, low: float = 0.05, high: float = 0.95,
             over: str | None = None) -> tuple:
        """``(low, high)`` quantile curves of ``metric`` over the samples behind this
        trajectory (sampled mixing sequences of a :class:`GossipTrajectory`, sampled
        initialisations of a :class:`RandomNetworkTrajectory`); the levels are among
        ``quantile_levels`` (default 5, 25, 50, 75, 95 %).  A trajectory without samples
        (one deterministic prediction) has no band: ``ValueError`` naming ``metric``.

        ``over``: ``None`` (default) the trajectory's own samples; ``"init"`` the sampled
        initialisations (a :class:`RandomNetworkTrajectory` only); ``"width"`` the
        finite-width band, over the empirical kernels of networks of width ``n`` drawn by
        ``nd.predict(..., width=n)`` (``width_draws``, any levels; :mod:`ntkdyn.finite_width`,
        ``theory/finite_width.md`` section 6).  The two bands are different quantities;
        ``"calibrated"`` combines them as :func:`ntkdyn.bands.calibrated_band` does (the
        init band with the width band's variance added, each side widened by the fitted
        ``CALIBRATED_C = 0.9429``): the 5-95 % band for ONE network of width ``n``, needing
        ``nd.predict(..., width=n)`` with ``f0="random"`` (5 and 95 % only; the fit and its
        held-out coverage: README "Coverage").

        With random gossip or mini-batch SGD a :class:`RandomNetworkTrajectory`'s networks
        each draw their own ``f_0`` *and* sequence (``metadata["band_over"]`` is
        ``"init+mixing"`` / ``"init+batch"``): ``over=None`` is that joint band,
        ``"sequence"`` the band over the sequences alone (of the mean network, ``f_0 = 0``),
        and ``"init"`` the band over initialisations alone, for the squared loss: quantiles
        over the same ``S`` draws ``f_0^(s)`` of the *expected* dynamics from ``f_0^(s)``
        (the ``E[W]`` recursion / full-batch training, the mean over sequences of the state
        and outputs given ``f_0``; ``init_band_run``, ``metadata["init_band"]``,
        ``theory/initialisation.md`` section 4c).  With cross-entropy it is refused (no
        expected dynamics in closed form)."""
        if low > high:  # one check for every band (reversed levels gave reversed curves)
            raise ValueError(f"low/high: expected low <= high, got {low!r}, {high!r}")
        if over == "width":
            return _width_band(self.width_draws, metric, low, high)
        if over == "calibrated":
            return self._calibrated_band(metric, low, high)
        if over not in (None, "init", "sequence"):
            raise ValueError(f"over: expected None, 'init', 'sequence', 'width' or "
                             f"'calibrated', got {over!r}")
        if over == "init" and not isinstance(self, RandomNetworkTrajectory):
            raise ValueError("over: 'init' needs a prediction over sampled initialisations "
                             "(f0='random'); this trajectory has none")
        joint = self.metadata.get("band_over", "init")
        run = getattr(self, "init_band_run", None)
        if over == "init" and joint != "init" and run is not None:
            return run.band(metric, low, high)
        if over == "init" and joint != "init":
            what = ("mixing" if joint == "init+mixing" else "mini-batch") + " sequences"
            raise ValueError(f"over: this prediction's band is over initialisations and {what}"
                             " jointly (network s draws f0 s and sequence s); the "
                             "band over initialisations alone is not available (it needs the "
                             "squared loss: the expected dynamics from each f0): use "
                             "over=None for the joint band or over='sequence' for the "
                             "sequences alone")
        if over == "sequence":
            inner = getattr(self, "mean_network", None)
            if isinstance(self, GossipTrajectory):
                inner = self
            if not isinstance(inner, GossipTrajectory):
                raise ValueError("over: 'sequence' needs sampled mixing or mini-batch "
                                 "sequences (random gossip, batch_size > 0)")
            return inner.band(metric, low, high)
        if not self.quantiles:
            raise ValueError(f"metric: this trajectory has no band for {metric!r} (a single "
                             "deterministic prediction; bands come from sampled mixing "
                             "sequences or sampled initialisations, f0='random')")
        if metric not in self.quantiles:
            raise ValueError(f"metric: expected one of {sorted(self.quantiles)}, got "
                             f"{metric!r}")
        levels = list(np.round(np.asarray(self.quantile_levels), 12))
        try:
            i, j = levels.index(round(low, 12)), levels.index(round(high, 12))
        except ValueError:
            raise ValueError(f"low/high: expected levels among "
                             f"{[float(v) for v in levels]} (the stored quantiles; "
                             f"over='width' takes any), got {low!r}, {high!r}") from None
        q = self.quantiles[metric]
        return q[i], q[j]

    def _calibrated_band(self, metric: str, low: float, high: float) -> tuple:
        """``band(metric, low, high, over="calibrated")``: ``(lo, hi)`` of
        :func:`ntkdyn.bands.calibrated_band` on ``draws[metric]`` (initialisations) and
        ``width_draws[metric]`` at ``metadata["finite_width"]["width"]``.  The init draws
        are the paired draws themselves: every width sample runs the same standard-normal
        ``z`` (same ``seed``, same count) as the infinite-width draws, so the finite-width
        shift of the mean is measured with common random numbers.  With mini-batch SGD
        (``band_over == "init+batch"``) the init draws are the joint init+batch band and
        the shift is measured against ``width_draws["paired/<metric>"]``, the
        infinite-width full-batch draws from the width samples' ``z``."""
        from ntkdyn.bands import CALIBRATED_LEVELS, calibrated_band

        if (round(low, 12), round(high, 12)) != CALIBRATED_LEVELS:
            raise ValueError(f"low/high: the calibrated band is the 5-95 % band (its factor "
                             f"was fitted for it), expected {CALIBRATED_LEVELS}, got "
                             f"{low!r}, {high!r}")
        fw = self.metadata.get("finite_width") or {}
        init = getattr(self, "draws", None) or {}
        if not self.width_draws or not init or "width" not in fw:
            raise ValueError("over: 'calibrated' needs the band over initialisations and the "
                             "finite-width band: predict with f0='random' (the default) and "
                             "width=n")
        if metric not in self.width_draws or metric not in init:
            raise ValueError(f"metric: the calibrated band is for the metrics kept per "
                             f"sampled network, {sorted(set(init) & set(self.width_draws))}, "
                             f"got {metric!r}")
        paired = self.width_draws.get(f"paired/{metric}")
        if paired is None and self.metadata.get("band_over", "init") != "init":
            raise ValueError("over: 'calibrated' with sampled sequences needs the paired "
                             "full-batch draws (width_draws['paired/<metric>']) that "
                             "nd.predict(..., batch_size=B, width=n) keeps; this "
                             "trajectory has none")
        lo, _, hi = calibrated_band(init[metric], self.width_draws[metric], int(fw["width"]),
                                    paired_draws=paired)
        return lo, hi

    @property
    def num_agents(self) -> int:
        return int(self.train_loss.shape[1])

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    def network_mean(self, metric: str) -> np.ndarray:
        """Mean over agents of a per-agent metric, shape ``(T,)``."""
        arr = self._metric(metric)
        if arr.ndim != 2:
            raise ValueError(f"metric: {metric!r} is not a per-agent metric")
        return arr.mean(axis=1)

    @property
    def phases(self) -> list[str]:
        """Names of the phases recorded per step (``[]`` for single-phase schedules)."""
        return list(self.metadata.get("phases", [])) if self.phase is not None else []

    def at_phase(self, phase: str | int) -> Trajectory:
        """The records taken after one phase (``"local"``, ``"consensus"``, or its index)."""
        idx, keep = self._phase_records(phase)
        names = self.phases
        arrays = {f.name: getattr(self, f.name)[keep] for f in fields(self)
                  if isinstance(getattr(self, f.name), np.ndarray) and f.name not in
                  ("lr", "quantile_levels", "phase") and getattr(self, f.name).ndim >= 1
                  and getattr(self, f.name).shape[0] == len(self.phase)}
        meta = dict(self.metadata, phase_kept=names[idx] if names else int(idx))
        if self.quantiles:
            arrays["quantiles"] = {k: v[:, keep] for k, v in self.quantiles.items()}
        if self.width_draws:
            arrays["width_draws"] = {k: v[:, keep] for k, v in self.width_draws.items()}
        return dataclasses.replace(self, **arrays, phase=None, metadata=meta)

    def _phase_records(self, phase: str | int) -> tuple[int, np.ndarray]:
        """The index of ``phase`` (a name or an index) and the records taken after it."""
        if self.phase is None:
            raise ValueError("phase: this trajectory has one record per step (no phases)")
        names = self.phases
        idx = names.index(phase) if isinstance(phase, str) and phase in names else phase
        if not isinstance(idx, int | np.integer) or not 0 <= idx < max(len(names), 1):
            raise ValueError(f"phase: expected one of {names} or an index, got {phase!r}")
        return idx, np.flatnonzero(self.phase == idx)

    def final(self, metric: str) -> np.ndarray:
        """Last recorded value of ``metric`` (``(Q,)`` or scalar)."""
        return self._metric(metric)[-1]

    def _metric(self, metric: str):
        """The array of ``metric`` (a recorded field: :data:`METRICS`, and a subclass's own
        such as ``exact_test_loss``), else ``ValueError`` naming it and listing them, or
        saying it was not recorded."""
        names = [f.name for f in fields(self) if f.name in METRICS or (
            f.name not in _NOT_METRICS and isinstance(getattr(self, f.name), np.ndarray))]
        if metric not in names:
            raise ValueError(f"metric: expected one of {names}, got {metric!r}")
        arr = getattr(self, metric)
        if arr is None:
            raise ValueError(f"metric: {metric!r} was not recorded (no test data?)")
        return arr

    def summary(self) -> str:
        """A few lines describing the trajectory's end point."""
        t = self.steps[-1]
        unit = "time" if self.continuous else "step"
        lines = [f"{self.num_agents} agents, last record at {unit} {t:g}, status: {self.status}"]
        if "quantity" in self.metadata:
            lines.append(f"describes: {self.metadata['quantity']}")
        if self.metadata.get("kernel") == "empirical" and "kernel_layout" in self.metadata:
            lines.append(EMPIRICAL_LAYOUT_WORDS[self.metadata["kernel_layout"]])
        if self.phase is not None:
            lines.append("records after each phase per step: " + ", ".join(self.phases)
                         + f" (last: {self.phases[int(self.phase[-1])]})")
        lines += self._sequence_lines() + low_rank_lines(self.metadata)
        if isinstance(self, RandomNetworkTrajectory):
            lines.append(f"one random network: means over {self.samples} sampled "
                         "initialisations (f0 drawn from the NNGP), bands over them; "
                         "'.mean_network' is the f0 = 0 trajectory")
            mb = self.metadata.get("minibatch")
            if mb:
                lines.append(f"mini-batch SGD (batch {mb.get('batch_size')}): network s also "
                             f"runs batch sequence s (seed {mb.get('seed')})")
            if self.metadata.get("band_over", "init") != "init":
                lines.append("band: " + self.metadata.get("band", ""))
        if self.diverged:
            lines.append(f"diverged at step {self.diverged_at}")
        if "divergence" in self.metadata:
            lines.append(self.metadata["divergence"])
        if "growing" in self.metadata:
            lines.append(self.metadata["growing"]["words"])
        if not len(self.steps):
            return "\n".join(lines + ["no record before divergence"])
        central = ("" if self.central_train_loss is None
                   else f", centralised {self.central_train_loss[-1]:.6g}")
        lines.append(f"train loss (mean over agents) {self.train_loss[-1].mean():.6g}{central}")
        if self.test_loss is not None and self.quantiles and "test_loss" in self.quantiles:
            lines += [self._expected_line()] + self._mc_lines()
        elif self.test_loss is not None:
            lines.append(f"test loss {self.test_loss[-1].mean():.6g}" + (
                f", test accuracy {self.test_acc[-1].mean():.4f}" if self._has_accuracy
                else f" ({ONE_OUTPUT_WORDS})"))
        lines += self._width_lines()
        exact = getattr(self, "exact_test_loss", None)
        if exact is not None and len(exact):
            lines.append(f"exact expected test loss {exact[-1].mean():.6g} (mean + variance "
                         "term, ntkdyn.initialisation)")
        mean_net = getattr(self, "mean_network", None)
        if mean_net is not None and mean_net.test_loss is not None and len(mean_net.steps):
            name = zero_run_name(self.metadata.get("loss", "mse"))
            lines.append(f"{name}: test loss {mean_net.test_loss[-1].mean():.6g}" + (
                f", test accuracy {mean_net.test_acc[-1].mean():.4f}" if self._has_accuracy
                else ""))
        lines.append(f"||theta - theta0|| {self.param_dist[-1].mean():.6g}, consensus distance "
                     f"{self.consensus_dist[-1].mean():.3g}")
        return "\n".join(lines)

    def _expected_line(self) -> str:
        """The summary's line of the expected test loss and accuracy with their 5-95 %
        bands (one sampled network: its values, called neither expected nor banded)."""
        loss, acc = self.test_loss[-1].mean(), self.test_acc[-1].mean()
        if getattr(self, "samples", None) == 1:
            return (f"test loss {loss:.6g}" + (f", test accuracy {acc:.4f}" if
                                               self._has_accuracy else "")
                    + " of the one sampled network (samples = 1: a single draw, not an "
                    "expected value; no band)" + ("" if self._has_accuracy else
                                                  f"; {ONE_OUTPUT_WORDS}"))
        lo, hi = (b[-1].mean() for b in self.band("test_loss"))
        line = f"test loss {loss:.6g} expected (5-95 %: {lo:.4g}-{hi:.4g})"
        if not self._has_accuracy:
            return f"{line} ({ONE_OUTPUT_WORDS})"
        alo, ahi = (b[-1].mean() for b in self.band("test_acc"))
        return f"{line}, test accuracy {acc:.4f} expected (5-95 %: {alo:.4f}-{ahi:.4f})"

    @property
    def _has_accuracy(self) -> bool:
        """Whether the accuracies mean something: not with one output (``K = 1``), where
        the argmax over one column is right by construction."""
        return self.metadata.get("num_outputs") != 1

    def _mc_lines(self) -> list[str]:
        """The Monte-Carlo error line of :meth:`summary` for a mean over sampled networks or
        sequences (none where no sampled values are kept)."""
        loss, acc = (last_mc_error(self, m) for m in ("test_loss", "test_acc"))
        if loss is None or acc is None:
            return []
        bound = isinstance(self, RandomNetworkTrajectory) and \
            shared_draw_columns(self.metadata) > 1
        what = ("a bound: the networks share draw columns" if bound else
                "the samples are independent")
        return [f"Monte-Carlo standard error of those expected values over the "
                f"{self.samples} samples ({what}): test loss {loss:.2g}"
                + (f", test accuracy {acc:.2g}" if self._has_accuracy else "")]

    def _sequence_lines(self) -> list[str]:
        """The sampled sequences' line of :meth:`summary` (none for one deterministic run):
        what the fields average over and what ``.expected`` is."""
        if not isinstance(self, GossipTrajectory):
            return []
        if self.metadata.get("sampled") == "mini-batch":
            mb = self.metadata.get("minibatch", {})
            return [f"mini-batch SGD (batch {mb.get('batch_size')}): means over "
                    f"{self.samples} sampled batch sequences (seed {mb.get('seed')}); "
                    + ("'.expected' is full-batch training (the exact mean for the squared "
                       "loss)" if self.expected is not None else
                       "no closed-form expectation (cross-entropy)")]
        expected = ("'.expected' is the run with E[W] (cross-entropy: not the expected "
                    "trajectory)" if self.metadata.get("loss") == "cross_entropy" else
                    "'.expected' is the exact mean-state (E[W]) trajectory")
        return [f"random gossip: means over {self.samples} sampled mixing sequences; "
                + expected]

    def _width_lines(self) -> list[str]:
        """The finite-width band's lines of :meth:`summary` (none without one)."""
        if not (self.width_draws and "test_loss" in self.width_draws):
            return []
        lines = []
        fw = self.metadata.get("finite_width", {})
        lo, hi = (b[-1].mean() for b in self.band("test_loss", over="width"))
        alo, ahi = (b[-1].mean() for b in self.band("test_acc", over="width"))
        lines.append(f"finite width {fw.get('width')} (5-95 % over {fw.get('samples')} "
                     f"empirical kernels): test loss {lo:.4g}-{hi:.4g}" + (
                         f", test accuracy {alo:.4f}-{ahi:.4f}" if self._has_accuracy
                         else ""))
        off = fw.get("samples", 0) - fw.get("statuses", {}).get("ok", 0)
        if off:
            lines.append(f"  {off} of those kernels are unstable at this rate (or "
                         "diverged): the band is not a small-fluctuation band")
        return lines

    def __repr__(self) -> str:
        return f"Trajectory(T={len(self.steps)}, Q={self.num_agents}, status={self.status!r})"

    # -------------------------------------------------------------------- I/O
    def _payload(self) -> tuple[dict, dict]:
        arrays = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                arrays[f.name] = v
        for k, v in (self.quantiles or {}).items():
            arrays[f"quantiles/{k}"] = v
        for k, v in (self.width_draws or {}).items():
            arrays[f"width_draws/{k}"] = v
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
        """Read a trajectory written by :meth:`save` (``ValueError`` naming ``path`` for a
        file that is not one)."""
        not_ours = (f"path: expected a trajectory written by Trajectory.save (an .npz with "
                    f"its metadata), got {str(path)!r}")
        try:
            data = np.load(Path(path), allow_pickle=False)
        except OSError as err:
            raise ValueError(f"{not_ours}: {err}") from None
        except (ValueError, EOFError):  # numpy: not an .npy / .npz ("pickled data")
            raise ValueError(f"{not_ours}: not an .npz archive") from None
        if not isinstance(data, np.lib.npyio.NpzFile) or "__meta__" not in data.files:
            if isinstance(data, np.lib.npyio.NpzFile):
                data.close()
            raise ValueError(not_ours + ("" if isinstance(data, np.lib.npyio.NpzFile) else
                                         ": a single .npy array"))
        with data:
            try:
                meta = json.loads(str(data["__meta__"]))
            except (ValueError, json.JSONDecodeError) as err:
                raise ValueError(f"{not_ours}: unreadable metadata ({err})") from None
            kwargs = {k: data[k] for k in data.files if k != "__meta__"}
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"path: {path} was written by a newer ntkdyn (format "
                             f"{meta['format_version']})")
        return _from_payload(kwargs, meta)


#: every recorded metric of a :class:`Trajectory`, defined once (the dataclass fields): the
#: kernel-space solver and real-network training both fill each one (tested); a new metric
#: is a new field here plus its record in both engines
#: a trajectory's fields that are not recorded metrics
_NOT_METRICS = ("steps", "phase", "status", "diverged_at", "continuous", "lr", "metadata",
                "train_outputs", "test_outputs", "quantile_levels", "quantiles", "width_draws")
METRICS = tuple(f.name for f in fields(Trajectory) if f.name not in _NOT_METRICS)


def _from_payload(kwargs: dict, meta: dict) -> Trajectory:
    plain = {k: v for k, v in kwargs.items() if "/" not in k}
    common = dict(status=meta["status"], diverged_at=meta["diverged_at"],
                  continuous=meta["continuous"], metadata=meta["metadata"])

    def prefixed(prefix):
        return {k.split("/", 1)[1]: v for k, v in kwargs.items() if k.startswith(prefix + "/")}

    quantiles = prefixed("quantiles") or None
    common["width_draws"] = prefixed("width_draws") or None
    kind = meta.get("kind")
    if kind not in ("gossip", "random_network"):
        return Trajectory(**common, **plain, quantiles=quantiles)
    inner = None
    if "expected_meta" in meta:
        inner = _from_payload(prefixed("expected"), meta["expected_meta"])
    if kind == "gossip":
        return GossipTrajectory(**common, **plain, samples=meta["samples"],
                                quantiles=quantiles, expected=inner,
                                per_sample=prefixed("per_sample") or None)
    band_run = None
    if "init_band_meta" in meta:
        band_run = _from_payload(prefixed("init_band"), meta["init_band_meta"])
    return RandomNetworkTrajectory(**common, **plain, samples=meta["samples"],
                                   quantiles=quantiles, mean_network=inner,
                                   draws=prefixed("draws") or None, init_band_run=band_run)


#: the empirical kernel's layout, in words, for :meth:`Trajectory.summary`
EMPIRICAL_LAYOUT_WORDS = {
    "full": ("kernel: the empirical NTK at initialisation, full (N K) x (N K) layout (exact "
             "for the linearised network; ntkdyn check uses the same)"),
    "traced": ("kernel: the empirical NTK at initialisation, traced layout Theta_s (x) I_K "
               "(an approximation of the full kernel, whose lr* can be lower)"),
}


@dataclass(frozen=True)
class GossipTrajectory(Trajectory):
    """Prediction over sampled sequences (random mixing, mini-batches): a distribution.

    Every metric field holds the **mean over the ``samples`` sampled sequences** of
    that metric (for losses: the mean of the loss); ``quantiles[metric]`` has shape
    ``(L, ...)`` for the levels ``quantile_levels`` (default 5, 25, 50, 75, 95 %);
    ``expected`` is the exact trajectory of the **mean state** (the recursion with
    ``E[W]``, :mod:`ntkdyn.graphs.sequences`): its outputs are the exact mean outputs, its losses
    the loss of the mean output, which is below the mean loss by the outputs'
    variance; with cross-entropy the run with ``E[W]``, *not* the expected trajectory (the
    dynamics are not affine in ``W``).  Mini-batch SGD (``metadata["sampled"] ==
    "mini-batch"``): sampled batch
    sequences; ``expected`` is full-batch training, the exact mean state for the squared
    loss (``None`` for cross-entropy).  ``per_sample[metric]`` holds every sequence's
    values ``(S, ...)``; :meth:`sequence` gives sequence ``s`` as a :class:`Trajectory`.
    """

    samples: int = 0
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

    def monte_carlo_error(self, metric: str) -> np.ndarray:
        """Standard error ``(T,)`` of :meth:`network_mean` of ``metric``, the mean over the
        ``samples`` independent sequences (:func:`ntkdyn.bands.monte_carlo_error`); NaN with
        one sequence."""
        return _network_mc_error(self.per_sample, metric, 1)

    def at_phase(self, phase: str | int) -> GossipTrajectory:
        out = super().at_phase(phase)
        keep = self._phase_records(phase)[1]
        per_sample = {k: v[:, keep] for k, v in (self.per_sample or {}).items()} or None
        expected = None if self.expected is None else self.expected.at_phase(phase)
        return dataclasses.replace(out, expected=expected, per_sample=per_sample)

    def _payload(self) -> tuple[dict, dict]:
        arrays, meta = super()._payload()
        meta.update(kind="gossip", samples=self.samples)
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


@dataclass(frozen=True)
class RandomNetworkTrajectory(Trajectory):
    """Prediction for **one random network** (infinite width): a distribution over
    initialisations.

    The initial outputs ``f_0`` on the training and test inputs are drawn from the NNGP
    (``samples`` networks, :mod:`ntkdyn.dynamics.random_init`); every metric field holds the
    **mean over the sampled networks** (for losses the mean of the loss: the expected loss
    of one random network, a Monte-Carlo estimate), ``quantiles`` / :meth:`band` the
    spread over them, ``draws[metric]`` ``(samples, T, Q)`` the sampled networks'
    ``train_loss``, ``test_loss``, ``train_acc``, ``test_acc``.  ``mean_network`` is the
    trajectory started from ``f_0 = 0``: the **mean network** over initialisations, whose
    loss (loss of the mean output) is below the expected loss by the outputs' variance.
    ``exact_train_loss`` / ``exact_test_loss`` ``(T, Q)``: the exact expected losses
    (mean + trace of the covariance, :mod:`ntkdyn.initialisation`) where they were
    affordable (small problems, DGD/ATC/CTA/GD), else ``None``.  ``init_band_run``: with
    random gossip or mini-batch SGD and the squared loss, the expected dynamics (``E[W]`` /
    full batch) from the same ``S`` draws, a :class:`RandomNetworkTrajectory` whose band is
    over initialisations alone (``band(m, over="init")``), else ``None``.
    """

    samples: int = 0
    mean_network: Trajectory | None = None
    draws: dict | None = None
    exact_train_loss: np.ndarray | None = None
    exact_test_loss: np.ndarray | None = None
    init_band_run: RandomNetworkTrajectory | None = None

    def monte_carlo_error(self, metric: str) -> np.ndarray:
        """Bound ``(T,)`` on the Monte-Carlo standard error of :meth:`network_mean` of
        ``metric`` (the expected value over ``samples`` sampled networks): ``sd sqrt(min(2 K
        - 1, P) / P)`` where the squared loss's networks share their ``K`` draw columns
        cyclically, ``sd / sqrt(P)`` where each network has its own (cross-entropy, random
        gossip, mini-batch SGD); ``sd`` is the spread of the networks' values
        (:func:`ntkdyn.bands.monte_carlo_error`).  Metrics: ``train_loss``, ``test_loss``,
        ``train_acc``, ``test_acc``."""
        return _network_mc_error(self.draws, metric, shared_draw_columns(self.metadata))

    def at_phase(self, phase: str | int) -> RandomNetworkTrajectory:
        out = super().at_phase(phase)
        keep = self._phase_records(phase)[1]
        mean = None if self.mean_network is None else self.mean_network.at_phase(phase)
        draws = {k: v[:, keep] for k, v in (self.draws or {}).items()} or None
        run = None if self.init_band_run is None else self.init_band_run.at_phase(phase)
        return dataclasses.replace(out, mean_network=mean, draws=draws, init_band_run=run)

    def _payload(self) -> tuple[dict, dict]:
        arrays, meta = super()._payload()
        meta.update(kind="random_network", samples=self.samples)
        for k, v in (self.draws or {}).items():
            arrays[f"draws/{k}"] = v
        if self.mean_network is not None:
            ea, em = self.mean_network._payload()
            arrays.update({f"expected/{k}": v for k, v in ea.items()})
            meta["expected_meta"] = em
        if self.init_band_run is not None:
            ba, bm = self.init_band_run._payload()
            arrays.update({f"init_band/{k}": v for k, v in ba.items()})
            meta["init_band_meta"] = bm
        return arrays, meta

    def __repr__(self) -> str:
        return (f"RandomNetworkTrajectory(T={len(self.steps)}, Q={self.num_agents}, "
                f"samples={self.samples}, status={self.status!r})")


#: a sampled sequence whose network-mean loss ends above its initial value and more than
#: this factor above its lowest is reported as growing (:func:`observed_growth`)
GROWTH_FACTOR = 10.0


def observed_growth(traj: Trajectory) -> float | None:
    r"""The factor ``L_T / min_t L_t`` of a run whose network-mean loss ended above its
    initial value and more than :data:`GROWTH_FACTOR` above its lowest; else ``None``.

    ``L`` is the training loss where every record has it, else the test loss (check's
    sweep records the training figures at the horizon only).  A verdict from the
    trajectory itself, for runs whose operator verdict does not bound them: one sampled
    gossip or mini-batch sequence, whose mean state (``E[W]``, full batch) can converge
    while single sequences grow (a random product of step matrices grows at its top
    Lyapunov exponent, not at the mean's spectral radius).  A run that ends worse than it
    started and ten times worse than it had been has not trained, whatever its mean state
    does (``tests/test_algorithms_stability.py``: NEXT with one random edge per step, whose
    sequences at 0.95 lr* of ``E[W]`` grow by up to 1e6)."""
    if len(traj.steps) < 3 or traj.status != "ok":
        return None
    for metric in ("train_loss", "test_loss"):
        if getattr(traj, metric) is None:
            continue
        series = traj.network_mean(metric)
        if not np.all(np.isfinite(series)):
            continue
        low, last = float(np.min(series)), float(series[-1])
        grew = last > series[0] and last > GROWTH_FACTOR * low
        return last / low if grew else None
    return None


def growing_runs(runs: list[Trajectory], noun: str) -> dict | None:
    """``metadata["growing"]`` of an aggregate of ``runs`` (``noun`` names them in the words,
    e.g. "sampled mixing sequences"): the indices :func:`observed_growth` flags
    (``"sequences"``), the largest factor and the words; ``None`` when none grew."""
    factors = {s: g for s, t in enumerate(runs) if (g := observed_growth(t)) is not None}
    if not factors:
        return None
    top = max(factors.values())
    return {"sequences": sorted(factors), "factor_max": top, "words": (
        f"status 'unstable' from the trajectory: {len(factors)} of {len(runs)} {noun} ended "
        f"above their initial loss and up to {top:.3g}x above their lowest; the mean "
        "state's verdict (E[W] / full batch) does not bound single sequences")}


def shared_draw_columns(metadata: dict) -> int:
    """How many sampled networks share each draw column: ``K`` (the outputs) for the
    squared loss's cyclic columns, 1 where every network has its own ``K`` columns
    (cross-entropy, mini-batch SGD, random gossip;
    :func:`ntkdyn.dynamics.random_init.independent_networks`)."""
    process = metadata.get("mixing_process") or {}
    independent = (metadata.get("loss", "mse") != "mse" or "minibatch" in metadata
                   or process.get("kind", "periodic") != "periodic")
    return 1 if independent else int(metadata.get("num_outputs", 1))


def _network_mc_error(draws: dict | None, metric: str, shared: int) -> np.ndarray:
    """:func:`ntkdyn.bands.monte_carlo_error` of the networks' (or sequences') means over
    agents of ``metric``."""
    from ntkdyn.bands import monte_carlo_error

    if not draws or metric not in draws:
        kept = sorted(draws or {})
        raise ValueError(f"metric: expected one of {kept} (the sampled values kept), got "
                         f"{metric!r}")
    values = np.asarray(draws[metric]).mean(axis=-1)
    if values.shape[0] < 2:  # one sample: no spread to estimate the error from
        return np.full(values.shape[1:], np.nan)
    return monte_carlo_error(values, shared)


def last_mc_error(traj: Trajectory, metric: str) -> float | None:
    """The Monte-Carlo standard error of ``metric``'s expected value at the last record
    (``monte_carlo_error``), or ``None`` where there is none: one deterministic run, no
    record, ``metric`` not kept, or a single sample."""
    error = getattr(traj, "monte_carlo_error", None)
    if error is None or not len(traj.steps):
        return None
    try:
        value = float(error(metric)[-1])
    except ValueError:  # this metric's sampled values are not kept
        return None
    return value if np.isfinite(value) else None


#: ``metadata["quantity"]`` of the ``f_0 = 0`` run with cross-entropy (:func:`quantity_words`)
CE_ZERO_WORDS = ("the network started from f0 = 0 (cross-entropy: not the mean network over "
                 "random initialisations, the dynamics are not affine in f0; f0='random' "
                 "gives the expected losses of one random network)")


#: the a-priori error estimates of the low-rank path are capped here
#: (``ntkdyn.lowrank.evolve.ERROR_CAP``): an estimate at the cap says only "large"
LOW_RANK_ESTIMATE_CAP = 2.0


def low_rank_lines(meta: dict) -> list[str]:
    """The low-rank path's lines of :meth:`Trajectory.summary` (none on the exact path): the
    rank, the a-priori estimates of the training- and test-output errors (``max_t
    ||f_q - f~_q|| / ||f_0 - Y||``), and a warning when an estimate is at its cap or above
    ``tol``: the truncation may then dominate the prediction (an audit found a rank-32
    prediction of N = 400 at 1.82 train loss against 0.18 exact, reported as plain "ok")."""
    low = meta.get("low_rank")
    if not low:
        return []
    n = meta.get("num_train")

    def shown(key: str) -> str:
        v = low.get(key)
        if v is None:
            return "none"
        unc = low.get(f"{key}_uncapped")
        capped = v >= LOW_RANK_ESTIMATE_CAP and unc is not None and unc > v
        return f"{v:.3g}" + (f" (at its cap; uncapped {unc:.3g})" if capped else "")

    of = f" of N = {n}" if n else ""
    if low.get("error_estimate") is None:
        return [f"low-rank path: rank {low.get('rank')}{of}; no a-priori error estimate "
                f"({low.get('error_estimate_reason', 'not available for this loss')})"]
    lines = [f"low-rank path: rank {low.get('rank')}{of}; a-priori estimate of the output "
             f"error (max over records of ||f_q - f~_q|| / ||f_0 - Y||): training "
             f"{shown('error_estimate')}, test {shown('error_estimate_test')}"
             + (f"; tol {low['tol']:g} {'reached' if low.get('tol_reached') else 'NOT reached'}"
                if low.get("tol") is not None else "")]
    worst = max(v for v in (low.get("error_estimate"), low.get("error_estimate_test"))
                if v is not None)
    if worst >= LOW_RANK_ESTIMATE_CAP or low.get("tol_reached") is False:
        lines.append("WARNING: the truncation may dominate this prediction (an estimate at its "
                     "cap or above tol); raise the rank, or compare with the exact path "
                     "(rank=None) on a subset")
    return lines


def zero_run_name(loss: str) -> str:
    """The short name of the run from ``f_0 = 0``: the mean network for the squared loss,
    not for cross-entropy (the dynamics are not affine in ``f_0``; :data:`CE_ZERO_WORDS`)."""
    return ("network from f0 = 0 (cross-entropy: not the mean network)"
            if loss == "cross_entropy" else "mean network (f0 = 0)")


def quantity_words(mean: bool, given: bool = False, seed: int | None = None,
                   samples: int | None = None, loss: str = "mse") -> str:
    """What a prediction describes, in words (``metadata["quantity"]``; DESIGN.md section 8).

    ``samples``: one random network over initialisations, from that many sampled ``f_0``
    (:class:`RandomNetworkTrajectory`; the other arguments but ``seed`` and ``loss`` are
    ignored).

    ``mean``: started from ``f_0 = 0``, the *mean network* over random initialisations
    (infinite width): its loss is not the expected loss of one random network, which is
    larger by the outputs' variance (``ntkdyn.initialisation``).  Otherwise the network
    whose ``f_0`` was used: the given ``params``, or the one initialised with ``seed``.
    With ``loss="cross_entropy"`` the ``f_0 = 0`` run is *not* the mean network (the
    dynamics are not affine in ``f_0``): :data:`CE_ZERO_WORDS`.
    """
    if samples:
        return (f"one random network over initialisations (infinite width): f0 drawn from the "
                f"NNGP, {samples} sampled networks (seed {seed}); losses are expected losses "
                f"(mean of the loss), bands over the samples; .mean_network is the "
                f"{zero_run_name(loss)}")
    if mean and loss == "cross_entropy":
        return CE_ZERO_WORDS
    if mean:
        return ("mean network over random initialisations (f0 = 0): the loss of the mean "
                "output, not the expected loss of one random network (larger; "
                "ntkdyn.initialisation)")
    if given:
        return "the given network (params): its own f0, linearised dynamics"
    return (f"one network, initialised with seed {seed}: its own f0, linearised dynamics"
            if seed is not None else "the network whose f0 was given: linearised dynamics")

def _width_band(width_draws: dict | None, metric: str, low: float, high: float) -> tuple:
    """``(low, high)`` quantiles over the finite-width kernel samples ``(S, T, ...)``
    (NaN where a sample diverged before that record)."""
    if not width_draws:
        raise ValueError("over: this trajectory has no finite-width band (predict with "
                         "width=n, ntkdyn.finite_width)")
    if metric not in width_draws or metric.startswith("paired/"):
        names = sorted(k for k in width_draws if not k.startswith("paired/"))
        raise ValueError(f"metric: expected one of {names}, got {metric!r}")
    if not (0 <= low < high <= 1):
        raise ValueError(f"low/high: expected 0 <= low < high <= 1, got {low!r}, {high!r}")
    q = np.nanquantile(np.asarray(width_draws[metric], dtype=float), [low, high], axis=0)
    return q[0], q[1]


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)

"""Where does *real* peer-to-peer training stop converging?  (``check --measure-edge``)

Above the linearised boundary ``lr*`` the NTK predictions do not apply, but
wide networks often still train: they leave the lazy regime, their kernel
shrinks and they "catapult" (Lewkowycz et al. 2020; DESIGN.md section 7).
This module measures the observed edge by training the real network (the
validation harness, :func:`ntkdyn.training.trainer.train`) for a few hundred steps at
rates above ``lr*``: doubling until training fails, then bisecting (in log
scale) between the last rate that converged and the first that did not.

A trial *converged* when the run did not diverge and its final network-mean
training loss is below the initial one.  Trials are cached as JSON files
keyed by the configuration and the rate, so re-running is free.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ntkdyn.config.experiment import Experiment

MAX_FACTOR = 64.0


def _key(exp: Experiment, lr: float, steps: int) -> str:
    cfg = exp.config.to_dict()
    cfg["training"] = {k: v for k, v in cfg["training"].items() if k != "lr"}
    blob = json.dumps({"config": cfg, "lr": float(lr), "steps": int(steps)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def trial(exp: Experiment, lr: float, steps: int, cache_dir: str | Path | None = None,
          progress: bool = False) -> dict:
    """Train the real network at ``lr`` for ``steps`` steps; return the outcome (cached)."""
    from ntkdyn.training.trainer import train

    cache = Path(cache_dir) / f"{_key(exp, lr, steps)}.json" if cache_dir else None
    if cache is not None and cache.is_file():
        return json.loads(cache.read_text())
    cfg = exp.config
    rec = np.unique(np.linspace(0, steps, 11).astype(int))
    traj = train(exp.arch, exp.parts, exp.mixing, lr, exp.algorithm, rec,
                 seed=cfg.seed, dtype=cfg.validation.dtype, progress=progress)
    loss = traj.network_mean("train_loss")
    final = float(loss[-1]) if len(loss) else float("inf")
    initial = float(loss[0]) if len(loss) else float("inf")
    converged = (not traj.diverged) and np.isfinite(final) and final < initial
    out = {"lr": float(lr), "converged": bool(converged), "initial_train_loss": initial,
           "final_train_loss": final if np.isfinite(final) else None,
           "status": traj.status, "diverged_at": traj.diverged_at}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".partial")
        tmp.write_text(json.dumps(out))
        tmp.replace(cache)
    return out


def measure_edge(exp: Experiment, lr_star: float, *, steps: int = 300, bisections: int = 4,
                 cache_dir: str | Path | None = None, progress: bool = False) -> dict:
    """Bracket the observed edge of real training above ``lr_star``.

    Returns ``{"lr_star", "steps", "converged_lr", "diverged_lr", "trials"}``;
    ``diverged_lr`` is ``None`` if training still converged at
    ``MAX_FACTOR * lr_star`` and ``converged_lr`` is ``None`` if it failed even
    at ``lr_star / 8``.
    """
    trials: list[dict] = []

    def run(lr):
        t = trial(exp, lr, steps, cache_dir, progress)
        trials.append(t)
        return t["converged"]

    lo, hi = None, None
    lr = lr_star
    if run(lr):
        lo = lr
        while hi is None and lr < MAX_FACTOR * lr_star:
            lr *= 2.0
            if run(lr):
                lo = lr
            else:
                hi = lr
    else:
        hi = lr
        while lo is None and lr > lr_star / 8:
            lr /= 2.0
            if run(lr):
                lo = lr
            else:
                hi = lr
    if lo is not None and hi is not None:
        for _ in range(bisections):
            mid = float(np.sqrt(lo * hi))
            if run(mid):
                lo = mid
            else:
                hi = mid
    return {"lr_star": float(lr_star), "steps": int(steps), "converged_lr": lo,
            "diverged_lr": hi, "trials": sorted(trials, key=lambda t: t["lr"])}

"""ntkdyn: closed-form predictions of peer-to-peer learning dynamics of wide networks.

Importing ntkdyn enables float64 in JAX (``jax_enable_x64``): the solver must
agree with brute-force training of the linearised network to round-off.

Main entry points
-----------------
predict, predict_sweep          architecture + partitioned data + mixing -> Trajectory
predict_from_kernels, sweep_from_kernels
                                your own kernels (arrays) -> Trajectory
build_problem, make_problem     the kernel-space problem, for stability / fixed_point
stability, fixed_point          exact lr*, sufficient bound, spectral radius; steady state
Trajectory                      per-agent metrics, save / load (.npz)
GossipTrajectory                random gossip: means over sampled sequences, bands, E[W] run
RandomNetworkTrajectory         one random network (predict's default, analytic kernel):
                                expected losses and bands over sampled initialisations
algorithms                      dgd, atc, cta, gd, p2pl(L, C), gradient_tracking (ATC-DIGing),
                                next, diging, extra, momentum(beta): schedules of mix and adapt
graphs, gossip                  topologies, mixing matrices; periodic and random sequences
train.train                     real peer-to-peer training (vmapped agents, jitted steps)
validate                        trained vs predicted trajectories, agreement, overlay figures
initialisation                  outputs over random initialisations (mean network vs one
                                random network), exact for small problems
lowrank                         low-rank kernel path for data-set scale (nd.predict(rank=...))
"""

import importlib as _importlib
import sys as _sys
import types as _types

from . import _config  # noqa: F401  (enables float64 in JAX)

#: submodules reachable as attributes (``ntkdyn.graphs``, ...), imported on first use
_SUBMODULES = ("activations", "algorithms", "data", "gossip", "graphs", "initialisation",
               "kernels", "lowrank", "models", "random_init", "sharding", "train")
#: public names -> defining module, imported on first use (``import ntkdyn`` costs about
#: ``import jax``: networkx, scipy.sparse / optimize / stats, sklearn, matplotlib and tqdm
#: load only when a command needs them)
_LAZY = {
    "Algorithm": "algorithms", "CheckReport": "check", "check": "check",
    "ValidationResult": "harness", "validate": "harness",
    "build_problem": "pipeline", "fixed_point": "pipeline", "init_params": "models",
    "predict": "pipeline", "predict_sweep": "pipeline", "stability": "pipeline",
    "predict_from_kernels": "predict", "sweep_from_kernels": "predict",
    "KernelProblem": "problem", "make_problem": "problem",
    "StabilityReport": "spectrum", "FixedPoint": "steady_state",
    "GossipTrajectory": "trajectory", "Trajectory": "trajectory",
    "RandomNetworkTrajectory": "trajectory",
}
#: public functions that share their name with a submodule: the function wins (importing
#: ``ntkdyn.predict`` or ``ntkdyn.check`` as a module must not rebind ``ntkdyn.predict``)
_SHADOWED = frozenset({"predict", "check"})


def __getattr__(name: str):
    if name in _SUBMODULES:
        value = _importlib.import_module(f".{name}", __name__)
    elif name in _LAZY:
        value = getattr(_importlib.import_module(f".{_LAZY[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(_types.ModuleType):
    """The package module: keeps ``ntkdyn.predict`` / ``ntkdyn.check`` the functions when
    the submodules of the same name are imported (the import system binds each loaded
    submodule as an attribute of its package)."""

    def __setattr__(self, name, value):
        if name in _SHADOWED and isinstance(value, _types.ModuleType):
            return  # the module stays reachable through sys.modules["ntkdyn." + name]
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package

__version__ = "0.1.0"

__all__ = [
    "Algorithm", "CheckReport", "FixedPoint", "GossipTrajectory", "KernelProblem",
    "RandomNetworkTrajectory", "random_init",
    "StabilityReport", "Trajectory", "activations", "algorithms", "build_problem", "check",
    "data", "fixed_point", "gossip", "graphs", "initialisation",
    "init_params", "kernels", "lowrank", "make_problem", "models", "predict",
    "predict_from_kernels",
    "predict_sweep", "sharding", "stability", "sweep_from_kernels", "train", "validate",
    "ValidationResult",
]

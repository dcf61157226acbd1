"""Typed, validated configuration (TOML), shared by ``predict``, ``validate`` and ``check``.

Every section is a frozen dataclass; :func:`load_config` reads a TOML file
(``tomllib``) and :func:`config_from_dict` builds the dataclasses, rejecting
unknown keys and wrong types with an error that names the key path and the
expected type (``ConfigError``, a ``ValueError``).  The documented example is
``examples/default.toml``.

Sections: ``seed``; ``[data]``; ``[partition]``; ``[topology]``;
``[architecture]``; ``[training]``; ``[prediction]``; ``[validation]``.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ntkdyn._utils.checks import MAX_RECORDS, MAX_STEP
from ntkdyn.activations import ACTIVATION_NAMES
from ntkdyn.algorithms import NAMES as ALGORITHM_NAMES
from ntkdyn.graphs.topology import TOPOLOGIES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """Invalid configuration: the message names the key path and what was expected."""


@dataclass(frozen=True)
class DataConfig:
    source: str = "digits"  # digits | synthetic | mnist | fashion_mnist | cifar10
    path: str = ""  # directory with the files, for mnist / fashion_mnist / cifar10
    classes: list[int] = field(default_factory=lambda: list(range(10)))
    n_train: int = 800
    n_test: int = 400
    standardise: bool = True
    centre_targets: bool = False
    dim: int = 16  # synthetic only
    separation: float = 2.0  # synthetic only


@dataclass(frozen=True)
class PartitionConfig:
    scheme: str = "iid"  # iid | shards | dirichlet
    agents: int = 8
    alpha: float = 1.0  # dirichlet concentration
    shards_per_agent: int = 2


@dataclass(frozen=True)
class TopologyConfig:
    name: str = "ring"  # a name of ntkdyn.graphs.TOPOLOGIES, or "file"
    adjacency_file: str = ""  # with name = "file": a 0/1 adjacency matrix (.txt/.csv/.npy)
    mixing_file: str = ""  # optional: a mixing matrix used as given (checked)
    rule: str = "metropolis"  # metropolis | max_degree | uniform
    lazy: bool = False
    params: dict[str, int | float] = field(default_factory=dict)  # e.g. {p = 0.3}, {k = 2}
    sequence: list[str] = field(default_factory=list)  # periodic: topology names, cycled
    gossip: str = ""  # "" (static) | edges (each edge on w.p. gossip_p) | one_edge
    gossip_p: float = 0.5  # gossip = "edges": probability an edge is active at an event
    gossip_samples: int = 64  # sampled mixing sequences of a random-gossip prediction


@dataclass(frozen=True)
class ArchitectureConfig:
    depth: int = 2  # hidden layers
    width: int = 1024
    activation: str = "relu"
    W_std: float = 1.4
    b_std: float = 0.1


@dataclass(frozen=True)
class TrainingConfig:
    algorithm: str = "dgd"  # one of ntkdyn.algorithms.NAMES: dgd | atc | cta | gd | p2pl |
    #                         gradient_tracking | next | diging | extra | momentum
    lr: float = 0.5
    steps: int = 2000  # steps of the algorithm (rounds for p2pl)
    record_every: int = 20
    continuous: bool = False
    local_steps: int = 5  # p2pl: local gradient steps per round
    consensus_steps: int = 1  # p2pl: combine steps per round
    momentum: float = 0.9  # momentum: heavy-ball beta in [0, 1)
    loss: str = "mse"  # mse | cross_entropy (softmax over the K outputs, one-hot targets)
    logit_scale: float = 1.0  # cross_entropy: inverse temperature s of softmax(s f)
    batch_size: int = 0  # 0 / absent: full batch; B > 0: mini-batch SGD (<= smallest shard),
    #                      for the prediction and the real training alike
    samples: int = 64  # batch_size > 0: sampled batch sequences of the prediction
    batch_sampling: str = "epoch"  # epoch (without replacement per epoch) | independent


@dataclass(frozen=True)
class PredictionConfig:
    kernel: str = "analytic"  # analytic | empirical
    target_loss: float = 0.05  # test loss target for `check` (steps-to-target)
    rank: int | str | None = None  # absent: exact path; "auto" or an integer: low-rank path
    tol: float = 1e-3  # rank = "auto": a-priori error estimate to meet (theory/low_rank.md)
    f0: str = ""  # "" (default by kernel) | random | mean | network: which network ("zero",
    # the old name of "mean" that nd.predict still takes, is read as "mean")
    # f0 = "random": sampled initialisations (networks); 0: the library's default (32 sharing
    # columns; 16 where each has its own: cross-entropy, random gossip, mini-batch SGD)
    samples: int = 0
    width: int = 0  # > 0: also the finite-width band over width_samples networks of this width
    width_samples: int = 16  # empirical kernels per finite-width band (and per width_tol width)
    width_tol: float = 0.0  # check, > 0: the width whose width band at the horizon is within it
    width_metric: str = "test_acc"  # check, width_tol: the metric the tolerance is on
    # kernel storage: "" (predict: float64; check: float32 products for its sweep) | float64 |
    # float32 | mixed (f0 = "random", squared loss: the sampled networks' columns in float32)
    kernel_dtype: str = ""


@dataclass(frozen=True)
class ValidationConfig:
    widths: list[int] = field(default_factory=list)  # width sweep (empty: architecture.width)
    dtype: str = "float32"  # float32 | float64 for real-network training
    batch_size: int = 0  # superseded by training.batch_size (only 0 is accepted)
    independent_init: bool = False


@dataclass(frozen=True)
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    architecture: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    prediction: PredictionConfig = field(default_factory=PredictionConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def steps(self) -> np.ndarray:
        """Recorded steps ``0, record_every, ..., steps`` (the last always included)."""
        t = self.training
        out = np.arange(0, t.steps + 1, t.record_every)
        return out if out[-1] == t.steps else np.append(out, t.steps)


CHOICES = {
    "data.source": ("digits", "synthetic", "mnist", "fashion_mnist", "cifar10"),
    "partition.scheme": ("iid", "shards", "dirichlet"),
    "topology.name": (*TOPOLOGIES, "file"),
    "topology.rule": ("metropolis", "max_degree", "uniform"),
    "architecture.activation": ACTIVATION_NAMES,
    "training.algorithm": ALGORITHM_NAMES,
    "topology.gossip": ("", "edges", "one_edge"),
    "prediction.kernel": ("analytic", "empirical"),
    "prediction.f0": ("", "random", "mean", "zero", "network"),
    "prediction.kernel_dtype": ("", "float64", "float32", "mixed"),
    "prediction.width_metric": ("test_acc", "test_loss", "train_loss", "train_acc"),
    "validation.dtype": ("float32", "float64"),
    "training.loss": ("mse", "cross_entropy"),
    "training.batch_sampling": ("epoch", "independent"),
}
#: what the error for a value outside :data:`CHOICES` adds after the list
_CHOICE_NOTES = {"prediction.f0": " ('zero': old name of 'mean', as in nd.predict)"}
POSITIVE = ("partition.agents", "partition.alpha", "partition.shards_per_agent",
            "architecture.depth", "architecture.width", "architecture.W_std", "training.lr",
            "training.steps", "training.record_every", "data.n_train", "prediction.target_loss",
            "data.dim", "training.local_steps", "training.consensus_steps",
            "topology.gossip_samples", "topology.gossip_p", "prediction.tol",
            "training.logit_scale",
            "training.samples")
NON_NEGATIVE = ("architecture.b_std", "data.n_test", "validation.batch_size", "seed",
                "training.batch_size", "prediction.width", "prediction.width_tol",
                "prediction.samples")

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _check_value(path: str, value, hint):
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"config: {path}: expected a list of {_TYPE_NAMES[item][2:]}s, "
                              f"got {type(value).__name__} {value!r}")
        return [_check_value(f"{path}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"config: {path}: expected a table, got {type(value).__name__}")
        check = _check_union if isinstance(item, types.UnionType) else _check_value
        return {k: check(f"{path}.{k}", v, item) for k, v in value.items()}
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise ConfigError(f"config: {path}: expected {_TYPE_NAMES.get(hint, hint)}, got "
                          f"{type(value).__name__} {value!r}")
    return value


def _check_union(path: str, value, hint):
    """A value of one of the (non-``None``) types of ``hint`` (TOML has no null)."""
    options = [a for a in typing.get_args(hint) if a is not type(None)]
    for item in options:
        try:
            return _check_value(path, value, item)
        except ConfigError:
            pass
    names = " or ".join(_TYPE_NAMES.get(a, str(a)) for a in options)
    raise ConfigError(f"config: {path}: expected {names}, got {type(value).__name__} {value!r}")


def _build(cls, raw: dict, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {prefix.rstrip('.') or 'top level'}: expected a table, got "
                          f"{type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"config: unknown key {path!r}; expected one of "
                              f"{', '.join(prefix + n for n in names)}")
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{path}.")
        else:
            if isinstance(hint, types.UnionType):  # e.g. prediction.rank: int | str | None
                kwargs[key] = _check_union(path, value, hint)
                continue
            kwargs[key] = _check_value(path, value, hint)
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    flat = {}
    for section in dataclasses.fields(cfg):
        val = getattr(cfg, section.name)
        if dataclasses.is_dataclass(val):
            for f in dataclasses.fields(val):
                flat[f"{section.name}.{f.name}"] = getattr(val, f.name)
        else:
            flat[section.name] = val
    for path, value in flat.items():
        values = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, v in values:
            if isinstance(v, float) and not np.isfinite(v):
                kind = ("a finite positive number" if path in POSITIVE else
                        "a finite number >= 0" if path in NON_NEGATIVE else "a finite number")
                where = path if sub is None else f"{path}.{sub}"
                raise ConfigError(f"config: {where}: expected {kind}, got {v!r}")
    for path, choices in CHOICES.items():
        if flat[path] not in choices:
            raise ConfigError(f"config: {path}: expected one of {list(choices)}"
                              f"{_CHOICE_NOTES.get(path, '')}, got {flat[path]!r}")
    for i, name in enumerate(cfg.topology.sequence):
        if name not in TOPOLOGIES:
            raise ConfigError(f"config: topology.sequence[{i}]: expected one of "
                              f"{list(TOPOLOGIES)}, got {name!r}")
    for path in POSITIVE:
        if not flat[path] > 0:
            raise ConfigError(f"config: {path}: expected a value > 0, got {flat[path]!r}")
    for path in NON_NEGATIVE:
        if flat[path] < 0:
            raise ConfigError(f"config: {path}: expected a value >= 0, got {flat[path]!r}")
    if cfg.seed > 2**32 - 1:  # numpy / scikit-learn seeds are 32-bit
        raise ConfigError(f"config: seed: expected an integer in [0, {2**32 - 1}], got "
                          f"{cfg.seed!r}")
    if cfg.data.source in ("mnist", "fashion_mnist", "cifar10") and not cfg.data.path:
        raise ConfigError(f"config: data.path: required for data.source = "
                          f"{cfg.data.source!r} (a local directory with the data files)")
    if cfg.topology.name == "file" and not cfg.topology.adjacency_file:
        raise ConfigError("config: topology.adjacency_file: required when topology.name = "
                          "'file'")
    if any(w <= 0 for w in cfg.validation.widths):
        raise ConfigError(f"config: validation.widths: expected positive integers, got "
                          f"{list(cfg.validation.widths)!r}")
    if cfg.topology.gossip_p > 1:
        raise ConfigError(f"config: topology.gossip_p: expected a probability in (0, 1], got "
                          f"{cfg.topology.gossip_p!r}")
    if len(set(cfg.data.classes)) < 2:
        raise ConfigError(f"config: data.classes: expected at least 2 distinct labels (with one "
                          f"class there is nothing to classify), got {cfg.data.classes!r}")
    rank = cfg.prediction.rank
    if rank is not None and not (rank == "auto" or (isinstance(rank, int) and rank > 0)):
        raise ConfigError(f"config: prediction.rank: expected \"auto\" or a positive integer "
                          f"(absent: the exact path), got {rank!r}")
    if isinstance(rank, int) and rank > cfg.data.n_train:
        raise ConfigError(f"config: prediction.rank: expected at most data.n_train = "
                          f"{cfg.data.n_train}, got {rank}")
    if not 0 <= cfg.training.momentum < 1:
        raise ConfigError(f"config: training.momentum: expected a value in [0, 1), got "
                          f"{cfg.training.momentum!r}")


#: ``[training]`` keys that are options of one algorithm: key -> (algorithm, keyword of its
#: factory in :mod:`ntkdyn.algorithms`)
ALGORITHM_OPTIONS = {
    "training.local_steps": ("p2pl", "local_steps"),
    "training.consensus_steps": ("p2pl", "consensus_steps"),
    "training.momentum": ("momentum", "beta"),
}
#: keys that only mean something with another key's value: key -> (owner, allowed values)
_ONLY_WITH = {
    **{key: ("training.algorithm", (name,)) for key, (name, _) in ALGORITHM_OPTIONS.items()},
    "topology.gossip_p": ("topology.gossip", ("edges",)),
    "topology.gossip_samples": ("topology.gossip", ("edges", "one_edge")),
    "prediction.tol": ("prediction.rank", ("auto",)),
    "training.logit_scale": ("training.loss", ("cross_entropy",)),
}


def _check_horizon(t: TrainingConfig) -> None:
    """``training.steps`` within :data:`~ntkdyn._utils.checks.MAX_STEP` and at most
    :data:`~ntkdyn._utils.checks.MAX_RECORDS` recorded steps, before
    :attr:`Config.steps` materialises them (``steps = 1e11`` was a 37 GB allocation)."""
    if t.steps > MAX_STEP:
        raise ConfigError(f"config: training.steps: expected at most {MAX_STEP:,} (the "
                          f"recursion runs step by step), got {t.steps:,}")
    records = -(-t.steps // t.record_every) + 1
    if records > MAX_RECORDS:
        least = -(-t.steps // (MAX_RECORDS - 1))
        raise ConfigError(f"config: training.record_every: expected at most {MAX_RECORDS:,} "
                          f"recorded steps (record_every >= {least:,} with training.steps = "
                          f"{t.steps:,}), got record_every = {t.record_every:,} "
                          f"({records:,} records)")


def _validate_combinations(cfg: Config, raw: dict) -> None:
    """Reject keys given without the setting they belong to, and settings that exclude
    each other (the error names the key)."""
    given = {f"{sec}.{k}" for sec, table in raw.items() if isinstance(table, dict)
             for k in table}
    t, topo = cfg.training, cfg.topology
    values = {"training.algorithm": t.algorithm, "topology.gossip": topo.gossip,
              "prediction.rank": cfg.prediction.rank,
              "training.loss": t.loss}
    if "training.record_every" in given and t.record_every > t.steps:
        # (the default, 20, with fewer steps records the first and last steps: no error)
        raise ConfigError(f"config: training.record_every: expected at most training.steps = "
                          f"{t.steps} (steps between records; only step 0 and the last "
                          f"would be recorded), got {t.record_every}")
    for key, (owner, allowed) in _ONLY_WITH.items():
        if key in given and values[owner] not in allowed:
            raise ConfigError(f"config: {key}: only used with {owner} = "
                              + " or ".join(repr(a) for a in allowed)
                              + f", got {owner} = {values[owner]!r}")
    _validate_sequence(topo, given)
    _validate_mixing_file(topo)
    if topo.gossip and ("topology.mixing_file" in given):
        raise ConfigError("config: topology.gossip: random gossip needs a graph (topology.name "
                          "or adjacency_file), not topology.mixing_file")
    time_varying = bool(topo.sequence or topo.gossip)
    if cfg.prediction.rank is not None:
        # a periodic or random mixing sequence runs on the low-rank path for every f0
        # (ntkdyn.lowrank.gossip; one random network: networks.predict_random_lowrank /
        # gossip.predict_random_lowrank_gossip)
        if t.continuous:
            raise ConfigError("config: prediction.rank: cannot be combined with "
                              "training.continuous = true (the low-rank path runs discrete "
                              "steps); remove prediction.rank for the exact path")
        if cfg.prediction.rank == "auto" and t.loss != "mse":
            raise ConfigError("config: prediction.rank: 'auto' chooses the rank from the "
                              "squared loss's a-priori error estimate, which does not bound "
                              "cross-entropy (training.loss = 'cross_entropy'); give an "
                              "integer prediction.rank (and no prediction.tol)")
    if t.continuous and (time_varying or t.algorithm == "p2pl"):
        what = "a time-varying mixing sequence" if time_varying else "training.algorithm = 'p2pl'"
        raise ConfigError(f"config: training.continuous: the gradient flow is not defined for "
                          f"{what}")
    if cfg.validation.batch_size:
        raise ConfigError("config: validation.batch_size: replaced by training.batch_size (the "
                          "prediction and the real training now use the same mini-batches); "
                          f"move batch_size = {cfg.validation.batch_size} to [training]")
    if cfg.prediction.f0 == "random" and cfg.prediction.kernel != "analytic":
        raise ConfigError("config: prediction.f0: 'random' (one random network over "
                          "initialisations) cannot be combined with prediction.kernel = "
                          f"{cfg.prediction.kernel!r}, which describes one given network; use "
                          "f0 = 'network' (that network, the default) or 'mean'")
    _validate_minibatch(cfg, given)
    _validate_width(cfg, given)
    _validate_kernel_dtype(cfg)
    if t.loss == "cross_entropy":
        if cfg.data.centre_targets:
            raise ConfigError("config: data.centre_targets: training.loss = 'cross_entropy' "
                              "needs one-hot targets (centred targets are not class "
                              "probabilities)")


def _validate_sequence(topo: TopologyConfig, given: set) -> None:
    """``topology.sequence``: not empty where given, and alone among the topology keys."""
    if "topology.sequence" in given and not topo.sequence:
        raise ConfigError("config: topology.sequence: expected at least one topology name "
                          "(or leave the key out for a static topology), got []")
    if topo.sequence:
        for key in ("topology.name", "topology.gossip", "topology.mixing_file",
                    "topology.adjacency_file"):
            if key in given:
                raise ConfigError(f"config: topology.sequence: a periodic sequence of named "
                                  f"topologies cannot be combined with {key}")


def _validate_mixing_file(topo: TopologyConfig) -> None:
    """``topology.mixing_file`` is used as given: the keys that would change a matrix built
    from a graph (``lazy = true``, a ``rule`` other than the default, ``params``, an
    ``adjacency_file``) are refused with it, all named at once (they were ignored without
    a word); ``name`` is overridden (the report names the file)."""
    if not topo.mixing_file:
        return
    default = TopologyConfig()
    unused = [f"topology.{key}" for key, on in (
        ("lazy", topo.lazy), ("rule", topo.rule != default.rule), ("params", topo.params),
        ("adjacency_file", topo.adjacency_file)) if on]
    if unused:
        raise ConfigError(f"config: topology.mixing_file: the matrix is used as given, so "
                          f"{', '.join(unused)} would not apply; remove "
                          f"{'it' if len(unused) == 1 else 'them'} (or apply it to the file's "
                          "matrix yourself)")


def _validate_minibatch(cfg: Config, given: set) -> None:
    """``[training] batch_size / samples / batch_sampling`` (mini-batch SGD): what they need
    and exclude, the error naming the key."""
    t, topo = cfg.training, cfg.topology
    for key in ("training.samples", "training.batch_sampling"):
        if key in given and not t.batch_size:
            raise ConfigError(f"config: {key}: only used with training.batch_size > 0 "
                              f"(mini-batch SGD), got training.batch_size = {t.batch_size}")
    if t.batch_size:
        if t.continuous:
            raise ConfigError("config: training.batch_size: mini-batch SGD runs discrete "
                              "steps; the gradient flow (training.continuous = true) is for "
                              "full batch")
        if cfg.prediction.rank is not None:
            raise ConfigError("config: training.batch_size: the low-rank path "
                              "(prediction.rank) takes full-batch gradients; remove "
                              "prediction.rank for mini-batch SGD")
        if topo.gossip and "topology.gossip_samples" in given:
            raise ConfigError("config: topology.gossip_samples: with training.batch_size > 0 "
                              "sequence s samples both the gossip and the batches; set "
                              "training.samples only")


def _validate_kernel_dtype(cfg: Config) -> None:
    """``[prediction] kernel_dtype``: float32 / mixed products where the path takes them,
    the error naming the key."""
    p, t = cfg.prediction, cfg.training
    dtype = p.kernel_dtype
    if dtype in ("", "float64"):
        return
    why = ("prediction.rank (the low-rank path runs in float64)" if p.rank is not None else
           None)
    if dtype == "mixed" and why is None:
        why = ("prediction.kernel = 'empirical' or prediction.f0 = 'mean' / 'network' "
               "(mixed puts the sampled random networks' columns in float32; there are none)"
               if p.kernel != "analytic" or p.f0 in ("mean", "network") else
               "training.loss = 'cross_entropy', random gossip or training.batch_size > 0 "
               "(there every sampled network has its own columns; use 'float32')"
               if t.loss != "mse" or cfg.topology.gossip or t.batch_size else None)
    if why:
        raise ConfigError(f"config: prediction.kernel_dtype: {dtype!r} cannot be combined with "
                          f"{why}; use 'float64' (or remove prediction.kernel_dtype)")


def _validate_width(cfg: Config, given: set) -> None:
    """``[prediction] width / width_samples / width_tol / width_metric`` (the finite-width
    band, :mod:`ntkdyn.finite_width`): what they need, the error naming the key."""
    p, topo = cfg.prediction, cfg.topology
    if p.width_samples < 2:
        raise ConfigError(f"config: prediction.width_samples: expected an integer >= 2 "
                          f"(empirical kernels per band), got {p.width_samples!r}")
    if "prediction.width_samples" in given and not (p.width or p.width_tol):
        raise ConfigError("config: prediction.width_samples: only used with prediction.width "
                          "> 0 or prediction.width_tol > 0")
    if "prediction.width_metric" in given and not p.width_tol:
        raise ConfigError("config: prediction.width_metric: only used with "
                          "prediction.width_tol > 0")
    for key, on in (("prediction.width", p.width), ("prediction.width_tol", p.width_tol)):
        if not on:
            continue
        why = ("prediction.kernel = 'empirical' (the band is over width-n networks around the "
               "analytic kernel; the empirical kernel already is one network's)"
               if p.kernel != "analytic" else
               "prediction.f0 = 'network' (one network, not a band over networks)"
               if p.f0 == "network" else
               "prediction.rank (the band runs on the exact path)"
               if p.rank is not None else
               "random gossip (topology.gossip)" if topo.gossip else None)
        if why:
            raise ConfigError(f"config: {key}: the finite-width band cannot be combined with "
                              f"{why}; remove {key}")


def applicable(cfg: Config, command: str = "predict") -> dict:
    """``cfg.to_dict()`` without the settings that play no part in this run.

    Dropped: keys of another algorithm or gossip mode (:data:`_ONLY_WITH`, e.g. no
    ``local_steps`` for DGD, no ``gossip_p`` for a static graph), synthetic-only or
    file-only data keys for other sources, the partition key of another scheme, the
    topology keys a ``sequence`` or ``mixing_file`` overrides, empty optional values,
    ``prediction.target_loss`` outside ``check`` and ``[validation]`` outside ``validate``.
    """
    out = cfg.to_dict()
    d, p, topo = out["data"], out["partition"], out["topology"]
    values = {"training.algorithm": cfg.training.algorithm, "topology.gossip": cfg.topology.gossip,
              "prediction.rank": cfg.prediction.rank,
              "training.loss": cfg.training.loss}
    for key, (owner, allowed) in _ONLY_WITH.items():
        if values[owner] not in allowed:
            section, name = key.split(".")
            out[section].pop(name)
    if cfg.data.source != "synthetic":
        d.pop("dim")
        d.pop("separation")
    if cfg.data.source not in ("mnist", "fashion_mnist", "cifar10"):
        d.pop("path")
    if cfg.partition.scheme != "dirichlet":
        p.pop("alpha")
    if cfg.partition.scheme != "shards":
        p.pop("shards_per_agent")
    if cfg.topology.sequence:
        drop = ("name", "adjacency_file", "mixing_file", "gossip")
    elif cfg.topology.mixing_file:
        drop = ("name", "adjacency_file", "params", "rule", "lazy", "sequence")
    else:
        drop = ("mixing_file", "sequence") + (() if cfg.topology.name == "file" else
                                              ("adjacency_file",))
    for key in drop + tuple(k for k in ("params", "gossip") if not topo.get(k)):
        topo.pop(key, None)
    if cfg.prediction.rank is None:
        out["prediction"].pop("rank")
    if not cfg.prediction.f0:
        out["prediction"].pop("f0")
    if command not in ("predict", "check"):
        out["prediction"].pop("samples")
    if not cfg.prediction.width:
        out["prediction"].pop("width")
    if command != "check" or not cfg.prediction.width_tol:
        out["prediction"].pop("width_tol")
        out["prediction"].pop("width_metric")
    if not (cfg.prediction.width or "width_tol" in out["prediction"]) or \
            command not in ("predict", "check"):
        out["prediction"].pop("width_samples")
    if command != "check":
        out["prediction"].pop("target_loss")
    if not cfg.training.batch_size:
        out["training"].pop("samples")
        out["training"].pop("batch_sampling")
    if command != "validate":
        out.pop("validation")
    else:
        out["validation"].pop("batch_size")  # superseded by training.batch_size
    return out


def config_from_dict(raw: dict, base_dir: str | Path | None = None) -> Config:
    """Build and validate a :class:`Config` from a (TOML-like) dict.

    Relative file paths are resolved against ``base_dir`` (the config's folder).
    """
    cfg = _build(Config, raw, "")
    _validate(cfg)
    _check_horizon(cfg.training)
    if cfg.prediction.f0 == "zero":  # the old name, as nd.predict takes it: one name below
        cfg = dataclasses.replace(cfg, prediction=dataclasses.replace(cfg.prediction,
                                                                      f0="mean"))
    _validate_combinations(cfg, raw)
    if base_dir is not None:
        base = Path(base_dir)

        def resolve(p: str) -> str:
            return str(base / p) if p and not Path(p).is_absolute() else p

        cfg = dataclasses.replace(
            cfg,
            data=dataclasses.replace(cfg.data, path=resolve(cfg.data.path)),
            topology=dataclasses.replace(
                cfg.topology, adjacency_file=resolve(cfg.topology.adjacency_file),
                mixing_file=resolve(cfg.topology.mixing_file)))
    return cfg


def load_config(path: str | Path) -> Config:
    """Read a TOML configuration file (see ``examples/default.toml``)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config: {path} is a directory; expected a TOML file (e.g. "
                          "examples/default.toml)")
    if not path.is_file():
        raise ConfigError(f"config: file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config: {path} is not a TOML text file (not UTF-8: byte "
                          f"0x{exc.object[exc.start]:02x} at offset {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror or exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path} is not valid TOML: {exc}") from exc
    return config_from_dict(raw, base_dir=path.parent)

"""Turn a :class:`~ntkdyn.config.schema.Config` into data, partition, graph, mixing and model."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from ntkdyn import algorithms, graphs
from ntkdyn import data as data_mod
from ntkdyn.algorithms import Algorithm
from ntkdyn.config.schema import ALGORITHM_OPTIONS, Config, ConfigError
from ntkdyn.graphs import sequences as gossip
from ntkdyn.models import MLP

#: the full ``(N K) x (N K)`` empirical kernel (exact for the linearised network) is used
#: when it takes at most this many bytes in float64 (``ntkdyn validate``'s rule) ...
FULL_KERNEL_MAX_BYTES = 256 * 2**20
#: ... and, for ``ntkdyn predict`` and ``ntkdyn check``, its step operator has at most
#: this many dimensions (``Q N K``: the stability analysis and the dense fixed point stay
#: affordable); otherwise the traced kernel ``Theta_s (x) I_K``, and the outputs say so
FULL_CHECK_MAX_DIM = 6400


@dataclass(frozen=True)
class Experiment:
    """Everything a configuration describes, built and checked.

    ``mixing`` is a ``(Q, Q)`` matrix, or a time-varying / random sequence
    (:mod:`ntkdyn.graphs.sequences`) when ``[topology]`` has ``sequence`` or ``gossip``.
    """

    config: Config
    parts: data_mod.Partition
    graph: nx.Graph | None
    mixing: np.ndarray | gossip.MixingProcess
    arch: MLP

    @property
    def algorithm(self) -> Algorithm:
        """The configured algorithm with its options (:func:`algorithm_of`)."""
        return algorithm_of(self.config)

    @property
    def loss(self) -> dict:
        """``{"loss": ..., "logit_scale": ...}`` for the prediction and training
        (:func:`loss_of`)."""
        return loss_of(self.config)

    @property
    def samples(self) -> int | None:
        """Sampled sequences (mini-batch SGD or random gossip) of a prediction (else
        ``None``)."""
        return samples_of(self.config)

    @property
    def minibatch(self) -> dict:
        """``{"batch_size": B, "batch_sampling": ...}`` (mini-batch SGD) or ``{}`` (full
        batch): keywords of :func:`ntkdyn.predict` and :func:`ntkdyn.train.train`."""
        t = self.config.training
        return {"batch_size": t.batch_size, "batch_sampling": t.batch_sampling} \
            if t.batch_size else {}

    @property
    def full_empirical_kernel(self) -> bool:
        """Whether ``ntkdyn predict`` and ``ntkdyn check`` use the full empirical kernel:
        ``prediction.kernel = "empirical"``, at most :data:`FULL_KERNEL_MAX_BYTES` and
        ``Q N K <=`` :data:`FULL_CHECK_MAX_DIM` (the same layout in both, so their lr* and
        verdicts agree; the exact path only: the low-rank path has its own factor)."""
        if self.config.prediction.kernel != "empirical" or \
                self.config.prediction.rank is not None:
            return False
        n, k = self.parts.dataset.y_train.shape
        return ((n * k) ** 2 * 8 <= FULL_KERNEL_MAX_BYTES
                and self.parts.num_agents * n * k <= FULL_CHECK_MAX_DIM)

    @property
    def low_rank(self) -> dict:
        """Keywords of :func:`ntkdyn.dynamics.run` for the low-rank path (:func:`low_rank_of`)."""
        return low_rank_of(self.config)

    def with_topology(self, name: str) -> Experiment:
        """The same experiment on another named topology (same size and mixing rule)."""
        import dataclasses

        topo = dataclasses.replace(self.config.topology, name=name, adjacency_file="",
                                   mixing_file="", params={}, sequence=[])
        cfg = dataclasses.replace(self.config, topology=topo)
        graph, w = build_mixing(cfg)
        return Experiment(cfg, self.parts, graph, w, self.arch)


#: leading words of a data-layer message -> the configuration key it is about
_DATA_KEYS = ("n_train", "n_test", "classes", "dim", "separation")
_PARTITION_KEYS = (("agents", "agents"), ("cannot give", "agents"), ("alpha", "alpha"),
                   ("shards_per_agent", "shards_per_agent"), ("scheme 'shards'", "agents"),
                   ("scheme 'dirichlet'", "alpha"))


def _data_error(cfg: Config, exc: Exception) -> ConfigError:
    """A data-layer error with the configuration key path it is about."""
    msg = str(exc)
    key = next((k for k in _DATA_KEYS if msg.startswith(k)), None)
    if key is None:
        key = "path" if cfg.data.source in ("mnist", "fashion_mnist", "cifar10") else "source"
    return ConfigError(f"config: data.{key}: {msg}")


def build_data(cfg: Config) -> data_mod.Dataset:
    """The configured data set; an error names its key (``config: data.path: ...``)."""
    try:
        return _load_data(cfg)
    except ConfigError:
        raise
    except (ValueError, OSError) as exc:
        raise _data_error(cfg, exc) from exc


def _load_data(cfg: Config) -> data_mod.Dataset:
    d = cfg.data
    common = dict(standardise=d.standardise, centre_targets=d.centre_targets)
    if d.source == "digits":
        return data_mod.digits(classes=d.classes, n_train=d.n_train, n_test=d.n_test,
                               seed=cfg.seed, **common)
    if d.source == "synthetic":
        return data_mod.synthetic(n_train=d.n_train, n_test=d.n_test, dim=d.dim,
                                  classes=len(d.classes), separation=d.separation, seed=cfg.seed,
                                  **common)
    loader = {"mnist": data_mod.load_mnist, "fashion_mnist": data_mod.load_fashion_mnist,
              "cifar10": data_mod.load_cifar10}[d.source]
    return loader(d.path, n_train=d.n_train, n_test=d.n_test, classes=d.classes, seed=cfg.seed,
                  **common)


def algorithm_of(cfg: Config) -> Algorithm:
    """``training.algorithm`` with its options (:data:`~ntkdyn.config.schema.ALGORITHM_OPTIONS`:
    ``local_steps``, ``consensus_steps``, ``momentum``) as an
    :class:`~ntkdyn.algorithms.Algorithm`: where a configured name becomes an object."""
    t = cfg.training
    options = {arg: getattr(t, key.split(".")[1])
               for key, (name, arg) in ALGORITHM_OPTIONS.items() if name == t.algorithm}
    return algorithms.get_algorithm(t.algorithm, **options)


def low_rank_of(cfg: Config) -> dict:
    """``[prediction] rank`` / ``tol`` as keywords of :func:`ntkdyn.dynamics.run`: ``{}`` for the
    exact path (no rank), ``{"rank": r}`` or ``{"rank": "auto", "tol": tol}``."""
    p = cfg.prediction
    if p.rank is None:
        return {}
    return {"rank": p.rank, "tol": p.tol} if p.rank == "auto" else {"rank": p.rank}


def loss_of(cfg: Config) -> dict:
    """``training.loss`` and, for cross-entropy, ``training.logit_scale``, as the keyword
    arguments of :func:`ntkdyn.dynamics.run`, :func:`ntkdyn.prediction.build_problem` and
    :func:`ntkdyn.training.trainer.train` (``{"loss": "mse"}`` for the squared loss)."""
    t = cfg.training
    if t.loss == "cross_entropy":
        return {"loss": t.loss, "logit_scale": t.logit_scale}
    return {"loss": t.loss}


def samples_of(cfg: Config) -> int | None:
    """``training.samples`` for mini-batch SGD (sequence ``s`` samples the batches and, with
    random gossip, the mixing), else ``topology.gossip_samples`` for random gossip, else
    ``None``."""
    if cfg.training.batch_size:
        return cfg.training.samples
    return cfg.topology.gossip_samples if cfg.topology.gossip else None


def build_mixing(cfg: Config) -> tuple[nx.Graph | None, np.ndarray | gossip.MixingProcess]:
    """The graph and its mixing matrix, or a periodic / random mixing sequence."""
    t = cfg.topology
    q = cfg.partition.agents
    if t.sequence:
        from ntkdyn.graphs.topology import TOPOLOGY_PARAMS

        # topology.params go to each topology of the sequence that takes them
        unused = set(t.params) - {p for name in t.sequence for p in TOPOLOGY_PARAMS[name]}
        if unused:
            raise ConfigError(f"config: topology.params: {', '.join(map(repr, sorted(unused)))}"
                              f" is a parameter of no topology in topology.sequence "
                              f"{list(t.sequence)}")
        mats = []
        for i, name in enumerate(t.sequence):
            own = {k: v for k, v in t.params.items() if k in TOPOLOGY_PARAMS[name]}
            try:
                g = graphs.topology(name, q, seed=cfg.seed, **own)
            except ValueError as exc:
                raise ConfigError(f"config: topology.sequence[{i}]: {exc}") from exc
            mats.append(graphs.mixing(g, t.rule, lazy=t.lazy))
        try:
            return None, graphs.periodic(mats, names=tuple(t.sequence))
        except ValueError as exc:
            raise ConfigError(f"config: topology.sequence: {exc}") from exc
    graph, w = _static_mixing(cfg)
    if t.gossip:
        if graph is None:
            raise ConfigError("config: topology.gossip: needs a graph, not a mixing file")
        if t.gossip == "edges":
            return graph, graphs.random_edges(graph, t.gossip_p, seed=cfg.seed)
        return graph, graphs.one_random_edge(graph, seed=cfg.seed)
    return graph, w


def _static_mixing(cfg: Config) -> tuple[nx.Graph | None, np.ndarray]:
    t = cfg.topology
    q = cfg.partition.agents
    if t.mixing_file:
        try:
            w = graphs.load_mixing(t.mixing_file)
        except ValueError as exc:
            raise ConfigError(f"config: topology.mixing_file: {exc}") from exc
        if w.shape[0] != q:
            raise ConfigError(f"config: topology.mixing_file: a {w.shape[0]}x{w.shape[0]} "
                              f"matrix for partition.agents = {q}")
        return None, w
    if t.name == "file":
        try:
            graph = graphs.load_adjacency(t.adjacency_file)
        except ValueError as exc:
            raise ConfigError(f"config: topology.adjacency_file: {exc}") from exc
        if graph.number_of_nodes() != q:
            raise ConfigError(f"config: topology.adjacency_file: {graph.number_of_nodes()} "
                              f"nodes for partition.agents = {q}")
    else:
        try:
            graph = graphs.topology(t.name, q, seed=cfg.seed, **t.params)
        except ValueError as exc:
            raise ConfigError(f"config: {_topology_key(t, exc)}: {exc}") from exc
    w = graphs.mixing(graph, t.rule, lazy=t.lazy)
    try:
        graphs.check_mixing(w, name="topology")
    except ValueError as exc:  # a disconnected graph: name the key that gave it
        key = "topology.adjacency_file" if t.name == "file" else "topology"
        where = f"{t.adjacency_file}: " if t.name == "file" else ""
        raise ConfigError(f"config: {key}: {where}{exc}") from exc
    return graph, w


def _topology_key(t, exc: ValueError) -> str:
    """The key a failed ``graphs.topology(name, Q, **params)`` names: ``topology.params``
    for a parameter it refused (unknown or out of range), else ``topology``."""
    return "topology.params" if t.params and "parameter" in str(exc) else "topology"


def build_arch(cfg: Config, num_classes: int, width: int | None = None) -> MLP:
    a = cfg.architecture
    return MLP(hidden=(width or a.width,) * a.depth, out=num_classes, activation=a.activation,
               W_std=a.W_std, b_std=a.b_std)


def from_config(cfg: Config) -> Experiment:
    """Build (and validate) the data, partition, graph, mixing matrix and model."""
    dataset = build_data(cfg)
    p = cfg.partition
    try:
        parts = data_mod.partition(dataset, p.agents, p.scheme, alpha=p.alpha,
                                   shards_per_agent=p.shards_per_agent, seed=cfg.seed)
    except ValueError as exc:
        key = next((k for lead, k in _PARTITION_KEYS if str(exc).startswith(lead)), "scheme")
        raise ConfigError(f"config: partition.{key}: {exc}") from exc
    if cfg.training.batch_size:
        from ntkdyn.minibatch import check_batch_size

        try:
            check_batch_size(cfg.training.batch_size, parts.counts)
        except ValueError as exc:
            raise ConfigError(f"config: training.{exc}") from exc
    graph, w = build_mixing(cfg)
    return Experiment(cfg, parts, graph, w, build_arch(cfg, dataset.num_classes))

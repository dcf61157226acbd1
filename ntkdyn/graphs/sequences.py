r"""Time-varying and random mixing: sequences of mixing matrices.

A :class:`MixingProcess` gives one mixing matrix ``W_e`` per communication
event ``e = 0, 1, 2, ...`` (step ``k`` of an algorithm with ``m`` mixes per
step uses events ``k m, ..., k m + m - 1``; :mod:`ntkdyn.algorithms`).

* :class:`Periodic` -- a fixed cycle ``W_0, ..., W_{P-1}`` (``W_e = W_{e mod P}``);
  each matrix may be disconnected as long as their union is connected.
* :class:`RandomEdges` -- each edge of a graph ``G`` is active with probability
  ``p`` at each event, independently; ``W_e`` has Metropolis weights on the active
  subgraph (``1 / (1 + max(d_i, d_j))`` on active edges, degrees counted in the
  active subgraph; the rest on the diagonal).  ``p = 1`` is the static graph.
* :class:`OneRandomEdge` -- one edge ``(i, j)`` of ``G``, uniformly at random,
  averages its two endpoints: ``W_e = I - (e_i - e_j)(e_i - e_j)^T / 2``
  (randomised pairwise gossip, Boyd et al. 2006).

Random processes are reproducible: sequence (sample) ``s`` draws event ``e``
from ``fold_in(fold_in(PRNGKey(seed), s), e)``, in the solver and in the
training harness alike (:meth:`MixingProcess.matrix` gives the same matrices
in numpy), so a prediction of sequence ``s`` and a training on sequence ``s``
see the same graphs.

Expected matrix.  The events are independent of the state they act on, so
the *mean* state of any of the schedules (each affine in the state and
linear in each event's ``W``, no event used twice in one product) follows the
same recursion with ``E[W]`` (:meth:`MixingProcess.expected`, exact:
binomial sums over the active degrees for :class:`RandomEdges`,
``I - L / (2 |E|)`` for :class:`OneRandomEdge`).  Outputs are linear in the
state, so their mean is exact too; losses and distances are not (mean of the
loss = loss of the mean output + its variance), which is why the prediction
for random gossip is a distribution over sampled sequences
(:func:`ntkdyn.dynamics.run.run_problem` with ``samples``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from ntkdyn._utils.checks import check_finite, check_nonnegative_int
from ntkdyn.graphs.topology import as_graph, check_mixing, mixing


class MixingProcess:
    """A sequence of mixing matrices, one per communication event (see module doc).

    Subclasses define ``num_agents``, ``random``, ``period`` (events; ``None`` for
    random processes), :meth:`device_arrays`, the jittable ``sampler(arrays, event,
    key) -> (Q, Q)`` (a module-level function, used as a static argument) and
    :meth:`expected`.
    """

    num_agents: int
    random: bool = False
    period: int | None = None
    seed: int = 0

    def device_arrays(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def sampler(self):  # pragma: no cover - interface
        raise NotImplementedError

    def expected(self) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def key(self, sample: int = 0):
        """PRNG key of sequence ``sample``."""
        return jax.random.fold_in(jax.random.PRNGKey(self.seed), sample)

    def matrix(self, event: int, sample: int = 0) -> np.ndarray:
        """``W_event`` of sequence ``sample`` (numpy; the matrices the solver uses)."""
        check_nonnegative_int("event", event)  # 1.5 was truncated, -1 an OverflowError
        check_nonnegative_int("sample", sample)
        arrays = self.device_arrays()
        return np.asarray(self.sampler(arrays, jnp.asarray(event), self.key(sample)))

    def matrices(self, events, sample: int = 0) -> np.ndarray:
        """``(len(events), Q, Q)``: :meth:`matrix` for several events."""
        arrays = self.device_arrays()
        key = self.key(sample)
        fn = jax.jit(jax.vmap(lambda e: self.sampler(arrays, e, key)))
        return np.asarray(fn(jnp.asarray(np.asarray(events))))


# --------------------------------------------------------------------------- periodic
def _periodic_sampler(arrays, event, key):
    mats = arrays["matrices"]
    return mats[event % mats.shape[0]]


@dataclass(frozen=True, eq=False)
class Periodic(MixingProcess):
    """``W_e = cycle[e mod P]``: a deterministic cycle of mixing matrices.

    ``cycle`` is the ``(P, Q, Q)`` stack of one period (the field was called ``matrices``
    until issue 13, which hid the inherited :meth:`MixingProcess.matrices`;
    ``matrices(events)`` is now that method for every process).
    """

    cycle: np.ndarray = field(repr=False)
    names: tuple = ()

    random = False

    @property
    def num_agents(self) -> int:
        return int(self.cycle.shape[1])

    @property
    def period(self) -> int:
        return int(self.cycle.shape[0])

    def device_arrays(self) -> dict:
        return {"matrices": jnp.asarray(self.cycle)}

    @property
    def sampler(self):
        return _periodic_sampler

    def expected(self) -> np.ndarray:
        """The average over one period (connected when the union of the graphs is)."""
        return self.cycle.mean(axis=0)

    def describe(self) -> dict:
        return {"kind": "periodic", "period": self.period, "names": list(self.names)}


def periodic(matrices, names=()) -> Periodic:
    """A periodic sequence ``W_0, W_1, ..., W_{P-1}, W_0, ...`` of mixing matrices.

    Each matrix must be row stochastic with non-negative entries and all of the
    same size; their union must be connected (each alone need not be).
    """
    mats = [np.asarray(m, dtype=np.float64) for m in matrices]
    if not mats:
        raise ValueError("matrices: expected at least one mixing matrix")
    q = mats[0].shape
    for i, m in enumerate(mats):
        if m.shape != q:
            raise ValueError(f"matrices[{i}]: expected shape {q} like matrices[0], got {m.shape}")
    stack = np.stack(mats)
    for i, m in enumerate(stack):
        _check_stochastic(m, f"matrices[{i}]")
    check_mixing(stack.mean(axis=0), name="matrices (union over the period)")
    names = tuple(names)
    if names and len(names) != len(stack):
        raise ValueError(f"names: expected one name per matrix ({len(stack)}), got "
                         f"{len(names)}: {list(names)!r}")
    return Periodic(stack, names)


def _check_stochastic(m: np.ndarray, name: str) -> None:
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"{name}: expected a square matrix, got shape {m.shape}")
    check_finite(name, m)
    if np.any(m < -1e-10):
        raise ValueError(f"{name}: expected non-negative entries, min {m.min():.3g}")
    worst = float(np.max(np.abs(m.sum(axis=1) - 1.0)))
    if worst > 1e-10:
        raise ValueError(f"{name}: expected a row-stochastic matrix, worst row sum off by "
                         f"{worst:.3g}")


# --------------------------------------------------------------------------- random
def _edges(graph) -> tuple[int, np.ndarray]:
    g = as_graph(graph)
    edges = np.array(sorted((min(a, b), max(a, b)) for a, b in g.edges()), dtype=np.int64)
    if len(edges) == 0:
        raise ValueError("graph: expected at least one edge for gossip")
    check_mixing(mixing(g), name="graph")  # connected
    return g.number_of_nodes(), edges.reshape(-1, 2)


def _random_edges_sampler(arrays, event, key):
    i, j, eye = arrays["i"], arrays["j"], arrays["eye"]
    u = jax.random.uniform(jax.random.fold_in(key, event), i.shape, dtype=eye.dtype)
    on = (u < arrays["p"]).astype(eye.dtype)
    adj = jnp.zeros_like(eye).at[i, j].add(on).at[j, i].add(on)
    deg = adj.sum(axis=1)
    w = adj / (1.0 + jnp.maximum(deg[:, None], deg[None, :]))
    return w + jnp.diag(1.0 - w.sum(axis=1))


@dataclass(frozen=True, eq=False)
class _EdgeGossip(MixingProcess):
    """Random gossip on the edges ``(i, j)`` of a fixed connected graph of ``q`` agents."""

    q: int
    edges: np.ndarray = field(repr=False)

    random = True
    period = None

    @property
    def num_agents(self) -> int:
        return self.q

    def device_arrays(self) -> dict:
        return {"i": jnp.asarray(self.edges[:, 0]), "j": jnp.asarray(self.edges[:, 1]),
                "eye": jnp.eye(self.q)}


def _binom_pmf(n: int, p: float) -> np.ndarray:
    """``P(B = m)`` for ``m = 0..n``, ``B ~ Bin(n, p)``: ``C(n, m) p^m (1 - p)^(n - m)``
    (exact binomial coefficients; degrees are small, so no scipy.stats import)."""
    m = np.arange(n + 1)
    coef = np.array([math.comb(int(n), int(k)) for k in m], dtype=np.float64)
    return coef * p ** m * (1.0 - p) ** (n - m)


@dataclass(frozen=True, eq=False)
class RandomEdges(_EdgeGossip):
    """Each edge active with probability ``p`` per event; Metropolis weights on the
    active subgraph."""

    p: float
    seed: int = 0

    def device_arrays(self) -> dict:
        return {**super().device_arrays(), "p": jnp.asarray(self.p)}

    @property
    def sampler(self):
        return _random_edges_sampler

    def expected(self) -> np.ndarray:
        """Exact ``E[W]``: for an edge ``(i, j)``, ``p E[1 / (1 + max(1 + B_i, 1 + B_j))]``
        with independent ``B_i ~ Bin(deg_i - 1, p)``, ``B_j ~ Bin(deg_j - 1, p)`` (the
        other edges at ``i`` and at ``j`` are distinct)."""
        deg = np.bincount(self.edges.ravel(), minlength=self.q)
        w = np.zeros((self.q, self.q))
        for a, b in self.edges:
            ma, mb = np.arange(deg[a]), np.arange(deg[b])
            pa, pb = _binom_pmf(deg[a] - 1, self.p), _binom_pmf(deg[b] - 1, self.p)
            inv = 1.0 / (2.0 + np.maximum(ma[:, None], mb[None, :]))
            w[a, b] = w[b, a] = self.p * float(pa @ inv @ pb)
        np.fill_diagonal(w, 1.0 - w.sum(axis=1))
        return w

    def describe(self) -> dict:
        return {"kind": "random_edges", "p": self.p, "seed": self.seed,
                "edges": int(len(self.edges))}


def _one_edge_sampler(arrays, event, key):
    i, j, eye = arrays["i"], arrays["j"], arrays["eye"]
    pick = jax.random.randint(jax.random.fold_in(key, event), (), 0, i.shape[0])
    d = eye[i[pick]] - eye[j[pick]]
    return eye - 0.5 * jnp.outer(d, d)


@dataclass(frozen=True, eq=False)
class OneRandomEdge(_EdgeGossip):
    """One uniformly random edge per event averages its endpoints (weight 1/2)."""

    seed: int = 0

    @property
    def sampler(self):
        return _one_edge_sampler

    def expected(self) -> np.ndarray:
        """``E[W] = I - L / (2 |E|)``, ``L`` the graph Laplacian."""
        lap = np.zeros((self.q, self.q))
        for a, b in self.edges:
            lap[a, a] += 1
            lap[b, b] += 1
            lap[a, b] -= 1
            lap[b, a] -= 1
        return np.eye(self.q) - lap / (2.0 * len(self.edges))

    def describe(self) -> dict:
        return {"kind": "one_edge", "seed": self.seed, "edges": int(len(self.edges))}


def random_edges(graph, p: float, seed: int = 0) -> RandomEdges:
    """Random gossip: each edge of ``graph`` active with probability ``p`` per event,
    Metropolis weights on the active subgraph (``p = 1``: the static Metropolis matrix)."""
    try:
        pf = float("nan") if isinstance(p, bool | np.bool_) else float(p)
    except (TypeError, ValueError):
        pf = float("nan")
    if not 0.0 < pf <= 1.0:
        raise ValueError(f"p: expected a probability in (0, 1], got {p!r}")
    q, edges = _edges(graph)
    return RandomEdges(q, edges, pf, check_nonnegative_int("seed", seed))


def one_random_edge(graph, seed: int = 0) -> OneRandomEdge:
    """Randomised pairwise gossip: one uniformly random edge per event, weights 1/2."""
    q, edges = _edges(graph)
    return OneRandomEdge(q, edges, check_nonnegative_int("seed", seed))


@dataclass(frozen=True)
class SupportedSampler:
    """A mixing process's sampler (static under ``jit``) with the support its matrices share:
    row ``p`` of every draw is zero outside ``neighbours[p]``, the nonzeros of ``E[W]`` and
    the diagonal (the draws are non-negative, so an entry that is ever positive is positive
    in their mean).  The combines (:func:`ntkdyn.dynamics.solver._mix`,
    :func:`ntkdyn.lowrank.gossip.mix_groups`) then sum over the ``D`` neighbours only."""

    draw: Callable
    neighbours: tuple[tuple[int, ...], ...]

    def __call__(self, arrays, event, key):
        return self.draw(arrays, event, key)


def supported_sampler(process: MixingProcess) -> SupportedSampler:
    """``process.sampler`` with the support of its draws (:class:`SupportedSampler`)."""
    support = (np.asarray(process.expected()) != 0) | np.eye(process.num_agents, dtype=bool)
    return SupportedSampler(process.sampler, tuple(tuple(int(i) for i in np.nonzero(row)[0])
                                                   for row in support))


#: The combines sum over the neighbours where the widest row has ``D <= NEIGHBOUR_SUM_MAX``
#: entries and ``D < Q`` (a complete graph keeps its own form).
NEIGHBOUR_SUM_MAX = 16


def sums_over_neighbours(neighbours: tuple[tuple[int, ...], ...] | None, q: int) -> bool:
    """Whether a combine over ``q`` agents takes :func:`mix_over_neighbours`: a support is
    known (:class:`SupportedSampler`) and its widest row has ``D < min(Q, 17)`` entries."""
    return neighbours is not None and max(map(len, neighbours)) < min(
        q, NEIGHBOUR_SUM_MAX + 1)


def mix_over_neighbours(w, xg, neighbours):
    """``sum_p W[g]_qp x_p`` for every group ``g`` of the state ``xg`` ``(Q, R, G, C)`` over
    each row's ``D`` neighbours (padded with the row's own slot at weight 0): ``D`` reads of
    the agents' state where the full sum makes ``Q`` (8 agents on a ring, 193 groups:
    27 -> 17 ms per combine; 32 on a ring 24 -> 4 ms; 100 on an Erdos-Renyi graph with
    D = 12, 28 -> 10 ms against the einsum)."""
    q, d = len(neighbours), max(len(n) for n in neighbours)
    nbr = np.array([list(n) + [i] * (d - len(n)) for i, n in enumerate(neighbours)])
    valid = np.array([[k < len(n) for k in range(d)] for n in neighbours])
    wd = w[:, np.arange(q)[:, None], nbr] * valid  # (G, Q, D)
    return sum(jnp.swapaxes(wd[:, :, k], 0, 1)[:, None, :, None].astype(xg.dtype)
               * xg[nbr[:, k]] for k in range(d))


def process_arrays(process: MixingProcess, samples: int | None, copies: int = 1,
                   expected_groups: int = 1) -> dict:
    """The device arrays of a sequence that :func:`groups_mixing_at` reads: ``mix_arrays``
    (the process's), ``mix_keys`` (one key per sampled sequence ``0 .. samples - 1``, the
    list repeated ``copies`` times; one key for a periodic sequence) and, for a random
    process, ``mix_expected`` (``E[W]`` ``expected_groups`` times, ``(E, Q, Q)``: groups
    running the exact mean-state recursion)."""
    n = int(samples) if process.random else 1
    out = {"mix_arrays": process.device_arrays(),
           "mix_keys": jnp.stack([process.key(s) for s in range(n)]
                                 * (int(copies) if process.random else 1))}
    if process.random:
        ew = np.asarray(process.expected())
        out["mix_expected"] = jnp.asarray(np.broadcast_to(ew, (int(expected_groups),)
                                                          + ew.shape))
    return out


def groups_mixing_at(data: dict, t, *, sampler: SupportedSampler, mixes_per_step: int):
    """``j -> (G, Q, Q)``: the ``j``-th matrix of the step starting at time ``t`` for every
    column group, event ``e = round(t) * mixes_per_step + j`` drawn with each key of
    ``data["mix_keys"]`` (the sampled sequences), then ``data["mix_expected"]`` if present
    (:func:`process_arrays`).  The function carries the draws' support as ``.neighbours``
    for the combines (:func:`mix_over_neighbours`).  Used by the exact solver and the
    low-rank path alike, so both draw the same matrices."""
    k = jnp.round(t).astype(jnp.int64)
    arrays, keys = data["mix_arrays"], data["mix_keys"]

    def at(j):
        event = k * mixes_per_step + j
        w = jax.vmap(lambda key: sampler(arrays, event, key))(keys)
        if "mix_expected" in data:  # the exact mean-state recursion rides along
            w = jnp.concatenate([w, data["mix_expected"]], axis=0)
        return w

    at.neighbours = getattr(sampler, "neighbours", None)
    return at


def is_process(mixing) -> bool:
    return isinstance(mixing, MixingProcess)


def resolve_mixing(mixing, num_agents: int | None = None,
                   name: str = "mixing") -> tuple[np.ndarray, MixingProcess | None]:
    """The one normalisation of a mixing argument, made at the boundary.

    ``mixing`` is a ``(Q, Q)`` row-stochastic matrix (anything array-like) or a
    :class:`MixingProcess` (periodic or random sequence).  Returns ``(W, process)``:
    ``W`` the checked matrix (for a process its expected matrix ``E[W]``, which the
    mean-state recursion and the stability analysis use) and ``process`` (``None`` for
    a static matrix).  With ``num_agents`` the number of agents must match; every
    failure is a ``ValueError`` naming ``name``.  Inside ntkdyn only the pair is passed
    on: no function below the boundary asks "matrix or process?" again.
    """
    process = mixing if is_process(mixing) else None
    if process is not None:
        if num_agents is not None and process.num_agents != num_agents:
            raise ValueError(f"{name}: a sequence for {process.num_agents} agents, the "
                             f"partition has {num_agents}")
        w = check_mixing(process.expected(), name=f"{name} (expected matrix)")
    else:
        # the size first: a square matrix for other agents would fail the checks for it
        # (check_mixing refuses a matrix that is not square; a process's E[W] is Q x Q)
        shape = np.shape(mixing)
        if (num_agents is not None and len(shape) == 2 and shape[0] == shape[1]
                and shape[0] != num_agents):
            raise ValueError(f"{name}: expected a ({num_agents}, {num_agents}) matrix for "
                             f"{num_agents} agents, got shape {shape}")
        w = check_mixing(mixing, name=name)
    return w, process


def process_metadata(process: MixingProcess | None) -> dict:
    """The entries a trajectory's metadata gets for a mixing sequence (none for a static
    matrix): ``mixing_process`` (its description) and ``mixing_note``, what the recorded
    ``mixing`` matrix then is (the expected matrix of a random sequence, the average over
    the period of a periodic one)."""
    if process is None:
        return {}
    return {"mixing_process": process.describe(),
            "mixing_note": "'mixing' is the expected matrix" if process.random
            else "'mixing' is the average over the period"}


__all__ = ["MixingProcess", "Periodic", "RandomEdges", "OneRandomEdge", "periodic",
           "random_edges", "one_random_edge", "is_process", "process_metadata",
           "resolve_mixing"]

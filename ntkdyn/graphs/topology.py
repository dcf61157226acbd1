r"""Communication topologies and mixing matrices for peer-to-peer learning.

Q agents talk over an undirected graph G = (V, E), V = {0, ..., Q-1}.  Each
round agent i combines its neighbours' parameters with the weights of a mixing
matrix W (Q x Q): theta_i <- sum_j W_ij theta_j, with W_ij > 0 only when i = j
or (i, j) in E.  :func:`mixing` builds W by the Metropolis–Hastings
(W_ij = 1 / (1 + max(d_i, d_j)) on edges, W_ii = 1 - sum_{j != i} W_ij),
max-degree or uniform (W_ij = 1 / (1 + d_i), row stochastic only) rules, and
optionally makes it lazy, (I + W) / 2, so that every eigenvalue is >= 0.

For a connected graph every rule gives a primitive stochastic W: 1 is a simple
eigenvalue and all others have modulus < 1; the spectral gap 1 - |lambda_2|
sets the speed of consensus and lambda_min(W) enters the DGD stability bound
eta * max_q lambda_max(Theta_qq) / N_q < 1 + lambda_min(W).

All matrices are float64 numpy arrays; node i of a graph is row i of W.

The sequences of mixing matrices built on these graphs (periodic, random gossip)
live one layer up in :mod:`ntkdyn.graphs.sequences`; :mod:`ntkdyn.graphs` offers both.
"""

from __future__ import annotations

import io
import math
import operator
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import connected_components

from ntkdyn._utils.checks import check_nonnegative_int

__all__ = [
    "MIXING_RULES", "TOPOLOGIES", "TOPOLOGY_PARAMS", "as_graph", "check_mixing", "eigenvalues",
    "is_doubly_stochastic", "is_symmetric", "lambda_min", "load_adjacency", "load_mixing",
    "mixing", "spectral_gap", "symmetrised", "topology",
]

TOPOLOGIES: tuple[str, ...] = (
    "ring", "path", "star", "complete", "torus", "grid", "hypercube",
    "erdos_renyi", "geometric", "small_world",
)
MIXING_RULES: tuple[str, ...] = ("metropolis", "max_degree", "uniform")

_MAX_DRAWS = 1000  # re-draws of a random graph before giving up on connectivity

# --------------------------------------------------------------------------- topologies


def _most_square_rows(n: int) -> int:
    """Largest divisor of ``n`` that is <= sqrt(n) (so rows <= cols)."""
    return max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)


def _lattice(name: str, n: int, params: dict[str, Any], periodic: bool) -> nx.Graph:
    smallest = 2 if periodic else 1
    if "rows" in params:
        rows = _int_param(name, "rows", params["rows"])
        if rows < smallest or n % rows or n // rows < smallest:
            raise ValueError(
                f"topology {name!r}: parameter 'rows' must divide n={n} into rows x cols with "
                f"rows, cols >= {smallest}; got rows={rows}")
    else:
        rows = _most_square_rows(n)
        if rows < smallest:
            raise ValueError(
                f"topology {name!r} needs n = rows * cols with rows, cols >= 2; "
                f"n={n} does not factor")
    # networkx adds no wrap-around edge along a side of length 2 (it would
    # duplicate the grid edge), so a 2 x c torus has degree 3, not 4.
    return nx.grid_2d_graph(rows, n // rows, periodic=periodic)


def _connected_draw(name: str, n: int, seed: int, hint: str,
                    draw: Callable[[int], nx.Graph]) -> nx.Graph:
    """Draw with seeds seed, seed+1, ... until the graph is connected."""
    for t in range(_MAX_DRAWS):
        g = draw(seed + t)
        if nx.is_connected(g):
            return g
    raise ValueError(f"topology {name!r}: no connected graph on n={n} nodes in {_MAX_DRAWS} "
                     f"draws (seeds {seed}..{seed + _MAX_DRAWS - 1}); {hint}")


def _int_param(name: str, param: str, value: Any) -> int:
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise ValueError(f"topology {name!r}: parameter {param!r} must be an integer; got {value!r}")


def _real_param(name: str, param: str, value: Any, lo: float, hi: float, lo_open: bool) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not ((lo < v if lo_open else lo <= v) and v <= hi):
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise ValueError(
            f"topology {name!r}: parameter {param!r} must lie in {interval}; got {value!r}")
    return v


#: name -> the parameters :func:`topology` accepts for it
TOPOLOGY_PARAMS: dict[str, tuple[str, ...]] = {
    "ring": (), "path": (), "star": (), "complete": (), "hypercube": (),
    "torus": ("rows",), "grid": ("rows",), "erdos_renyi": ("p",),
    "geometric": ("radius",), "small_world": ("k", "p"),
}
_PARAMS = TOPOLOGY_PARAMS


def topology(name: str, n: int, *, seed: int = 0, **params: Any) -> nx.Graph:
    """Build a named communication graph on ``n`` nodes labelled 0..n-1.

    Parameters
    ----------
    name : str
        One of :data:`TOPOLOGIES`:

        - ``"ring"`` (cycle; n = 2 is a single edge), ``"path"``, ``"star"``
          (node 0 is the hub), ``"complete"``: any n >= 1 (n = 1 is one node).
        - ``"torus"``: rows x cols periodic grid, degree 4 when rows, cols >= 3
          (a side of length 2 gets no wrap-around edge, so degree 3 along it).
          ``rows`` defaults to the most square factorisation of n; n must
          factor with rows, cols >= 2.
        - ``"grid"``: rows x cols non-periodic grid, same ``rows`` default
          (a prime n gives a 1 x n path).
        - ``"hypercube"``: n = 2^d nodes, node i adjacent to i XOR 2^b.
        - ``"erdos_renyi"``: G(n, p), each edge present with probability ``p``
          (default min(1, 2 ln(n) / n)).
        - ``"geometric"``: n uniform points in the unit square, joined when
          closer than ``radius`` (default sqrt(2 ln(n) / (pi n))); node
          attribute ``"pos"`` holds the point.
        - ``"small_world"``: Watts–Strogatz ring lattice, each node joined to
          its ``k`` nearest neighbours (default 4; even, k < n), each edge rewired
          with probability ``p`` (default 0.1).

        Random graphs are conditioned on connectivity: they are drawn with
        seeds ``seed``, ``seed + 1``, ... until connected (at most 1000 draws,
        else ``ValueError``).
    n : int
        Number of nodes (agents), >= 1.
    seed : int
        Seed of the random topologies; ignored by the deterministic ones.
    **params
        Topology parameters listed above.

    Returns
    -------
    networkx.Graph
        Undirected, no self loops, nodes 0..n-1 (lattice and hypercube nodes in
        row-major / binary order); ``graph.graph["name"]`` describes it.

    Examples
    --------
    >>> topology("torus", 12).number_of_edges()      # 3 x 4 torus
    24
    """
    if name not in TOPOLOGIES:
        raise ValueError(f"unknown topology {name!r}; expected one of {', '.join(TOPOLOGIES)}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"topology {name!r}: n must be an integer >= 1; got {n!r}")
    n = int(n)
    unknown = sorted(set(params) - set(_PARAMS[name]))
    if unknown:
        accepted = ", ".join(_PARAMS[name]) or "none"
        raise ValueError(
            f"topology {name!r} got unknown parameter(s) {', '.join(map(repr, unknown))}; "
            f"it accepts: {accepted}")
    seed = check_nonnegative_int("seed", seed)  # None / 1.7 were a TypeError / truncated

    if name in ("ring", "path", "star", "complete") or n == 1 and name in ("grid", "hypercube"):
        g = {"ring": nx.cycle_graph, "path": nx.path_graph, "star": lambda m: nx.star_graph(m - 1),
             "complete": nx.complete_graph, "grid": nx.empty_graph,
             "hypercube": nx.empty_graph}[name](n)
    elif name in ("torus", "grid"):
        g = _lattice(name, n, params, periodic=name == "torus")
    elif name == "hypercube":
        if n & (n - 1):
            raise ValueError(f"topology 'hypercube' needs n to be a power of 2; got n={n}")
        g = nx.hypercube_graph(n.bit_length() - 1)
    elif name == "erdos_renyi":
        default = min(1.0, 2.0 * math.log(n) / n) if n > 1 else 1.0
        p = _real_param(name, "p", params.get("p", default), 0.0, 1.0, lo_open=True)
        g = _connected_draw(name, n, seed, f"parameter 'p'={p:g} is too small",
                            lambda s: nx.gnp_random_graph(n, p, seed=s))
    elif name == "geometric":
        default = math.sqrt(2.0 * math.log(n) / (math.pi * n)) if n > 1 else 1.0
        r = _real_param(name, "radius", params.get("radius", default), 0.0, math.inf, True)
        g = _connected_draw(name, n, seed, f"parameter 'radius'={r:g} is too small",
                            lambda s: nx.random_geometric_graph(n, r, seed=s))
    else:  # small_world
        k = _int_param(name, "k", params.get("k", 4))
        p = _real_param(name, "p", params.get("p", 0.1), 0.0, 1.0, lo_open=False)
        if not (2 <= k < n and k % 2 == 0):
            raise ValueError(f"topology 'small_world': parameter 'k' must be even with "
                             f"2 <= k < n={n}; got k={k}")
        g = _connected_draw(name, n, seed, f"parameter 'p'={p:g} is too large for k={k}",
                            lambda s: nx.watts_strogatz_graph(n, k, p, seed=s))

    g = nx.Graph(g)
    g.remove_edges_from(list(nx.selfloop_edges(g)))
    g = nx.convert_node_labels_to_integers(g, ordering="sorted")
    shown = ", ".join(f"{key}={val}" for key, val in sorted(params.items()))
    g.graph = {"name": f"{name}(n={n}{', ' + shown if shown else ''})"}
    return g


# --------------------------------------------------------------------------- graphs from data


def as_graph(graph_or_adjacency: Any) -> nx.Graph:
    """Return an undirected graph on nodes 0..Q-1 from a graph or adjacency matrix.

    Parameters
    ----------
    graph_or_adjacency : networkx.Graph or array_like (Q, Q)
        A graph (nodes not already 0..Q-1 are relabelled in iteration order,
        the old label kept as node attribute ``"label"``), or a square matrix
        (dense or scipy sparse) whose nonzero entries are edges: entry (i, j)
        nonzero means i ~ j; weights are ignored.  The nonzero pattern must be
        symmetric.  Self loops (diagonal entries) are ignored.

    Returns
    -------
    networkx.Graph
        A new undirected simple graph without self loops.
    """
    if isinstance(graph_or_adjacency, nx.Graph):
        if graph_or_adjacency.is_directed():
            raise ValueError("graph must be undirected; got a directed graph")
        g = nx.Graph(graph_or_adjacency)
        if set(g.nodes) != set(range(g.number_of_nodes())):
            g = nx.convert_node_labels_to_integers(g, label_attribute="label")
    else:
        a = graph_or_adjacency
        if isinstance(a, str):
            raise ValueError(f"graph: expected a networkx graph or a square adjacency matrix, "
                             f"got str {a!r} (build one with nd.graphs.topology({a!r}, Q))")
        a = a.toarray() if scipy.sparse.issparse(a) else np.asarray(a, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise ValueError(f"adjacency must be a square 2-D matrix; got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("adjacency must have finite entries; found NaN or inf")
        pattern = a != 0
        np.fill_diagonal(pattern, False)
        if not np.array_equal(pattern, pattern.T):
            i, j = np.argwhere(pattern != pattern.T)[0]
            raise ValueError(
                f"adjacency must be symmetric (undirected graph); entry ({i}, {j}) = {a[i, j]:g} "
                f"but ({j}, {i}) = {a[j, i]:g}")
        g = nx.Graph()
        g.add_nodes_from(range(a.shape[0]))
        g.add_edges_from((int(i), int(j)) for i, j in np.argwhere(np.triu(pattern)))
    if g.number_of_nodes() == 0:
        raise ValueError("graph must have at least one node")
    g.remove_edges_from(list(nx.selfloop_edges(g)))
    return g


def _expected_file(path: Path) -> str:
    """What a matrix file of ``path``'s kind must hold (for error messages)."""
    if path.suffix == ".npy":
        return "a NumPy .npy array"
    return ("text: one matrix row per line, numbers separated by spaces or commas, "
            "# starts a comment")


def _read_matrix(path: str | Path, what: str) -> np.ndarray:
    """A float64 array from ``.npy`` or a text file; ``ValueError`` naming ``path`` if the
    file is missing, unreadable, or not numbers (binary data in a text file, a pickle...)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: a folder, not the {what} file")
    if not path.is_file():
        raise ValueError(f"{path}: {what} file not found")
    try:
        if path.suffix == ".npy":
            a = np.load(path, allow_pickle=False)
        else:
            text = path.read_text(encoding="utf-8").replace(",", " ")
            with warnings.catch_warnings():  # an empty file: our error below, not numpy's
                warnings.simplefilter("ignore", UserWarning)
                a = np.loadtxt(io.StringIO(text), dtype=np.float64, ndmin=2)
    except (ValueError, OSError, EOFError) as err:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"{path}: cannot read the {what} (expected {_expected_file(path)}): "
                         f"{type(err).__name__}: {' '.join(str(err).split())[:160]}") from None
    a = np.asarray(a)
    if a.size == 0:
        raise ValueError(f"{path}: the {what} file holds no numbers "
                         f"(expected {_expected_file(path)})")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{path}: the {what} must hold numbers; got dtype {a.dtype}")
    return a.astype(np.float64)


def load_adjacency(path: str | Path) -> nx.Graph:
    """Read a square 0/1 adjacency matrix from ``.npy`` or a text file and return its graph.

    Text files (``.txt``, ``.csv``, anything else) hold one row per line with
    entries separated by whitespace and/or commas; ``#`` starts a comment.
    Entries must be 0 or 1 (1: an edge; the diagonal is ignored) and the matrix
    symmetric.  Every error (unreadable file, other entries, wrong shape)
    raises ``ValueError`` naming the file.
    """
    a = _read_matrix(path, "adjacency matrix")
    bad = ~np.isin(a, (0.0, 1.0))
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"{path}: an adjacency matrix holds 0/1 entries (1 = an edge); found "
                         f"{a[i, j]:g} at ({i}, {j}), {int(bad.sum())} entries not 0 or 1 in "
                         "all (a weighted matrix belongs in topology.mixing_file)")
    try:
        return as_graph(a)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def load_mixing(path: str | Path) -> np.ndarray:
    """Read a mixing matrix from ``.npy`` or a text file (as :func:`load_adjacency`) and
    check it (:func:`check_mixing`); ``ValueError`` naming the file otherwise."""
    w = _read_matrix(path, "mixing matrix")
    try:
        return check_mixing(w, name="mixing matrix")
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


# --------------------------------------------------------------------------- mixing matrices


def mixing(graph: Any, rule: str = "metropolis", *, lazy: bool = False) -> np.ndarray:
    r"""Mixing matrix W of a graph under a weighting rule.

    Parameters
    ----------
    graph : networkx.Graph or array_like (Q, Q)
        The communication graph, or its adjacency matrix (see :func:`as_graph`).
    rule : str
        One of :data:`MIXING_RULES`, with d_i the degree of node i:

        - ``"metropolis"``: W_ij = 1 / (1 + max(d_i, d_j)) on edges,
          W_ii = 1 - sum_{j != i} W_ij.  Symmetric, doubly stochastic.
        - ``"max_degree"``: W_ij = 1 / (1 + d_max) on edges,
          W_ii = 1 - d_i / (1 + d_max).  Symmetric, doubly stochastic.
        - ``"uniform"``: W_ij = 1 / (1 + d_i) for j in N(i) ∪ {i}.  Row
          stochastic; symmetric only for regular graphs.
    lazy : bool
        Return (I + W) / 2 instead, whose eigenvalues are all >= 0.

    Returns
    -------
    numpy.ndarray, float64, shape (Q, Q)

    Examples
    --------
    >>> mixing(topology("complete", 3))            # W = 11^T / 3
    array([[0.33333333, 0.33333333, 0.33333333],
           [0.33333333, 0.33333333, 0.33333333],
           [0.33333333, 0.33333333, 0.33333333]])
    """
    if rule not in MIXING_RULES:
        raise ValueError(f"unknown mixing rule {rule!r}; expected one of {', '.join(MIXING_RULES)}")
    if not isinstance(lazy, bool | np.bool_):  # "no" is truthy: it made W lazy
        raise ValueError(f"lazy: expected True or False, got {lazy!r}")
    g = as_graph(graph)
    q = g.number_of_nodes()
    a = nx.to_numpy_array(g, nodelist=range(q), weight=None, dtype=np.float64)
    d = a.sum(axis=1)
    # Diagonals in forms exact for regular graphs (complete graph: W = 11^T / Q to the bit).
    own = 1.0 / (1.0 + d)
    if rule == "metropolis":  # W_ii = 1/(1+d_i) + sum_{j in N(i)} (1/(1+d_i) - W_ij)
        w = a / (1.0 + np.maximum(d[:, None], d[None, :]))
        diag = own + (a * own[:, None] - w).sum(axis=1)
    elif rule == "max_degree":
        w = a / (1.0 + d.max())
        diag = (1.0 + d.max() - d) / (1.0 + d.max())
    else:  # uniform
        w = a * own[:, None]
        diag = own
    np.fill_diagonal(w, diag)
    if lazy:
        w = 0.5 * (np.eye(q) + w)
    return w


# --------------------------------------------------------------------------- checks and spectra


def _square(W: Any, name: str) -> np.ndarray:
    try:
        w = np.asarray(W, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a real numeric matrix; got {type(W).__name__}: "
                         f"{err}") from None
    if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty square 2-D matrix (Q, Q); got shape {w.shape}")
    return w


def check_mixing(W: Any, *, name: str = "mixing", require_doubly_stochastic: bool = False,
                 require_symmetric: bool = False, atol: float = 1e-10) -> np.ndarray:
    """Validate a mixing matrix and return it as a float64 array.

    Checks, in order: W is a non-empty square 2-D matrix; entries are finite;
    entries are >= -atol; every row sums to 1 within ``atol``; optionally every
    column sums to 1 and max |W - W^T| <= atol; the directed graph of nonzero
    off-diagonal entries (i -> j when W_ij != 0) is strongly connected, so
    information from every agent reaches every other.  A 1 x 1 [[1.0]] is valid.

    Raises
    ------
    ValueError
        Naming ``name``, what was expected and what was found (the position of
        a negative entry, the worst row or column sum, the largest asymmetry,
        the number of components and the nodes of the smallest one).
    """
    w = _square(W, name)
    bad = np.argwhere(~np.isfinite(w))
    if bad.size:
        i, j = bad[0]
        raise ValueError(f"{name} must have finite entries; found {len(bad)} non-finite, "
                         f"first {name}[{i}, {j}] = {w[i, j]}")
    neg = np.argwhere(w < -atol)
    if neg.size:
        i, j = neg[np.argmin(w[tuple(neg.T)])]
        raise ValueError(f"{name} must have non-negative entries; found {len(neg)} negative, "
                         f"most negative {name}[{i}, {j}] = {w[i, j]:.6g}")
    for axis, what, need in ((1, "row", True), (0, "column", require_doubly_stochastic)):
        sums = w.sum(axis=axis)
        k = int(np.argmax(np.abs(sums - 1.0)))
        if need and abs(sums[k] - 1.0) > atol:
            kind = "row stochastic" if axis == 1 else "doubly stochastic"
            raise ValueError(f"{name} must be {kind} (every {what} sums to 1 within "
                             f"atol={atol:g}); worst {what} {k} sums to {sums[k]:.15g}")
    if require_symmetric:
        asym = np.abs(w - w.T)
        if asym.max() > atol:
            i, j = np.unravel_index(np.argmax(asym), asym.shape)
            raise ValueError(f"{name} must be symmetric; max |W - W^T| = {asym[i, j]:.6g} at "
                             f"({i}, {j}) > atol={atol:g}")
    edges = w != 0
    np.fill_diagonal(edges, False)
    count, labels = connected_components(scipy.sparse.csr_matrix(edges), directed=True,
                                         connection="strong")
    if count > 1:
        sizes = np.bincount(labels)
        nodes = np.flatnonzero(labels == np.argmin(sizes)).tolist()
        shown = nodes if len(nodes) <= 20 else nodes[:20] + ["..."]
        raise ValueError(
            f"{name} must be connected: the graph of its nonzero off-diagonal entries should be "
            f"strongly connected; found {count} components, the smallest with nodes {shown}")
    return w


def is_symmetric(W: Any, atol: float = 1e-10) -> bool:
    """True when W is square and max |W - W^T| <= atol."""
    w = np.asarray(W, dtype=np.float64)
    return w.ndim == 2 and w.shape[0] == w.shape[1] and bool(np.all(np.abs(w - w.T) <= atol))


def is_doubly_stochastic(W: Any, atol: float = 1e-10) -> bool:
    """True when W is square, entries >= -atol, and rows and columns sum to 1 within atol."""
    w = np.asarray(W, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or not np.all(np.isfinite(w)):
        return False
    return bool(np.all(w >= -atol) and np.all(np.abs(w.sum(0) - 1.0) <= atol)
                and np.all(np.abs(w.sum(1) - 1.0) <= atol))


def eigenvalues(W: Any) -> np.ndarray:
    """Eigenvalues of W sorted descending by real part.

    Uses ``eigvalsh`` when W is symmetric (float64 result).  Otherwise uses
    ``eigvals`` and returns float64 when all imaginary parts are round-off
    (true for the ``"uniform"`` rule, similar to a symmetric matrix), else
    complex128.
    """
    w = _square(W, "W")
    if is_symmetric(w):
        return np.linalg.eigvalsh(0.5 * (w + w.T))[::-1].copy()
    ev = np.real_if_close(np.linalg.eigvals(w), tol=1000)
    return ev[np.argsort(-ev.real, kind="stable")]


def spectral_gap(W: Any) -> float:
    """Spectral gap 1 - max_{i >= 2} |lambda_i| of a stochastic W.

    The eigenvalue nearest 1 (the consensus eigenvalue, simple when the graph
    is connected) is removed and the largest remaining modulus subtracted from
    1; consensus errors contract like (1 - gap)^k.  Returns 1.0 for Q = 1 and
    0.0 when 1 is a repeated eigenvalue (disconnected graph).
    """
    ev = eigenvalues(W)
    if ev.size == 1:
        return 1.0
    rest = np.delete(ev, np.argmin(np.abs(ev - 1.0)))
    return float(1.0 - np.max(np.abs(rest)))


def symmetrised(W: Any, rtol: float = 1e-10) -> np.ndarray | None:
    r"""``Pi^{1/2} W Pi^{-1/2}`` for a reversible stochastic ``W``, else ``None``.

    ``W`` is reversible when its left Perron vector ``pi`` (``pi^T W = pi^T``, positive,
    sum 1) satisfies detailed balance, ``pi_i W_ij = pi_j W_ji``: the ``"uniform"`` rule
    ``W = (D + I)^{-1} (A + I)`` on any connected graph (``pi`` proportional to degree + 1),
    and every symmetric ``W`` (returned as it is).  Then ``Pi^{1/2} W Pi^{-1/2}`` is
    symmetric with ``W``'s eigenvalues, and since ``Pi^{1/2} (x) I`` commutes with
    everything an agent does on its own block, a decentralised step built from
    ``W (x) I`` and per-agent operators is similar to the same step with the symmetric
    matrix (``theory/stability.md`` section 2).  ``rtol``: detailed balance to within
    ``rtol`` of the largest ``pi_i W_ij``.
    """
    w = _square(W, "W")
    if is_symmetric(w):
        return w
    if not np.all(w >= 0) or not np.allclose(w.sum(1), 1.0, rtol=0, atol=1e-10):
        return None
    vals, vecs = np.linalg.eig(w.T)
    i = int(np.argmin(np.abs(vals - 1.0)))
    pi = np.real(vecs[:, i])
    pi = pi / pi.sum()
    if abs(vals[i] - 1.0) > 1e-10 or not np.all(pi > 0):
        return None
    flow = pi[:, None] * w
    if np.max(np.abs(flow - flow.T)) > rtol * np.max(flow):
        return None
    root = np.sqrt(pi)
    sym = root[:, None] * w / root[None, :]
    return 0.5 * (sym + sym.T)


def lambda_min(W: Any) -> float:
    """Smallest eigenvalue of a symmetric W (enters the DGD bound eta L < 1 + lambda_min)."""
    w = _square(W, "W")
    if not is_symmetric(w):
        asym = float(np.max(np.abs(w - w.T)))
        raise ValueError(f"lambda_min needs a symmetric W; max |W - W^T| = {asym:.3g}")
    return float(np.linalg.eigvalsh(0.5 * (w + w.T))[0])

r"""Low-rank factor ``Theta ~ U Lambda U^T`` of a training kernel, from column blocks.

Mathematics (derivation and error statements in ``theory/low_rank.md``).

**Nystrom on landmarks, built block by block.**  For a PSD kernel ``Theta`` (N x N) and
landmark rows ``S`` the Nystrom approximation is ``Theta_S = C Theta_SS^+ C^T`` with
``C = Theta[:, S]``.  It is computed as a *block partial Cholesky* that never forms
N x N: with the current factor ``F`` (N x k, ``Theta ~ F F^T``) and a new block ``B``
of ``b`` landmarks,

* ``G = Theta[:, B] - F F[B]^T``  (N x b; the residual kernel's columns; one block of
  kernel columns, e.g. :func:`ntkdyn.kernels.analytic_kernels` ``(x, x[B])``);
* ``H = G[B] = V D V^T`` (b x b, the residual on the block), keep ``D_i > eps_rel *
  max diag(Theta)``;
* ``F <- [F, G V D^(-1/2)]``, so ``F F^T`` gains ``G H^+ G^T``; the residual
  ``E = Theta - F F^T`` stays PSD, and its diagonal ``d = diag(Theta) - rowsum(F^2)``
  is updated in O(N b).

After all blocks ``F F^T`` equals the Nystrom approximation on the union of the
landmarks (block Gram-Schmidt in the feature space).  Test points ``T`` get
``F_T <- [F_T, (Theta[T, B] - F_T F[B]^T) V D^(-1/2)]``: then ``F_T F^T`` is the
Nystrom cross kernel ``Theta[T, S] Theta_SS^+ Theta[S, :]``.

Landmarks (``method``): ``"uniform"`` (uniformly at random without replacement: plain
Nystrom), ``"greedy"`` (largest residual diagonal: pivoted Cholesky) or
``"rpcholesky"`` (default; sampled with probability proportional to the residual
diagonal, Chen, Epperly, Tropp & Webber 2023, "Randomly pivoted Cholesky"; near-optimal
in expectation and robust to outliers that fool the greedy rule).

**Eigen-coordinates.**  ``F^T F = V S V^T`` (m x m), ``Phi = F V`` (N x m, orthogonal
columns, ``||Phi_i||^2 = S_i``): ``Phi Phi^T = F F^T = U Lambda U^T`` with
``Lambda = S`` and ``U = Phi Lambda^(-1/2)``.  Truncating to the first ``r`` columns
keeps the best rank-r approximation of ``F F^T``; the features are ``Phi_r = U_r
Lambda_r^(1/2)`` and the test features ``Phi_{T,r} = F_T V_r``.

**What is discarded.**  ``Theta - Phi_r Phi_r^T = E + sum_{i > r} S_i u_i u_i^T``, both
terms PSD, so ``||Theta - Phi_r Phi_r^T||_2 <= trace(E) + S_{r+1}`` with
``trace(E) = trace(Theta) - ||F||_F^2`` known exactly (the kernel's diagonal is cheap).
:attr:`LowRankFactor.discarded_norm` is that bound.

Memory: ``F`` and ``F_T`` (``(N + M) m`` floats), one block of columns and the
rotation's copy: ``O((N + M) m)``, checked before allocating
(:func:`factor_bytes`, :func:`ensure_factor_fits`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Protocol

import numpy as np

from ntkdyn._utils import memory
from ntkdyn._utils.checks import as_float_array

METHODS = ("rpcholesky", "greedy", "uniform")
#: a residual direction is kept when its pivot exceeds this times the largest diagonal entry
PIVOT_RTOL = 1e-12
DEFAULT_BLOCK = 128


class LowRankTooLargeError(memory.ProblemTooLargeError, ValueError):
    """Even the low-rank factor would not fit in memory (raised before allocating)."""


# --------------------------------------------------------------------------- column sources
class KernelColumns(Protocol):
    """Where kernel columns come from.  ``n``: training samples; ``n_test``: test samples
    (0 without); ``diagonal()``: ``diag(Theta)`` (N,); ``columns(idx)``:
    ``Theta[:, idx]`` (N, b); ``test_columns(idx)``: ``Theta[T, idx]`` (M, b).  Optional:
    ``test_probe_columns(idx)``: ``Theta[X, T[idx]]`` (N, b), the training rows of the
    test-train kernel at test rows ``idx`` (the probe columns of the test-output estimate;
    a source without it gets no test-output estimate)."""

    n: int
    n_test: int

    def diagonal(self) -> np.ndarray: ...

    def columns(self, idx: np.ndarray) -> np.ndarray: ...

    def test_columns(self, idx: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class MatrixColumns:
    """Columns of kernels already in memory (traced, ``(N, N)`` and ``(M, N)``)."""

    kernel: np.ndarray
    kernel_test: np.ndarray | None = None

    def __post_init__(self):
        k = as_float_array("kernel_train", self.kernel, ndim=2)
        if k.shape[0] != k.shape[1]:
            raise ValueError(f"kernel_train: expected a square (N, N) kernel, got {k.shape}")
        object.__setattr__(self, "kernel", k)
        if self.kernel_test is not None:
            kt = as_float_array("kernel_test_train", self.kernel_test, ndim=2)
            if kt.shape[1] != k.shape[0]:
                raise ValueError(f"kernel_test_train: expected shape (M, {k.shape[0]}), "
                                 f"got {kt.shape}")
            object.__setattr__(self, "kernel_test", kt)

    @property
    def n(self) -> int:
        return self.kernel.shape[0]

    @property
    def n_test(self) -> int:
        return 0 if self.kernel_test is None else self.kernel_test.shape[0]

    def diagonal(self) -> np.ndarray:
        return np.diag(self.kernel).copy()

    def columns(self, idx):
        return self.kernel[:, idx]

    def test_columns(self, idx):
        return self.kernel_test[:, idx]

    def test_probe_columns(self, idx):
        return self.kernel_test[np.asarray(idx)].T


class _InputRows:
    """Shared by the column sources built from inputs (fields ``x`` and ``x_test``): the
    inputs checked as float64 matrices, ``n`` and ``n_test``."""

    x: np.ndarray
    x_test: np.ndarray | None

    def __post_init__(self):
        object.__setattr__(self, "x", as_float_array("x_train", self.x, ndim=2))
        if self.x_test is not None:
            object.__setattr__(self, "x_test", as_float_array("x_test", self.x_test, ndim=2))

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def n_test(self) -> int:
        return 0 if self.x_test is None else self.x_test.shape[0]


@dataclass(frozen=True)
class AnalyticColumns(_InputRows):
    """Columns of the infinite-width NTK of an MLP (:func:`ntkdyn.kernels.analytic_kernels`),
    computed for a block of landmarks at a time: ``analytic_kernels(x, x[idx])`` costs
    O(N b d) and holds O(N b) (the rows are themselves blocked inside).

    ``kernel``: ``"ntk"`` (default, ``Theta``) or ``"nngp"`` (``K``, the covariance of the
    outputs at initialisation: the low-rank draws of one random network,
    :mod:`ntkdyn.lowrank.networks`, read it on the pooled ``[train; test]`` inputs)."""

    x: np.ndarray
    x_test: np.ndarray | None = None
    hidden_layers: int = 1
    activation: object = "relu"
    W_std: float = 1.4
    b_std: float = 0.1
    kernel: str = "ntk"

    def __post_init__(self):
        from ntkdyn.kernels.analytic import check_architecture

        super().__post_init__()
        if self.kernel not in ("ntk", "nngp"):
            raise ValueError(f"kernel: expected 'ntk' or 'nngp', got {self.kernel!r}")
        check_architecture(self.hidden_layers, self.activation, self.W_std, self.b_std)

    def _kw(self):
        return dict(hidden_layers=self.hidden_layers, activation=self.activation,
                    W_std=self.W_std, b_std=self.b_std)

    def diagonal(self) -> np.ndarray:
        return self._diagonal.copy()

    @cached_property
    def _diagonal(self) -> np.ndarray:
        r"""``Theta(x, x)`` by the recursion on the variances alone, O(N d):
        ``Theta^0 = K^0``, ``Theta^l = K^l + W_std^2 E[phi'(u)^2] Theta^(l-1)``."""
        from ntkdyn.activations import dual
        from ntkdyn.kernels.analytic import resolve_activation

        act = resolve_activation(self.activation)
        w2, b2 = float(self.W_std) ** 2, float(self.b_std) ** 2
        k = w2 * np.einsum("ij,ij->i", self.x, self.x) / self.x.shape[1] + b2
        theta = k
        for _ in range(self.hidden_layers):
            e_phi, e_dphi = dual(act, k, k, k)
            k_new = w2 * np.asarray(e_phi) + b2
            theta = k_new + w2 * np.asarray(e_dphi) * theta
            k = k_new
        return np.asarray(k if self.kernel == "nngp" else theta, dtype=np.float64)

    def _block(self, a, b):
        from ntkdyn.kernels.analytic import analytic_kernels

        return analytic_kernels(a, b, **self._kw())[self.kernel == "ntk"]

    def columns(self, idx):
        """``Theta[:, idx]``; the entries ``(idx_j, j)`` are set to :meth:`diagonal`, as
        :func:`~ntkdyn.kernels.analytic_kernels` does for a symmetric kernel (the arc-cosine
        angle is ill-conditioned at correlation 1: ~1e-8 otherwise)."""
        idx = np.asarray(idx)
        cols = self._block(self.x, self.x[idx])
        cols[idx, np.arange(idx.size)] = self._diagonal[idx]
        return cols

    def test_columns(self, idx):
        return self._block(self.x_test, self.x[idx])

    def test_probe_columns(self, idx):
        return self._block(self.x, self.x_test[np.asarray(idx)])


@dataclass(frozen=True)
class EmpiricalColumns(_InputRows):
    r"""Columns of the traced empirical NTK of a finite :class:`~ntkdyn.models.MLP`
    (``(1/K) sum_k J_k(x) . J_k(x')``), a block of landmarks at a time, by the layerwise
    Gram formula of :func:`ntkdyn.kernels.mlp_empirical_ntk`: no Jacobian is formed, a
    block costs one forward and backward feature pass over the ``N`` rows
    (``O(N K sum_l n_l n_{l+1})``) and holds ``O(N b)`` plus one batch of features."""

    model: object
    params: object
    x: np.ndarray
    x_test: np.ndarray | None = None
    batch_size: int | None = None

    def _ntk(self, a, b=None):
        """Batches of ``len(b)`` rows by default: the kernel pads every batch of ``b`` to the
        batch size, so a larger batch would multiply the contraction for nothing."""
        from ntkdyn.kernels import mlp_empirical_ntk

        batch = self.batch_size or (None if b is None else max(len(b), 64))
        return mlp_empirical_ntk(self.model, self.params, a, b, batch_size=batch)

    def diagonal(self) -> np.ndarray:
        return self._diagonal.copy()

    @cached_property
    def _diagonal(self) -> np.ndarray:
        """``Theta(x_i, x_i)`` from diagonal blocks of 256 rows."""
        return np.concatenate([np.diag(self._ntk(self.x[s:s + 256])).copy()
                               for s in range(0, self.n, 256)])

    def columns(self, idx):
        """``Theta[:, idx]``, the entries ``(idx_j, j)`` set to :meth:`diagonal`."""
        idx = np.asarray(idx)
        cols = self._ntk(self.x, self.x[idx])
        cols[idx, np.arange(idx.size)] = self._diagonal[idx]
        return cols

    def test_columns(self, idx):
        return self._ntk(self.x_test, self.x[np.asarray(idx)])

    def test_probe_columns(self, idx):
        return self._ntk(self.x, self.x_test[np.asarray(idx)])


#: bytes one landmark sub-block of :class:`JacobianColumns` may hold (its ``J_B^T`` rows
#: and their JVP outputs)
JVP_BUDGET_BYTES = 256 * 2**20


@dataclass(frozen=True)
class JacobianColumns(_InputRows):
    r"""Columns of the traced empirical NTK of *any* network ``apply_fn(params, x) -> (B, K)``
    (not only an MLP), from Jacobian-vector products; ``J`` is never formed.

    For a block ``B`` of landmarks, ``Theta[:, B] = (1/K) sum_k J_k J_{B,k}^T``:

    1. ``V = J_B^T`` (``(b K, P)``): one ``jax.vjp`` at ``x_B``, its pullback ``vmap``-ed
       over the ``b K`` unit cotangents (``e_{(j, k)}``);
    2. for each chunk ``R`` of ``row_batch`` training rows: one ``jax.linearize`` at
       ``x_R`` and its JVP ``vmap``-ed over the rows of ``V``, ``U = J_R V^T``
       (``(b K, |R|, K)``), and ``Theta[R, j] = (1/K) sum_k U[(j, k), :, k]``.

    Cost per block: ``b K`` JVPs over the ``N`` rows (about ``b K`` forward passes), against
    one feature pass (``~ K`` forward passes) for the layerwise formula of an MLP
    (:class:`EmpiricalColumns`): slower by about ``b`` times in flops, general in exchange.
    Memory: the landmarks go ``sub`` at a time, ``sub`` chosen so that ``V`` and the JVP
    outputs of one chunk (``sub K (P + row_batch (K + 1))`` floats) stay within
    ``budget_bytes`` (default :data:`JVP_BUDGET_BYTES`).  ``diag(Theta)`` comes from
    per-sample Jacobians of bounded batches (:func:`ntkdyn.kernels.empirical.jacobian_leaves`).
    """

    apply_fn: object
    params: object
    x: np.ndarray
    x_test: np.ndarray | None = None
    row_batch: int = 256
    budget_bytes: int = JVP_BUDGET_BYTES

    @cached_property
    def _setup(self) -> dict:
        """Flat float64 ``theta_0``, its ``unravel``, ``K``, ``P`` and the compiled maps."""
        import jax
        from jax.flatten_util import ravel_pytree

        from ntkdyn.kernels.empirical import to_float64

        theta0, unravel = ravel_pytree(to_float64(self.params))
        k_out = int(jax.eval_shape(self.apply_fn, to_float64(self.params),
                                   self.x[:1]).shape[1])
        return {"theta0": theta0, "unravel": unravel, "k": k_out, "p": int(theta0.size),
                "vt": jax.jit(partial(_jvp_directions, self.apply_fn, unravel)),
                "block": jax.jit(partial(_jvp_block, self.apply_fn, unravel))}

    def _sub(self) -> int:
        """Landmarks per sub-block within ``budget_bytes``."""
        st = self._setup
        per = 8 * st["k"] * (2 * st["p"] + self.row_batch * (st["k"] + 1))
        return max(1, int(self.budget_bytes // per))

    def _ntk(self, rows: np.ndarray, idx: np.ndarray, land: np.ndarray | None = None
             ) -> np.ndarray:
        """``Theta[rows, land[idx]]`` (``(len(rows), len(idx))``, ``land`` default ``x``)
        by the two steps above."""
        land = self.x if land is None else land
        st = self._setup
        out = np.empty((rows.shape[0], idx.size))
        sub, rb = self._sub(), self.row_batch
        for j0 in range(0, idx.size, sub):
            xb = land[idx[j0:j0 + sub]]
            v = st["vt"](st["theta0"], xb)  # (b K, P)
            for r0 in range(0, rows.shape[0], rb):
                xr = rows[r0:r0 + rb]
                pad = rb - xr.shape[0]
                if pad:  # one compiled shape per sub-block size
                    xr = np.concatenate([xr, np.repeat(xr[-1:], pad, axis=0)])
                blk = np.asarray(st["block"](st["theta0"], xr, v))
                out[r0:r0 + rb, j0:j0 + sub] = blk[:rb - pad]
        return out

    def diagonal(self) -> np.ndarray:
        return self._diagonal.copy()

    @cached_property
    def _diagonal(self) -> np.ndarray:
        """``(1/K) ||J(x_i)||_F^2`` from per-sample Jacobians of bounded batches."""
        import jax.numpy as jnp

        from ntkdyn.kernels.empirical import generic_batch_plan, jacobian_leaves, to_float64

        st = self._setup
        p64 = to_float64(self.params)
        _, batch = generic_batch_plan(st["k"], st["p"], self.n, True)
        out = np.empty(self.n)
        for s in range(0, self.n, batch):
            xb = self.x[s:s + batch]
            pad = batch - xb.shape[0]
            if pad:
                xb = np.concatenate([xb, np.repeat(xb[-1:], pad, axis=0)])
            leaves = jacobian_leaves(self.apply_fn, p64, jnp.asarray(xb))
            sq = sum(np.asarray(jnp.sum(v ** 2, axis=(1, 2))) for v in leaves)
            out[s:s + batch] = sq[:batch - pad] / st["k"]
        return out

    def columns(self, idx):
        """``Theta[:, idx]``, the entries ``(idx_j, j)`` set to :meth:`diagonal`."""
        idx = np.asarray(idx)
        cols = self._ntk(self.x, idx)
        cols[idx, np.arange(idx.size)] = self._diagonal[idx]
        return cols

    def test_columns(self, idx):
        return self._ntk(self.x_test, np.asarray(idx))

    def test_probe_columns(self, idx):
        return self._ntk(self.x, np.asarray(idx), self.x_test)


def _jvp_directions(apply_fn, unravel, theta0, xb):
    """``J_B^T`` as ``(b K, P)``: the pullback of ``theta -> apply_fn(theta, x_B)`` applied
    to the ``b K`` unit cotangents (row ``j K + k``)."""
    import jax
    import jax.numpy as jnp

    out, pull = jax.vjp(lambda t: apply_fn(unravel(t), xb), theta0)
    b, k = out.shape
    eye = jnp.eye(b * k, dtype=out.dtype).reshape(b * k, b, k)
    return jax.vmap(lambda e: pull(e)[0])(eye)


def _jvp_block(apply_fn, unravel, theta0, xr, v):
    """``(1/K) sum_k [J(x_R) v_{(j, k)}]_k`` as ``(|R|, b)``: one linearisation at ``x_R``,
    its JVP over the rows of ``v`` (``(b K, P)``)."""
    import jax
    import jax.numpy as jnp

    _, jvp = jax.linearize(lambda t: apply_fn(unravel(t), xr), theta0)
    u = jax.vmap(jvp)(v)  # (b K, R, K)
    k = u.shape[-1]
    u = u.reshape(-1, k, u.shape[1], k)  # (b, K, R, K)
    return jnp.einsum("jkrk->rj", u) / k


# --------------------------------------------------------------------------- the factor
@dataclass(frozen=True)
class LowRankFactor:
    """``Theta ~ Phi Phi^T``, ``Phi = U Lambda^(1/2)`` (eigen-coordinates, descending).

    Attributes
    ----------
    phi : (N, r)
        Training features in the caller's sample order; ``phi^T phi = diag(eigenvalues)``.
    phi_test : (M, r) or None
        Test features: ``phi_test @ phi.T`` is the Nystrom test-train kernel.
    eigenvalues : (r,)
        ``Lambda``, descending.
    landmarks : (m,)
        Training indices whose columns were read.
    method : str
    trace : float
        ``trace(Theta)``.
    residual_trace : float
        ``trace(Theta - F F^T)`` of the Nystrom factor before truncation to ``r``.
    next_eigenvalue : float
        The largest eigenvalue of ``F F^T`` dropped by the truncation (0 if none).
    info : dict
        Other facts (landmarks read, blocks, timings).
    probe_rows : (p,) or None
        Training rows drawn uniformly at random (without replacement) whose kernel columns
        ``probe_columns = Theta[:, P]`` (N x p) feed the probe-row error estimate
        (:func:`ntkdyn.lowrank.evolve.probe_estimator`, ``theory/low_rank.md`` section 3).
    test_probe_rows : (p_T,) or None
        Test rows drawn uniformly at random whose test-train kernel rows
        ``test_probe_columns = Theta[T[P_T], X]^T`` (N x p_T) feed the test-output estimate
        (:func:`ntkdyn.lowrank.evolve.held_out_estimator`, ``theory/low_rank.md`` 3.1).
    """

    phi: np.ndarray
    phi_test: np.ndarray | None
    eigenvalues: np.ndarray
    landmarks: np.ndarray
    method: str
    trace: float
    residual_trace: float
    next_eigenvalue: float
    info: dict = field(default_factory=dict)
    probe_rows: np.ndarray | None = None
    probe_columns: np.ndarray | None = None
    test_probe_rows: np.ndarray | None = None
    test_probe_columns: np.ndarray | None = None

    @property
    def rank(self) -> int:
        return int(self.phi.shape[1])

    @property
    def discarded_norm(self) -> float:
        """Upper bound on ``||Theta - phi phi^T||_2``: ``trace(E) + S_{r+1}``."""
        return float(max(self.residual_trace, 0.0) + self.next_eigenvalue)

    def truncate(self, rank: int) -> LowRankFactor:
        """The first ``rank`` eigen-coordinates (``rank <= self.rank``)."""
        rank = check_rank(rank, self.rank, name="rank")
        nxt = float(self.eigenvalues[rank]) if rank < self.rank else self.next_eigenvalue
        return LowRankFactor(
            phi=self.phi[:, :rank], phi_test=None if self.phi_test is None
            else self.phi_test[:, :rank], eigenvalues=self.eigenvalues[:rank],
            landmarks=self.landmarks, method=self.method, trace=self.trace,
            residual_trace=self.residual_trace, next_eigenvalue=max(nxt, 0.0),
            info=dict(self.info), probe_rows=self.probe_rows, probe_columns=self.probe_columns,
            test_probe_rows=self.test_probe_rows, test_probe_columns=self.test_probe_columns)

    def describe(self) -> dict:
        return {"rank": self.rank, "method": self.method, "landmarks": int(len(self.landmarks)),
                "trace": self.trace, "residual_trace": self.residual_trace,
                "smallest_kept_eigenvalue": float(self.eigenvalues[-1]) if self.rank else 0.0,
                "next_eigenvalue": self.next_eigenvalue,
                "discarded_norm_bound": self.discarded_norm, **self.info}


def check_rank(rank, n: int, name: str = "rank") -> int:
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer):
        raise ValueError(f"{name}: expected a positive integer or 'auto', got {rank!r}")
    if rank <= 0:
        raise ValueError(f"{name}: expected a positive integer (1..{n}), got {rank}")
    if rank > n:
        raise ValueError(f"{name}: expected at most {n} (the number of training samples / "
                         f"available coordinates), got {rank}")
    return int(rank)


def check_max_rank(max_rank, n: int) -> int:
    """``max_rank``, a cap on the rank: a positive integer, clipped to ``n`` (the training
    samples; a cap above them binds nowhere, so ``max_rank=512`` serves any data set)."""
    if isinstance(max_rank, bool) or not isinstance(max_rank, int | np.integer) or \
            max_rank <= 0:
        raise ValueError(f"max_rank: expected a positive integer (a cap on the rank), got "
                         f"{max_rank!r}")
    return min(int(max_rank), n)


def check_tol(tol) -> float:
    try:
        t = float(tol)
    except (TypeError, ValueError):
        t = float("nan")
    if isinstance(tol, bool) or not np.isfinite(t) or t <= 0:
        raise ValueError(f"tol: expected a positive number (relative error of the training "
                         f"outputs, e.g. 1e-3), got {tol!r}")
    return t


# --------------------------------------------------------------------------- memory
def factor_bytes(n: int, n_test: int, m: int, block: int = DEFAULT_BLOCK,
                 probes: int | None = None) -> int:
    """Peak bytes of :func:`factorize` at ``m`` landmarks: ``F`` and ``F_T`` twice (the
    eigen-rotation writes a copy), one block of columns with its residual (``3 (N + M) b``),
    the m x m Gram matrix with its eigenvectors (``3 m^2``) and the probe columns of the
    error estimates (``N p``, ``p = probe_count(N, m, probes)``, and ``N p_T`` for the test
    outputs, ``p_T = probe_count(M, m, probes)``); float64."""
    p = probe_count(n, m, probes) if n else 0
    p_t = probe_count(n_test, m, probes) if n and n_test else 0
    return int(8 * (2 * (n + n_test) * m + 3 * (n + n_test) * block + 3 * m * m + 4 * n
                    + n * (p + p_t)))


def max_fitting_rank(n: int, n_test: int, available: int, block: int = DEFAULT_BLOCK,
                     reserve: int = 0) -> int:
    """Largest ``m`` with ``factor_bytes(n, n_test, m) + reserve(m) <= available`` (0 if none);
    ``reserve`` is bytes per unit of rank needed afterwards (e.g. by the evolution)."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if factor_bytes(n, n_test, mid, block) + reserve * mid <= available:
            lo = mid
        else:
            hi = mid - 1
    return lo


def ensure_factor_fits(n: int, n_test: int, m: int, block: int = DEFAULT_BLOCK,
                       reserve: int = 0, what: str = "the low-rank factor") -> None:
    """Refuse (:class:`LowRankTooLargeError`, a ``ValueError``) before allocating."""
    need = factor_bytes(n, n_test, m, block) + reserve * m
    avail = memory.available_memory_bytes()
    if need > avail:
        fit = max_fitting_rank(n, n_test, avail, block, reserve)
        hint = (f"rank <= {fit} would fit" if fit > 0 else
                "no rank fits: use fewer training / test samples")
        raise LowRankTooLargeError(
            f"rank: {what} of rank {m} for N={n} training and M={n_test} test samples needs "
            f"about {memory.format_bytes(need)} but only {memory.format_bytes(avail)} is "
            f"available (set NTKDYN_MEMORY_LIMIT to override); {hint}")


def _ensure(n, n_test, m, block, reserve, oversample):
    need = factor_bytes(n, n_test, m, block) + reserve * m
    avail = memory.available_memory_bytes()
    if need > avail:
        fit = int(max_fitting_rank(n, n_test, avail, block, reserve) // oversample)
        hint = (f"rank <= {fit} would fit (with {oversample:g}x oversampled landmarks)"
                if fit > 0 else "no rank fits: use fewer training / test samples")
        raise LowRankTooLargeError(
            f"rank: the low-rank factor ({m} landmark columns) for N={n} training and "
            f"M={n_test} test samples needs about {memory.format_bytes(need)} but only "
            f"{memory.format_bytes(avail)} is available (set NTKDYN_MEMORY_LIMIT to "
            f"override); {hint}")


# --------------------------------------------------------------------------- factorisation
def _pick(method: str, d: np.ndarray, chosen: np.ndarray, b: int, rng, perm) -> np.ndarray:
    free = ~chosen
    if method == "uniform":
        return perm[:b]
    if method == "greedy":
        dd = np.where(free, d, -np.inf)
        idx = np.argpartition(-dd, min(b, dd.size - 1))[:b]
        return idx[np.isfinite(dd[idx]) & (dd[idx] > 0)]
    p = np.where(free, np.maximum(d, 0.0), 0.0)
    total = p.sum()
    if total <= 0:
        return np.zeros(0, dtype=np.int64)
    b = min(b, int(np.count_nonzero(p)))
    return rng.choice(d.size, size=b, replace=False, p=p / total)


def factorize(
    source: KernelColumns,
    rank: int | None = None,
    *,
    target_norm: float | None = None,
    max_rank: int | None = None,
    method: str = "rpcholesky",
    block: int = DEFAULT_BLOCK,
    seed: int = 0,
    reserve_per_rank: int = 0,
    oversample: float = 2.0,
    progress: bool = False,
    probes: int | None = None,
    estimate=None,
    tol: float | None = None,
    estimate_test=None,
) -> LowRankFactor:
    """Factor the training kernel of ``source`` (see the module docstring).

    Give either ``rank`` (that many eigen-coordinates, the leading ones of a Nystrom factor
    on ``min(N, ceil(oversample * rank))`` landmarks: oversampling makes the discarded part
    close to the optimal tail, ``trace(E) + S_{r+1}`` instead of ``trace(E_r)``) or
    ``target_norm`` (read landmarks until ``trace(E) <= target_norm / 2``, then keep the
    fewest coordinates with ``trace(E) + S_{r+1} <= target_norm``), both capped by
    ``max_rank``.  The memory of the factor at the largest rank it may reach is checked first
    (:class:`LowRankTooLargeError`); ``reserve_per_rank`` adds bytes per coordinate needed
    afterwards.

    ``probes`` kernel columns at training rows drawn uniformly at random are read first
    (default :func:`probe_count`: at most a quarter of the landmarks, 64..256; ``0``: none)
    and kept on the factor for the probe-row error estimate.  With ``estimate`` (a callable
    ``estimate(phi, probe_rows, probe_columns) -> (rank -> float)``, e.g. built on
    :func:`ntkdyn.lowrank.evolve.probe_estimator`) and ``tol`` instead of ``target_norm``,
    landmarks are read until the estimate of the leading half of the factor's coordinates
    is ``<= tol`` (checked whenever the number of columns has doubled), then the fewest
    coordinates whose estimate is ``<= tol`` are kept (bisection on the rank).

    With test inputs (``source.n_test > 0``) and a source with ``test_probe_columns``, as
    many test rows as :func:`probe_count` gives for ``M`` are drawn too and their
    test-train kernel rows kept (``test_probe_rows`` / ``test_probe_columns``) for the
    test-output estimate.  ``estimate_test`` (``estimate_test(phi, phi_test, probe_rows,
    probe_columns, test_rows, test_columns) -> (rank -> float)``, e.g. on
    :func:`ntkdyn.lowrank.evolve.held_out_estimator`)
    makes ``tol`` apply to ``max(train, test)`` estimates.
    """
    import time

    if rank is not None and target_norm is not None:
        raise ValueError(f"target_norm: a stopping rule instead of rank, got both rank={rank!r} "
                         f"and target_norm={target_norm!r}")
    if target_norm is not None and (isinstance(target_norm, bool)
                                    or not float(target_norm) > 0):
        raise ValueError(f"target_norm: expected a number > 0 (the discarded trace allowed), "
                         f"got {target_norm!r}")
    if tol is not None and estimate is None and rank is None and target_norm is None:
        raise ValueError("tol: needs estimate= (the probe-row estimator it holds; "
                         "ntkdyn.lowrank.predict builds it from rank='auto'), or give a rank "
                         "or a target_norm")
    by_estimate = estimate is not None and tol is not None and rank is None
    m_cap, r_cap = _factor_plan(source, rank, None if by_estimate else target_norm,
                                max_rank, method, block, reserve_per_rank, oversample,
                                auto=by_estimate)
    t0 = time.perf_counter()
    diag = np.asarray(source.diagonal(), dtype=np.float64)
    trace = float(diag.sum())
    scale = float(diag.max()) if source.n else 1.0
    p_rows = np.sort(np.random.default_rng([seed, 1]).choice(
        source.n, size=probe_count(source.n, m_cap, probes), replace=False))
    p_cols = np.asarray(source.columns(p_rows), dtype=np.float64) if p_rows.size else None
    t_rows, t_cols_ = _test_probes(source, m_cap, probes, seed)
    t_probe = time.perf_counter() - t0
    est = None
    if by_estimate:
        est = _max_estimate(estimate, None if t_cols_ is None else estimate_test, t_rows,
                            t_cols_)
    done = _stop_rule(target_norm, est, tol, p_rows, p_cols, block)
    piv = _pivoted_cholesky(source, diag, m_cap, method, block, scale, done, seed, progress)
    t_cols = time.perf_counter() - t0
    residual_trace = max(trace - float(np.einsum("ij,ij->", piv.f, piv.f)), 0.0)
    s, v, phi = _rotate(piv.f)
    phi_test = None if piv.ft is None else piv.ft @ v
    if by_estimate and p_cols is not None:
        r = _rank_by_estimate(est(phi, p_rows, p_cols, phi_test), phi.shape[1], tol, r_cap)
    else:
        r = _chosen_rank(rank, target_norm, residual_trace, s, r_cap)
    t_total = time.perf_counter() - t0
    nxt = float(s[r]) if r < phi.shape[1] else 0.0
    info = {"landmarks_read": int(piv.reads), "blocks": int(piv.blocks), "block": int(block),
            "probe_columns": int(p_rows.size),
            "test_probe_columns": 0 if t_rows is None else int(t_rows.size),
            "seconds_probe": round(t_probe, 3),
            "seconds_columns": round(t_cols, 3), "seconds_total": round(t_total, 3),
            "reached_numerical_rank": bool(float(piv.d.max(initial=0.0)) <= PIVOT_RTOL * scale)}
    return LowRankFactor(
        phi=np.ascontiguousarray(phi[:, :r]),
        phi_test=None if phi_test is None else np.ascontiguousarray(phi_test[:, :r]),
        eigenvalues=s[:r].copy(), landmarks=np.concatenate(piv.landmarks) if piv.landmarks
        else np.zeros(0, np.int64), method=method, trace=trace,
        residual_trace=residual_trace, next_eigenvalue=nxt, info=info,
        probe_rows=p_rows if p_cols is not None else None, probe_columns=p_cols,
        test_probe_rows=t_rows, test_probe_columns=t_cols_)


def _test_probes(source: KernelColumns, m_cap: int, probes, seed: int):
    """Test probe rows (uniform, without replacement; ``probe_count(M, m_cap, probes)``) and
    their test-train kernel rows ``Theta[T[P_T], X]^T`` (N x p_T), or ``(None, None)``
    without test inputs or a source that cannot give them."""
    read = getattr(source, "test_probe_columns", None)
    if not source.n_test or read is None:
        return None, None
    rows = np.sort(np.random.default_rng([seed, 2]).choice(
        source.n_test, size=probe_count(source.n_test, m_cap, probes), replace=False))
    if not rows.size:
        return None, None
    return rows, np.asarray(read(rows), dtype=np.float64)


def _max_estimate(estimate, estimate_test, t_rows, t_cols):
    """The estimate ``rank="auto"`` uses, as ``(phi, rows, columns, phi_test) -> (rank ->
    float)``: the training one, or ``max(train, test)`` per rank with ``estimate_test``."""
    def both(phi, p_rows, p_cols, phi_test):
        train = estimate(phi, p_rows, p_cols)
        if estimate_test is None or phi_test is None:
            return train
        test = estimate_test(phi, phi_test, p_rows, p_cols, t_rows, t_cols)
        return lambda r: max(train(r), test(r))
    return both


#: the probe rows: at most this fraction of the landmarks, within PROBE_MIN..PROBE_MAX
PROBE_FRACTION, PROBE_MIN, PROBE_MAX = 0.25, 64, 256


def probe_count(n: int, landmarks: int, probes: int | None = None) -> int:
    """Probe rows for ``landmarks`` landmark columns: ``probes`` if given (``0``: none),
    else ``clip(landmarks / 4, 64, 256)``, at most ``n``."""
    if probes is None:
        probes = int(np.clip(np.ceil(PROBE_FRACTION * landmarks), PROBE_MIN, PROBE_MAX))
    if isinstance(probes, bool) or not isinstance(probes, int | np.integer) or probes < 0:
        raise ValueError(f"probes: expected a non-negative integer, got {probes!r}")
    return int(min(n, probes))


def _rotate(f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigen-coordinates: ``F^T F = V S V^T`` (descending), ``Phi = F V``."""
    gram = f.T @ f
    s, v = np.linalg.eigh((gram + gram.T) / 2)
    s, v = np.maximum(s[::-1], 0.0), v[:, ::-1]
    return s, v, f @ v


def _stop_rule(target_norm, estimate, tol, p_rows, p_cols, block: int):
    """When :func:`_pivoted_cholesky` stops reading landmarks (``None``: at its cap):
    residual trace ``<= target_norm / 2``, or the probe-row estimate of the factor's
    ``k // 2`` leading coordinates ``<= tol`` (``k`` columns read: the 2x oversampling of a
    fixed rank), evaluated each time ``k`` has doubled (from ``2 block``)."""
    if estimate is not None and p_cols is not None:
        state = {"next": 2 * block}

        def done(f, d, ft=None):
            k = f.shape[1]
            if k < state["next"]:
                return False
            state["next"] = 2 * k
            _, v, phi = _rotate(f)
            return estimate(phi, p_rows, p_cols, None if ft is None else ft @ v)(
                max(1, k // 2)) <= tol

        return done
    if target_norm is None:
        return None
    half = 0.5 * target_norm
    return lambda f, d, ft=None: max(float(d.sum()), 0.0) <= half


def _rank_by_estimate(per_rank, k: int, tol: float, r_cap: int) -> int:
    """The fewest ``r`` in ``1..min(k, r_cap)`` with ``per_rank(r) <= tol`` (bisection, the
    estimate falling with the rank), or the cap when none."""
    hi = min(k, r_cap)
    if hi <= 0:
        return 0
    if per_rank(hi) > tol:
        return hi
    lo = 0  # per_rank(lo) > tol or lo == 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if per_rank(mid) <= tol:
            hi = mid
        else:
            lo = mid
    return hi


def _factor_plan(source: KernelColumns, rank, target_norm, max_rank, method: str, block,
                 reserve_per_rank: int, oversample, auto: bool = False) -> tuple[int, int]:
    """Check the arguments of :func:`factorize` and the memory of the factor at the largest
    rank it may reach; return the most landmarks to read and the largest rank to keep."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    if isinstance(block, bool) or not isinstance(block, int | np.integer) or block < 1:
        raise ValueError(f"block: expected a positive integer, got {block!r}")
    n, n_test = source.n, source.n_test
    if rank is None and target_norm is None and not auto:
        raise ValueError("rank: give a rank or a target_norm")
    if rank is not None:
        rank = check_rank(rank, n)
    r_cap = n if max_rank is None else check_max_rank(max_rank, n)
    if rank is not None:
        r_cap = min(r_cap, rank)
    if isinstance(oversample, bool) or not (np.isfinite(oversample) and oversample >= 1):
        raise ValueError(f"oversample: expected a number >= 1, got {oversample!r}")
    m_cap = min(n, int(np.ceil(oversample * r_cap)))
    _ensure(n, n_test, m_cap if rank is not None else min(m_cap, block), block,
            reserve_per_rank, oversample)
    if rank is None:  # auto: read no more landmarks than fit
        fit = max_fitting_rank(n, n_test, memory.available_memory_bytes(), block,
                               reserve_per_rank)
        m_cap = min(m_cap, fit)
    return m_cap, r_cap


@dataclass
class _Pivots:
    """What the block pivoted Cholesky read: the factor ``F`` (``Theta ~ F F^T``) on the
    training and test rows, the residual diagonal ``d``, the landmark blocks and counts."""

    f: np.ndarray
    ft: np.ndarray | None
    d: np.ndarray
    landmarks: list
    reads: int
    blocks: int


def _pivoted_cholesky(source: KernelColumns, diag: np.ndarray, m_cap: int, method: str,
                      block: int, scale: float, done, seed: int,
                      progress: bool) -> _Pivots:
    r"""Block (randomly) pivoted Cholesky: read ``block`` kernel columns at a time (chosen by
    ``method`` from the residual diagonal ``d``), orthogonalise them against the factor so
    far, ``G = Theta[:, I] - F F[I]^T``, and append ``G V / sqrt(lambda)`` for the
    eigenpairs of ``G[I]`` above ``PIVOT_RTOL * scale``.  Stops at ``m_cap`` columns, when
    ``done(F, d)`` (:func:`_stop_rule`) or at the kernel's numerical rank."""
    n, n_test = source.n, source.n_test
    d = diag.copy()
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    pos = 0
    f = np.zeros((n, m_cap))
    ft = np.zeros((n_test, m_cap)) if n_test else None
    chosen = np.zeros(n, dtype=bool)
    landmarks: list[np.ndarray] = []
    k, blocks, reads = 0, 0, 0
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=m_cap, unit="col", desc="low-rank factor")
    while k < m_cap:
        if done is not None and done(f[:, :k], d, None if ft is None else ft[:, :k]):
            break
        b = min(block, m_cap - k)
        if method == "uniform":
            idx = perm[pos:pos + b]
            pos += b
        else:
            idx = _pick(method, d, chosen, b, rng, perm)
        if idx.size == 0:
            break
        chosen[idx] = True
        landmarks.append(idx)
        reads += idx.size
        blocks += 1
        g = source.columns(idx) - f[:, :k] @ f[idx, :k].T
        h = (g[idx] + g[idx].T) / 2
        lam, vec = np.linalg.eigh(h)
        keep = lam > PIVOT_RTOL * scale
        if keep.any():
            lam, vec = lam[keep][::-1], vec[:, keep][:, ::-1]
            take = min(lam.size, m_cap - k)
            proj = vec[:, :take] / np.sqrt(lam[:take])
            f[:, k:k + take] = g @ proj
            if ft is not None:
                gt = source.test_columns(idx) - ft[:, :k] @ f[idx, :k].T
                ft[:, k:k + take] = gt @ proj
            d -= np.einsum("ij,ij->i", f[:, k:k + take], f[:, k:k + take])
            k += take
            if bar is not None:
                bar.update(take)
        np.maximum(d, 0.0, out=d)
        d[idx] = 0.0  # landmarks are interpolated exactly (up to the dropped pivots)
        if method == "uniform" and pos >= n:
            break
        if float(d.max(initial=0.0)) <= PIVOT_RTOL * scale:
            break  # the kernel's numerical rank is reached
    if bar is not None:
        bar.close()
    return _Pivots(f[:, :k], None if ft is None else ft[:, :k], d, landmarks, reads, blocks)


def _chosen_rank(rank: int | None, target_norm: float | None, residual_trace: float,
                 s: np.ndarray, r_cap: int) -> int:
    """The kept rank: ``min(rank, k)``, or with ``target_norm`` the fewest ``r`` with
    ``trace(E) + S_{r+1} <= target_norm`` (``S`` descending; all ``k`` if none), capped."""
    k = s.size
    if rank is not None:
        return min(rank, k)
    budget = target_norm - residual_trace
    over = np.flatnonzero(s > budget) if budget > 0 else np.arange(k)
    r = k if (budget <= 0 or over.size == k) else (int(over[-1]) + 1 if over.size else 1)
    return min(max(r, 1), r_cap) if k else 0

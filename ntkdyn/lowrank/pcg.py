r"""Two-level preconditioned conjugate gradients for ``M = (I - W) (x) I_r + blockdiag(S_q)``.

``W`` is a symmetric ``Q x Q`` matrix with eigenvalues in ``[-1, 1]``, a simple eigenvalue
``1`` and unit eigenvector ``z > 0`` (``z = 1 / sqrt(Q)`` for a doubly stochastic ``W``;
``z = sqrt(pi)`` for the symmetrised ``Pi^{1/2} W Pi^{-1/2}`` of a reversible ``W``,
:func:`ntkdyn.graphs.symmetrised`), and ``S_q`` are symmetric ``r x r`` blocks with ``M``
positive definite: the steady state of DGD on the low-rank
coordinates (``S_q = eta_q G_q / N_q``, :mod:`ntkdyn.lowrank.steady_state`), and the
extreme eigenvalues of the same ``M`` that give the feature operator's spectral radius
(:mod:`ntkdyn.lowrank.radius`, LOBPCG with this preconditioner).  Each iteration costs
``O(Q r^2 K + Q^2 r K)`` on ``K`` columns at once; no ``(Q r)^2`` matrix is formed.

The preconditioner is additive and two-level: the agents' diagonal blocks
``(1 - W_qq) I + S_q`` (one ``r x r`` Cholesky each) plus the exact solve on the consensus
directions ``Z = z (x) I_r``, where ``Z^T M Z = C = sum_q z_q^2 S_q`` (``(I - W) z = 0``):
``P^{-1} = blockdiag^{-1} + Z C^{-1} Z^T``, symmetric positive definite.  Without the
coarse term the slow directions (consensus, small curvature) cost thousands of
iterations; with ``1 / sqrt(Q)`` in place of a reversible ``W``'s ``sqrt(pi)`` the
preconditioner stays positive definite (the same solution) but misses those directions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

__all__ = ["TwoLevelPCG", "consensus_vector"]

EXACT = jax.lax.Precision.HIGHEST
#: relative residual at which the conjugate gradients stop, and their iteration cap
CG_RTOL, CG_MAXITER = 1e-12, 20_000


@jax.jit
def _apply_m(x, w, sg, local, coarse, z):
    """``M x = x - (W (x) I) x + blockdiag(S_q) x`` on ``(Q, r, K)``."""
    return x - jnp.tensordot(w, x, axes=1, precision=EXACT) + jnp.matmul(sg, x,
                                                                          precision=EXACT)


@jax.jit
def _precondition(res, w, sg, local, coarse, z):
    """``P^{-1} res``: the agents' inverted diagonal blocks plus the consensus correction
    ``Z C^{-1} Z^T res`` (``coarse = C^{-1}``, ``Z = z (x) I_r``)."""
    zres = jnp.tensordot(z, res, axes=1, precision=EXACT)
    return jnp.matmul(local, res, precision=EXACT) + z[:, None, None] * jnp.matmul(
        coarse, zres, precision=EXACT)[None]


@jax.jit
def _cg_step(x, res, p, rz, w, sg, local, coarse, zc):
    """One preconditioned conjugate-gradient step on every column."""
    ap = _apply_m(p, w, sg, local, coarse, zc)
    step = rz / jnp.sum(p * ap, axis=(0, 1))
    x, res = x + step * p, res - step * ap
    z = _precondition(res, w, sg, local, coarse, zc)
    rz_new = jnp.sum(res * z, axis=(0, 1))
    return x, res, z + (rz_new / rz) * p, rz_new


def consensus_vector(w: np.ndarray) -> np.ndarray:
    """The unit vector ``z > 0`` with ``w z = z`` of a symmetric ``w`` (module docstring):
    ``1 / sqrt(Q)`` where the rows sum to 1 (no eigendecomposition), else the eigenvector
    of ``w``'s largest eigenvalue (``sqrt(pi)`` for a symmetrised reversible ``W``);
    ``ValueError`` naming ``mixing`` where that eigenvalue is not 1 or the vector has a
    zero or negative entry."""
    q = w.shape[0]
    if np.allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-12):
        return np.full(q, 1.0 / np.sqrt(q))
    vals, vecs = np.linalg.eigh(w)
    z = vecs[:, -1] * np.sign(vecs[:, -1].sum())
    if abs(vals[-1] - 1.0) > 1e-10 or not np.all(z > 0):
        raise ValueError("mixing: expected a symmetric matrix whose largest eigenvalue is 1 "
                         f"with a positive eigenvector; got largest eigenvalue {vals[-1]:.6g}")
    return z


class TwoLevelPCG:
    """``M x = b`` for ``M = (I - W) (x) I_r + blockdiag(S_q)`` (module docstring).

    ``mixing``: ``(Q, Q)`` symmetric, its eigenvalue ``1`` simple with eigenvector ``z > 0``
    (module docstring: unit row sums, or a reversible ``W`` symmetrised); ``blocks``:
    ``(Q, r, r)``, the ``S_q``.  The preconditioner is factorised once, in the constructor;
    :meth:`solve` then costs one operator and one preconditioner application per
    iteration.  A ``scipy.linalg.LinAlgError`` from the constructor means a block or the
    coarse matrix is not positive definite (``M`` is not).
    """

    def __init__(self, mixing, blocks, rtol: float = CG_RTOL, maxiter: int = CG_MAXITER):
        w = np.asarray(mixing, dtype=np.float64)
        blocks = np.asarray(blocks, dtype=np.float64)
        q, r = blocks.shape[0], blocks.shape[1]
        eye = np.eye(r)
        local = np.stack([scipy.linalg.cho_solve(scipy.linalg.cho_factor(
            (1.0 - w[i, i]) * eye + blocks[i]), eye) for i in range(q)])
        z = consensus_vector(w)
        coarse = scipy.linalg.cho_solve(scipy.linalg.cho_factor(
            np.tensordot(z ** 2, blocks, axes=1)), eye)
        self.args = tuple(jnp.asarray(a) for a in (w, blocks, local, coarse, z))
        self.mixing, self.blocks = self.args[0], self.args[1]  # W and the S_q, on device
        self.consensus = z  # W's unit eigenvector of eigenvalue 1 (consensus_vector)
        self.rtol, self.maxiter = rtol, maxiter
        self.iterations = 0  # of the last solve

    def matvec(self, x) -> np.ndarray:
        """``M x`` on ``(Q, r, K)``."""
        return np.asarray(_apply_m(jnp.asarray(x), *self.args))

    def precondition(self, x) -> np.ndarray:
        """``P^{-1} x`` on ``(Q, r, K)`` (symmetric positive definite)."""
        return np.asarray(_precondition(jnp.asarray(x), *self.args))

    def solve(self, rhs, what: str = "the conjugate gradients") -> np.ndarray:
        """``x`` with ``M x = rhs`` (``(Q, r, K)``, every column at once) to a relative
        residual of ``rtol``; ``RuntimeError`` naming ``what`` after ``maxiter``
        iterations.  :attr:`iterations` is set to the iterations used."""
        rhs = np.asarray(rhs, dtype=np.float64)
        x, res = jnp.zeros(rhs.shape), jnp.asarray(rhs)
        norm_b = np.sqrt(np.sum(rhs ** 2, axis=(0, 1)))
        norm_b[norm_b == 0] = 1.0
        z = _precondition(res, *self.args)
        p, rz = z, jnp.sum(res * z, axis=(0, 1))
        for it in range(self.maxiter):
            norms = np.sqrt(np.asarray(jnp.sum(res ** 2, axis=(0, 1))))
            if np.all(norms <= self.rtol * norm_b):
                self.iterations = it
                return np.asarray(x)
            x, res, p, rz = _cg_step(x, res, p, rz, *self.args)
        worst = float(np.max(np.sqrt(np.asarray(jnp.sum(res ** 2, axis=(0, 1)))) / norm_b))
        raise RuntimeError(f"{what}: the conjugate gradients reached a relative residual of "
                           f"{worst:.3g} (not {self.rtol:g}) in {self.maxiter} iterations")

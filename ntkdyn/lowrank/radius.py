r"""Spectral radius of the feature operator of DGD, GD, ATC and CTA without a Krylov solve
on the slow cluster: the extreme eigenvalues of a symmetric positive definite matrix by
preconditioned LOBPCG.

On the low-rank coordinates (:mod:`ntkdyn.lowrank.stability`; state ``x = (x_1, ..., x_Q)``,
``x_q`` of ``r`` feature coordinates) the linear part of one step is

* DGD: ``B(s) = W (x) I_r - s D``;  ATC: ``(W (x) I_r)(I - s D)``;  CTA: ``(I - s D)(W (x) I_r)``;
  GD (no mixing): DGD's form with ``W = I``,

with ``D = blockdiag(d_q G_q / N_q)``, ``G_q = Phi_q^T Phi_q`` the agents' Gram matrices and
``d_q`` the rate profile.  Unlike the kernel-space operator (:mod:`ntkdyn.dynamics.radius`)
the local term has full rank ``Q r``, so there is no small Woodbury capacitance; but ``D``
is symmetric, so for DGD with a symmetric ``W``, **``B(s)`` is itself symmetric**, and

    B(s) = I - M(s),   M(s) = (I - W) (x) I_r + s D,

with ``M`` positive definite (the steady state's matrix, :mod:`ntkdyn.lowrank.steady_state`;
``I - W`` is PSD with kernel the consensus directions, on which ``s D`` is positive
definite).  So ``lambda_max(B) = 1 - mu_min(M)``, ``lambda_min(B) = 1 - mu_max(M)`` and
``rho(B) = max(1 - mu_min, mu_max - 1)``.

**Top end.**  The slow modes are near-consensus directions of small curvature; their
eigenvalues ``mu`` differ by parts in ``10^5`` of their distance from 0, so Krylov on ``B``
needs thousands of products.  LOBPCG on ``M`` (``scipy.sparse.linalg.lobpcg``, a block of
``LOBPCG_BLOCK`` vectors) with the two-level preconditioner of
:class:`~ntkdyn.lowrank.pcg.TwoLevelPCG` (block Jacobi plus the exact consensus solve, the
slow directions' space) converges in tens to hundreds of iterations (from a random block:
86 at rank 128, 217 at rank 512 of XL-data; fewer from the consensus start below), each
one product with ``M`` and one with the preconditioner.  The
residual tolerance ``LOBPCG_TOL`` bounds the eigenvalue's error by ``LOBPCG_TOL^2 / gap``;
the result is accepted only if its own residual is below ``10 LOBPCG_TOL``, and the tests
compare it with the dense spectrum to ``1e-10``.

**Starting block.**  The slow modes are near-consensus: on ``1_Q (x) z`` the Rayleigh
quotient of ``M`` is ``z^T C z``, ``C = s sum_q d_q G_q / (Q N_q)`` (the coarse matrix of
the preconditioner; ``(I - W) 1 = 0``), and the eigenvector of ``mu_min`` differs from
``1_Q (x) z_min`` by terms of order ``s ||D_q - D_mean|| / (1 - lambda_2(W))``.  So LOBPCG
starts from the consensus lifts of ``C``'s ``LOBPCG_BLOCK`` smallest eigenvectors (one
``r x r`` ``eigh``), mapped as the symmetric form maps the eigenvectors of ``B``
(``S^{1/2}`` for ``S^{1/2} W S^{1/2}``; ``W^{1/2}`` fixes consensus), instead of a random
block (:func:`consensus_start`).  On XL-data (100 agents, rank 512, lr 0.25) the start's
Rayleigh quotient is within 0.2 % of ``mu_min``, and the products of ``M`` (columns) fell
from 725 to 335 for DGD (15.0 s to 6.7 s) and from 672 to 317 for ATC's
``S^{1/2} W S^{1/2}`` (33.3 s to 15.4 s), the radii unchanged to the last digit (338 and
321 products with the start's random component, :data:`START_NOISE`).  The
largest end keeps a random start (its eigenvector is local, not consensus).

**Bottom end.**  Only when it can matter (``1 - mu_max <= lo`` could exceed the top in
modulus, ``lo = lambda_min(W) - s curv``): ``mu_max(M)`` by the same LOBPCG, largest end.

**GD** (``W = I``): ``B`` is block diagonal, and the radius is
``max_q max_i |1 - s d_q lambda_i(G_q) / N_q|`` from the Gram matrices' eigenvalues.

**ATC and CTA** (``W S`` and ``S W``, ``S = I - s D``, whose characteristic polynomials
agree) are similar to the symmetric ``C = W^{1/2} S W^{1/2}`` when ``W >= 0``, and to
``C = S^{1/2} W S^{1/2}`` when ``S >= 0`` (``s curv <= 1``; ``S^{1/2}`` from the Gram
matrices' eigendecompositions); ``I - C`` is positive definite and takes the place of ``M``
(:func:`_symmetric_complement`).

Non-symmetric ``W``, ATC/CTA with an indefinite ``W`` above ``1 / curv``, mixing sequences
and augmented states return ``None``: the caller falls back to ARPACK on ``B``.  The form is
read off the operator itself by one product with a random block
(:func:`ntkdyn.dynamics.radius.detect_form`).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.sparse.linalg as spla

from ntkdyn import graphs
from ntkdyn._utils.threads import one_blas_thread
from ntkdyn.dynamics.radius import FORMS, FormStep
from ntkdyn.lowrank.pcg import TwoLevelPCG, consensus_vector

__all__ = ["FeatureStep", "feature_radius", "gram_eigh"]

#: LOBPCG's block size, residual tolerance and iteration cap
LOBPCG_BLOCK, LOBPCG_TOL, LOBPCG_MAXITER = 4, 1e-10, 1000
#: relative size of the random component added to every column of the consensus start
#: (:func:`consensus_start`)
START_NOISE = 1e-3
EXACT = jax.lax.Precision.HIGHEST


def gram_eigh(grams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(lam, vecs)``: the eigendecomposition of every block of ``grams`` ``(Q, r, r)``
    (``(Q, r)`` ascending, ``(Q, r, r)``), one ``eigh`` per agent on one BLAS thread."""
    with one_blas_thread():
        pairs = [np.linalg.eigh(g) for g in grams]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


class FeatureStep(FormStep):
    """``B(s)`` of DGD/ATC/CTA/GD on the feature coordinates, in numpy, on states
    ``(Q, r, c)``.  ``grams``: ``(Q, r, r)``; ``counts``: ``N_q``; ``profile``: ``d_q``;
    ``eigh``: a callable returning the Gram matrices' eigendecompositions (computed once by
    :meth:`~ntkdyn.lowrank.stability.FeatureProblem.agent_eigh`), needed by GD and by
    ATC/CTA with an indefinite ``W``; ``rows``: the agents' zero padded feature rows
    ``Phi_q`` ``(Q, n, r)``, given where they are fewer numbers than the Gram matrices
    (:attr:`~ntkdyn.lowrank.stability.FeatureProblem.gram_form`), so that a product
    reads them, ``G_q x = Phi_q^T (Phi_q x)``."""

    def __init__(self, grams, mixing, counts, profile, form: str, eigh=None, rows=None):
        if form not in FORMS:
            raise ValueError(f"form: expected one of {FORMS}, got {form!r}")
        self.grams = np.asarray(grams, dtype=np.float64)
        self.w = np.asarray(mixing, dtype=np.float64)
        self.q, self.r = self.grams.shape[0], self.grams.shape[1]
        if form == "gd":  # centralised steps per agent: DGD's form with W = I
            self.w, form = np.eye(self.q), "dgd"
        self.scale = np.asarray(profile, dtype=np.float64) / np.asarray(counts)  # d_q / N_q
        self.form = form
        self._eigh = eigh
        self.rows = None if rows is None else np.asarray(rows, dtype=np.float64)
        sym = 0.5 * (self.w + self.w.T)
        self.lam_w, self.vecs_w = np.linalg.eigh(sym)

    def eigh(self) -> tuple[np.ndarray, np.ndarray]:
        """The eigendecompositions of the Gram matrices, ``(Q, r)`` and ``(Q, r, r)``
        (from the ``eigh`` callable given, else computed here once)."""
        if self._eigh is None:
            found = gram_eigh(self.grams)
            self._eigh = lambda: found
        return self._eigh()

    def local(self, x: np.ndarray) -> np.ndarray:
        """``D x``: ``d_q G_q x_q / N_q``."""
        if self.rows is not None:
            gx = np.matmul(self.rows.transpose(0, 2, 1), np.matmul(self.rows, x))
            return self.scale[:, None, None] * gx
        return self.scale[:, None, None] * np.matmul(self.grams, x)

    def mix(self, x: np.ndarray) -> np.ndarray:
        return np.tensordot(self.w, x, axes=1)



def block_size(dim: int) -> int:
    """LOBPCG's block: :data:`LOBPCG_BLOCK` columns, at most a fifth of ``dim``."""
    return min(LOBPCG_BLOCK, max(1, dim // 5))


def consensus_start(step: FeatureStep, s: float) -> np.ndarray:
    """The starting block of the small end (module docstring), ``(Q r, block)``: the
    consensus lifts ``c (x) z_i`` of the smallest eigenvectors of
    ``C = s sum_q c_q^2 d_q G_q / N_q`` (``c``: ``W``'s unit eigenvector of eigenvalue 1,
    :func:`~ntkdyn.lowrank.pcg.consensus_vector`; ``1 / sqrt(Q)`` for a doubly stochastic
    ``W``, ``sqrt(pi)`` for a symmetrised reversible one), times ``S^{1/2}`` for ATC/CTA's
    ``S^{1/2} W S^{1/2}`` form (indefinite ``W``); columns beyond ``r`` are random, and every
    column gets a random component of relative size :data:`START_NOISE`."""
    q, r = step.q, step.r
    block = block_size(q * r)
    c = consensus_vector(step.w)
    coarse = s * np.tensordot(c ** 2, step.scale[:, None, None] * step.grams, axes=1)
    z = np.linalg.eigh(coarse)[1][:, :min(block, r)]
    if z.shape[1] < block:
        extra = np.random.default_rng(0).standard_normal((r, block - z.shape[1]))
        z = np.concatenate([z, extra], axis=1)
    x0 = c[:, None, None] * z[None]
    if step.form != "dgd" and step.lam_w[0] < -1e-12:  # S^{1/2} W S^{1/2}
        lam, vecs = step.eigh()
        sig = np.sqrt(np.clip(1.0 - s * step.scale[:, None] * lam, 0.0, None))[:, :, None]
        x0 = np.matmul(vecs, sig * np.matmul(np.swapaxes(vecs, 1, 2), x0))
    x0 = np.ascontiguousarray(x0).reshape(q * r, block)
    # a random component of relative size START_NOISE in every column: where a symmetry of
    # W and the Gram matrices kept the slowest mode orthogonal to every consensus lift, the
    # iteration would otherwise never see it (measured at XL: 338 products against 335)
    noise = np.random.default_rng(0).standard_normal(x0.shape)
    return x0 + START_NOISE * noise * (np.linalg.norm(x0, axis=0) / np.linalg.norm(noise, axis=0))


def _extreme(matvec, precondition, shape: tuple, largest: bool,
             x0: np.ndarray | None = None) -> float | None:
    """``mu_min`` (or ``mu_max``) of a symmetric positive definite operator ``matvec`` on
    ``(Q, r, c)`` states by LOBPCG (preconditioned by ``precondition`` at the small end),
    from the block ``x0`` (``(Q r, block)``; ``None``: random); ``None`` if its residual
    has not reached :data:`LOBPCG_TOL`."""
    q, r = shape
    dim = q * r
    block = block_size(dim)

    def as_op(fn):
        def apply(x):
            x = np.asarray(x)
            cols = 1 if x.ndim == 1 else x.shape[1]
            return np.asarray(fn(x.reshape(q, r, cols))).reshape(x.shape)
        return spla.LinearOperator((dim, dim), matvec=apply, matmat=apply, dtype=np.float64)

    a = as_op(matvec)
    if x0 is None:
        x0 = np.random.default_rng(0).standard_normal((dim, block))
    with warnings.catch_warnings():  # non-convergence is judged by the residual below
        warnings.simplefilter("ignore", UserWarning)
        vals, vecs = spla.lobpcg(a, x0, M=None if largest else as_op(precondition),
                                 largest=largest, tol=LOBPCG_TOL, maxiter=LOBPCG_MAXITER)
    i = int(np.argmax(vals) if largest else np.argmin(vals))
    v = vecs[:, i] / np.linalg.norm(vecs[:, i])
    residual = float(np.linalg.norm(a.matvec(v) - vals[i] * v))
    return float(vals[i]) if residual <= 10 * LOBPCG_TOL * max(1.0, abs(vals[i])) else None


def _gd_radius(step: FeatureStep, s: float) -> float:
    """``max_q max_i |1 - s d_q lambda_i(G_q) / N_q|`` (GD: block diagonal ``B``)."""
    lam = step.eigh()[0] * step.scale[:, None] * s
    return float(np.max(np.abs(1.0 - lam)))


@jax.jit
def _complement_psd_w(x, w, sd, root):
    """``(I - W^{1/2} S W^{1/2}) x = x - W x + W^{1/2} s D W^{1/2} x`` (ATC/CTA, ``W >= 0``)."""
    h = jnp.tensordot(root, x, axes=1, precision=EXACT)
    return (x - jnp.tensordot(w, x, axes=1, precision=EXACT)
            + jnp.tensordot(root, jnp.matmul(sd, h, precision=EXACT), axes=1, precision=EXACT))


@jax.jit
def _complement_psd_s(x, w, sd, vecs, sig):
    """``(I - S^{1/2} W S^{1/2}) x = s D x + S^{1/2} (I - W) S^{1/2} x`` (ATC/CTA,
    ``S >= 0``); ``S_q^{1/2} = V_q diag(sig_q) V_q^T`` from ``G_q = V_q Lambda_q V_q^T``."""
    def half(v):
        return jnp.matmul(vecs, sig * jnp.matmul(jnp.swapaxes(vecs, 1, 2), v,
                                                 precision=EXACT), precision=EXACT)

    h = half(x)
    return jnp.matmul(sd, x, precision=EXACT) + half(
        h - jnp.tensordot(w, h, axes=1, precision=EXACT))


def _symmetric_complement(step: FeatureStep, s: float, curv: float, solver: TwoLevelPCG):
    """``(I - C, lo)``: the matvec of ``I - C`` for a symmetric ``C`` with the spectrum of
    ``B(s)``, and a lower bound ``lo`` of that spectrum (:func:`has_symmetric_form` holds).

    DGD: ``C = B``, ``I - C = M``, the product of ``solver``.  ATC/CTA (``WS`` and ``SW``,
    ``S = I - s D``): ``C = W^{1/2} S W^{1/2}`` when ``W >= 0``
    (``I - C = (I - W) + s W^{1/2} D W^{1/2}``, ``lo = min(0, 1 - s curv)``), else
    ``C = S^{1/2} W S^{1/2}`` (``s curv <= 1``; ``I - C = s D + S^{1/2} (I - W) S^{1/2}``,
    ``lo = min(lambda_min(W), 0)``, ``S^{1/2}`` from the Gram matrices' eigendecompositions).
    ``s D`` is the solver's blocks."""
    lam_w = step.lam_w
    if step.form == "dgd":
        return solver.matvec, lam_w[0] - s * curv
    w, sd = solver.mixing, solver.blocks
    if lam_w[0] >= -1e-12:
        root = jnp.asarray((step.vecs_w * np.sqrt(np.clip(lam_w, 0.0, None))) @ step.vecs_w.T)
        return (lambda x: _complement_psd_w(x, w, sd, root)), min(0.0, 1.0 - s * curv)
    lam, vecs = step.eigh()
    sig = jnp.asarray(np.sqrt(np.clip(1.0 - s * step.scale[:, None] * lam, 0.0, None))[:, :, None])
    vecs = jnp.asarray(vecs)
    return (lambda x: _complement_psd_s(x, w, sd, vecs, sig)), min(float(lam_w[0]), 0.0)


def has_symmetric_form(step: FeatureStep, s: float, curv: float) -> bool:
    """Whether ``B(s)`` has a symmetric similar form here: DGD, or ATC/CTA with ``W >= 0``
    or ``s curv <= 1`` (a symmetric ``W`` assumed)."""
    return step.form == "dgd" or step.lam_w[0] >= -1e-12 or s * curv <= 1.0


def feature_radius(step: FeatureStep, s: float, curv: float) -> float | None:
    """``rho(B(s))`` (module docstring); ``None`` where no symmetric form is known (a
    non-symmetric ``W``; ATC/CTA with an indefinite ``W`` above ``1 / curv``), the
    preconditioner is singular, or LOBPCG did not reach its tolerance."""
    if not graphs.is_symmetric(step.w):
        return None
    if np.array_equal(step.w, np.eye(step.q)):
        return _gd_radius(step, s)  # GD; ATC/CTA with W = I are GD too
    if not has_symmetric_form(step, s, curv):
        return None
    shape = (step.q, step.r)
    try:
        solver = TwoLevelPCG(step.w, s * step.scale[:, None, None] * step.grams)
        matvec, lo = _symmetric_complement(step, s, curv, solver)
        mu_min = _extreme(matvec, solver.precondition, shape, largest=False,
                          x0=consensus_start(step, s))
        if mu_min is None:
            return None
        top = 1.0 - mu_min
        if -lo <= abs(top):
            return abs(top)
        mu_max = _extreme(matvec, solver.precondition, shape, largest=True)
    except (scipy.linalg.LinAlgError, np.linalg.LinAlgError):
        return None
    if mu_max is None:
        return None
    return max(abs(top), mu_max - 1.0)

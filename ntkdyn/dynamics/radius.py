r"""Spectral radius of the one-step operator of DGD, ATC and CTA without a Krylov solve
on the slow cluster: shift-invert through a rank-``m`` (Woodbury) solve.

In alpha coordinates (state ``x = (x_1, ..., x_Q)``, ``x_q`` of ``R`` rows) the linear
part of one step of the three adapt/combine schedules is ``W (x) I`` plus a rank-``m``
term (``m = R``: every agent's gradient lives on its own ``m_q`` rows):

* DGD: ``A(s) = 𝒲 - s U V^T``;  ATC: ``A(s) = 𝒲 (I - s U V^T)``;
  CTA: ``A(s) = (I - s U V^T) 𝒲``;  GD (no mixing): DGD's form with ``W = I``,

with ``𝒲 = W (x) I_R``, ``U = blockdiag(d_q E_q / N_q)`` (``R Q x m``; ``E_q`` selects agent
``q``'s rows, ``d_q`` its rate profile, ``N_q`` its sample count) and
``V^T = blockdiag(E_q^T Theta)`` (``m x R Q``): ``U V^T`` is ``D H``, the local gradient at
unit rate.  For ``sigma`` outside the spectrum of ``W`` and ``G = (W - sigma I)^{-1}``,
Woodbury gives (with ``P = U`` and ``Q^T = V^T`` for DGD, ``P = 𝒲 U`` for ATC,
``Q^T = V^T 𝒲`` for CTA)

    (A - sigma)^{-1} b = y + s (G (x) I) P C^{-1} Q^T y,   y = (G (x) I) b,
    C = I_m - s Q^T (G (x) I) P,   C_{ij} = delta_ij - s Theta_ij F_{a(i) a(j)} d_a(j) / N_a(j)

(``a(i)`` the agent of row ``i``; ``F = G`` for DGD, ``G W = W G`` for ATC/CTA).  ``C`` is
``m x m`` (800 for the default configuration, against ``Q m = 6,400`` for ``A``): one LU
factorisation, then every solve costs two passes over the agents' kernel rows.

**Which eigenvalue.**  For a symmetric ``W`` the spectrum of ``A`` is real whenever it is
similar to a symmetric matrix: always for DGD (``𝒲 - s D B`` in the coordinates
``Theta^{1/2} x``, ``B = blockdiag(Theta^{1/2} E_q E_q^T Theta^{1/2} / N_q)`` PSD), and for
ATC/CTA when ``W >= 0`` (``W^{1/2} (I - s D B) W^{1/2}``) or ``s curv <= 1``
(``S^{1/2} W S^{1/2}``, ``S = I - s D B >= 0``; ``curv = max_q d_q lambda_max(Theta_qq)/N_q``).
On the null space of ``Theta`` the operator is ``𝒲`` (eigenvalues of ``W``).  Then every
eigenvalue is ``<= 1`` (``W <= I``, ``D B >= 0``, ``0 <= S <= I``) and ``>= lo`` with
``lo = lambda_min(W) - s curv`` (DGD), ``min(lambda_min(W), 0)`` (ATC/CTA, ``S >= 0``) or
``min(0, 1 - s curv)`` (ATC/CTA, ``W >= 0``).  So the eigenvalue nearest
``sigma = 1 + delta`` is ``lambda_max`` and the one nearest ``lo - delta`` is
``lambda_min``: shift-invert Arnoldi finds each in tens of solves however tightly the slow
modes cluster below 1 (``theta = 1/(lambda - sigma)`` separates them), and
``rho = max(|lambda_max|, |lambda_min|)``; ``lambda_min`` is computed only when ``-lo``
exceeds ``|lambda_max|``.  The result is exact up to the eigensolver's tolerance
(``1e-12`` on ``theta``, so ``~1e-12 |lambda - sigma|`` on ``lambda``); the tests compare
it with the dense spectrum to ``1e-8``.

Anything else (non-symmetric ``W``, a sequence, an augmented state, a schedule whose
operator is none of the three forms, ATC/CTA with indefinite ``W`` above ``1 / curv``)
returns ``None`` and the caller falls back to ARPACK.  The form is read off the operator
itself: its product with a random block of vectors must equal one of the three forms'
(a linear map equal to another on a Gaussian vector equals it almost surely).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse.linalg as spla

from ntkdyn import graphs
from ntkdyn._utils.threads import one_blas_thread

#: shift above 1 (and below the lower bound): far below the slow modes' distance from 1
#: (1.2e-4 on the default configuration) so that shift-invert separates them, far above
#: the round-off of the solves
SHIFT = 1e-6
#: ARPACK's relative tolerance on the shift-inverted Ritz values (:func:`nearest`)
NEAREST_TOL = 1e-10
FORM_RTOL = 1e-10
FORMS = ("dgd", "atc", "cta", "gd")


class FormStep:
    """``A(s)`` of the adapt/combine forms from a subclass's ``mix`` (``W (x) I``) and
    ``local`` (the local gradient's linear part at unit rate, ``D H``): DGD ``W - s D H``,
    ATC ``W (I - s D H)``, CTA ``(I - s D H) W`` (``form``: ``"dgd"``, ``"atc"``, ``"cta"``;
    GD is DGD with ``W = I``)."""

    form: str

    def apply(self, x: np.ndarray, s: float) -> np.ndarray:
        """``A(s) x`` on states ``(Q, R, c)``."""
        if self.form == "dgd":
            return self.mix(x) - s * self.local(x)
        if self.form == "atc":
            return self.mix(x - s * self.local(x))
        y = self.mix(x)
        return y - s * self.local(y)


class LowRankStep(FormStep):
    """``A(s)`` of DGD/ATC/CTA as ``W (x) I`` plus a rank-``m`` term, in numpy.

    ``kernel`` is the problem's ``(R, R)`` kernel (rows in agent order), ``offsets`` the
    agents' sample offsets, ``rps`` the rows per sample, ``counts`` the samples per agent,
    ``profile`` the per-agent rate profile ``d_q``, ``form`` one of :data:`FORMS`.
    """

    def __init__(self, kernel, mixing, offsets, rps: int, profile, form: str):
        if form not in FORMS:
            raise ValueError(f"form: expected one of {FORMS}, got {form!r}")
        self.kernel = np.asarray(kernel, dtype=np.float64)
        self.w = np.asarray(mixing, dtype=np.float64)
        self.q, self.r = self.w.shape[0], self.kernel.shape[0]
        if form == "gd":  # centralised steps per agent: DGD's form with W = I
            self.w, form = np.eye(self.q), "dgd"
        counts = np.diff(np.asarray(offsets))
        self.bounds = [(offsets[i] * rps, offsets[i + 1] * rps) for i in range(self.q)]
        self.scale = np.asarray(profile, dtype=np.float64) / counts  # d_q / N_q
        self.agent_of_row = np.repeat(np.arange(self.q), counts * rps)
        self.form = form

    # -- the pieces: U, V^T, W (x) I on states (Q, R, c)
    def vt(self, x: np.ndarray) -> np.ndarray:
        """``V^T x``: ``(m, c)``, agent ``q``'s rows ``Theta[S_q, :] x_q``."""
        return np.concatenate([self.kernel[a:b] @ x[i] for i, (a, b) in enumerate(self.bounds)])

    def u(self, g: np.ndarray) -> np.ndarray:
        """``U g``: agent ``q`` gets ``d_q g[S_q] / N_q`` on its rows, zero elsewhere."""
        out = np.zeros((self.q, self.r, g.shape[1]))
        for i, (a, b) in enumerate(self.bounds):
            out[i, a:b] = self.scale[i] * g[a:b]
        return out

    def mix(self, x: np.ndarray, m: np.ndarray | None = None) -> np.ndarray:
        return np.tensordot(self.w if m is None else m, x, axes=1)

    def local(self, x: np.ndarray) -> np.ndarray:
        """``D H x = U V^T x`` (the local gradient's linear part at unit rate)."""
        return self.u(self.vt(x))

    # -- the shift-invert solve
    def inverse(self, s: float, sigma: float):
        """``b -> (A(s) - sigma I)^{-1} b`` on states ``(Q, R, c)`` (Woodbury, module doc)."""
        g = np.linalg.inv(self.w - sigma * np.eye(self.q))
        f = g if self.form == "dgd" else g @ self.w
        rows = self.agent_of_row
        cap = np.eye(self.r) - s * self.kernel * f[np.ix_(rows, rows)] * self.scale[rows][None, :]
        lu = scipy.linalg.lu_factor(cap, check_finite=False)

        def solve(b):
            y = self.mix(b, g)
            t = self.vt(self.mix(y) if self.form == "cta" else y)
            p = self.u(scipy.linalg.lu_solve(lu, t, check_finite=False))
            if self.form == "atc":
                p = self.mix(p)
            return y + s * self.mix(p, g)

        return solve


def nearest(step: LowRankStep, s: float, sigma: float, k: int = 3) -> np.ndarray:
    """The ``k`` eigenvalues of ``A(s)`` nearest ``sigma`` (shift-invert Arnoldi).

    ARPACK's tolerance is :data:`NEAREST_TOL`, relative to the Ritz values ``theta = 1 /
    (mu - sigma)`` of the inverse: an eigenvalue ``mu`` then carries an error of about
    ``tol |mu - sigma|`` (times the eigenvector condition), 1e-16 for the one nearest a
    shift of ``1 + SHIFT``.  A tighter tolerance can lie below the Woodbury solve's own
    accuracy (relative residual 5e-11 measured on a cross-entropy linearisation of an
    empirical kernel, 115 eigenvalues exactly 1 and 396 within 1e-3 of it): ARPACK then
    never converged (2,000 restarts, 7 s) and the radius fell back to a 55 s Krylov search.
    """
    dim = step.q * step.r
    solve = step.inverse(s, sigma)
    shape = (step.q, step.r, 1)
    op = spla.LinearOperator((dim, dim), dtype=np.float64,
                             matvec=lambda v: solve(np.reshape(v, shape)).ravel())
    v0 = np.random.default_rng(0).standard_normal(dim)
    theta = spla.eigs(op, k=min(k, dim - 2), which="LM", tol=NEAREST_TOL, v0=v0,
                      ncv=min(dim - 1, 24), maxiter=2000, return_eigenvectors=False)
    return sigma + 1.0 / theta


def real_spectrum_bounds(w: np.ndarray, form: str, s: float, curv: float):
    """``lo`` with every eigenvalue of ``A(s)`` in ``[lo, 1]`` and real, or ``None`` when
    the spectrum is not known to be real (module doc; ``w`` symmetric)."""
    lam = float(np.linalg.eigvalsh(0.5 * (w + w.T))[0])
    if form == "dgd":
        return lam - s * curv
    if s * curv <= 1.0:
        return min(lam, 0.0)
    if lam >= -1e-12:
        return min(0.0, 1.0 - s * curv)
    return None


def heavy_ball_modulus(lam: float, beta: float) -> float:
    """The larger modulus of the roots of ``mu^2 - (lam + beta) mu + beta`` (real ``lam``):
    ``sqrt(beta)`` for a complex pair, else ``(|lam + beta| + sqrt(disc)) / 2``."""
    b = lam + beta
    disc = b * b - 4.0 * beta
    return float(np.sqrt(beta)) if disc < 0 else 0.5 * (abs(b) + float(np.sqrt(disc)))


def heavy_ball_radius(step: LowRankStep, s: float, curv: float, beta: float) -> float | None:
    """``rho`` of heavy-ball momentum on DGD (``step``: DGD's form) from DGD's extreme
    eigenvalues: every eigenvalue ``lam`` of ``A(s)`` (real, in ``[lo, 1]``, module doc)
    gives the roots of ``mu^2 - (lam + beta) mu + beta``, whose larger modulus
    (:func:`heavy_ball_modulus`) grows with ``|lam + beta|`` outside the complex band, so
    the radius is the larger of its values at ``lambda_max`` and ``lambda_min`` (the latter
    computed only when its bound ``lo`` could exceed the former).  ``None`` where the
    spectrum is not known to be real or the eigensolver did not converge."""
    if step.form != "dgd" or not graphs.is_symmetric(step.w):
        return None
    lo = real_spectrum_bounds(step.w, "dgd", s, curv)
    ends = _extreme_eigenvalues(step, s, lo, lambda top: heavy_ball_modulus(lo, beta) >
                                heavy_ball_modulus(top, beta))
    return None if ends is None else max(heavy_ball_modulus(e, beta) for e in ends)


def structured_radius(step: LowRankStep, s: float, curv: float) -> float | None:
    """``rho(A(s))`` by shift-invert at both ends of the real spectrum (module doc);
    ``None`` where the spectrum is not known to be real (non-symmetric ``W``, ATC/CTA with
    indefinite ``W`` above ``1 / curv``) or the eigensolver did not converge."""
    if not graphs.is_symmetric(step.w):
        return None
    lo = real_spectrum_bounds(step.w, step.form, s, curv)
    if lo is None:
        return None
    ends = _extreme_eigenvalues(step, s, lo, lambda top: -lo > abs(top))
    return None if ends is None else max(abs(e) for e in ends)


def _extreme_eigenvalues(step: LowRankStep, s: float, lo: float, bottom_matters
                         ) -> tuple[float, ...] | None:
    """``(lambda_max,)`` of a real spectrum in ``[lo, 1]`` by shift-invert at ``1 + SHIFT``,
    and ``lambda_min`` (at ``lo`` minus the shift) too where ``bottom_matters(lambda_max)``;
    ``None`` if the eigensolver did not converge."""
    try:
        with one_blas_thread():
            top = float(np.max(nearest(step, s, 1.0 + SHIFT).real))
            if not bottom_matters(top):
                return (top,)
            bottom = float(np.min(nearest(step, s, lo - SHIFT * max(1.0, abs(lo))).real))
    except spla.ArpackNoConvergence:
        return None
    return top, bottom


def detect_form(step_factory, apply, local, dim_shape: tuple, s: float) -> str | None:
    """Which of :data:`FORMS` the operator ``apply(x, s)`` is, by one product with a random
    ``(Q, R, 2)`` block (``None``: none of them).  ``local`` is the operator's own
    ``D H``; it must equal the low-rank ``U V^T`` too.  ``step_factory(form)`` builds the
    :class:`LowRankStep`."""
    x = np.random.default_rng(2).standard_normal(dim_shape)
    step = step_factory("dgd")
    dh = step.local(x)
    norm = max(float(np.max(np.abs(dh))), 1e-300)
    if float(np.max(np.abs(np.asarray(local(x)) - dh))) > FORM_RTOL * norm:
        return None
    got = np.asarray(apply(x, s))
    scale = max(float(np.max(np.abs(got))), 1e-300)
    for form in FORMS:
        cand = step if form == "dgd" else step_factory(form)
        if float(np.max(np.abs(cand.apply(x, s) - got))) <= FORM_RTOL * scale:
            return form
    return None

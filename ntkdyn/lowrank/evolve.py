r"""Peer-to-peer training of the linearised model with ``r`` features (the low-rank path).

Mathematics (``theory/low_rank.md``).  With ``Theta ~ Phi Phi^T`` (``Phi`` N x r,
:mod:`ntkdyn.lowrank.factor`) every kernel-space state ``alpha_q`` enters the dynamics
only through ``beta_q = Phi^T alpha_q`` (r x K): the model is the linearised network
with ``r`` features, ``f_q(x) = f_0(x) + phi(x)^T beta_q``, and the two primitives are

* combine: ``beta_q <- sum_p W_qp beta_p``;
* local gradient: ``grad_q = (1/N_q) Phi_q^T (f_0 - Y + Phi beta_q)[S_q]``,

so DGD is ``beta_q <- sum_p W_qp beta_p - (eta_q / N_q) Phi_q^T (f0_q + Phi_q beta_q - Y_q)``
and every schedule of :mod:`ntkdyn.algorithms` runs unchanged with these
:class:`~ntkdyn.algorithms.Operators`.  One step reads ``Phi`` twice (``Phi_q beta_q``,
then ``Phi_q^T r_q``): ``4 N r K`` flops (twice that with the centralised reference,
whose columns ride along in the same reads), plus ``2 Q^2 r K`` for the mixing.  For a
kernel of rank ``<= r`` this *is* the kernel-space recursion of :mod:`ntkdyn.dynamics.solver`
(``beta_q = Phi^T alpha_q`` maps one onto the other exactly).

Recorded quantities (same conventions as :mod:`ntkdyn.trajectory`):
``||theta_q - theta_0|| = ||beta_q||_F`` (``alpha^T Phi Phi^T alpha``), distances
likewise; losses on the pooled training / test set are quadratic forms with the r x r
Gram matrices ``Phi^T Phi`` (cost ``Q r^2 K`` per record); the local loss uses each
agent's own rows; accuracies need the outputs ``f_0 + Phi beta_q`` of every agent
(``Q N r K`` per record; ``acc_rows`` evaluates them on a subset of the training rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ntkdyn import graphs
from ntkdyn._utils import memory
from ntkdyn._utils.checks import (
    agent_indices,
    as_float_array,
    check_f0_pair,
    check_shape,
    learning_rates,
    steps_array,
)
from ntkdyn.algorithms import Algorithm, Operators, get_algorithm
from ntkdyn.engine import balanced_chunk, concatenate, padded_chunks, scan_records, trim
from ntkdyn.lowrank.factor import LowRankFactor
from ntkdyn.trajectory import LOW_RANK_ESTIMATE_CAP, Trajectory

EXACT = jax.lax.Precision.HIGHEST
DIVERGENCE_FACTOR = 1e8
PAD_MAX = 1.25  # stack the agents' rows (zero padded) when padding adds at most 25 %


# --------------------------------------------------------------------------- error estimate
def error_scale(lr: np.ndarray, counts: np.ndarray, horizon: float,
                algorithm: str | Algorithm = "dgd") -> float:
    r"""``s = T_eff max_q eta_eff,q / N_q``: the a-priori error estimate is ``s ||E||_2``.

    ``T_eff`` counts gradient steps (``local_steps`` per round for P2PL);
    ``eta_eff = eta / (1 - beta)`` for heavy-ball momentum.  See ``theory/low_rank.md``.
    """
    algo = get_algorithm(algorithm)
    lr = np.asarray(lr, dtype=np.float64)
    settings = algo.settings
    t_eff = float(horizon) * float(settings.get("local_steps", 1))
    eff = lr / np.asarray(counts, dtype=np.float64)
    if algo.name == "momentum":
        eff = eff / (1.0 - float(settings["beta"]))
    return float(t_eff * eff.max())


#: both trajectories' residuals stay within ``||f_0 - Y||`` at stable rates (centralised);
#: defined beside the summary that reports an estimate at the cap
ERROR_CAP = LOW_RANK_ESTIMATE_CAP


def error_estimate(factor: LowRankFactor, scale: float) -> float:
    """A-priori estimate of ``max_{t,q} ||f_q(t) - f~_q(t)|| / ||f_0 - Y||`` (training
    outputs): ``min(2, scale * (trace(E) + S_{r+1}))``; a bound for centralised GD and ATC on
    a complete graph at stable rates, an estimate otherwise (``theory/low_rank.md``)."""
    return float(min(ERROR_CAP, scale * factor.discarded_norm))


# --------------------------------------------------------------------------- probe-row estimate
#: the reported estimate is this times the probe-row sum: room for the agents' deviation from
#: the network mean (measured <= 5 % in the tests) and for the sampling of the probe rows
ESTIMATE_MARGIN = 2.0
#: points of the Riemann sum over the gradient steps (left end of each interval)
ESTIMATE_POINTS = 500


def mean_rates(lr: np.ndarray, agent: np.ndarray, counts: np.ndarray,
               algorithm: str | Algorithm = "dgd") -> tuple[np.ndarray, float]:
    r"""Row rates of the network-mean recursion and gradient steps per step of the horizon.

    With a doubly stochastic ``W`` the agents' mean follows gradient descent on the pooled
    rows with the per-row rate ``D_ii = eta_eff,q(i) / (Q N_q(i))`` (``eta / N`` for equal
    shards and one rate); ``eta_eff = eta / (1 - beta)`` for heavy-ball momentum and
    ``local_steps`` gradient steps per round for P2PL (``theory/low_rank.md`` section 3)."""
    algo = get_algorithm(algorithm)
    counts = np.asarray(counts, dtype=np.float64)
    eff = np.asarray(lr, dtype=np.float64) / (counts.size * np.maximum(counts, 1.0))
    if algo.name == "momentum":
        eff = eff / (1.0 - float(algo.settings["beta"]))
    return eff[np.asarray(agent)], float(algo.settings.get("local_steps", 1))


@dataclass(frozen=True)
class ProbeEstimate:
    r"""The probe-row estimate of the truncation error at every rank ``r <= m`` of a factor
    ``Phi`` (N x m, eigen-coordinates), for one residual ``r_0`` and row rates ``D``.

    Centralised GD with row rates ``D`` moves the residual by ``r_{s+1} = (I - Theta D) r_s``,
    the low-rank path by ``r~_{s+1} = (I - Phi_r Phi_r^T D) r~_s``, so the error
    ``e_s = r_s - r~_s`` obeys ``e_{s+1} = (I - Theta D) e_s - E_r D r~_s`` with
    ``E_r = Theta - Phi_r Phi_r^T``: the forcing is ``E_r D r~_s``, and
    ``D r~_s = (I - D Phi_r Phi_r^T)^s D r_0``.  In ``r`` coordinates
    ``r~_s = r_0 - Phi_r h_s`` with ``h_s = sum_{j<s} (I - C_r)^j a_r``,
    ``C_r = Phi_r^T D Phi_r``, ``a_r = Phi_r^T D r_0``; the estimate is
    ``margin * sum_{s < T_eff} ||E_r D r~_s|| / ||r_0||``, each norm from the ``p`` probe
    rows ``P`` (``||v||^2 ~ (N/p) ||v[P]||^2``, unbiased for rows drawn uniformly):
    ``(E_r D r~_s)[P] = Theta[P,:] D r_0 - Phi_r[P] a_r - (Theta[P,:] D Phi_r - Phi_r[P] C_r) h_s``.
    Every rank uses leading blocks of the same products (``theory/low_rank.md`` section 3).

    With equal shards and one rate (``D = delta I``) this is the earlier
    ``D E_r (I - D Phi_r Phi_r^T)^s r_0`` exactly; with unequal row rates the two differ (by
    up to ``max D / min D``), and only ``E_r D r~_s`` is the forcing.  Rigour: for
    centralised GD ``||e_T|| <= sqrt(max D / min D) sum_s ||E_r D r~_s||`` at stable rates
    (``I - Theta D`` is similar, by ``D^(1/2)``, to a symmetric contraction); the factor is
    *not* included (it is reported as ``rate_spread`` by :func:`trajectory_estimate`), so
    with unequal row rates the reported value is an estimate, as it is peer to peer.
    """

    theta_r0: np.ndarray     # (p, K)   Theta[P, :] D r_0
    theta_dphi: np.ndarray   # (p, m)   Theta[P, :] D Phi
    phi_p: np.ndarray        # (p, m)   Phi[P]
    gram: np.ndarray         # (m, m)   Phi^T D Phi
    proj: np.ndarray         # (m, K)   Phi^T D r_0
    row_scale: np.ndarray    # (p,)     sqrt(N / p)
    norm_r0: float
    t_eff: float
    margin: float = ESTIMATE_MARGIN

    def __call__(self, rank: int) -> float:
        """The estimate (before any cap) with the leading ``rank`` coordinates."""
        if self.norm_r0 <= 0 or self.t_eff <= 0:
            return 0.0
        r = int(rank)
        c, a, phi_p = self.gram[:r, :r], self.proj[:r], self.phi_p[:, :r]
        sig, v = np.linalg.eigh((c + c.T) / 2)
        sig = np.maximum(sig, 0.0)
        e_r0 = self.theta_r0 - phi_p @ a
        mv = (self.theta_dphi[:, :r] - phi_p @ c) @ v
        b = v.T @ a
        n_pts = int(min(np.ceil(self.t_eff), ESTIMATE_POINTS))
        width = self.t_eff / n_pts
        total = 0.0
        small = sig < 1.0
        log_q = np.log1p(-np.where(small, sig, 0.0))
        inv = 1.0 / np.where(sig > 0, sig, 1.0)
        for s in np.floor(np.arange(n_pts) * width):  # (1 - (1 - sig)^s) / sig, -> s at 0
            grow = np.where(small, np.where(sig > 0, -np.expm1(s * log_q) * inv, s),
                            (1.0 - (1.0 - sig) ** s) * inv)
            total += width * float(np.linalg.norm(self.row_scale[:, None]
                                                  * (e_r0 - mv @ (grow[:, None] * b))))
        return float(self.margin * total / self.norm_r0)


def trajectory_estimate(factor: LowRankFactor, residual: np.ndarray, agent: np.ndarray,
                        lr: np.ndarray, counts: np.ndarray, horizon: float,
                        algorithm: str | Algorithm = "dgd") -> dict:
    """What ``metadata["low_rank"]`` reports about the truncation error of the training
    outputs (``theory/low_rank.md`` section 3): ``error_estimate`` (capped at 2),
    ``error_estimate_uncapped``, ``error_estimate_kind`` (``"probe rows"``, or ``"trace"``
    for a factor without probe columns), ``error_scale`` and ``error_bound_trace``, the
    earlier ``min(2, error_scale * (trace(E) + S_{r+1}))``; with probe rows also
    ``rate_spread = sqrt(max D / min D)`` of the row rates ``D`` (1 for equal shards and one
    rate): the factor by which centralised GD's error can exceed the forcing sum
    ``error_estimate_uncapped / 2`` (:class:`ProbeEstimate`), not included in the estimate."""
    scale = error_scale(lr, counts, horizon, algorithm)
    trace_bound = error_estimate(factor, scale)
    if factor.probe_columns is None or factor.rank == 0:
        return {"error_estimate": trace_bound, "error_estimate_kind": "trace",
                "error_bound_trace": trace_bound, "error_scale": scale}
    rates, per_step = mean_rates(lr, agent, counts, algorithm)
    est = probe_estimator(factor.phi, factor.probe_rows, factor.probe_columns,
                          np.asarray(residual, dtype=np.float64), rates,
                          horizon * per_step)(factor.rank)
    live = rates[rates > 0]
    spread = float(np.sqrt(live.max() / live.min())) if live.size else 1.0
    return {"error_estimate": float(min(ERROR_CAP, est)), "error_estimate_uncapped": est,
            "error_estimate_kind": "probe rows", "error_bound_trace": trace_bound,
            "error_scale": scale, "rate_spread": spread}


def probe_estimator(phi: np.ndarray, probe_rows: np.ndarray, probe_columns: np.ndarray,
                    residual: np.ndarray, rates: np.ndarray, t_eff: float,
                    margin: float = ESTIMATE_MARGIN) -> ProbeEstimate:
    """:class:`ProbeEstimate` of ``phi`` (N x m) from the probe columns ``Theta[:, P]``
    (N x p), the residual ``f_0 - Y`` (N x K) and the row rates ``D`` (N,) of
    :func:`mean_rates`: the forcing ``E D r~_s`` of ``e_{s+1} = (I - Theta D) e_s - E D r~_s``;
    ``O(N m (m + p + K))`` once, then ``O(m^3 + T p m K)`` per rank."""
    n = phi.shape[0]
    rows = np.asarray(probe_rows)
    d_phi, d_r0 = rates[:, None] * phi, rates[:, None] * residual
    cols_t = np.asarray(probe_columns).T
    return ProbeEstimate(
        theta_r0=cols_t @ d_r0, theta_dphi=cols_t @ d_phi, phi_p=phi[rows],
        gram=phi.T @ d_phi, proj=phi.T @ d_r0,
        row_scale=np.full(rows.size, np.sqrt(n / max(rows.size, 1))),
        norm_r0=float(np.linalg.norm(residual)), t_eff=float(t_eff), margin=margin)


# --------------------------------------------------------------------------- test outputs
@dataclass(frozen=True)
class HeldOutEstimate:
    r"""The probe-row estimate of the truncation error of the *test* outputs at every rank
    ``r <= m`` (``theory/low_rank.md`` section 3.1), for the residual ``r_0`` and row rates
    ``D`` of the network-mean recursion.

    The low-rank residual is ``r~_s = (I - Phi_r Phi_r^T D)^s r_0 = r_0 - Phi_r h_s``,
    ``h_s = sum_{j<s} (I - C_r)^j a_r``, ``C_r = Phi_r^T D Phi_r``, ``a_r = Phi_r^T D r_0``.
    With ``E_TX = Theta_TX - Phi_T Phi^T`` the test-train residual, the estimate is

    ``margin * (sum_s ||E_TX D r~_s|| + ||E_TX||_2 max(D) sum_s min(2 ||r_0||, b_s)
    + max_t ||Phi_T Gamma_t||) / ||f_0(X_T) - Y_T||``,   ``b_s = sum_{j<s} ||E D r~_j||``

    -- the three terms of the exact test-output error (``theory/low_rank.md`` 3.1): the
    forcing of the test outputs by the test-train residual; the training error ``b_s``
    accumulated in the kernel coefficients and read through the test-train residual; and
    the training error carried through the *retained* coordinates,
    ``Phi_T Phi^T D sum_{s<t} Delta_s`` (zero for an exact eigen-truncation at one rate, not
    for a Nystrom residual).  ``Gamma_t = sum_{s<t} g_s`` with ``g_s = Phi^T D Delta_s``,
    which obeys the retained-coordinate recursion
    ``g_{s+1} = (I - C_r) g_s - Phi^T D E D r_s``; the estimate drives it to first order in
    ``E`` with ``r~_s`` for ``r_s`` (the second-order rest, ``Phi^T D E D Delta_s``, is left
    to the margin).  Each norm or inner product is from probe rows: ``p`` training rows
    ``P`` (``(E D r~_s)[P]``, scaled ``sqrt(N/p)``; the ``r``-vectors
    ``Phi^T D E D r~_s ~ (N/p) (D Phi)[P]^T (E D r~_s)[P]``, unbiased) and ``p_T`` test rows
    ``P_T`` (``(E_TX D r~_s)[P_T]`` and ``||E_TX[P_T, :]||_2``, scaled ``sqrt(M/p_T)``);
    ``||Phi_T Gamma||_F`` is exact from ``Phi_T^T Phi_T``.  The forcing is ``E_TX D r~_s``
    with the low-rank path's own ``r~_s`` (as :class:`ProbeEstimate`'s ``E D r~_s``, the
    same sums for any row rates ``D``); with unequal rates the training error behind ``b_s``
    can exceed it by ``sqrt(max D / min D)`` (section 3), a factor left out here as there."""

    tr_r0: np.ndarray     # (p, K)      Theta[P, :] D r_0
    tr_dphi: np.ndarray   # (p, m)      Theta[P, :] D Phi
    phi_p: np.ndarray     # (p, m)      Phi[P]
    te_r0: np.ndarray     # (p_T, K)    Theta[P_T, X] D r_0
    te_dphi: np.ndarray   # (p_T, m)    Theta[P_T, X] D Phi
    phit_p: np.ndarray    # (p_T, m)    Phi_T[P_T]
    te_gram: np.ndarray   # (p_T, p_T)  Theta[P_T, X] Theta[X, P_T]
    te_phi: np.ndarray    # (p_T, m)    Theta[P_T, X] Phi
    phi_gram: np.ndarray  # (m, m)      Phi^T Phi
    gram: np.ndarray      # (m, m)      Phi^T D Phi
    proj: np.ndarray      # (m, K)      Phi^T D r_0
    dphi_p: np.ndarray    # (p, m)      (D Phi)[P]
    phit_gram: np.ndarray  # (m, m)     Phi_T^T Phi_T
    scale_train: float    # sqrt(N / p)
    scale_test: float     # sqrt(M / p_T)
    rate_max: float
    norm_test: float      # ||f_0(X_T) - Y_T||_F
    norm_train: float     # ||r_0||_F
    t_eff: float
    margin: float = ESTIMATE_MARGIN

    def cross_norm(self, rank: int) -> float:
        """``sqrt(M/p_T) ||E_TX[P_T, :]||_2`` at rank ``r`` (a p_T x p_T eigenproblem)."""
        r = int(rank)
        tp, pt = self.te_phi[:, :r], self.phit_p[:, :r]
        g = self.te_gram - tp @ pt.T - pt @ tp.T + pt @ self.phi_gram[:r, :r] @ pt.T
        top = float(np.linalg.eigvalsh((g + g.T) / 2)[-1]) if g.size else 0.0
        return self.scale_test * float(np.sqrt(max(top, 0.0)))

    def parts(self, rank: int) -> tuple[float, float, float]:
        """``(forcing, propagated, retained)``: the three terms above, before the margin and
        the normalisation (Riemann sums over at most ESTIMATE_POINTS points; the retained
        recursion is stepped exactly between them, its forcing held at the left point)."""
        r = int(rank)
        c, a = self.gram[:r, :r], self.proj[:r]
        sig, v = np.linalg.eigh((c + c.T) / 2)
        sig = np.maximum(sig, 0.0)
        b = v.T @ a
        e_tr = self.tr_r0 - self.phi_p[:, :r] @ a
        m_tr = (self.tr_dphi[:, :r] - self.phi_p[:, :r] @ c) @ v
        e_te = self.te_r0 - self.phit_p[:, :r] @ a
        m_te = (self.te_dphi[:, :r] - self.phit_p[:, :r] @ c) @ v
        # retained coordinates, in the eigenbasis v of C: u_s = v^T Phi^T D E D r~_s sampled
        dpv = self.scale_train ** 2 * (self.dphi_p[:, :r] @ v)
        pt_v = v.T @ self.phit_gram[:r, :r] @ v
        n_pts = int(min(np.ceil(self.t_eff), ESTIMATE_POINTS))
        width = self.t_eff / n_pts
        points = np.floor(np.arange(n_pts + 1) * width)
        points[-1] = max(points[-2], np.floor(self.t_eff))
        small = sig < 1.0
        log_q = np.log1p(-np.where(small, sig, 0.0))
        inv = 1.0 / np.where(sig > 0, sig, 1.0)
        forcing = accumulated = train_err = retained = 0.0
        g = np.zeros_like(b)
        big_g = np.zeros_like(b)
        steppers: dict[int, tuple] = {}
        for s, nxt in zip(points[:-1], points[1:], strict=True):
            grow = np.where(small, np.where(sig > 0, -np.expm1(s * log_q) * inv, s),
                            (1.0 - (1.0 - sig) ** s) * inv)
            gb = grow[:, None] * b
            forcing += width * self.scale_test * float(np.linalg.norm(e_te - m_te @ gb))
            accumulated += width * min(train_err, ERROR_CAP * self.norm_train)
            x_tr = e_tr - m_tr @ gb
            train_err += width * self.scale_train * float(np.linalg.norm(x_tr))
            w = int(nxt - s)
            if w not in steppers:
                steppers[w] = retained_step(sig, w)
            q_w, h_w, s_w = steppers[w]
            u = dpv.T @ x_tr
            big_g = big_g + h_w[:, None] * g - s_w[:, None] * u
            g = q_w[:, None] * g - h_w[:, None] * u
            retained = max(retained, float(np.sum(big_g * (pt_v @ big_g))))
        return (forcing, self.cross_norm(r) * self.rate_max * accumulated,
                float(np.sqrt(max(retained, 0.0))))

    def __call__(self, rank: int) -> float:
        """The estimate with the leading ``rank`` coordinates (relative to ``||f_0 - Y||``
        on the test set), before the cap of :func:`held_out_trajectory_estimate`."""
        if self.norm_test <= 0 or self.t_eff <= 0:
            return 0.0
        return float(self.margin * sum(self.parts(rank)) / self.norm_test)


def retained_step(sig: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""``w`` steps of ``g <- (1 - sig) g - u``, ``Gamma <- Gamma + g`` with ``u`` fixed, per
    eigenvalue ``sig`` of ``C``: ``g_w = q^w g_0 - H_w u`` and
    ``Gamma_w = Gamma_0 + H_w g_0 - S_w u``, ``q = 1 - sig``,
    ``H_w = sum_{i<w} q^i = (1 - q^w) / sig`` (``w`` at ``sig = 0``) and
    ``S_w = sum_{i<w} H_i``: summed term by term for ``w <= 4096`` (exact to round-off),
    else ``(w - H_w) / sig`` with a three-term series where ``sig w < 1e-3``.
    Returns ``(q^w, H_w, S_w)``."""
    sig = np.asarray(sig, dtype=np.float64)

    def powers(i):  # (q^i, H_i) for an integer array i, broadcast against sig
        small = sig < 1.0
        ex = np.expm1(i * np.log1p(-np.where(small, sig, 0.0)))
        q_i = np.where(small, 1.0 + ex, (1.0 - sig) ** i)
        pos = sig > 0
        h_i = np.where(pos, np.where(small, -ex, 1.0 - q_i) / np.where(pos, sig, 1.0),
                       i * np.ones_like(sig))
        return q_i, h_i

    q_w, h_w = powers(np.float64(w))
    if w <= 4096:
        return q_w, h_w, powers(np.arange(w, dtype=np.float64)[:, None])[1].sum(axis=0)
    x = sig * w
    series = w * (w - 1) / 2.0 * (1.0 - sig * (w - 2) / 3.0 + sig ** 2 * (w - 2) * (w - 3) / 12.0)
    return q_w, h_w, np.where(x < 1e-3, series, (w - h_w) / np.where(sig > 0, sig, 1.0))


def held_out_estimator(phi: np.ndarray, phi_test: np.ndarray, probe_rows: np.ndarray,
                         probe_columns: np.ndarray, test_rows: np.ndarray,
                         test_columns: np.ndarray, residual: np.ndarray,
                         test_residual: np.ndarray, rates: np.ndarray, t_eff: float,
                         margin: float = ESTIMATE_MARGIN) -> HeldOutEstimate:
    """:class:`HeldOutEstimate` of ``phi`` (N x m) and ``phi_test`` (M x m) from the
    training probe columns ``Theta[X, P]`` (N x p), the test probe columns
    ``Theta[X, T[P_T]]`` (N x p_T), the residuals ``f_0 - Y`` on the training (N x K) and
    test (M x K) sets and the row rates ``D`` (N,) of :func:`mean_rates`;
    ``O(N m (m + p + p_T + K) + N p_T^2 + M m^2)`` once, no kernel reads besides the probe
    columns; then ``O(m^3 + p_T^3 + T_pts (p + p_T + m) m K)`` per rank."""
    n, n_t = phi.shape[0], phi_test.shape[0]
    rows, t_rows = np.asarray(probe_rows), np.asarray(test_rows)
    d_phi, d_r0 = rates[:, None] * phi, rates[:, None] * residual
    ct, tt = np.asarray(probe_columns).T, np.asarray(test_columns).T
    return HeldOutEstimate(
        tr_r0=ct @ d_r0, tr_dphi=ct @ d_phi, phi_p=phi[rows], te_r0=tt @ d_r0,
        te_dphi=tt @ d_phi, phit_p=phi_test[t_rows], te_gram=tt @ tt.T, te_phi=tt @ phi,
        phi_gram=phi.T @ phi, gram=phi.T @ d_phi, proj=phi.T @ d_r0, dphi_p=d_phi[rows],
        phit_gram=phi_test.T @ phi_test, scale_train=float(np.sqrt(n / max(rows.size, 1))),
        scale_test=float(np.sqrt(n_t / max(t_rows.size, 1))),
        rate_max=float(np.max(rates, initial=0.0)),
        norm_test=float(np.linalg.norm(test_residual)),
        norm_train=float(np.linalg.norm(residual)), t_eff=float(t_eff), margin=margin)


def held_out_trajectory_estimate(factor: LowRankFactor, residual: np.ndarray,
                             test_residual: np.ndarray, agent: np.ndarray, lr: np.ndarray,
                             counts: np.ndarray, horizon: float,
                             algorithm: str | Algorithm = "dgd") -> dict:
    """What ``metadata["low_rank"]`` reports about the test outputs (``theory/low_rank.md``
    section 3.1): ``error_estimate_test``, the estimate of ``max_{t,q} ||f_q(X_T, t) -
    f~_q(X_T, t)||_2 / ||f_0(X_T) - Y_T||_F`` (capped at 2: an estimate, not a bound, on
    the test outputs; ``error_estimate_test_uncapped`` before it), with its three parts
    ``error_estimate_test_forcing``, ``error_estimate_test_propagated`` and
    ``error_estimate_test_retained`` (each after the margin 2) and
    ``error_estimate_test_kind`` (``"test probe rows"``; ``"unavailable"`` and ``None``
    for a factor without training and test probe columns)."""
    if (factor.test_probe_columns is None or factor.probe_columns is None
            or factor.phi_test is None or factor.rank == 0):
        return {"error_estimate_test": None, "error_estimate_test_kind": "unavailable"}
    rates, per_step = mean_rates(lr, agent, counts, algorithm)
    est = held_out_estimator(factor.phi, factor.phi_test, factor.probe_rows,
                               factor.probe_columns, factor.test_probe_rows,
                               factor.test_probe_columns, np.asarray(residual, np.float64),
                               np.asarray(test_residual, np.float64), rates,
                               horizon * per_step)
    forcing, prop, kept = est.parts(factor.rank)
    norm = est.norm_test if est.norm_test > 0 else 1.0
    value = est(factor.rank)
    return {"error_estimate_test": float(min(ERROR_CAP, value)),
            "error_estimate_test_uncapped": value,
            "error_estimate_test_forcing": float(est.margin * forcing / norm),
            "error_estimate_test_propagated": float(est.margin * prop / norm),
            "error_estimate_test_retained": float(est.margin * kept / norm),
            "error_estimate_test_kind": "test probe rows"}


# --------------------------------------------------------------------------- memory
def evolve_bytes(n: int, n_test: int, rank: int, agents: int, outputs: int, *,
                 padded_rows: int | None = None, acc_rows: int | None = None,
                 record_outputs: bool = False, records: int = 50) -> int:
    """Peak bytes of :func:`predict_lowrank` besides the factor: the device copy of the
    agents' features (``padded_rows x r``), the test features, three r x r Gram matrices,
    the state and ~8 temporaries (``9 (Q + 1) r K``) and the outputs of every slot on the
    accuracy rows and the test set (``2 (Q + 1) (N_acc + M) K``); float64."""
    rows = n if padded_rows is None else padded_rows
    acc = n if acc_rows is None else acc_rows
    a = agents + 1
    b = rows * rank + n_test * rank + 3 * rank * rank + 9 * a * rank * outputs
    b += 2 * a * (acc + n_test) * outputs + 4 * rows * outputs
    if record_outputs:
        b += records * a * (n + n_test) * outputs
    return int(8 * b)


# --------------------------------------------------------------------------- operators
def lowrank_operators(data: dict, q_count: int, central: bool) -> Operators:
    """The primitives on the feature-space state ``x`` of shape ``(A, r, C)``.

    ``data["phi"]``: the agents' feature rows, ``(Q, n, r)`` (zero padded) or a tuple of
    ``(N_q, r)``; ``data["res"]`` the matching ``f_0 - Y`` blocks; ``data["inv_n"]``
    ``1/N_q``; ``data["lr"]`` the rate of every slot ``(A,)``; ``data["mixing"]`` ``W``.
    The centralised slot (``central``) follows the same schedule with ``W = [[1]]`` on the
    global objective, gradient ``sum_q Phi_q^T r_q / (Q N_q)``.
    """
    inv_n, w = data["inv_n"], data["mixing"]

    def mix(x, j=0):
        agents = jnp.tensordot(w, x[:q_count], axes=1, precision=EXACT)
        return jnp.concatenate([agents, x[q_count:]], axis=0) if central else agents

    if "grams" in data:  # the Gram form: (1/N_q) (G_q x_q + Phi_q^T r_q)
        grams, lins = data["grams"], data["lins"]

        def grad_gram(x):
            g = (_product("qrs,qsc->qrc", grams, x[:q_count]) + lins) * inv_n[:, None, None]
            if central:
                gc = _product("rs,sc->rc", data["gram_c"], x[q_count]) + data["lin_c"]
                return jnp.concatenate([g, gc[None]], axis=0)
            return g

        return Operators(mix=mix, grad=grad_gram, scale=partial(scale_rates, data["lr"]))
    phi, res = data["phi"], data["res"]

    def grad(x):
        c = x.shape[-1]
        xa = x[:q_count]
        rhs = xa if not central else jnp.concatenate(
            [xa, jnp.broadcast_to(x[q_count], xa.shape)], axis=-1)
        if isinstance(phi, tuple):
            back = []
            for q, (p, rq) in enumerate(zip(phi, res, strict=True)):
                pred = _product("nr,rc->nc", p, rhs[q])
                r = pred + (jnp.concatenate([rq, rq], axis=-1) if central else rq)
                back.append(_product("nr,nc->rc", p, r))
            g = jnp.stack(back)
        else:
            pred = _product("qnr,qrc->qnc", phi, rhs)
            r = pred + (jnp.concatenate([res, res], axis=-1) if central else res)
            g = _product("qnr,qnc->qrc", phi, r)
        g = g * inv_n[:, None, None]
        ga = g[..., :c]
        if central:
            gc = jnp.sum(g[..., c:], axis=0, keepdims=True) / q_count
            return jnp.concatenate([ga, gc], axis=0)
        return ga

    return Operators(mix=mix, grad=grad, scale=partial(scale_rates, data["lr"]))


def _product(spec: str, operand, x):
    """``einsum(spec, operand, x)`` in the operand's dtype, returned in ``x``'s: the step's
    products run in float32 where the sweep stores its operand so (:func:`rate_columns`,
    ``products="float32"``), the state and everything else staying float64."""
    out = jnp.einsum(spec, operand, x.astype(operand.dtype), precision=EXACT)
    return out.astype(x.dtype)


def slot_rates(lr_q: np.ndarray, reference: bool) -> np.ndarray:
    """The rate of every slot ``(A,)``: the agents' ``lr_q``, then (``reference``) the
    centralised slot at their mean rate."""
    return np.concatenate([lr_q, [lr_q.mean()]]) if reference else lr_q


def column_rates(slots: np.ndarray, k: int) -> np.ndarray:
    """``(R, A)`` slot rates of ``R`` rates -> ``(A, R K)``: the rate of every slot and
    column when the rates are column groups of ``K`` (:func:`scale_rates`)."""
    return np.repeat(np.asarray(slots).T, k, axis=1)


def scale_rates(lr, g):
    """``eta g`` with one rate per slot (``lr`` ``(A,)``) or per slot and column (``(A, C)``:
    the rates of a sweep as column groups, :func:`rate_columns`)."""
    return (lr[:, None, None] if lr.ndim == 1 else lr[:, None, :]) * g


def grouped_data(data: dict, groups: int) -> dict:
    """``data`` with the residual terms of the gradient tiled over ``G`` column groups
    (``lins`` / ``lin_c`` in the Gram form, ``res`` in the feature form)."""
    if groups == 1:
        return data
    out = dict(data)
    if "grams" in data:
        out["lins"] = jnp.tile(data["lins"], (1, 1, groups))
        out["lin_c"] = jnp.tile(data["lin_c"], (1, groups))
    elif isinstance(data["res"], tuple):
        out["res"] = tuple(jnp.tile(rq, (1, groups)) for rq in data["res"])
    else:
        out["res"] = jnp.tile(data["res"], (1, 1, groups))
    return out


def split_groups(x, groups: int):
    """``(A, r, G K)`` -> ``(G, A, r, K)``: the ``G`` column groups of a state."""
    a, r, c = x.shape
    return jnp.moveaxis(x.reshape(a, r, groups, c // groups), 2, 0)


def group_records(x, data, *, groups: int, **kw) -> dict:
    """The records of every group: the parameters ``(A, r, G K)`` as ``G`` states
    ``(A, r, K)``, each recorded as on the static path (leading axis ``G``)."""
    return jax.vmap(lambda one: record_state(one, data, **kw))(split_groups(x, groups))


# --------------------------------------------------------------------------- recording
def _quad_loss(x, gram, lin, const, denom):
    """``(const + 2 <lin, x> + <x, gram x>) / (2 denom)`` for every slot of ``x`` (A, r, K),
    at least 0: a squared loss, whose expanded form leaves round-off of either sign where it
    vanishes (-1.2e-16 at a fixed point that interpolates)."""
    gx = jnp.einsum("rs,ask->ark", gram, x, precision=EXACT)
    quad = const + 2.0 * jnp.einsum("rk,ark->a", lin, x) + jnp.einsum("ark,ark->a", x, gx)
    return jnp.maximum(quad, 0.0) / (2.0 * denom)


def _acc(out, labels):
    return jnp.mean((jnp.argmax(out, axis=-1) == labels).astype(out.dtype), axis=-1)


def _per_sample(out, data):
    """Outputs ``(A, rows, C)`` as ``(A, samples, K)``: a no-op for the feature path (one row
    per sample); the primal path (:mod:`ntkdyn.lowrank.primal`) has ``K`` rows per sample
    and one column, and marks ``K`` by the shape of ``data["outputs"]``."""
    if "outputs" not in data:
        return out
    return out.reshape(out.shape[0], -1, data["outputs"].shape[0])


def _record(x, data, *, q_count, central, has_test, record_outputs):
    a = x.shape[0]
    n = data["n"]
    sq = data["train"]
    rec = {
        "train_loss": _quad_loss(x, sq["gram"], sq["lin"], sq["const"], n),
        "objective": _quad_loss(x, data["obj"]["gram"], data["obj"]["lin"],
                                data["obj"]["const"], 1.0),
    }
    # local loss: each agent on its own rows
    inv_n = data["inv_n"]
    xa = x[:q_count]
    if "grams" in data:
        gx = jnp.einsum("qrs,qsk->qrk", data["grams"], xa, precision=EXACT)
        local = data["consts"] + 2.0 * jnp.einsum("qrk,qrk->q", data["lins"], xa) \
            + jnp.einsum("qrk,qrk->q", xa, gx)
    elif isinstance(data["phi"], tuple):
        phi, res = data["phi"], data["res"]
        local = jnp.stack([jnp.sum((jnp.matmul(p, xa[q], precision=EXACT) + rq) ** 2)
                           for q, (p, rq) in enumerate(zip(phi, res, strict=True))])
    else:
        phi, res = data["phi"], data["res"]
        local = jnp.sum((jnp.einsum("qnr,qrk->qnk", phi, xa, precision=EXACT) + res) ** 2,
                        axis=(1, 2))
    rec["local_loss"] = 0.5 * local * inv_n
    norm = jnp.sqrt(jnp.sum(x ** 2, axis=(1, 2)))
    rec["param_dist"] = norm
    xm = xa.mean(axis=0)
    rec["consensus_dist"] = jnp.sqrt(jnp.sum((xa - xm) ** 2, axis=(1, 2)))
    if central:
        rec["central_dist"] = jnp.sqrt(jnp.sum((xa - x[q_count]) ** 2, axis=(1, 2)))
    mean_x = jnp.concatenate([x, xm[None]], axis=0)  # slot A: the network-mean model
    rec["mean_model_train_loss"] = _quad_loss(xm[None], sq["gram"], sq["lin"], sq["const"],
                                              n)[0]
    if "final_accuracy_only" in data:  # (a key: static) filled in after the run
        return _record_losses_only(rec, mean_x, data, a, has_test)
    p_acc = data["acc_phi"]
    out = _per_sample(data["acc_f0"] + jnp.einsum("nr,ark->ank", p_acc, mean_x,
                                                  precision=EXACT), data)
    acc = _acc(out, data["acc_labels"])
    rec["train_acc"] = acc[:a]
    rec["mean_model_train_acc"] = acc[a]
    if record_outputs:
        rec["train_outputs"] = _per_sample(data["f0"] + jnp.einsum(
            "nr,ark->ank", data["phi_all"], x, precision=EXACT), data)
    if has_test:
        st = data["test"]
        tl = _quad_loss(mean_x, st["gram"], st["lin"], st["const"], data["m"])
        out_t = _per_sample(data["f0_test"] + jnp.einsum("nr,ark->ank", data["phi_test"],
                                                         mean_x, precision=EXACT), data)
        acc_t = _acc(out_t, data["labels_test"])
        rec.update(test_loss=tl[:a], test_acc=acc_t[:a], mean_model_test_loss=tl[a],
                   mean_model_test_acc=acc_t[a])
        if record_outputs:
            rec["test_outputs"] = out_t[:a]
    return rec


def _record_losses_only(rec: dict, mean_x, data: dict, a: int, has_test: bool) -> dict:
    """The records without accuracies (``NaN``; they cost ``(A + 1) (N_acc + M) r K`` per
    record, the rest ``A r^2 K``): the test losses from their quadratic forms only."""
    nan = jnp.full((a + 1,), jnp.nan, dtype=mean_x.dtype)
    rec.update(train_acc=nan[:a], mean_model_train_acc=nan[a])
    if has_test:
        st = data["test"]
        tl = _quad_loss(mean_x, st["gram"], st["lin"], st["const"], data["m"])
        rec.update(test_loss=tl[:a], mean_model_test_loss=tl[a], test_acc=nan[:a],
                   mean_model_test_acc=nan[a])
    return rec


#: the records of one state (public name of :func:`_record`, for :mod:`ntkdyn.lowrank.gossip`)
record_state = _record


# --------------------------------------------------------------------------- evolution
def divergence_check(params, limit, groups: int | None = None):
    """The engine's ``check`` for a feature-space state: diverged when the largest
    coordinate of ``params(state)`` is not finite or exceeds ``limit * t`` (the state is
    then frozen and the first divergent step kept).  ``groups``: the last axis holds ``G``
    equal column groups (sampled mixing sequences, independent networks), each with its
    own flag and first divergent step (``(G,)`` in the carry): a group that diverges is
    frozen and the others go on, as on the exact path."""

    def checked(st, new, t_new):
        x, t, diverged, div_at = st
        p = params(new)
        if groups is None:
            mag = jnp.max(jnp.abs(p))
        else:
            grouped = jnp.abs(p).reshape(*p.shape[:-1], groups, p.shape[-1] // groups)
            mag = jnp.max(jnp.moveaxis(grouped, -2, 0).reshape(groups, -1), axis=1)
        bad = ~jnp.isfinite(mag) | (mag > limit * t_new)
        div_at = jnp.where(bad & ~diverged, t_new, div_at)
        diverged = diverged | bad
        frozen = diverged if groups is None else jnp.repeat(diverged, p.shape[-1] // groups)
        keep = jax.tree.map(lambda a, b: jnp.where(frozen, a, b), x, new)
        return keep, t_new, diverged, div_at

    return checked


@partial(jax.jit, static_argnames=("algorithm", "q_count", "central"))
def init_state(x0, data, *, algorithm, q_count, central):
    return algorithm.initial_state(x0, lowrank_operators(data, q_count, central))


@partial(jax.jit, static_argnames=("algorithm", "q_count", "central", "has_test",
                                   "record_outputs"))
def run_chunk(carry, n_steps, data, *, algorithm, q_count, central, has_test,
               record_outputs):
    """Advance through a chunk of records (``n_steps`` steps before each): the low-rank
    instance of :func:`ntkdyn.engine.scan_records` (state: feature-space coordinates)."""
    ops = lowrank_operators(data, q_count, central)
    params = algorithm.parameters
    checked = divergence_check(params, data["limit_per_step"])

    def record(st, x):
        rec = _record(params(x), data, q_count=q_count, central=central, has_test=has_test,
                      record_outputs=record_outputs)
        rec["diverged"] = st[2]
        return st, rec

    return scan_records(carry, n_steps, algorithm=algorithm, operators=lambda t: ops,
                        check=checked, record=record)


FORMS = ("auto", "gram", "features")


def use_gram(form: str, rows: int, rank: int, agents: int) -> bool:
    """Per step the Gram form reads ``Q r^2`` numbers (``2 (Q + 1) r^2 K`` flops with the
    centralised reference), the feature form ``2 N r`` (``8 N r K`` flops); with ``K``
    columns the step is bandwidth-bound, so ``"auto"`` takes the Gram form when
    ``Q r <= 2 N`` (fewer numbers read, and fewer flops)."""
    if form not in FORMS:
        raise ValueError(f"form: expected one of {list(FORMS)}, got {form!r}")
    return form == "gram" or (form == "auto" and agents * rank <= 2 * rows)


def step_data(phi_s: np.ndarray, res: np.ndarray, offsets, inv_n: np.ndarray, gram: bool,
              stacked: bool, n_max: int) -> dict:
    """What one step reads.  Feature form: the agents' rows ``Phi_q`` and residuals
    (``(Q, n_max, r)`` zero padded when ``stacked``, else a tuple).  Gram form:
    ``G_q = Phi_q^T Phi_q``, ``Phi_q^T r_q``, ``|r_q|^2`` and, for the centralised slot,
    ``G_c = sum_q G_q / (Q N_q)``, ``lin_c`` likewise (``O(N r^2)`` once)."""
    q_count = len(offsets) - 1
    if not gram:
        return {"phi": _blocks(phi_s, offsets, stacked, n_max),
                "res": _blocks(res, offsets, stacked, n_max)}
    r, k = phi_s.shape[1], res.shape[1]
    grams, lins, consts = np.empty((q_count, r, r)), np.empty((q_count, r, k)), np.empty(q_count)
    for q in range(q_count):
        p, rq = phi_s[offsets[q]:offsets[q + 1]], res[offsets[q]:offsets[q + 1]]
        grams[q], lins[q], consts[q] = p.T @ p, p.T @ rq, np.sum(rq ** 2)
    wq = inv_n / q_count
    return {"grams": jnp.asarray(grams), "lins": jnp.asarray(lins),
            "consts": jnp.asarray(consts),
            "gram_c": jnp.asarray(np.tensordot(wq, grams, axes=1)),
            "lin_c": jnp.asarray(np.tensordot(wq, lins, axes=1))}


def divergence_limit(lr_q: np.ndarray, res: np.ndarray, curvature: float,
                     counts: np.ndarray) -> float:
    """The divergence limit per step of a feature-space state,
    ``DIVERGENCE_FACTOR eta_max max|r| sqrt(max(curvature, 1)) sqrt(rows) / min N_q``
    (``res = f_0 - Y``, ``curvature = tr(Phi^T Phi)``)."""
    res_max = max(float(np.max(np.abs(res))), 1e-300)
    return float(DIVERGENCE_FACTOR * lr_q.max() * res_max * np.sqrt(max(curvature, 1.0))
                 / counts.min() * np.sqrt(res.size))


def feature_data(phi_s: np.ndarray, res: np.ndarray, offsets, counts: np.ndarray,
                 lr_q: np.ndarray, w: np.ndarray, *, gram: bool, stacked: bool, n_max: int,
                 reference: bool, curvature: float) -> dict:
    r"""The device data of the feature recursion ``Theta ~ Phi Phi^T`` (rows of ``phi_s``
    and ``res = f_0 - Y`` sorted by agent, ``offsets`` their agent boundaries in rows):
    the step operators (:func:`step_data`), the rate of every slot (the centralised one
    runs at the mean rate), the mixing matrix, the divergence limit per step
    ``DIVERGENCE_FACTOR eta_max max|r| sqrt(max(curvature, 1)) sqrt(rows) / min N_q`` and
    the quadratic forms ``||Phi d + r||^2 = d^T G d + 2 d^T l + c`` of the training loss and
    of the objective (every row weighted by ``1 / (Q N_q)``).  Used by the low-rank and
    the primal paths."""
    q_count = w.shape[0]
    rows_per_sample = res.shape[0] // int(counts.sum())
    inv_n = 1.0 / counts
    wts = np.repeat(np.repeat(inv_n / q_count, counts), rows_per_sample)
    slot_lr = slot_rates(lr_q, reference)
    limit = divergence_limit(lr_q, res, curvature, counts)
    return {
        **step_data(phi_s, res, offsets, inv_n, gram, stacked, n_max),
        "inv_n": jnp.asarray(inv_n),
        "lr": jnp.asarray(slot_lr),
        "mixing": jnp.asarray(w),
        "limit_per_step": jnp.asarray(limit),
        "n": float(counts.sum()),
        "train": {"gram": jnp.asarray(phi_s.T @ phi_s), "lin": jnp.asarray(phi_s.T @ res),
                  "const": float(np.sum(res ** 2))},
        "obj": {"gram": jnp.asarray(phi_s.T @ (phi_s * wts[:, None])),
                "lin": jnp.asarray(phi_s.T @ (res * wts[:, None])),
                "const": float(np.sum(res ** 2 * wts[:, None]))},
    }


def held_out_data(phi_t: np.ndarray, f0_t: np.ndarray, y_t: np.ndarray) -> dict:
    """The test-side device data: features ``Phi_test`` (one row per test row of the
    recursion), outputs at initialisation ``(1, rows, columns)``, labels and the quadratic
    form of the test loss."""
    m = y_t.shape[0]
    rt = (f0_t - y_t).reshape(phi_t.shape[0], -1)
    return dict(phi_test=jnp.asarray(phi_t), f0_test=jnp.asarray(f0_t.reshape(1, *rt.shape)),
                labels_test=jnp.asarray(np.argmax(y_t, axis=1)), m=float(m),
                test={"gram": jnp.asarray(phi_t.T @ phi_t), "lin": jnp.asarray(phi_t.T @ rt),
                      "const": float(np.sum(rt ** 2))})


def schedule_metadata(algo: Algorithm) -> dict:
    """The algorithm's entries of ``Trajectory.metadata`` (options, phase names)."""
    meta = {}
    if algo.options:
        meta["algorithm_options"] = algo.settings
    if algo.records_per_step > 1:
        meta["phases"] = list(algo.phase_names)
    return meta


def _blocks(arr: np.ndarray, offsets, stacked: bool, n_max: int):
    q_count = len(offsets) - 1
    if stacked:
        out = np.zeros((q_count, n_max) + arr.shape[1:])
        for q in range(q_count):
            out[q, :offsets[q + 1] - offsets[q]] = arr[offsets[q]:offsets[q + 1]]
        return jnp.asarray(out)
    return tuple(jnp.asarray(arr[offsets[q]:offsets[q + 1]]) for q in range(q_count))


def run_features(x0, data: dict, algo: Algorithm, steps: np.ndarray, *, q_count: int,
                 central: bool, has_test: bool, record_outputs: bool, chunk: int,
                 progress: bool, desc: str, runner=None, groups: int | None = None):
    """Run the feature-space dynamics from parameters ``x0`` (``(A, r, C)``) on the engine.

    Shared by the low-rank path and the primal path (:mod:`ntkdyn.lowrank.primal`):
    the algorithm's initial state, :func:`ntkdyn.engine.scan_records` over the schedule in
    chunks, the records joined.  Returns ``(raw, record_steps, phase, carry)``: raw records
    one row per record (``T P`` rows for ``P`` phases), the step of each row, its phase
    index (``None`` for single-phase schedules) and the final carry (``carry[3]``: the
    first divergent step or -1).  ``runner``: ``(init_state, run_chunk)`` with the
    signatures of :func:`init_state` / :func:`run_chunk` (default: those; the matrix-free
    primal path passes its own, :func:`ntkdyn.lowrank.matfree.matrix_free_runner`).
    ``groups``: the runner flags divergence per column group (:func:`divergence_check`):
    the flags and first divergent steps are ``(G,)`` and the run stops when every group
    has diverged.
    """
    init_fn, chunk_fn = runner or (init_state, run_chunk)
    static = dict(algorithm=algo, q_count=q_count, central=central)
    state = x0 if algo.init is None else init_fn(x0, data, **static)
    shape = () if groups is None else (groups,)
    carry = (state, jnp.asarray(0.0), jnp.zeros(shape, bool), jnp.full(shape, -1.0))
    deltas = np.diff(np.concatenate([[0], steps])).astype(np.int64)
    chunk = balanced_chunk(len(steps), chunk)  # fewest padded records
    per = algo.records_per_step
    pieces = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=int(deltas.sum()), unit="step", desc=desc)
    for sl, sched, pad in padded_chunks((deltas,), chunk):
        carry, recs = chunk_fn(carry, sched[0], data, has_test=has_test,
                                record_outputs=record_outputs, **static)
        pieces.append(trim(recs, pad, per))
        if bar is not None:
            bar.update(int(deltas[sl].sum()))
        if bool(jnp.all(carry[2])):
            break
    if bar is not None:
        bar.close()
    if per > 1:
        return (concatenate(pieces), np.repeat(steps, per), np.tile(np.arange(per), len(steps)),
                carry)
    return concatenate(pieces), steps, None, carry


@dataclass(frozen=True)
class FeaturePrep:
    r"""The prepared inputs of one low-rank run (:func:`prepare_features`): shared by
    :func:`predict_lowrank` (``K`` columns) and
    :func:`ntkdyn.lowrank.networks.predict_random_lowrank` (``K + P`` columns).

    ``order``: the rows sorted by agent (stable), ``offsets`` the agents' boundaries in
    those rows, ``n_max = max_q N_q``; ``gram``: the Gram form (:func:`use_gram`), else the
    feature form with the agents' rows ``stacked`` (zero padded to ``Q x n_max`` when that
    adds at most ``PAD_MAX - 1`` of ``N``) or a tuple; ``phi_s``/``res``: ``Phi`` and
    ``f_0 - Y`` in that order; ``data``: the device data (:func:`feature_data`, the
    accuracy rows, the outputs' features when recorded, :func:`held_out_data`)."""

    order: np.ndarray
    offsets: tuple[int, ...]
    n_max: int
    stacked: bool
    gram: bool
    phi_s: np.ndarray
    res: np.ndarray
    data: dict

    @property
    def padded(self) -> bool:
        """Whether the step reads zero-padded rows (feature form, stacked, unequal shards)."""
        return not self.gram and self.stacked and (len(self.offsets) - 1) * self.n_max \
            > self.phi_s.shape[0]


def prepare_features(factor: LowRankFactor, inp: LowRankInputs, *, form: str,
                     reference: bool, record_outputs: bool, acc_rows: int | None, seed: int,
                     labels: int | None = None, extra_bytes: int = 0,
                     what: str = "this low-rank prediction",
                     hint: str = "use a smaller rank, acc_rows=..., or record_outputs=False"
                     ) -> FeaturePrep:
    """The one preparation step of the low-rank runs (:class:`FeaturePrep`): the layout,
    the memory check (:func:`evolve_bytes` with the columns of ``inp.y``, plus
    ``extra_bytes``; refused with ``what`` / ``hint`` before anything is allocated), then
    the device data.  ``labels``: the leading columns of ``inp.y`` / ``inp.yt`` that hold
    the targets (their argmax labels the accuracies; ``None``: all)."""
    (n, r), c, q_count, counts = inp.phi.shape, inp.y.shape[1], inp.w.shape[0], inp.counts
    order = np.argsort(inp.agent, kind="stable")
    offsets = tuple(int(v) for v in np.concatenate([[0], np.cumsum(counts)]))
    n_max = int(counts.max())
    stacked = q_count * n_max <= PAD_MAX * n
    gram = use_gram(form, n, r, q_count)
    m_test = 0 if inp.yt is None else inp.yt.shape[0]
    rows = (q_count + 1) * r if gram else (q_count * n_max if stacked else n)
    need = evolve_bytes(n, m_test, r, q_count, c, padded_rows=rows, acc_rows=acc_rows,
                        record_outputs=record_outputs, records=len(inp.steps)) + extra_bytes
    memory.ensure_fits(need, what, hint)
    phi_s, y_s, f0_s = inp.phi[order], inp.y[order], inp.f0[order]
    res = f0_s - y_s
    data = feature_data(phi_s, res, offsets, counts, inp.lr_q, inp.w, gram=gram,
                        stacked=stacked, n_max=n_max, reference=reference,
                        curvature=float(factor.eigenvalues.max(initial=1.0)))
    acc = np.arange(n) if acc_rows is None else np.sort(
        np.random.default_rng(seed).choice(n, size=acc_rows, replace=False))
    data.update(acc_phi=jnp.asarray(phi_s[acc]), acc_f0=jnp.asarray(f0_s[acc][None]),
                acc_labels=jnp.asarray(np.argmax(y_s[acc, :labels], axis=1)))
    if record_outputs:
        data.update(phi_all=jnp.asarray(phi_s), f0=jnp.asarray(f0_s[None]))
    if inp.yt is not None:
        data.update(held_out_data(np.asarray(factor.phi_test, dtype=np.float64), inp.ft,
                                  inp.yt))
        data["labels_test"] = jnp.asarray(np.argmax(inp.yt[:, :labels], axis=1))
    return FeaturePrep(order, offsets, n_max, stacked, gram, phi_s, res, data)


def predict_lowrank(
    factor: LowRankFactor,
    y_train,
    agent,
    mixing,
    lr,
    steps,
    algorithm: str | Algorithm = "dgd",
    *,
    f0_train=None,
    y_test=None,
    f0_test=None,
    reference: bool = True,
    record_outputs: bool = False,
    acc_rows: int | None = None,
    chunk: int = 25,
    progress: bool = False,
    seed: int = 0,
    metadata: dict | None = None,
    form: str = "auto",
) -> Trajectory:
    r"""Predict peer-to-peer training on the low-rank factor ``Theta ~ Phi Phi^T``.

    Arguments as :func:`ntkdyn.predict_from_kernels` (static mixing matrix, one learning
    rate or one per agent), the kernels replaced by ``factor`` (its ``phi`` rows in the
    order of ``y_train`` / ``agent``; ``phi_test`` for the test set).  ``acc_rows``:
    evaluate training accuracies on that many training rows drawn at random (``seed``;
    default all) -- the per-record cost of accuracies is ``Q N r K``.  Losses, distances
    and test metrics are always on the full sets.

    ``form``: ``"features"`` (each step reads the agents' rows ``Phi_q``, ``4 N r K``
    flops, twice that with the centralised reference), ``"gram"`` (each step multiplies by
    the ``r x r`` Gram matrices ``Phi_q^T Phi_q``, ``2 (Q + 1) r^2 K`` flops) or ``"auto"``
    (the Gram form when ``Q r <= 2 N``: fewer numbers read per step, and the step is
    bandwidth-bound); the same trajectory to round-off.

    ``metadata["low_rank"]`` holds the rank, the factorisation's facts and the a-priori
    estimate ``error_estimate`` (:func:`trajectory_estimate`, ``theory/low_rank.md``) of
    ``max_{t, q} ||f_q(t) - f~_q(t)||_2 / ||f_0 - Y||_F`` on the training outputs; with a
    test set, ``error_estimate_test`` (:func:`held_out_trajectory_estimate`) of the same
    on the test outputs, relative to ``||f_0(X_T) - Y_T||_F``.
    """
    algo = get_algorithm(algorithm)
    inp = lowrank_inputs(factor, y_train, agent, mixing, lr, steps, f0_train, y_test,
                          f0_test, acc_rows)
    r, k, q_count = inp.phi.shape[1], inp.y.shape[1], inp.w.shape[0]
    prep = prepare_features(factor, inp, form=form, reference=reference,
                            record_outputs=record_outputs, acc_rows=acc_rows, seed=seed)
    raw, rec_steps, phase, carry = run_features(
        jnp.zeros((q_count + int(reference), r, k)), prep.data, algo, inp.steps,
        q_count=q_count, central=reference, has_test=inp.yt is not None,
        record_outputs=record_outputs, chunk=chunk, progress=progress,
        desc=f"low-rank {algo.name}")
    meta = lowrank_metadata(factor, algo, inp, padded=prep.padded, gram=prep.gram,
                             acc_rows=acc_rows, given_f0=f0_train is not None,
                             metadata=metadata)
    return records_trajectory(raw, q_count, reference, rec_steps, phase, inp.lr_q, meta,
                              prep.order, float(carry[3]))


@partial(jax.jit, static_argnames=("algorithm", "q_count", "central", "groups"))
def init_rates_state(x0, data, *, algorithm, q_count, central, groups):
    """The schedule's initial state for the rates as column groups (:func:`rate_columns`)."""
    del groups
    return algorithm.initial_state(x0, lowrank_operators(data["step"], q_count, central))


@partial(jax.jit, static_argnames=("algorithm", "q_count", "central", "has_test",
                                   "record_outputs", "groups"))
def run_rates_chunk(carry, n_steps, data, *, algorithm, q_count, central, has_test,
                    record_outputs, groups):
    """:func:`run_chunk` with ``G`` learning rates as column groups of one state
    ``(A, r, G K)`` (:func:`rate_columns`): the step's operators from ``data["step"]``
    (residual terms tiled, one rate per slot and column), each group flagged for
    divergence against its own limit and recorded as a one-rate state."""
    ops = lowrank_operators(data["step"], q_count, central)
    params = algorithm.parameters
    checked = divergence_check(params, data["limit_per_step"], groups)

    def record(st, x):
        rec = group_records(params(x), data, groups=groups, q_count=q_count, central=central,
                            has_test=has_test, record_outputs=record_outputs)
        rec["diverged"] = st[2]
        return st, rec

    return scan_records(carry, n_steps, algorithm=algorithm, operators=lambda t: ops,
                        check=checked, record=record)


PRODUCTS = ("float64", "float32")


def rate_columns(data: dict, slot_lr: np.ndarray, limits, k: int,
                 products: str = "float64") -> tuple[dict, tuple]:
    r"""``(data, runner)`` of :func:`run_features` for ``R`` learning rates as ``R`` column
    groups of ``K`` in one state ``(A, r, R K)``: the step multiplies the Gram matrices (or
    the agents' rows) by ``R K`` columns at once, in the layout of one run with ``R K``
    outputs (no transposes between the rate axis and the product's), so it reads them once
    for all the rates.  ``slot_lr``: ``(R, A)`` rates of every slot; ``limits``: ``(R,)``
    divergence limits per step; ``data["step"]``: the step's data with the residual
    terms tiled (:func:`grouped_data`) and the rate of every slot and column ``(A, R K)``.
    The records are each group's, from the untiled ``data`` (:func:`group_records`).
    ``products="float32"``: in the Gram form the step's Gram matrices are stored in float32
    and multiply a float32 copy of the state (:func:`_product`); the state, the residual
    terms, the mixing and the records stay float64.  The feature form stays float64 (its
    two products per step would need four conversions of the state-sized intermediates,
    which cost about what the float32 products save: measured 10.6 s against 11.6 s).
    ``products`` is checked by the caller (:func:`predict_lowrank_sweep`)."""
    rates = len(slot_lr)
    step = dict(grouped_data(data, rates), lr=jnp.asarray(column_rates(slot_lr, k)))
    if products == "float32":
        for key in ("grams", "gram_c"):
            if key in step:
                step[key] = jnp.asarray(step[key], jnp.float32)
    out = dict(data, step=step, limit_per_step=jnp.asarray(limits))
    return out, (partial(init_rates_state, groups=rates),
                 partial(run_rates_chunk, groups=rates))


def predict_lowrank_sweep(factor: LowRankFactor, y_train, agent, mixing, lrs, steps,
                          algorithm: str | Algorithm = "dgd", *, f0_train=None, y_test=None,
                          f0_test=None, reference: bool = True, record_outputs: bool = False,
                          acc_rows: int | None = None, chunk: int = 25,
                          progress: bool = False, seed: int = 0,
                          metadata: dict | None = None, form: str = "auto",
                          accuracies: str = "all",
                          products: str = "float64") -> list[Trajectory]:
    r""":func:`predict_lowrank` at every rate of ``lrs`` (each a scalar or one rate per
    agent) in **one** run: the rates ride along as ``R`` groups of ``K`` columns
    (:func:`rate_columns`), so each step reads the Gram matrices (or the agents' rows)
    once for all of them.  That saves the repeated reads where the step is
    bandwidth-bound; the flops stay ``R`` times one run's (at XL-data, rank 512, ten
    rates: 394 s in one pass against 400 s for ten runs, both dominated by the records'
    accuracies; 239 s with ``accuracies="final"``, 180 s with ``products="float32"`` as
    well, README).  Trajectory ``i`` equals
    ``predict_lowrank(..., lr=lrs[i])`` to round-off (statuses, divergence steps and
    metadata included); a rate that diverges is frozen, the others go on.

    ``accuracies="final"``: the accuracies (training, test, centralised and mean-model) only
    at the last record, ``NaN`` at the others -- the records' accuracies cost
    ``(Q + 1) (N_acc + M) r K`` flops each, the rest ``(Q + 1) r^2 K`` (a sweep that needs
    the final accuracies and the losses at every record, as ``ntkdyn check``'s).  For a
    rate that diverged, the last record's accuracies are those of the state it was frozen
    in (the last before divergence was detected).

    ``products="float32"``: the Gram form's products in float32, the state float64
    (:func:`rate_columns`; ``ntkdyn check``'s sweep); the feature form ignores it."""
    algo = get_algorithm(algorithm)
    if accuracies not in ("all", "final"):
        raise ValueError(f"accuracies: expected 'all' or 'final', got {accuracies!r}")
    if products not in PRODUCTS:  # before the Gram matrices are built
        raise ValueError(f"products: expected one of {list(PRODUCTS)}, got {products!r}")
    if accuracies == "final" and record_outputs:
        raise ValueError("accuracies: 'final' records no outputs; give record_outputs=False "
                         "or accuracies='all'")
    check_lrs(lrs)
    inps = [lowrank_inputs(factor, y_train, agent, mixing, lr, steps, f0_train, y_test,
                           f0_test, acc_rows) for lr in lrs]
    inp, rates = inps[0], len(inps)
    (n, r), k, q_count = inp.phi.shape, inp.y.shape[1], inp.w.shape[0]
    m = 0 if inp.yt is None else inp.yt.shape[0]
    more = evolve_bytes(n, m, r, q_count, k * rates, acc_rows=acc_rows) \
        - evolve_bytes(n, m, r, q_count, k, acc_rows=acc_rows)
    prep = prepare_features(factor, inp, form=form, reference=reference,
                            record_outputs=record_outputs, acc_rows=acc_rows, seed=seed,
                            extra_bytes=more, what=f"this {rates}-rate low-rank sweep")
    curvature = float(factor.eigenvalues.max(initial=1.0))
    slot = [slot_rates(i.lr_q, reference) for i in inps]
    limits = [divergence_limit(i.lr_q, prep.res, curvature, inp.counts) for i in inps]
    data, runner = rate_columns(prep.data, np.stack(slot), limits, k, products)
    if accuracies == "final":
        data["final_accuracy_only"] = jnp.zeros(())
    raw, rec_steps, phase, carry = run_features(
        jnp.zeros((q_count + int(reference), r, rates * k)), data, algo, inp.steps,
        q_count=q_count, central=reference, has_test=inp.yt is not None,
        record_outputs=record_outputs, chunk=chunk, progress=progress,
        desc=f"low-rank {algo.name}, {rates} rates", runner=runner, groups=rates)
    div_at = np.asarray(carry[3])
    finals = None if accuracies == "all" else final_accuracies(
        split_groups(algo.parameters(carry[0]), rates), prep.data, q_count, reference,
        inp.yt is not None)
    out = []
    for i, one in enumerate(inps):
        meta = lowrank_metadata(factor, algo, one, padded=prep.padded, gram=prep.gram,
                                acc_rows=acc_rows, given_f0=f0_train is not None,
                                metadata=metadata)
        traj = records_trajectory({key: v[:, i] for key, v in raw.items()}, q_count,
                                  reference, rec_steps, phase, one.lr_q, meta, prep.order,
                                  float(div_at[i]))
        if finals is not None and len(traj.steps):
            set_last_accuracies(traj, {key: v[i] for key, v in finals.items()}, q_count)
        out.append(traj)
    return out


def check_lrs(lrs) -> None:
    """``ValueError`` naming ``lrs`` unless it is a non-empty sequence of rates."""
    if isinstance(lrs, str | bytes) or not hasattr(lrs, "__len__") or len(lrs) == 0:
        raise ValueError("lrs: expected a non-empty sequence of learning rates, got "
                         f"{type(lrs).__name__} {lrs!r}"[:200])


def check_rate_block(rate_block) -> None:
    """``ValueError`` naming ``rate_block`` unless it is ``None`` or a positive integer (the
    most rates per pass of a one-pass sweep run in blocks)."""
    if rate_block is not None and (isinstance(rate_block, bool) or
                                   not isinstance(rate_block, int | np.integer)
                                   or rate_block < 1):
        raise ValueError(f"rate_block: expected a positive integer or None, got {rate_block!r}")


def final_accuracies(params, data: dict, q_count: int, central: bool,
                     has_test: bool) -> dict[str, np.ndarray]:
    """The accuracy records (``train_acc`` ``(R, A)``, ``mean_model_train_acc`` ``(R,)``,
    and the test ones) of the final parameters of a run over ``R`` rates (``(R, A, r, K)``,
    :func:`split_groups` of the final state's), as :func:`_record` computes them."""
    def one(x):
        return _record(x, data, q_count=q_count, central=central, has_test=has_test,
                       record_outputs=False)
    rec = jax.jit(jax.vmap(one))(params)
    keys = ("train_acc", "mean_model_train_acc") + (
        ("test_acc", "mean_model_test_acc") if has_test else ())
    return {key: np.asarray(rec[key]) for key in keys}


def set_last_accuracies(traj: Trajectory, rec: dict, q: int) -> None:
    """Write one rate's final accuracy records into the last record of ``traj``."""
    for key in ("train_acc", "test_acc"):
        if key in rec:
            getattr(traj, key)[-1] = rec[key][:q]
            central = getattr(traj, f"central_{key}")
            if central is not None:
                central[-1] = rec[key][q]
            getattr(traj, f"mean_model_{key}")[-1] = rec[f"mean_model_{key}"]


def output_estimates(factor: LowRankFactor, residual: np.ndarray,
                     test_residual: np.ndarray | None, agent: np.ndarray, lr: np.ndarray,
                     counts: np.ndarray, horizon: float,
                     algorithm: str | Algorithm = "dgd") -> dict:
    """The a-priori error estimates of a low-rank prediction, as ``metadata["low_rank"]``
    reports them: :func:`trajectory_estimate` of the training outputs (residual
    ``f_0 - Y``) and, with a test set (``test_residual = f_0(X_T) - Y_T``, else ``None``),
    :func:`held_out_trajectory_estimate` of the test outputs; shared by ``nd.predict`` and
    ``ntkdyn check``.  At a rate where the truncated dynamics diverge the estimates'
    growth factors overflow: they are then the cap 2, without numpy's overflow warnings."""
    with np.errstate(over="ignore", invalid="ignore"):
        low = trajectory_estimate(factor, residual, agent, lr, counts, horizon, algorithm)
        if test_residual is not None:
            low.update(held_out_trajectory_estimate(factor, residual, test_residual, agent,
                                                    lr, counts, horizon, algorithm))
    return low


def lowrank_metadata(factor: LowRankFactor, algo: Algorithm, inp: LowRankInputs, *,
                      padded: bool, gram: bool, acc_rows: int | None, given_f0: bool,
                      metadata: dict | None) -> dict:
    """``Trajectory.metadata`` of a low-rank prediction: the factor's facts, the a-priori
    error estimate and its scale, the form, and which network it is."""
    n, k, q_count = inp.y.shape[0], inp.y.shape[1], inp.w.shape[0]
    test_res = None if inp.yt is None else inp.ft - inp.yt
    low = dict(factor.describe(), **output_estimates(factor, inp.f0 - inp.y, test_res,
                                                     inp.agent, inp.lr_q, inp.counts,
                                                     float(inp.steps[-1]), algo),
               padded=bool(padded),
               form="gram" if gram else "features",
               acc_rows=n if acc_rows is None else int(acc_rows),
               estimate_of="max over records and agents of ||f_q - f~_q||_2 / ||f_0 - Y||_F "
                           "on the training inputs (theory/low_rank.md)")
    if test_res is not None:  # the test outputs (theory/low_rank.md section 3.1)
        low["estimate_test_of"] = ("max over records and agents of ||f_q - f~_q||_2 / "
                                   "||f_0 - Y||_F on the test inputs (theory/low_rank.md)")
    meta = {
        "algorithm": algo.name, "num_agents": q_count, "num_train": n, "num_outputs": k,
        "kernel_layout": "traced", "path": "low_rank", "low_rank": low,
        "quantity": (ZERO_F0_WORDS if not given_f0 else "the network with the given f0"),
        "f0": "given" if given_f0 else "zero",
        "mixing": inp.w.tolist(), **(metadata or {}), **schedule_metadata(algo),
    }
    return meta


#: ``metadata["quantity"]`` of a low-rank run from ``f_0 = 0`` where the caller does not
#: say (``nd.predict`` does): the factor's kernel may be the analytic or a network's own
ZERO_F0_WORDS = ("f0 = 0 (none given): with the analytic (infinite-width) kernel the mean "
                 "network over random initialisations; with a finite network's empirical or "
                 "Jacobian kernel its linearised dynamics from zero outputs, not from its own "
                 "f0 (give f0_train / f0_test for that network)")


@dataclass(frozen=True)
class LowRankInputs:
    """The checked arguments of :func:`predict_lowrank` (float64 arrays; ``yt``/``ft``
    ``None`` without a test set)."""

    phi: np.ndarray
    y: np.ndarray
    f0: np.ndarray
    agent: np.ndarray
    counts: np.ndarray
    w: np.ndarray
    lr_q: np.ndarray
    steps: np.ndarray
    yt: np.ndarray | None
    ft: np.ndarray | None


def lowrank_inputs(factor: LowRankFactor, y_train, agent, mixing, lr, steps, f0_train,
                    y_test, f0_test, acc_rows) -> LowRankInputs:
    """Check every argument of :func:`predict_lowrank` before anything is computed; a
    ``ValueError`` names the argument and what was expected."""
    from ntkdyn.graphs.sequences import is_process

    phi = np.asarray(factor.phi, dtype=np.float64)
    n = phi.shape[0]
    y = as_float_array("y_train", y_train, ndim=2)
    check_shape("y_train", y, (n, None), f"one row per row of factor.phi ({n})")
    k = y.shape[1]
    agent = np.asarray(agent)
    check_shape("agent", agent, (n,), "one agent index per training sample")
    if is_process(mixing):
        raise ValueError("mixing: predict_lowrank takes a static (Q, Q) mixing matrix; "
                         "time-varying and random sequences run on "
                         "ntkdyn.lowrank.gossip.predict_lowrank_process (or lowrank.predict)")
    w = graphs.check_mixing(mixing, name="mixing")
    agent, counts = agent_indices(agent, w.shape[0])
    f0 = np.zeros_like(y) if f0_train is None else as_float_array("f0_train", f0_train, 2)
    check_shape("f0_train", f0, (n, k), "same as y_train")
    yt = ft = None
    if y_test is not None:
        if factor.phi_test is None:
            raise ValueError("y_test: the factor has no test features (factorise with test "
                             "inputs / kernel_test_train)")
        yt = as_float_array("y_test", y_test, ndim=2)
        m = factor.phi_test.shape[0]
        check_shape("y_test", yt, (m, k), "one row per row of factor.phi_test")
        check_f0_pair(f0_train, f0_test)
        ft = np.zeros_like(yt) if f0_test is None else as_float_array("f0_test", f0_test, 2)
        check_shape("f0_test", ft, (m, k), "same as y_test")
    elif f0_test is not None:
        raise ValueError("f0_test: given without y_test")
    if acc_rows is not None and (isinstance(acc_rows, bool) or not isinstance(
            acc_rows, int | np.integer) or not 1 <= acc_rows <= n):
        raise ValueError(f"acc_rows: expected an integer in [1, {n}], got {acc_rows!r}")
    return LowRankInputs(phi, y, f0, agent, counts, w, learning_rates(lr, w.shape[0]),
                          steps_array(steps), yt, ft)


def records_trajectory(raw, q, central, steps, phase, lr, meta, order,
                       div_at) -> Trajectory:
    flags = raw["diverged"]
    n_rec = raw["train_loss"].shape[0]
    keep = int(np.argmax(flags)) if flags.any() else n_rec
    if phase is not None and flags.any():
        keep -= keep % int(phase.max() + 1)
    status = "diverged" if flags.any() else "ok"
    inverse = np.argsort(order)

    def agents(key):
        return None if key not in raw else raw[key][:keep, :q]

    def cen(key):
        return raw[key][:keep, q] if (central and key in raw) else None

    def mm(key):
        return None if key not in raw else raw[key][:keep]

    outs = None if "train_outputs" not in raw else raw["train_outputs"][:keep, :q][:, :, inverse]
    return Trajectory(
        steps=np.asarray(steps)[:keep], train_loss=agents("train_loss"),
        local_loss=raw["local_loss"][:keep], objective=agents("objective"),
        train_acc=agents("train_acc"), param_dist=agents("param_dist"),
        consensus_dist=raw["consensus_dist"][:keep],
        central_dist=mm("central_dist"),
        central_train_loss=cen("train_loss"), central_objective=cen("objective"),
        central_train_acc=cen("train_acc"), central_param_dist=cen("param_dist"),
        mean_model_train_loss=mm("mean_model_train_loss"),
        mean_model_train_acc=mm("mean_model_train_acc"),
        test_loss=agents("test_loss"), test_acc=agents("test_acc"),
        central_test_loss=cen("test_loss"), central_test_acc=cen("test_acc"),
        mean_model_test_loss=mm("mean_model_test_loss"),
        mean_model_test_acc=mm("mean_model_test_acc"),
        train_outputs=outs, test_outputs=agents("test_outputs"),
        phase=None if phase is None else phase[:keep], status=status,
        diverged_at=int(div_at) if status == "diverged" else None, continuous=False,
        lr=lr, metadata=dict(meta, lr=lr.tolist()))

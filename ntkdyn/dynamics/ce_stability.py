r"""Linearised stability of softmax cross-entropy training at initialisation.

With cross-entropy the output-space gradient is ``g(f) = s (softmax(s f) - y)``
(``s = logit_scale``), so one step is no longer affine in the kernel-space state.  Its
Jacobian at the initial state (``alpha = 0``, outputs ``f_0``) is the squared loss's step
with the kernel ``Theta`` replaced by ``C Theta``, where ``C = s^2 blockdiag_i H_i`` and

    ``H_i = diag(p_i) - p_i p_i^T``,  ``p_i = softmax(s f_0(x_i))``

is the softmax Hessian of sample ``i`` (``K x K``, PSD, largest eigenvalue ``<= 1/2``,
null vector ``1``).  ``C`` acts on the (sample, output) rows and commutes with every
mixing and every agent mask, so with ``G = C^{1/2}`` and ``alpha = G beta`` on the range of
``G`` the step becomes the squared loss's step with the **symmetric PSD kernel**

    ``Theta_f0 = G Theta G``,

and on the null space of ``G`` (the all-ones output direction of every sample) the state
evolves by the kernel-free schedule (pure mixing), which is also what ``Theta_f0`` gives
there (its rows vanish).  The two operators are block triangular with the same diagonal
blocks, so their spectra agree: **the linearised cross-entropy operator at ``f_0`` has the
spectrum of the squared-loss operator on ``Theta_f0``**, for every schedule built from the
two primitives (mixing and the local gradient), and every theorem of
:mod:`ntkdyn.dynamics.stability` (the ``-1`` crossing, the structured radius, the
sufficient bound) applies to it unchanged.

**The mean network** (``f_0 = 0``, traced kernel ``Theta (x) I_K``): ``p_i = 1/K``,
``H_i = (I - 1 1^T / K) / K`` commutes with the kernel, ``Theta_f0 = (s^2 / K) Theta (x)
(I - 1 1^T/K)``: the squared loss's operator on the centred outputs with the rates scaled by
``s^2 / K``, and pure mixing on the all-ones direction.  The stable set is the squared
loss's scaled by ``K / s^2``; computed on the traced kernel ``(s^2/K) Theta`` (no
``K``-fold larger full kernel; its spectral radius leaves out the all-ones direction's
kernel-free modes, radius <= 1 for stochastic mixing, which the full construction keeps).
Any other ``f_0``, or a full kernel, builds ``Theta_f0``
in the full (sample, output) layout (``N K`` rows).

What is exact and what is not: the report is exact for the **linearisation at
initialisation**; the dynamics are not affine (the curvature changes as ``p`` moves), so a
linearly stable rate is not a guarantee along the whole trajectory.  The sufficient bound
from the largest possible softmax curvature (``s^2 / 2``; the squared loss's bound times
``2 / s^2``) keeps every local step non-expansive along the whole trajectory.  On separable
data cross-entropy has no finite fixed point: the margins grow like ``log t``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ntkdyn.algorithms import Algorithm, get_algorithm
from ntkdyn.dynamics import stability as spectrum
from ntkdyn.dynamics.problem import KernelProblem

#: What every cross-entropy stability verdict is, in words.
EXACTNESS = ("exact for the linearisation at initialisation; the dynamics are not affine, "
             "so it is not a guarantee")
#: Why there is no fixed point with cross-entropy, in words.
NO_FIXED_POINT = ("cross-entropy on separable data has no finite fixed point: the margins "
                  "grow like log t and the outputs without bound")


def softmax_hessians(f0: np.ndarray, scale: float) -> np.ndarray:
    """``(N, K, K)``: ``H_i = diag(p_i) - p_i p_i^T`` with ``p_i = softmax(s f_0(x_i))``."""
    logits = scale * np.asarray(f0, dtype=np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return np.einsum("ik,kl->ikl", p, np.eye(p.shape[1])) - p[:, :, None] * p[:, None, :]


def _psd_sqrt(h: np.ndarray) -> np.ndarray:
    """Symmetric square roots of a stack of PSD matrices (negative rounding clipped)."""
    vals, vecs = np.linalg.eigh(h)
    return np.einsum("nij,nj,nkj->nik", vecs, np.sqrt(np.clip(vals, 0.0, None)), vecs)


def at_mean_network(problem: KernelProblem) -> bool:
    """Whether the linearisation point is ``f_0 = 0`` with a traced kernel (the shortcut)."""
    return problem.traced and not np.any(problem.f0_train)


def linearised_problem(problem: KernelProblem) -> KernelProblem:
    """The squared-loss problem whose step operator has the spectrum of the linearised
    cross-entropy step at ``f_0`` (module docstring): kernel ``(s^2/K) Theta`` (traced,
    ``f_0 = 0``) or the full ``G Theta G`` (``G = s blockdiag H_i^{1/2}``).  Only the
    fields the stability analysis reads are meaningful (kernel, agents, mixing)."""
    if problem.loss != "cross_entropy":
        raise ValueError(f"problem.loss: expected 'cross_entropy', got {problem.loss!r}")
    s, k, n = problem.logit_scale, problem.num_outputs, problem.num_train
    if at_mean_network(problem):
        return dataclasses.replace(problem, kernel=problem.kernel * (s * s / k),
                                   loss="mse", logit_scale=1.0)
    full = problem.kernel if not problem.traced else np.kron(problem.kernel, np.eye(k))
    g = s * _psd_sqrt(softmax_hessians(problem.f0_train, s))  # (N, K, K)
    theta = full.reshape(n, k, n, k)
    theta = np.einsum("iab,ibjc,jcd->iajd", g, theta, g).reshape(n * k, n * k)
    return dataclasses.replace(problem, kernel=0.5 * (theta + theta.T), traced=False,
                               residual0=np.zeros((n * k, 1)), loss="mse", logit_scale=1.0,
                               kernel_test=None, f0_test=None, y_test=None,
                               labels_test=None)


def global_bound(problem: KernelProblem, algorithm: Algorithm, profile=None) -> float:
    """Sufficient bound from the largest softmax curvature ``s^2 / 2`` (the squared loss's
    bound times ``2 / s^2``): every local step is non-expansive along the whole trajectory
    below it (``nan`` where the schedule has no sufficient bound)."""
    sq = dataclasses.replace(problem, loss="mse", logit_scale=1.0)
    return (spectrum.schedule_sufficient_bound(sq, algorithm, profile) * 2.0
            / problem.logit_scale ** 2)


def where_linearised(problem: KernelProblem) -> str:
    """``"f_0 = 0"`` or ``"the initial outputs f_0"``: the linearisation point, in words."""
    return "f_0 = 0" if not np.any(problem.f0_train) else "the initial outputs f_0"


def stability(problem: KernelProblem, algorithm: str | Algorithm, lr
              ) -> spectrum.StabilityReport:
    """Stability of cross-entropy training linearised at ``f_0`` (module docstring).

    The stable set, spectral radius, ``lr*`` and margin are those of the linearised step
    at initialisation (exact for it); ``lr_bound`` is the sufficient bound from the largest
    softmax curvature (:func:`global_bound`); ``note`` says what is exact and what is not.
    """
    from ntkdyn._utils.checks import learning_rates

    algo = get_algorithm(algorithm)
    lrs = learning_rates(lr, problem.num_agents)
    profile = lrs / np.max(lrs)
    lin = linearised_problem(problem)
    report = spectrum.operator_report(spectrum.StepOperator(lin, algo, profile), lrs)
    note = (f"loss='cross_entropy' (logit_scale {problem.logit_scale:g}): linearised at "
            f"{where_linearised(problem)} ({EXACTNESS}); sufficient bound lr_bound from the "
            "largest softmax curvature s^2/2 holds along the whole trajectory")
    return dataclasses.replace(report, lr_bound=global_bound(problem, algo, profile),
                               loss="cross_entropy", note=note)

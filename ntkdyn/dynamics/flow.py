r"""Gradient flow of a non-affine loss (softmax cross-entropy), integrated adaptively.

The flow of a single-phase schedule ``x -> step(x)`` is, as for the squared loss
(``theory/gradient_flow.md``), the continuous-time interpolation

    dx/dt = step(x) - x        (time in steps),

with the same kernel-space state ``x`` (agents' ``alpha_q``, the carried centralised
reference, and a schedule's memory) and the same two primitives
(:func:`ntkdyn.dynamics.solver.kernel_operators`).  With cross-entropy the local gradient
is ``g_q = (1/N_q) E_q s (softmax(s [f_0 + Theta alpha_q]_{S_q}) - Y_q)``, not affine in
``alpha``: there is no transition matrix and no closed form.  For DGD the right-hand side
is ``((W - I) (x) I) alpha - D_eta g(alpha)`` (the Laplacian flow plus local gradient
flows); for ``Q = 1`` it is ``d alpha/dt = -(eta/N) s (softmax(s (f_0 + Theta alpha)) - Y)``,
the centralised cross-entropy flow of neural-tangents' ``predict.gradient_descent`` (which
normalises by ``N K``: ``eta = lr_nt / K``).  ``theory/cross_entropy.md`` section 4.

It is integrated by diffrax (imported here, lazily: ``import ntkdyn`` does not load it)
with an explicit adaptive Runge-Kutta method (default Tsit5, 5(4)) and a PID step-size
controller on the whole state (``rtol``, ``atol``; defaults :data:`RTOL`, :data:`ATOL`),
saving the state at the requested times; the records are the discrete path's
(:data:`ntkdyn.dynamics.solver.record_jit`).  The global error is of the order of the
tolerances times the growth of perturbations over the horizon; the tests measure it
against neural-tangents (``1e-6`` stated) and against the discrete recursion with step
``1/m`` (first order in ``1/m``).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ntkdyn._utils.checks import check_positive_float
from ntkdyn.algorithms import Algorithm
from ntkdyn.dynamics import solver
from ntkdyn.dynamics.problem import KernelProblem

#: default relative and absolute tolerances of the step-size controller (float64 state)
RTOL = 1e-10
ATOL = 1e-12
#: default most solver steps over the whole horizon (a run that needs more is "diverged"
#: from the first time it could not reach, with the solver's message in the metadata)
MAX_STEPS = 200_000
#: the explicit Runge-Kutta methods offered (diffrax class names)
SOLVERS = ("Tsit5", "Dopri5", "Dopri8")


def check_options(rtol, atol, method, max_steps) -> tuple[float, float, str, int]:
    """The integrator's options, or ``ValueError`` naming the one that is wrong."""
    rtol, atol = check_positive_float("rtol", rtol), check_positive_float("atol", atol)
    if method not in SOLVERS:
        raise ValueError(f"method: expected one of {SOLVERS}, got {method!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int | np.integer) \
            or max_steps < 1:
        raise ValueError(f"max_steps: expected an integer >= 1, got {max_steps!r}")
    return rtol, atol, method, int(max_steps)


def evolve(
    problem: KernelProblem,
    algorithm: Algorithm,
    lrs: np.ndarray,
    steps: np.ndarray,
    *,
    record_outputs: bool = False,
    central: bool = True,
    kernel_dtype: str = "float64",
    rtol: float = RTOL,
    atol: float = ATOL,
    method: str = "Tsit5",
    max_steps: int = MAX_STEPS,
    mesh=None,
    group_f0=None,
) -> dict:
    """Integrate ``dx/dt = step(x) - x`` and record at the times ``steps``.

    Returns the records of :func:`ntkdyn.dynamics.solver.evolve` (same keys and shapes:
    ``(T, A, n_rates)``, ``(T, n_rates)`` for ``mean_model_*``, ``diverged`` and
    ``diverged_at``) plus ``"flow"``: a dict saying which solver, tolerances and how many
    steps (accepted, rejected) were used, and the solver's result.  Single-phase
    schedules with a static mixing matrix, full batch (the caller checks).  With a
    ``mesh`` (:mod:`ntkdyn.dynamics.sharding`) the kernels' columns and the state's rows
    are sharded as in the discrete path (rows zero-padded to a multiple of the device
    count); the vector field is the same compiled function, so the answer equals one
    device's to round-off (the adaptive step sizes see the same error norms).
    A state that leaves the discrete path's divergence bound (``limit * (t + 1)``) or is
    not finite, or times the solver could not reach within ``max_steps``, are flagged as
    diverged from the first such record time on.  ``group_f0``: per-column-group initial
    outputs (independent sampled networks; :func:`ntkdyn.dynamics.solver.device_data`).
    """
    import diffrax

    rtol, atol, method, max_steps = check_options(rtol, atol, method, max_steps)
    algorithm = solver.as_algorithm(algorithm)
    lrs = np.atleast_2d(np.asarray(lrs, dtype=np.float64))
    n_rates = lrs.shape[0]
    steps = np.asarray(steps, dtype=np.float64)
    data = solver.device_data(problem, lrs, central=central, kernel_dtype=kernel_dtype,
                              reference="carried", mesh=mesh, group_f0=group_f0)
    x0 = solver.zero_state(problem, n_rates, central, mesh)
    static = dict(algorithm=algorithm, offsets=problem.offsets, traced=problem.traced,
                  central=central, loss=problem.loss)
    times, where = np.unique(steps, return_inverse=True)
    xs, stats = _integrate(x0, data, jnp.asarray(times),
                           method=getattr(diffrax, method), rtol=rtol, atol=atol,
                           max_steps=max_steps, **static)
    recs = _records(xs, data, jnp.asarray(times), n_rates=n_rates, has_test=problem.has_test,
                    record_outputs=record_outputs, **static)
    recs = {key: np.asarray(v)[where] for key, v in recs.items()}
    bad = recs.pop("bad")  # (T, n_rates); times the solver did not reach hold inf
    out = recs
    stats = {key: int(v) for key, v in stats.items()}
    reached = bool(stats["successful"])
    first = np.where(bad.any(axis=0), np.argmax(bad, axis=0), -1)
    out["diverged"] = np.maximum.accumulate(bad, axis=0)
    out["diverged_at"] = np.where(first >= 0, steps[np.maximum(first, 0)], -1.0)
    out["flow"] = {
        "equation": "dx/dt = step(x) - x (time in steps; ntkdyn.dynamics.flow)",
        "solver": f"diffrax.{method}", "controller": "PIDController",
        "rtol": rtol, "atol": atol, "max_steps": max_steps,
        "solver_steps": stats["num_steps"],
        "accepted_steps": stats["num_accepted_steps"],
        "rejected_steps": stats["num_rejected_steps"],
        "result": ("successful" if reached else
                   f"stopped: max_steps = {max_steps} reached" if stats["num_steps"] >= max_steps
                   else "stopped: the solver failed (non-finite state or step size)"),
        "diffrax_version": diffrax.__version__,
    }
    return out


def _operators(data, *, offsets, traced, central, loss):
    k = data["y"].shape[1]
    return solver.kernel_operators(
        data["blocks"], data["residual"], data["mixing"], data["lr_cols"], offsets=offsets,
        rows_per_sample=1 if traced else k, central=central,
        loss=solver.loss_arguments(data, loss))


@partial(jax.jit, static_argnames=("algorithm", "offsets", "traced", "central", "loss",
                                   "method", "rtol", "atol", "max_steps"))
def _integrate(x0, data, times, *, algorithm, offsets, traced, central, loss, method, rtol,
               atol, max_steps):
    """The states at ``times`` (a leading axis on every leaf) and the solver's counts."""
    import diffrax

    opts = dict(offsets=offsets, traced=traced, central=central, loss=loss)
    state0 = algorithm.initial_state(x0, _operators(data, **opts))

    def field(t, x, args):
        return jax.tree.map(jnp.subtract, algorithm.step(x, _operators(args, **opts)), x)

    t1 = times[-1]
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field), method(), t0=0.0, t1=jnp.maximum(t1, 1e-300), dt0=None,
        y0=state0, args=data, saveat=diffrax.SaveAt(ts=times),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps, throw=False)
    stats = {key: sol.stats[key] for key in ("num_steps", "num_accepted_steps",
                                              "num_rejected_steps")}
    stats["successful"] = sol.result == diffrax.RESULTS.successful
    return sol.ys, stats


@partial(jax.jit, static_argnames=("algorithm", "offsets", "traced", "n_rates", "central",
                                   "loss", "has_test", "record_outputs"))
def _records(xs, data, times, *, algorithm, offsets, traced, n_rates, central, loss, has_test,
             record_outputs):
    """The discrete path's records of every saved state, and a divergence flag per rate."""
    q_count = len(offsets) - 1
    c0 = data["y"].shape[1] if traced else 1

    def one(x):
        x = algorithm.parameters(x)
        rec = solver.record_jit(x, data, q_count=q_count, n_rates=n_rates, traced=traced,
                                has_test=has_test, record_outputs=record_outputs,
                                central=central, loss=loss)
        return x, rec

    params, recs = jax.lax.map(one, xs)
    mag = jnp.max(jnp.abs(params), axis=(1, 2)).reshape(params.shape[0], -1, c0).max(axis=2)
    limit = data["limit_per_step"] * (times[:, None] + 1.0)
    return dict(recs, bad=~jnp.isfinite(mag) | (mag > limit))

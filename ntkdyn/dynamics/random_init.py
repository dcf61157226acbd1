r"""One random network: initial outputs sampled from the NNGP, run as extra columns.

At infinite width the outputs at initialisation ``f_0`` on the pooled inputs
``Z = [X; X*]`` (``N`` training, sorted by agent, then ``M`` test) are a centred
Gaussian process with the NNGP kernel ``K_ZZ``, independent over the ``K`` outputs.
For the squared loss every schedule is affine in ``f_0`` (``theory/initialisation.md``
section 1): with ``alpha = 0`` at the start,

    f(Z, t) = mu(t) + e(t),   mu = the run from f_0 = 0 (the mean network, target Y),
                              e  = the run from f_0 with target 0 (linear in f_0).

So one run carries, per learning rate, ``K + P`` columns sharing every kernel read:
the mean network (``K`` columns, residual ``-Y``) and ``P`` *responses*, columns with
``f_0 = g_j`` (``g_j = L z_j``, ``L L^T = K_ZZ + jitter I``, ``z_j`` standard normal from
a seeded ``jax.random`` key) and target 0.  Sampled network ``s = 0..P-1`` has output
``k`` equal to ``mu_k + e_{(s+k) mod P}`` (:func:`ntkdyn.dynamics.solver.network_columns`):

* every network uses ``K`` distinct, independent columns, so each is *exactly* one draw
  of a random network (marginally);
* networks less than ``K`` apart share columns (they are dependent), which costs
  Monte-Carlo efficiency, not bias: the mean over networks of a loss is
  ``(1/P) sum_j h(g_j)`` with ``h`` summing the per-output terms, a mean of ``P`` i.i.d.
  terms, whose standard error is at most ``sd(loss) sqrt(K / P)`` (Cauchy-Schwarz) and
  at least ``sd(loss) / sqrt(P)``;
* the cost is ``K + P`` columns instead of ``P K`` for independent networks (measured
  cost: README, "One random network").

Quantiles over the ``P`` networks (bands) converge to those of one random network as
``P`` grows (a stationary, ``K``-dependent sequence).  For small problems the exact
expected losses (mean plus trace of the covariance) come from the dense reference
:func:`ntkdyn.initialisation.output_distribution` (:func:`exact_expected_losses`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ntkdyn.dynamics.problem import KernelProblem
from ntkdyn.trajectory import RandomNetworkTrajectory, Trajectory

#: sampled networks by default (``P``): ``K + P`` columns per rate
DEFAULT_NETWORKS = 32
#: first Cholesky jitter, relative to the mean diagonal of the NNGP (times 10 until it works)
JITTER = 1e-10
MAX_JITTER = 1e-4
#: the exact expected losses are computed when the dense reference costs at most this many
#: flops (``steps Q N^2 (N + K)``) and this many bytes of covariances
EXACT_MAX_FLOPS = 2e9
EXACT_MAX_BYTES = 256 * 1024**2
#: largest pooled size ``N + M`` whose NNGP the draws keep (for the exact losses)
KEEP_NNGP_MAX = 1000
#: draws metrics kept per sampled network (``RandomNetworkTrajectory.draws``)
DRAW_METRICS = ("train_loss", "test_loss", "train_acc", "test_acc")
QUANTILE_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True)
class InitDraws:
    """Sampled initial outputs, one column per response (problem's sorted sample order).

    Attributes
    ----------
    train : (N, P)
        ``g_j`` on the training inputs (sorted by agent, as ``KernelProblem``).
    test : (M, P) or None
        ``g_j`` on the test inputs.
    seed : int
        Seed of the ``jax.random`` key.
    jitter : float
        Absolute jitter added to the NNGP's diagonal before the Cholesky factorisation.
    nngp : (N+M, N+M) or None
        The NNGP on ``[train sorted; test]`` (kept for the exact expected losses).
    """

    train: np.ndarray
    test: np.ndarray | None
    seed: int
    jitter: float
    nngp: np.ndarray | None = None

    @property
    def samples(self) -> int:
        return int(self.train.shape[1])


def cholesky_with_jitter(nngp: np.ndarray) -> tuple[np.ndarray, float]:
    """``(L, jitter)`` with ``L L^T = nngp + jitter I``: ``jitter = 1e-10 * mean(diag)``,
    multiplied by 10 until the factorisation succeeds (at most ``1e-4 * mean(diag)``;
    ``ValueError`` naming ``nngp`` beyond)."""
    import scipy.linalg

    k = np.asarray(nngp, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or not np.all(np.isfinite(k)):
        raise ValueError(f"nngp: expected a finite square matrix, got shape {k.shape}")
    scale = max(float(np.mean(np.diag(k))), 1e-300)
    rel = JITTER
    while rel <= MAX_JITTER * (1 + 1e-9):
        a = k.copy()  # one copy, factorised in place
        a.flat[:: len(k) + 1] += rel * scale
        try:
            return scipy.linalg.cholesky(a, lower=True, overwrite_a=True,
                                         check_finite=False), rel * scale
        except np.linalg.LinAlgError:
            rel *= 10
    raise ValueError(f"nngp: not positive semi-definite (Cholesky failed with a jitter of "
                     f"{MAX_JITTER:g} x the mean diagonal)")


def draw(nngp: np.ndarray, n_train: int, samples: int, seed: int) -> InitDraws:
    """``samples`` draws of ``f_0 ~ N(0, nngp)`` on ``[train; test]`` (one output column
    each), from ``jax.random.normal(jax.random.PRNGKey(seed), ...)``."""
    import jax

    if isinstance(samples, bool) or not isinstance(samples, int | np.integer) or samples < 1:
        raise ValueError(f"samples: expected an integer >= 1, got {samples!r}")
    chol, jitter = cholesky_with_jitter(nngp)
    z = np.asarray(jax.random.normal(jax.random.PRNGKey(int(seed)), (len(chol), int(samples)),
                                     dtype=np.float64))
    g = chol @ z
    del chol
    small = len(g) <= KEEP_NNGP_MAX  # the exact expected losses are for small problems only
    return InitDraws(train=g[:n_train], test=g[n_train:] if len(g) > n_train else None,
                     seed=int(seed), jitter=jitter,
                     nngp=np.asarray(nngp, dtype=np.float64) if small else None)


def sorted_nngp(problem: KernelProblem, nngp) -> np.ndarray:
    """The NNGP on ``[train; test]`` given in the caller's training order, permuted to the
    problem's (agent-sorted) order; ``ValueError`` naming ``nngp`` for a wrong shape."""
    k = np.asarray(nngp, dtype=np.float64)
    n = problem.num_train
    m = 0 if problem.y_test is None else problem.y_test.shape[0]
    if k.shape != (n + m, n + m):
        raise ValueError(f"nngp: expected the ({n + m}, {n + m}) NNGP kernel on the training "
                         f"then the test inputs, got shape {k.shape}")
    idx = np.concatenate([np.asarray(problem.order), n + np.arange(m)])
    return k[np.ix_(idx, idx)]


def augment(problem: KernelProblem, draws: InitDraws) -> KernelProblem:
    """The problem with ``K + P`` output columns: the mean network then ``P`` responses
    (``f_0 = g_j``, target 0); ``labels`` stay those of the ``K`` real outputs."""
    if problem.loss != "mse" or not problem.traced:
        raise ValueError("f0: sampled random networks need loss='mse' and a traced kernel")
    n, p = problem.num_train, draws.samples
    if draws.train.shape != (n, p):
        raise ValueError(f"draws: expected ({n}, P) training draws, got {draws.train.shape}")
    zeros = np.zeros((n, p))
    y = np.concatenate([problem.y_train, zeros], axis=1)
    f0 = np.concatenate([problem.f0_train, draws.train], axis=1)
    kw = {}
    if problem.has_test:
        m = problem.y_test.shape[0]
        if draws.test is None or draws.test.shape != (m, p):
            raise ValueError(f"draws: expected ({m}, {p}) test draws")
        kw = dict(y_test=np.concatenate([problem.y_test, np.zeros((m, p))], axis=1),
                  f0_test=np.concatenate([problem.f0_test, draws.test], axis=1))
    return dataclasses.replace(problem, y_train=y, f0_train=f0, residual0=f0 - y, **kw)


def exact_expected_losses(problem: KernelProblem, algorithm, lr: np.ndarray, steps,
                          continuous: bool, nngp: np.ndarray | None,
                          force: bool = False) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Exact ``E[train loss]``, ``E[test loss]`` ``(T, Q)`` of one random network from
    :func:`ntkdyn.initialisation.output_distribution`, or ``None`` where not available:
    a schedule other than plain DGD / ATC / CTA / GD, a time-varying mixing, non-zero
    mean ``f_0``, or (unless ``force``) a cost above :data:`EXACT_MAX_FLOPS` /
    :data:`EXACT_MAX_BYTES` (``nngp`` in the problem's sorted order)."""
    from ntkdyn.initialisation import ALGORITHMS, output_distribution

    name = getattr(algorithm, "name", algorithm)
    if (nngp is None or name not in ALGORITHMS or getattr(algorithm, "options", ())
            or problem.process is not None or problem.loss != "mse" or not problem.traced
            or np.any(problem.f0_train != 0)):
        return None
    q, n, k = problem.num_agents, problem.num_train, problem.num_outputs
    m = 0 if problem.y_test is None else problem.y_test.shape[0]
    steps = np.asarray(steps)
    flops = (float(np.max(steps)) * q * n**2 * (n + k) if not continuous
             else len(steps) * float(q * n + n + k) ** 3 * 10)
    if not force and (flops > EXACT_MAX_FLOPS or 8 * len(steps) * q * (n + m) ** 2
                      > EXACT_MAX_BYTES):
        return None
    agent = np.repeat(np.arange(q), problem.counts)
    dist = output_distribution(problem.kernel, problem.y_train, agent, problem.mixing, lr,
                               steps, name, nngp=nngp, kernel_test_train=problem.kernel_test,
                               y_test=problem.y_test, continuous=continuous)
    return dist.expected_train_loss, dist.expected_test_loss


def assemble(mean: Trajectory, networks: list[Trajectory], draws: InitDraws,
             exact=None) -> RandomNetworkTrajectory:
    """Mean over the sampled networks of every metric, quantile bands, the draws of
    :data:`DRAW_METRICS` and the mean network (``mean``, with its own quantity words)."""
    from ntkdyn.trajectory import quantity_words

    keep = min(len(t.steps) for t in networks)
    levels = np.asarray(QUANTILE_LEVELS)
    arrays, quantiles, kept = {}, {}, {}
    first = networks[0]
    for f in dataclasses.fields(Trajectory):
        v = getattr(first, f.name)
        if not isinstance(v, np.ndarray) or f.name in ("steps", "lr", "phase",
                                                        "quantile_levels"):
            continue
        stack = np.stack([getattr(t, f.name)[:keep] for t in networks])
        arrays[f.name] = stack.mean(axis=0)
        quantiles[f.name] = np.quantile(stack, levels, axis=0)
        if f.name in DRAW_METRICS:
            kept[f.name] = stack
    p = len(networks)
    words = quantity_words(False, seed=draws.seed, samples=p)
    meta = dict(first.metadata, quantity=words, samples=p, f0="random",
                init_seed=draws.seed, nngp_jitter=draws.jitter,
                note="fields: mean over sampled initialisations (f0 ~ NNGP) of each metric "
                     "(expected loss of one random network); quantiles / band(): over the "
                     "samples; .mean_network: the f0 = 0 trajectory (loss of the mean output)")
    mean_meta = dict(mean.metadata, quantity=quantity_words(True), f0="mean")
    exact_train = exact_test = None
    if exact is not None:
        exact_train = exact[0][:keep]
        exact_test = None if exact[1] is None else exact[1][:keep]
    return RandomNetworkTrajectory(
        steps=first.steps[:keep], phase=None if first.phase is None else first.phase[:keep],
        status=first.status, diverged_at=first.diverged_at, continuous=first.continuous,
        lr=first.lr, metadata=meta, samples=p, quantile_levels=levels, quantiles=quantiles,
        mean_network=dataclasses.replace(mean, metadata=mean_meta), draws=kept,
        exact_train_loss=exact_train, exact_test_loss=exact_test, **arrays)


__all__ = ["DEFAULT_NETWORKS", "InitDraws", "assemble", "augment", "cholesky_with_jitter",
           "draw", "exact_expected_losses", "sorted_nngp"]

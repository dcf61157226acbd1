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

**Independent networks** (:func:`independent_networks`): where the dynamics are not
affine in ``f_0`` (cross-entropy: the softmax of each network's own ``K`` outputs) or
each network has its own random sequence (random gossip, mini-batch SGD), the cyclic
sharing above does not apply.  Then every sampled network ``s`` gets ``K`` columns of its
own, a *column group* (as sampled gossip / batch sequences are), with ``f_0`` the draws
``g_{sK} .. g_{sK+K-1}`` (``P K`` draws, :func:`draw` with ``outputs=K``):

* cross-entropy, static or periodic mixing, full batch: ``P + 1`` groups, the ``P``
  networks and the mean network's group (``f_0 = 0``).  For cross-entropy the mean
  network is **the network started from** ``f_0 = 0``, which is *not* the expected network
  (the dynamics are not affine: the mean of the outputs is not the output from the mean
  ``f_0``); the expected losses are the means over the sampled networks;
* random gossip / mini-batch SGD (``S = P`` sequences): ``2 S + 1`` groups: network ``s``
  (``f_0`` draw ``s``, mixing / batch sequence ``s``), then the mean network (``f_0 = 0``)
  on the same ``S`` sequences, then the mean network's expected group (``E[W]`` / full
  batch, ``f_0 = 0``).  The networks' band is over initialisations **and** sequences
  jointly (network ``s`` draws both); the mean network's band (``.mean_network``, a
  :class:`~ntkdyn.trajectory.GossipTrajectory`, ``band(..., over="sequence")``) is over the
  sequences alone.  The two are never mixed: ``band(..., over="init")`` is refused there.

The cost is ``(P + 1) K`` (or ``(2 S + 1) K``) columns per rate instead of ``K + P``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ntkdyn._utils.checks import check_finite
from ntkdyn.dynamics.problem import KernelProblem
from ntkdyn.trajectory import RandomNetworkTrajectory, Trajectory, growing_runs

#: sampled networks by default (``P``): ``K + P`` columns per rate
DEFAULT_NETWORKS = 32
#: sampled networks by default where each needs its own ``K`` columns
#: (:func:`independent_networks`): ``(P + 1) K`` columns (cross-entropy) or
#: ``(2 P + 1) K`` (random gossip, mini-batch SGD: ``P`` sequences)
DEFAULT_INDEPENDENT_NETWORKS = 16
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
    outputs : int
        Draw columns per sampled network: 1 (shared cyclic columns, the affine squared
        loss) or ``K`` (independent networks, column ``s K + k`` is output ``k`` of
        network ``s``).
    """

    train: np.ndarray
    test: np.ndarray | None
    seed: int
    jitter: float
    nngp: np.ndarray | None = None
    outputs: int = 1

    @property
    def samples(self) -> int:
        """Sampled networks ``P``."""
        return int(self.train.shape[1]) // self.outputs

    def network_f0(self, s: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``(train (N, K), test (M, K) or None)`` initial outputs of independent network
        ``s`` (problem's sorted training order; ``outputs = K`` draws only)."""
        k = self.outputs
        cols = slice(s * k, (s + 1) * k)
        return self.train[:, cols], None if self.test is None else self.test[:, cols]


def independent_networks(problem: KernelProblem, batch_size: int = 0) -> bool:
    """Whether sampled random networks need ``K`` columns each (module doc): cross-entropy,
    a random mixing sequence or mini-batch SGD; else they share cyclic columns."""
    process = problem.process
    return (problem.loss != "mse" or bool(batch_size)
            or (process is not None and bool(process.random)))


def group_initial_outputs(problem: KernelProblem, draws: InitDraws, copies: int,
                          init_band: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Initial outputs of every column group ``(G, N, K)`` (and test ``(G, M, K)``) of
    independent networks: the ``P`` networks, then ``(copies - 1) P + 1`` groups of the
    mean network (``f_0`` of the problem, zero), ``G = copies P + 1``.  ``init_band``:
    the expected groups (the last ``P + 1``) are the ``P`` networks' ``f_0`` again, then
    the mean network's: ``G = (copies + 1) P + 1`` (:func:`has_init_band`)."""
    p, k, n = draws.samples, problem.num_outputs, problem.num_train
    if draws.outputs != k or draws.train.shape != (n, p * k):
        raise ValueError(f"draws: expected ({n}, P K) training draws with K = {k} per "
                         f"network, got {draws.train.shape}")
    rest = (copies - 1) * p + 1

    def groups(base, g):
        nets = base[None] + g.reshape(len(base), p, k).transpose(1, 0, 2)
        if not init_band:
            return np.concatenate([nets, np.broadcast_to(base, (rest,) + base.shape)])
        seq = np.broadcast_to(base, (rest - 1,) + base.shape)
        return np.concatenate([nets, seq, nets, base[None]])

    test = None
    if problem.has_test:
        m = problem.y_test.shape[0]
        if draws.test is None or draws.test.shape != (m, p * k):
            raise ValueError(f"draws: expected ({m}, {p * k}) test draws")
        test = groups(problem.f0_test, draws.test)
    return groups(problem.f0_train, draws.train), test


def has_init_band(problem: KernelProblem, batch_size: int = 0) -> bool:
    """Whether independent sampled networks also run the expected dynamics (the ``E[W]``
    recursion / full-batch training) from each network's ``f_0``: the band over
    initialisations alone, beside the joint one (:data:`INIT_BAND_WORDS`).  The squared
    loss with a random mixing sequence or mini-batch SGD: ``3 S + 1`` groups instead of
    ``2 S + 1``.  Not for cross-entropy, whose full-batch / ``E[W]`` run is not the
    expected dynamics (not affine)."""
    process = problem.process
    sequences = bool(batch_size) or (process is not None and bool(process.random))
    return sequences and problem.loss == "mse"


def cholesky_with_jitter(nngp: np.ndarray) -> tuple[np.ndarray, float]:
    """``(L, jitter)`` with ``L L^T = nngp + jitter I``: ``jitter = 1e-10 * mean(diag)``,
    multiplied by 10 until the factorisation succeeds (at most ``1e-4 * mean(diag)``;
    ``ValueError`` naming ``nngp`` beyond)."""
    import scipy.linalg

    k = np.asarray(nngp, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"nngp: expected a square matrix, got shape {k.shape}")
    check_finite("nngp", k)
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


def draw(nngp: np.ndarray, n_train: int, samples: int, seed: int,
         outputs: int = 1) -> InitDraws:
    """``samples`` draws of ``f_0 ~ N(0, nngp)`` on ``[train; test]`` (``outputs`` output
    columns each: ``samples * outputs`` independent columns), from
    ``jax.random.normal(jax.random.PRNGKey(seed), ...)``."""
    import jax

    if isinstance(samples, bool) or not isinstance(samples, int | np.integer) or samples < 1:
        raise ValueError(f"samples: expected an integer >= 1, got {samples!r}")
    chol, jitter = cholesky_with_jitter(nngp)
    z = np.asarray(jax.random.normal(jax.random.PRNGKey(int(seed)),
                                     (len(chol), int(samples) * int(outputs)),
                                     dtype=np.float64))
    g = chol @ z
    del chol
    small = len(g) <= KEEP_NNGP_MAX  # the exact expected losses are for small problems only
    return InitDraws(train=g[:n_train], test=g[n_train:] if len(g) > n_train else None,
                     seed=int(seed), jitter=jitter,
                     nngp=np.asarray(nngp, dtype=np.float64) if small else None,
                     outputs=int(outputs))


def sorted_nngp(problem: KernelProblem, nngp) -> np.ndarray:
    """The NNGP on ``[train; test]`` given in the caller's training order, permuted to the
    problem's (agent-sorted) order; ``ValueError`` naming ``nngp`` for a wrong shape or a
    non-finite entry."""
    k = np.asarray(nngp, dtype=np.float64)
    n = problem.num_train
    m = 0 if problem.y_test is None else problem.y_test.shape[0]
    if k.shape != (n + m, n + m):
        raise ValueError(f"nngp: expected the ({n + m}, {n + m}) NNGP kernel on the training "
                         f"then the test inputs, got shape {k.shape}")
    check_finite("nngp", k)  # indices in the caller's order
    idx = np.concatenate([np.asarray(problem.order), n + np.arange(m)])
    return k[np.ix_(idx, idx)]


def augment(problem: KernelProblem, draws: InitDraws) -> KernelProblem:
    """The problem with ``K + P`` output columns: the mean network then ``P`` responses
    (``f_0 = g_j``, target 0); ``labels`` stay those of the ``K`` real outputs."""
    if problem.loss != "mse":
        raise ValueError("f0: sampled random networks as shared response columns need "
                         "loss='mse' (cross-entropy runs them as independent networks)")
    if not problem.traced:
        k = problem.num_outputs
        raise ValueError(
            f"kernel_train: one random network (nngp, f0='random') with the squared loss "
            f"needs the traced kernel, one ({problem.num_train}, {problem.num_train}) block "
            f"shared by the {k} outputs, got the full ({problem.num_train * k}, "
            f"{problem.num_train * k}) kernel (its responses share cyclic columns of that "
            "block)")
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
    # at a divergent rate the moments overflow to inf / nan past the divergence, which the
    # trajectory's status reports and its records end before: no numpy warnings for them
    with np.errstate(over="ignore", invalid="ignore"):
        dist = output_distribution(problem.kernel, problem.y_train, agent, problem.mixing, lr,
                                   steps, name, nngp=nngp,
                                   kernel_test_train=problem.kernel_test,
                                   y_test=problem.y_test, continuous=continuous)
    return dist.expected_train_loss, dist.expected_test_loss


#: what the band of the sampled networks is over (``metadata["band_over"]`` -> words)
BAND_WORDS = {
    "init": "over initialisations (f0 drawn from the NNGP)",
    "init+mixing": ("over initialisations and mixing sequences jointly (network s: f0 draw s "
                    "and mixing sequence s); .mean_network.band: over the mixing sequences "
                    "alone (f0 = 0)"),
    "init+batch": ("over initialisations and mini-batch sequences jointly (network s: f0 "
                   "draw s and batch sequence s, and mixing sequence s for random gossip); "
                   ".mean_network.band: over the batch sequences alone (f0 = 0)"),
}
#: what the band over initialisations alone is (``metadata["init_band"]``), by sequence kind
INIT_BAND_WORDS = {
    "batch": ("over initialisations alone: quantiles over the S sampled f0 (network s's own "
              "draw) of full-batch training from that f0, the expected mini-batch SGD "
              "dynamics of the linearised model given f0 (squared loss: the mean over batch "
              "sequences of the state and outputs, exact for batch_sampling='independent', "
              "to first order in the rate for 'epoch'); the batch noise is averaged out of "
              "the outputs, so its losses are those of the expected outputs given f0"),
    "mixing": ("over initialisations alone: quantiles over the S sampled f0 (network s's own "
               "draw) of the E[W] recursion from that f0, the exact mean over mixing "
               "sequences of the state and outputs given f0 (squared loss); the mixing noise "
               "is averaged out of the outputs, so its losses are those of the expected "
               "outputs given f0"),
}
CE_MEAN_WORDS = ("cross-entropy: .mean_network is the network started from f0 = 0, not the "
                 "expected network (the dynamics are not affine in f0); the expected losses "
                 "are the means over the sampled networks")


def band_over(problem: KernelProblem, batch_size: int = 0) -> str:
    """Key of :data:`BAND_WORDS` for this problem's sampled networks."""
    if batch_size:
        return "init+batch"
    process = problem.process
    return "init+mixing" if process is not None and process.random else "init"


def init_band_run(expected: Trajectory, runs: list[Trajectory], draws: InitDraws,
                  batch_size: int = 0) -> RandomNetworkTrajectory:
    """The expected dynamics (``E[W]`` / full batch) from each sampled network's ``f_0``
    (``runs``, network ``s``'s draw) and from ``f_0 = 0`` (``expected``), as a
    :class:`~ntkdyn.trajectory.RandomNetworkTrajectory` whose band is over initialisations
    alone (:data:`INIT_BAND_WORDS`): ``RandomNetworkTrajectory.init_band_run``."""
    words = INIT_BAND_WORDS["batch" if batch_size else "mixing"]
    out = assemble(expected, runs, draws, None, over="init")
    meta = dict(out.metadata, band=words, init_band=words,
                quantity="the expected dynamics (" + ("full-batch training" if batch_size
                                                      else "E[W] recursion") +
                f") of one random network over initialisations, {len(runs)} sampled f0 "
                "(the sampled networks' own draws)")
    return dataclasses.replace(out, metadata=meta)


def assemble(mean: Trajectory, networks: list[Trajectory], draws: InitDraws,
             exact=None, over: str = "init",
             init_band: RandomNetworkTrajectory | None = None) -> RandomNetworkTrajectory:
    """Mean over the sampled networks of every metric, quantile bands, the draws of
    :data:`DRAW_METRICS` and the mean network (``mean``, with its own quantity words);
    ``over`` (:data:`BAND_WORDS`) says what the band is over (``metadata["band_over"]``,
    ``metadata["band"]``); ``init_band`` (:func:`init_band_run`) the band over
    initialisations alone where the band is joint (``metadata["init_band"]``)."""
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
    words = quantity_words(False, seed=draws.seed, samples=p,
                           loss=first.metadata.get("loss", "mse"))
    meta = dict(first.metadata, quantity=words, samples=p, f0="random",
                init_seed=draws.seed, nngp_jitter=draws.jitter,
                note="fields: mean over sampled initialisations (f0 ~ NNGP) of each metric "
                     "(expected loss of one random network); quantiles / band(): over the "
                     "samples; .mean_network: the f0 = 0 trajectory (loss of the mean output)",
                band_over=over, band=BAND_WORDS[over])
    if init_band is not None:
        meta["init_band"] = init_band.metadata["init_band"]
    if first.metadata.get("loss", "mse") != "mse":
        meta["note"] = meta["note"].replace(" (loss of the mean output)", "; " + CE_MEAN_WORDS)
        meta["mean_network"] = CE_MEAN_WORDS
    mean_meta = dict(mean.metadata, quantity=quantity_words(True), f0="mean")
    if "mean_network" in meta:
        mean_meta["quantity"] = ("the network started from f0 = 0 (cross-entropy: not the "
                                 "expected network over initialisations)")
    exact_train = exact_test = None
    if exact is not None:
        exact_train = exact[0][:keep]
        exact_test = None if exact[1] is None else exact[1][:keep]
    status, diverged_at = _status(networks, over, meta)
    return RandomNetworkTrajectory(
        steps=first.steps[:keep], phase=None if first.phase is None else first.phase[:keep],
        status=status, diverged_at=diverged_at, continuous=first.continuous,
        lr=first.lr, metadata=meta, samples=p, quantile_levels=levels, quantiles=quantiles,
        mean_network=dataclasses.replace(mean, metadata=mean_meta), draws=kept,
        exact_train_loss=exact_train, exact_test_loss=exact_test, init_band_run=init_band,
        **arrays)


def _status(networks: list[Trajectory], over: str, meta: dict) -> tuple[str, int | None]:
    """Status and ``diverged_at`` of the sampled networks together: ``"diverged"`` at the
    first step any left the bound; where each runs its own sampled sequence (``over`` not
    ``"init"``), ``"unstable"`` when some grew (:func:`~ntkdyn.trajectory.growing_runs`, set
    in ``meta["growing"]``); else the networks' common status."""
    diverged = [t.diverged_at for t in networks if t.status == "diverged"]
    if diverged:
        return "diverged", min(diverged)
    if over != "init":
        noun = "sampled networks (network s on " + (
            "batch" if "batch" in over else "mixing") + " sequence s)"
        growing = growing_runs(networks, noun)
        if growing:
            meta["growing"] = growing
            return "unstable", None
    statuses = {t.status for t in networks}
    return ("unstable" if "unstable" in statuses else "ok"), None


__all__ = ["DEFAULT_INDEPENDENT_NETWORKS", "DEFAULT_NETWORKS", "InitDraws", "assemble",
           "augment", "band_over", "cholesky_with_jitter", "draw", "exact_expected_losses",
           "group_initial_outputs", "has_init_band", "independent_networks", "init_band_run",
           "sorted_nngp"]

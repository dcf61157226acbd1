r"""Mini-batch SGD: the batches every agent draws, shared by the prediction and the trainer.

Sampling (``theory/minibatch_sgd.md``), ``sampling=``:

* ``"epoch"`` (default; random reshuffling, what data loaders do): agent ``q`` holding
  ``N_q`` samples draws batches of ``B`` of them **without replacement within each
  epoch**: an epoch of agent ``q`` is ``m_q = floor(N_q / B)`` draws, the first
  ``m_q B`` entries of a random permutation of its shard cut into consecutive batches
  (the last ``N_q - m_q B`` entries of the permutation are left out of that epoch, a
  fresh permutation starts the next one).  Draw ``d`` belongs to epoch ``e = d // m_q``
  at position ``j = d mod m_q``.
* ``"independent"``: every draw is a fresh uniform ``B``-subset of the shard (without
  replacement within the batch, independent across draws): an epoch of one draw.

Draws and steps.  Step ``t`` of an algorithm that evaluates ``g`` local gradients per step
(``Algorithm.grads_per_step``: ``local_steps`` for P2PL, 1 otherwise) uses draws
``t g, ..., t g + g - 1`` (``ops.adapt(x, j)`` uses draw ``t g + j``).  Every gradient
evaluated during step ``t`` uses those draws, including a gradient-tracking schedule's
``grad(x+)``; its initial ``y_0 = grad(x_0)`` uses the draws of step 0.

Reproducible: sequence ``s`` draws epoch ``e`` of agent ``q`` from
``fold_in(fold_in(fold_in(fold_in(PRNGKey(seed), SALT), s), q), e)`` (a uniform score per
sample, sorted), in the solver (:mod:`ntkdyn.dynamics.solver`) and in the trainer
(:func:`ntkdyn.training.trainer.train` with ``batch_size``, ``seed``, ``batch_sample``) alike, so
sequence ``s`` of a prediction and a training run on sequence ``s`` see the same batches
(:meth:`BatchSequence.indices` lists them in numpy).

Unbiased: by symmetry of a uniform permutation, each position of an epoch is a uniform
``B``-subset of the shard, so the batch gradient ``(1/B) sum_{i in batch} grad l_i`` has
expectation ``(1/N_q) sum_{i in q} grad l_i = grad L_q`` (the full-batch local gradient,
whose normalisation is the per-agent mean over ``N_q`` samples).  With
``"independent"`` draws the expected state of the linearised model under the squared
loss is exactly full-batch training; with ``"epoch"`` draws (dependent within an
epoch) it is so to first order in the rate (``theory/minibatch_sgd.md`` section 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

#: the ways of drawing batches (see the module doc)
SAMPLINGS = ("epoch", "independent")
#: folded into the seed so that batches and random gossip (same seed) are independent
SALT = 0x5BA7C4


def check_batch_size(batch_size, counts=None, name: str = "batch_size") -> int:
    """``batch_size`` as an int (0: full batch), else ``ValueError`` naming ``name``.

    It must be an integer ``>= 0`` and at most the smallest shard ``min_q N_q``
    (``counts``: the shard sizes, when known).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) \
            or batch_size < 0:
        raise ValueError(f"{name}: expected an integer >= 0 (0: full batch), got "
                         f"{batch_size!r}")
    if counts is not None and batch_size > int(np.min(counts)):
        q = int(np.argmin(counts))
        raise ValueError(f"{name}: expected at most the smallest shard, {int(np.min(counts))} "
                         f"samples (agent {q}), got {int(batch_size)}")
    return int(batch_size)


def check_sampling(sampling, name: str = "batch_sampling") -> str:
    """``sampling`` if it is one of :data:`SAMPLINGS`, else ``ValueError`` naming ``name``."""
    if not isinstance(sampling, str) or sampling not in SAMPLINGS:
        raise ValueError(f"{name}: expected one of {SAMPLINGS}, got {sampling!r}")
    return sampling


def check_samples(samples, name: str = "samples") -> int:
    """``samples`` as an int ``>= 1``, else ``ValueError`` naming ``name``."""
    if isinstance(samples, bool) or not isinstance(samples, int | np.integer) or samples < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {samples!r}")
    return int(samples)


@dataclass(frozen=True)
class BatchSequence:
    """Batches of size ``batch_size`` for shards of sizes ``counts`` (see module doc).

    Hashable (a static argument of jitted code).  ``seed`` picks the family of
    sequences; sequence ``s`` is :meth:`key` ``(s)``.
    """

    counts: tuple[int, ...]
    batch_size: int
    seed: int = 0
    sampling: str = "epoch"

    def __post_init__(self):
        check_batch_size(self.batch_size, self.counts)
        check_sampling(self.sampling)
        if self.batch_size < 1:
            raise ValueError("batch_size: a BatchSequence needs batch_size >= 1")

    @property
    def num_agents(self) -> int:
        return len(self.counts)

    @property
    def epoch_draws(self) -> np.ndarray:
        """``m_q = floor(N_q / B)`` (``"epoch"``) or 1 (``"independent"``): draws per
        epoch of each agent."""
        if self.sampling == "independent":
            return np.ones(len(self.counts), dtype=np.int64)
        return np.asarray(self.counts) // self.batch_size

    def key(self, sample: int = 0):
        """PRNG key of sequence ``sample``."""
        return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(self.seed), SALT),
                                  sample)

    def draw(self, key, d):
        """``(Q, B)`` shard-local indices of draw ``d`` of the sequence with ``key``
        (jittable; ``d`` may be traced)."""
        return _draw(key, d, self.counts, self.batch_size, self.sampling == "independent")

    def weights(self, key, d):
        """``(Q, n_max)`` weights ``1/B`` on the batch of draw ``d`` (0 elsewhere and on
        the padding of shorter shards): the trainer's padded layout."""
        idx = self.draw(key, d)
        q, n_max = len(self.counts), max(self.counts)
        w = jnp.zeros((q, n_max))
        return w.at[jnp.arange(q)[:, None], idx].set(1.0 / self.batch_size)

    def row_weights(self, key, d):
        """``(N,)`` weights ``1/B`` on the batch of draw ``d`` in the agent-sorted sample
        order (agent ``q``'s samples at ``offsets[q]:offsets[q+1]``): the solver's layout."""
        idx = self.draw(key, d)
        offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        rows = (jnp.asarray(offsets)[:, None] + idx).ravel()
        return jnp.zeros(sum(self.counts)).at[rows].set(1.0 / self.batch_size)

    def indices(self, step: int, sample: int = 0, grads_per_step: int = 1,
                j: int = 0) -> list[np.ndarray]:
        """Agent ``q``'s batch (indices into its own shard, in its order) at draw
        ``step * grads_per_step + j`` of sequence ``sample``: one array per agent."""
        idx = np.asarray(self.draw(self.key(sample), step * grads_per_step + j))
        return [idx[q] for q in range(self.num_agents)]


@partial(jax.jit, static_argnames=("counts", "batch", "independent"))
def _draw(key, d, counts: tuple[int, ...], batch: int, independent: bool = False):
    q = len(counts)
    n_max = max(counts)
    n = jnp.asarray(counts)
    m = jnp.ones_like(n) if independent else n // batch
    d = jnp.asarray(d, dtype=jnp.int64)
    epoch, pos = d // m, d % m

    def one(agent, n_q, e, j):
        k = jax.random.fold_in(jax.random.fold_in(key, agent), e)
        u = jax.random.uniform(k, (n_max,), dtype=jnp.float64)
        u = jnp.where(jnp.arange(n_max) < n_q, u, 2.0)  # padding sorts last
        perm = jnp.argsort(u)
        return jax.lax.dynamic_slice(perm, (j * batch,), (batch,))

    return jax.vmap(one)(jnp.arange(q), n, epoch, pos)


__all__ = ["BatchSequence", "check_batch_size", "check_samples", "check_sampling", "SALT",
           "SAMPLINGS"]

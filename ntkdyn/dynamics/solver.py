r"""Kernel-space evolution of peer-to-peer training of a linearised network.

Mathematics (derivation in ``theory/kernel_space.md``).  With the linearised
network ``f(x; theta) = f_0(x) + J(x)(theta - theta_0)`` and the squared
loss, every parameter deviation stays in the row span of the training
Jacobian ``J``: ``theta_q - theta_0 = J^T alpha_q``.  The two primitives act
on ``alpha`` as

* combine: ``alpha_q <- sum_p W_qp alpha_p``;
* local gradient: ``grad_q = (1/N_q) E_q r_q``, with the residual on agent
  ``q``'s own rows ``r_q = (f_0 - Y)[S_q] + Theta[S_q, :] alpha_q``,

so one iteration costs one pass over the kernel: agent ``q`` multiplies its
own rows ``Theta[S_q, :]`` (contiguous after sorting by agent) by its state.
The centralised reference is an extra slot ``Q`` of the state: the same
algorithm with ``W = [[1]]`` on the global objective ``L = (1/Q) sum_q L_q``
(gradient ``D (Theta x + f_0 - Y)``, ``D = diag(1/(Q N_q(i)))`` the per-row
weights).  It is one time-invariant centralised problem, so by default it is
run in the eigenbasis of the symmetric ``S = D^{1/2} Theta D^{1/2} = V Lambda
V^T``: with ``x = T w``, ``T = D^{1/2} V``, its gradient is
``Lambda w + T^T (f_0 - Y)`` (diagonal), so every schedule (GD, heavy-ball GD,
P2PL's ``L`` GD steps per round, ...) advances it in ``O(R C)`` per step after
one ``eigh`` (:func:`reference_basis`); ``x = T w`` is formed at record steps
only.  The exact similarity ``D Theta = T Lambda T^{-1}`` keeps it equal to the
carried recursion to round-off.  On a device mesh or above
:data:`REFERENCE_EIGH_MAX` rows the reference instead rides along every kernel
pass (its columns join each agent's product: ``reference="carried"``).

Recorded quantities are quadratic forms in ``alpha`` (see
:mod:`ntkdyn.trajectory` for the conventions): outputs
``f_0 + Theta alpha_q``, ``||theta_q - theta_0||^2 = alpha_q^T Theta alpha_q``
and ``||theta_q - theta_p||^2 = (alpha_q - alpha_p)^T Theta (alpha_q - alpha_p)``.

State layout: ``x`` has shape ``(A, R, C)``: ``A = Q + 1`` slots (agents then
the centralised reference), ``R`` rows (samples, or sample-output pairs for
a full kernel), ``C = n_rates * C0`` columns (``C0 = K`` for a traced kernel,
``1`` for a full one).  Several learning rates share every kernel read.
Schedules with memory (gradient tracking, EXTRA, momentum;
:mod:`ntkdyn.algorithms`) carry a tuple of such arrays (``Algorithm.init`` /
``params``); every component is a parameter-space vector in the row span of
``J`` and lives in the same kernel coordinates (``theory/algorithms.md``).
Multi-phase schedules (P2PL) are recorded after each phase of the last step
before a record.  A time-varying or random mixing sequence
(:mod:`ntkdyn.graphs.sequences`) is sampled inside the loop, event by event; ``S``
sampled sequences (and one group running the mean-state recursion with
``E[W]``) are further column groups, ``C = (S + 1) * n_rates * C0``, so they
too share every kernel read.

Continuous time (gradient flow): ``dx/dt = step(x) - x`` (time in steps), with
state-transition matrix ``Phi(t, t0) = exp((A - I)(t - t0))``.  It is applied
exactly (to round-off) by a truncated Taylor series of the matrix exponential
on sub-intervals ``h`` with ``h ||A - I||_2 <= 3`` and 30 terms (truncation
error below ``3^31/31! < 1e-19``), using only operator applications.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from ntkdyn._utils import memory
from ntkdyn._utils.checks import MAX_STEP
from ntkdyn.algorithms import Algorithm, Operators
from ntkdyn.dynamics import sharding
from ntkdyn.dynamics.problem import KernelProblem
from ntkdyn.engine import balanced_chunk, concatenate, padded_chunks, scan_records, trim
from ntkdyn.graphs.sequences import (
    groups_mixing_at,
    mix_over_neighbours,
    process_arrays,
    sums_over_neighbours,
    supported_sampler,
)
from ntkdyn.losses import accuracy, sample_loss

#: full-precision products (no TF32 / bf16 passes on GPUs for float32 kernels)
EXACT = jax.lax.Precision.HIGHEST
#: largest kernel (rows) whose centralised reference runs in its eigenbasis (one eigh,
#: O(R^3) once, an (R, R) change of basis kept for the records); carried above
REFERENCE_EIGH_MAX = memory.REFERENCE_EIGH_MAX
#: steps between divergence checks (a block that ends outside the bound is replayed with a
#: check after every step; the check and the freeze are two passes over the state per step)
CHECK_BLOCK = 16
#: a static ``W`` with at most this fraction of ``Q`` nonzeros per row is combined sparsely
#: (:func:`sparse_mixing`).  Measured end to end on the 2-core CPU (README): ring of 8
#: (D = 3) 0.88x, so dense there; ring of 16 (D = 3) 1.08x; Erdos-Renyi Q = 100-128
#: (D = 12-13) 1.2-1.4x faster than the dense product
SPARSE_MIX_FRACTION = 0.25
TAYLOR_THETA = 3.0
TAYLOR_TERMS = 30
DIVERGENCE_FACTOR = 1e8


# --------------------------------------------------------------------------- operators
def row_blocks(kernel: np.ndarray, offsets: tuple[int, ...], rows_per_sample: int,
               dtype=jnp.float64, mesh=None):
    """Agents' row blocks ``Theta[S_q, :]``, split once (slicing inside a jitted loop copies).

    Equal shards give one ``(Q, n, R)`` array (one batched product per step);
    unequal shards a tuple of ``(n_q, R)`` arrays.  ``dtype=float32`` halves the
    memory and the bytes read per step; products are then formed in float32 and
    added to the float64 state.  With a ``mesh`` each block's columns are
    zero-padded to a multiple of the device count and sharded.
    """
    counts = np.diff(offsets)
    bounds = [(offsets[q] * rows_per_sample, offsets[q + 1] * rows_per_sample)
              for q in range(len(counts))]
    if np.all(counts == counts[0]):
        n = counts[0] * rows_per_sample
        return _place_columns(np.asarray(kernel).reshape(len(counts), n, kernel.shape[1]),
                              dtype, mesh)
    return tuple(_place_columns(kernel[s:e], dtype, mesh) for s, e in bounds)


def _place_columns(arr: np.ndarray, dtype, mesh):
    """On the default device, or column-sharded (zero-padded) over ``mesh``."""
    if mesh is None:
        return jnp.asarray(arr, dtype=dtype)
    cols = arr.shape[-1]
    return sharding.sharded_columns(
        arr.shape[-2], cols, lambda r, c: arr[..., r[0]:r[-1] + 1, c[0]:c[-1] + 1], mesh,
        dtype=np.dtype(dtype), lead=arr.shape[:-2])


def kernel_times(blocks, flat, low=None):
    """``Theta @ flat`` from the agents' row blocks (result in ``flat``'s dtype); with
    ``low`` the response columns through its float32 blocks (:func:`mixed_product`)."""
    if low is not None:
        hi, lo = split_low(flat, *low[1].shape)
        return join_low(kernel_times(blocks, hi), kernel_times(low[0], lo), *low[1].shape)
    low = _blocks_dtype(blocks)
    f = flat.astype(low)
    if isinstance(blocks, tuple):
        out = jnp.concatenate([jnp.matmul(b, f, precision=EXACT) for b in blocks], axis=0)
    else:
        out = jnp.einsum("qnr,rm->qnm", blocks, f, precision=EXACT).reshape(-1, flat.shape[1])
    return out.astype(flat.dtype)


def split_low(rhs, c0: int, p: int):
    """``(hi, lo)`` columns of ``rhs`` for ``kernel_dtype="mixed"``: of its columns, in
    groups of ``c0 = K + P`` (one group per rate and slot), the first ``K`` of each group
    (the mean network) and the last ``p`` (the sampled networks' responses); reshapes and
    slices, no gather."""
    lead, g = rhs.shape[:-1], rhs.shape[-1] // c0
    r = rhs.reshape(*lead, g, c0)
    return (r[..., :c0 - p].reshape(*lead, g * (c0 - p)),
            r[..., c0 - p:].reshape(*lead, g * p))


def join_low(hi, lo, c0: int, p: int):
    """Inverse of :func:`split_low`."""
    lead, g = hi.shape[:-1], hi.shape[-1] // (c0 - p)
    return jnp.concatenate([hi.reshape(*lead, g, c0 - p), lo.reshape(*lead, g, p)],
                           axis=-1).reshape(*lead, g * c0)


def mixed_product(op, kernel, rhs, low=None):
    """``op(kernel, rhs)`` in ``kernel``'s dtype; with ``low = (kernel_lo, shape)``
    (``kernel_dtype="mixed"``, ``shape.shape = (K + P, P)``) the response columns of
    ``rhs`` (:func:`split_low`) go through ``op(kernel_lo, .)`` in float32 and the mean
    network's columns through ``kernel`` in float64.  Result in ``rhs``'s dtype."""
    if low is None:
        return op(kernel, rhs.astype(kernel.dtype)).astype(rhs.dtype)
    kernel_lo, shape = low
    hi, lo = split_low(rhs, *shape.shape)
    out_hi = op(kernel, hi.astype(kernel.dtype)).astype(rhs.dtype)
    out_lo = op(kernel_lo, lo.astype(kernel_lo.dtype)).astype(rhs.dtype)
    return join_low(out_hi, out_lo, *shape.shape)


def _blocks_dtype(blocks):
    return (blocks[0] if isinstance(blocks, tuple) else blocks).dtype


def kernel_operators(
    blocks,
    residual: jax.Array,
    mixing: jax.Array,
    lr_cols: jax.Array,
    *,
    offsets: tuple[int, ...],
    rows_per_sample: int,
    central: bool,
    reference: tuple | None = None,
    loss: tuple | None = None,
    batch=None,
    low: tuple | None = None,
    lifted: bool = False,
    test_blocks=None,
) -> Operators:
    """The primitives on the kernel-space state ``x`` of shape ``(A, R, C)``.

    ``reference = (lam, b)`` (``(R, 1)`` eigenvalues of ``S``, ``(R, C)`` = ``T^T``
    times the residual; :func:`reference_basis`) puts the centralised slot in the
    eigenbasis: its gradient is ``lam * w + b`` and it no longer joins the kernel
    products; ``None`` (with ``central``) carries it in alpha coordinates.

    ``blocks`` are the agents' kernel rows (:func:`row_blocks`), ``residual``
    is ``(f_0 - Y)`` in row layout tiled over the columns (``(R, C)``; zero for
    the purely linear part), ``lr_cols`` the learning rate of every slot and
    column (``(A, 1, C)``).  ``mixing`` is the ``(Q, Q)`` matrix, or for a
    time-varying or random sequence a function ``j -> (G, Q, Q)`` giving the
    ``j``-th matrix of the current step for each of ``G`` equal groups of columns
    (sampled sequences side by side; :mod:`ntkdyn.graphs.sequences`).

    ``loss = (targets, scale, K)`` (``targets`` the one-hot ``Y`` in the layout of
    ``residual``) switches the output-space gradient from the squared loss's
    ``r = f - Y`` to softmax cross-entropy's ``s (softmax(s f) - Y)`` with
    ``f = f_0 + Theta alpha`` (:func:`cross_entropy_vector`); ``None``: squared loss.
    The cross-entropy gradient is not affine, so ``reference`` must be ``None``.

    ``batch`` (mini-batch SGD, :mod:`ntkdyn.minibatch`): a function ``j -> (R, C)`` of
    per-row weights for the step's ``j``-th draw, ``1/B`` on the rows of each column
    group's batch and 0 elsewhere; it replaces the full batch's ``1/N_q``, so agent ``q``'s
    gradient is ``(1/B) E_{B_q} r_q`` (the output-space vector masked to its batch) and
    the carried centralised slot's is ``(1/(Q B)) sum_q E_{B_q} r_q`` (the union of the
    agents' batches).  ``None``: full batch.  Needs ``reference=None``.

    ``low = (blocks_lo, shape)`` (``kernel_dtype="mixed"``, :func:`mixed_product`): the
    sampled networks' response columns are multiplied by float32 copies of the blocks.

    ``lifted``: the state carries the agents' training outputs, ``(A, 2R, C)`` with rows
    ``[alpha; Theta alpha]`` (:func:`_grad_lifted`, :func:`_grad_blocks_lifted`; one
    device); with ``test_blocks`` (the agents' blocks of ``Theta*^T``, :func:`row_blocks`
    of the transposed test kernel) also the test outputs, ``(A, 2R + M, C)`` with rows
    ``[alpha; Theta alpha; Theta* alpha]``.
    """
    q_count = len(offsets) - 1
    if loss is not None and reference is not None:
        raise ValueError("reference: the eigenbasis reference is for the squared loss only")
    if batch is not None and reference is not None:
        raise ValueError("reference: the eigenbasis reference is for full-batch gradients only")
    layout = _GradLayout(blocks=blocks, residual=residual, offsets=tuple(offsets),
                         rps=rows_per_sample, central=central, reference=reference,
                         loss=loss, batch=batch, low=low,
                         test_blocks=test_blocks if lifted else None)
    unequal = isinstance(blocks, tuple)
    grad = partial((_grad_blocks_lifted if unequal else _grad_lifted) if lifted else
                   _grad_blocks if unequal else _grad_stacked, layout)
    return Operators(mix=partial(_mix, mixing, q_count=q_count, central=central), grad=grad,
                     scale=lambda g: lr_cols * g, grad_at=None if batch is None else grad)


def sparse_mixing(w: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(neighbours, weights)``, each ``(Q + 1, D)``, of a static mixing matrix whose rows
    have at most ``D <= SPARSE_MIX_FRACTION Q`` nonzeros (row ``Q``: the centralised slot,
    kept: weight 1 on itself; rows padded with weight 0 on their own slot); ``None`` for a
    denser ``W`` (:func:`_mix` then multiplies by ``W``)."""
    w = np.asarray(w, dtype=np.float64)
    q = w.shape[0]
    nonzero = w != 0
    d = int(nonzero.sum(axis=1).max())
    if d > SPARSE_MIX_FRACTION * q:
        return None
    nbr = np.tile(np.arange(q + 1)[:, None], (1, d))
    wts = np.zeros((q + 1, d))
    for i in range(q):
        idx = np.nonzero(nonzero[i])[0]
        nbr[i, :len(idx)], wts[i, :len(idx)] = idx, w[i, idx]
    wts[q, 0] = 1.0
    return nbr, wts


#: One matrix per column group (time-varying and random mixing): up to this many agents the
#: combine is a sum of ``Q`` broadcast products (one fused pass over the state), above it one
#: einsum.  Measured on 2 CPU cores, float64, state ``(Q, R, G K)``: Q 4 / 8 / 16 the sum
#: 4.3x / 2.4x / 2.0x faster than the einsum (Q 8, R 800, 65 groups: 24.2 -> 5.9 ms); Q 32
#: and 100 it was 1.4x and 5.7x slower.
UNROLLED_MIX_MAX = 16


def _mix(mixing, x, j=0, *, q_count: int, central: bool):
    """Combine: ``x_q <- sum_p W_qp x_p`` for the agents' slots (the centralised slot, if
    any, unchanged); a callable ``mixing(j) -> (G, Q, Q)`` gives one matrix per column
    group (time-varying and random sequences), summed over each row's neighbours where it
    carries them (``.neighbours``, :class:`~ntkdyn.graphs.sequences.SupportedSampler`); a
    tuple ``(neighbours, weights)`` (:func:`sparse_mixing`) sums over each slot's ``D``
    neighbours: ``D`` gathers of whole slots, ``D`` reads of the state, where the product
    reads it once but makes ``2 Q`` flops per entry."""
    if isinstance(mixing, tuple):
        nbr, wts = mixing[0][:x.shape[0]], mixing[1][:x.shape[0]].astype(x.dtype)
        out = wts[:, 0, None, None] * x[nbr[:, 0]]
        for d in range(1, nbr.shape[1]):
            out = out + wts[:, d, None, None] * x[nbr[:, d]]
        return out if central or x.shape[0] == q_count else out[:q_count]
    if callable(mixing):
        w = mixing(j)
        g = w.shape[0]
        xa = x[:q_count]
        q, r, c = xa.shape
        xg = xa.reshape(q, r, g, c // g)
        nbrs = getattr(mixing, "neighbours", None)
        if sums_over_neighbours(nbrs, q):
            agents = mix_over_neighbours(w, xg, nbrs).reshape(q, r, c)
        elif q <= UNROLLED_MIX_MAX:  # sum_q W[:, :, q] x_q: one fused elementwise pass
            agents = sum(jnp.swapaxes(w[:, :, p], 0, 1)[:, None, :, None].astype(x.dtype)
                         * xg[p][None] for p in range(q)).reshape(q, r, c)
        else:
            agents = jnp.einsum("gpq,qrgc->prgc", w, xg, precision=EXACT).reshape(q, r, c)
    elif central and x.shape[0] == q_count + 1:  # one product, no copy of the state
        aug = jnp.zeros((q_count + 1,) * 2, mixing.dtype).at[:q_count, :q_count].set(mixing)
        return jnp.tensordot(aug.at[q_count, q_count].set(1.0), x, axes=1)
    else:
        agents = jnp.tensordot(mixing, x[:q_count], axes=1)
    return jnp.concatenate([agents, x[q_count:]], axis=0) if central else agents


@dataclass(frozen=True, eq=False)
class _GradLayout:
    """What the local-gradient primitive closes over (:func:`kernel_operators`)."""

    blocks: object
    residual: object
    offsets: tuple
    rps: int
    central: bool
    reference: object
    loss: object
    batch: object
    low: object = None
    test_blocks: object = None

    def low_at(self, q=None):
        """``low`` for agent ``q``'s block (unequal shards) or all blocks."""
        if self.low is None or q is None:
            return self.low
        return (self.low[0][q], self.low[1])

    @property
    def q_count(self) -> int:
        return len(self.offsets) - 1

    @property
    def rows(self) -> int:
        return self.offsets[-1] * self.rps

    @property
    def carried(self) -> bool:
        return self.central and self.reference is None

    def out_vec(self, z, lo, hi):
        """Output-space gradient from ``z = residual + Theta alpha`` on rows ``lo:hi``."""
        if self.loss is None:
            return z
        targets, scale, k = self.loss
        return cross_entropy_vector(z, targets[lo:hi], scale, k, self.rps)

    def grad_reference(self, x):  # the centralised slot in the eigenbasis: diagonal
        lam, b = self.reference
        return (lam * x[self.q_count] + b)[None]


def _grad_stacked(lay: _GradLayout, x, j=0):
    """Local gradients with equal shards: one batched product ``(Q, n, R) x (Q, R, C)``
    (the carried centralised slot: one more product ``(Q n, R) x (R, C)`` with the same
    blocks; joining its columns to the agents' would copy the state on every step, which
    XLA:CPU does at well under 1 GB/s)."""
    q_count = lay.q_count
    prod = mixed_product(partial(jnp.einsum, "qnr,qrc->qnc", precision=EXACT), lay.blocks,
                         x[:q_count], lay.low_at()).astype(x.dtype)
    r_agents, res, bw = _stacked_residuals(lay, prod, j)
    return _pad_rows(_assemble(r_agents, _central_stacked(lay, x, res, bw)), x.shape[1])


def _stacked_residuals(lay: _GradLayout, outputs, j):
    """Equal shards: agent ``q``'s output-space gradient on its own rows, ``(Q, n, C)``,
    weighted by ``1/N_q`` (or the step's batch weights), from its outputs there
    (``Theta[S_q, :] alpha_q``, ``(Q, n, C)``); also the residual ``(Q, n, C)`` and the
    batch weights (None: full batch) for the centralised slot."""
    rows, counts0 = lay.rows, lay.offsets[1] - lay.offsets[0]
    c = outputs.shape[-1]
    res = jnp.broadcast_to(lay.residual, (rows, c)).reshape(outputs.shape)
    bw = None if lay.batch is None else lay.batch(j)
    z = lay.out_vec((res + outputs).reshape(rows, c), 0, rows)
    return (z / counts0 if bw is None else z * bw).reshape(outputs.shape), res, bw


def _central_stacked(lay: _GradLayout, alpha, res, bw):
    """The centralised slot's gradient ``(rows, C)`` with equal shards (``alpha`` the slots'
    coefficients, ``res`` the residual ``(Q, n, C)``): the carried reference's own product
    ``(Q n, R) x (R, C)``, the eigenbasis reference's diagonal step, or None."""
    q_count, rows, counts0 = lay.q_count, lay.rows, lay.offsets[1] - lay.offsets[0]
    c = alpha.shape[-1]
    if lay.carried:
        prod_c = mixed_product(partial(jnp.einsum, "qnr,rc->qnc", precision=EXACT),
                               *_unmerged(lay.blocks, alpha[q_count]),
                               lay.low_at()).astype(alpha.dtype)
        g_c = lay.out_vec((res + prod_c).reshape(rows, c), 0, rows)
        return g_c / (q_count * counts0) if bw is None else g_c * (bw / q_count)
    if lay.central:
        return lay.grad_reference(alpha)[0]
    return None


def _grad_lifted(lay: _GradLayout, x, j=0):
    r"""Local gradients on the lifted state ``[alpha; u; u*]`` (``(A, 2R + M, C)``, equal
    shards; ``u*`` only with ``test_blocks``), where ``u_q = Theta alpha_q`` and
    ``u*_q = Theta* alpha_q`` for the agents' slots (the centralised slot's are not
    carried: zero; its records multiply it).

    The lift is exact for every schedule built from the two primitives: the combine acts
    on the slot axis and ``Theta`` on the row axis, so ``W`` commutes with ``Theta``, and
    each gradient ``g_q`` (agent ``q``'s rows) enters with its image ``Theta[:, S_q] g_q``
    (``Theta`` symmetric: the agent's row block transposed), so every linear combination a
    schedule forms keeps ``u = Theta alpha``.  The residual reads ``u_q[S_q]`` instead of
    multiplying ``Theta[S_q, :] alpha_q``; the one product per step, ``(Q, n, R)^T x
    (Q, n, C)``, has the same ``2 R^2 C`` flops, and the records need no training-set
    product (``2 R^2 A C`` flops each otherwise): what pays with many agents and records.
    The test rows get ``Theta*[:, S_q] r_q`` likewise (``2 M R C`` flops per step)."""
    q_count, rows, counts0 = lay.q_count, lay.rows, lay.offsets[1] - lay.offsets[0]
    c = x.shape[-1]
    n = counts0 * lay.rps
    alpha, u = x[:, :rows], x[:q_count, rows:2 * rows]
    own = jnp.moveaxis(jnp.diagonal(u.reshape(q_count, q_count, n, c), axis1=0, axis2=1),
                       -1, 0)  # (Q, n, C): agent q's outputs on its own rows
    r_agents, res, bw = _stacked_residuals(lay, own, j)
    g_c = _central_stacked(lay, alpha, res, bw)
    g_u = _blocks_transposed_times(lay.blocks, r_agents, lay.low_at())  # Theta[:, S_q] r_q
    if lay.test_blocks is not None:  # Theta*[:, S_q] r_q
        g_u = jnp.concatenate([g_u, _blocks_transposed_times(lay.test_blocks, r_agents)],
                              axis=1)
    if g_c is not None:
        g_u = jnp.concatenate([g_u, jnp.zeros((1,) + g_u.shape[1:], g_u.dtype)], axis=0)
    return jnp.concatenate([_assemble(r_agents, g_c), g_u], axis=1)


def _blocks_transposed_times(blocks, r, low=None):
    """``(Q, R, C)``: ``Theta[S_q, :]^T r_q`` for each agent's row block (``(Q, n, R)``) and
    rows ``r`` (``(Q, n, C)``); with ``low`` (``kernel_dtype="mixed"``) the response columns
    through the float32 blocks (:func:`mixed_product`).  Formed as ``(Q, C, R)``
    (:func:`_rows_times_blocks`) and transposed."""
    if low is not None:
        hi, lo = split_low(r, *low[1].shape)
        return join_low(_blocks_transposed_times(blocks, hi),
                        _blocks_transposed_times(low[0], lo), *low[1].shape)
    return jnp.swapaxes(mixed_product(_rows_times_blocks, *_unmerged(blocks, r)),
                        1, 2).astype(r.dtype)


def _rows_times_blocks(blocks, r):
    """``(Q, C, R)`` products ``r_q^T Theta[S_q, :]``: XLA:CPU runs this layout at GEMM
    speed, the ``(Q, R, C)`` one (``Theta[S_q, :]^T r_q``) about 6x slower (measured)."""
    return jax.lax.dot_general(r, blocks, (((1,), (1,)), ((0,), (0,))), precision=EXACT)


def _assemble(r_agents, g_c):
    """``(A, rows, C)`` gradient from agent ``q``'s rows ``r_agents[q]`` (``(Q, n, C)``; zero
    on the other agents' rows) and the centralised slot's ``g_c`` (``(rows, C)`` or None):
    one elementwise pass (a concatenation of the slots copies the state a second time)."""
    q_count, n, c = r_agents.shape
    slots = q_count + (g_c is not None)
    sel = jnp.eye(slots, q_count, dtype=r_agents.dtype)[:, :, None, None]
    g = sel * r_agents[None]
    if g_c is not None:
        central = (jnp.arange(slots) == q_count).astype(r_agents.dtype)[:, None, None, None]
        g = g + central * g_c.reshape(1, q_count, n, c)
    return g.reshape(slots, q_count * n, c)


def _unmerged(blocks, rhs):
    """``(blocks, rhs)`` with ``blocks`` behind an optimisation barrier: XLA merges two
    products that share ``blocks`` into one over the joined columns (a concatenation of the
    state, the slowest operation of the step on CPU); the barrier keeps them apart (on the
    constant operand only, so the step stays linear-transposable in ``rhs``)."""
    return jax.lax.optimization_barrier(blocks), rhs


def _grad_blocks(lay: _GradLayout, x, j=0):
    """Local gradients with unequal shards: one product per agent's row block."""
    q_count, rows, offsets, rps = lay.q_count, lay.rows, lay.offsets, lay.rps
    g_agents = []
    bw = None if lay.batch is None else lay.batch(j)
    for q in range(q_count):
        s, e = offsets[q] * rps, offsets[q + 1] * rps
        prod = mixed_product(partial(jnp.matmul, precision=EXACT), lay.blocks[q], x[q],
                             lay.low_at(q)).astype(x.dtype)
        g_agents.append(jnp.pad(_block_residual(lay, q, prod, bw), ((s, rows - e), (0, 0))))
    return _pad_rows(jnp.stack(g_agents + _central_blocks(lay, x, bw)), x.shape[1])


def _central_blocks(lay: _GradLayout, alpha, bw) -> list:
    """The centralised slot's gradient ``[(rows, C)]`` with unequal shards: the carried
    reference's product block by block, the eigenbasis reference's diagonal step, or
    ``[]`` without a reference."""
    q_count, offsets, rps = lay.q_count, lay.offsets, lay.rps
    if lay.carried:
        g_central = []
        for q in range(q_count):
            s, e = offsets[q] * rps, offsets[q + 1] * rps
            prod_c = mixed_product(partial(jnp.matmul, precision=EXACT),
                                   *_unmerged(lay.blocks[q], alpha[q_count]),
                                   lay.low_at(q)).astype(alpha.dtype)
            z_c = lay.out_vec(lay.residual[s:e] + prod_c, s, e)
            n_q = offsets[q + 1] - offsets[q]
            g_central.append(z_c / (q_count * n_q) if bw is None else
                             z_c * (bw[s:e] / q_count))
        return [jnp.concatenate(g_central, axis=0)]
    return [lay.grad_reference(alpha)[0]] if lay.central else []


def _block_residual(lay: _GradLayout, q: int, outputs, bw):
    """Unequal shards: agent ``q``'s output-space gradient on its own rows, weighted by
    ``1/N_q`` (or the step's batch weights ``bw``), from its outputs there."""
    s, e = lay.offsets[q] * lay.rps, lay.offsets[q + 1] * lay.rps
    r_q = lay.out_vec(lay.residual[s:e] + outputs, s, e)
    return r_q / (lay.offsets[q + 1] - lay.offsets[q]) if bw is None else r_q * bw[s:e]


def _grad_blocks_lifted(lay: _GradLayout, x, j=0):
    """:func:`_grad_lifted` with unequal shards: agent ``q``'s residual from its carried
    outputs on its own rows, and ``Theta[:, S_q] r_q`` from its row block, one per agent."""
    q_count, rows, offsets, rps = lay.q_count, lay.rows, lay.offsets, lay.rps
    alpha, u = x[:, :rows], x[:, rows:2 * rows]
    g_agents, g_out = [], []
    bw = None if lay.batch is None else lay.batch(j)
    for q in range(q_count):
        s, e = offsets[q] * rps, offsets[q + 1] * rps
        r_q = _block_residual(lay, q, u[q, s:e], bw)
        g_agents.append(jnp.pad(r_q, ((s, rows - e), (0, 0))))
        low = lay.low_at(q)
        g_q = _blocks_transposed_times(lay.blocks[q][None], r_q[None],
                                       None if low is None else (low[0][None], low[1]))[0]
        if lay.test_blocks is not None:
            g_q = jnp.concatenate([g_q, _blocks_transposed_times(lay.test_blocks[q][None],
                                                                 r_q[None])[0]], axis=0)
        g_out.append(g_q)
    g_agents += _central_blocks(lay, alpha, bw)
    if lay.central:
        g_out.append(jnp.zeros_like(g_out[0]))
    return jnp.concatenate([jnp.stack(g_agents), jnp.stack(g_out)], axis=1)


def cross_entropy_vector(z, targets, scale, k: int, rows_per_sample: int):
    r"""Softmax cross-entropy's output-space gradient ``s (softmax(s f) - Y)``.

    ``z = f - Y`` (``(rows, C)``, the residual plus ``Theta alpha``) and ``targets = Y``
    are in row layout: a traced kernel (``rows_per_sample = 1``) has the ``K`` outputs of a
    sample in ``K`` consecutive columns (one group per rate and sequence), a full kernel
    in ``K`` consecutive rows.  The softmax runs over those ``K`` outputs.  With
    ``CE(f, y) = logsumexp(s f) - s y^T f`` the gradient in ``f`` is
    ``s (softmax(s f) - y)``, so the parameter gradient of ``L_q`` is
    ``(1/N_q) J_q^T s (softmax(s f_q) - Y_q)``: still ``J^T`` times an output vector.
    """
    t = jnp.broadcast_to(targets, z.shape)
    logits = scale * (z + t)
    rows, c = z.shape
    if rows_per_sample == 1:
        p = jax.nn.softmax(logits.reshape(rows, c // k, k), axis=-1).reshape(rows, c)
    else:
        p = jax.nn.softmax(logits.reshape(rows // k, k, c), axis=1).reshape(rows, c)
    return scale * (p - t)


def lr_columns(lrs: np.ndarray, c0: int, central: bool) -> np.ndarray:
    """``(A, 1, C)`` learning rate per slot and column from ``(n_rates, Q)`` rates."""
    lrs = np.atleast_2d(np.asarray(lrs, dtype=np.float64))
    slots = lrs.T  # (Q, n_rates)
    if central:
        slots = np.concatenate([slots, lrs.mean(axis=1)[None, :]], axis=0)
    return np.repeat(slots, c0, axis=1)[:, None, :]


_BASIS_CACHE: dict = {}


def reference_basis(problem: KernelProblem) -> tuple[np.ndarray, np.ndarray]:
    r"""Eigenbasis of the centralised reference: ``(lam, T)``.

    The reference is gradient descent (or the schedule with ``W = [[1]]``) on
    ``L = (1/Q) sum_q L_q``, whose gradient in alpha coordinates is
    ``D (Theta x + f_0 - Y)`` with ``D = diag(1/(Q N_q(i)))`` per row.  With
    ``S = D^{1/2} Theta D^{1/2} = V diag(lam) V^T`` (symmetric) and ``T = D^{1/2} V``,
    ``x = T w`` turns that gradient into ``lam * w + T^T (f_0 - Y)``: every
    schedule on the reference is diagonal in ``w`` (``D Theta T = T diag(lam)``).
    Cached per kernel array (a sweep and its single prediction share one ``eigh``).
    """
    kernel = problem.kernel
    key = (id(kernel), problem.offsets, problem.rows_per_sample)
    hit = _BASIS_CACHE.get(key)
    if hit is not None and hit[0]() is kernel:
        return hit[1]
    import weakref

    import scipy.linalg

    q = problem.num_agents
    d_sqrt = np.sqrt(np.repeat(1.0 / (q * problem.counts),
                               problem.counts * problem.rows_per_sample))
    s = d_sqrt[:, None] * np.asarray(kernel, dtype=np.float64) * d_sqrt[None, :]
    lam, vec = scipy.linalg.eigh(s, overwrite_a=True, check_finite=False, driver="evd")
    out = (lam, d_sqrt[:, None] * vec)
    try:
        ref = weakref.ref(kernel)
    except TypeError:  # pragma: no cover - arrays support weak references
        return out
    _BASIS_CACHE.clear()  # one basis at a time (R x R doubles each)
    _BASIS_CACHE[key] = (ref, out)
    return out


def use_eigen_reference(problem: KernelProblem, mesh=None) -> bool:
    """Whether the centralised reference runs in its eigenbasis (see the module doc)."""
    return mesh is None and problem.kernel.shape[0] <= REFERENCE_EIGH_MAX


# --------------------------------------------------------------------------- recording
def _to_samples(u, n, k, n_rates, traced):
    """Row layout ``(R, A, C)`` -> ``(A, n_rates, N, K)``."""
    a = u.shape[1]
    if traced:
        return u.reshape(n, a, n_rates, k).transpose(1, 2, 0, 3)
    return u.reshape(n, k, a, n_rates).transpose(2, 3, 0, 1)


def _loss_acc(out, y, labels, loss="mse", scale=1.0):
    """``out`` (A, n_rates, M, K) -> per-sample loss and accuracy
    (:func:`ntkdyn.losses.sample_loss`, :func:`ntkdyn.losses.accuracy`)."""
    return sample_loss(out, y, loss, scale), accuracy(out, labels)


def _pad_rows(g, rows_state):
    """Zero rows for the padding of a sharded contraction axis (no-op unsharded)."""
    extra = rows_state - g.shape[1]
    return g if extra == 0 else jnp.pad(g, ((0, 0), (0, extra), (0, 0)))


def _low_args(data) -> tuple | None:
    """``(blocks_lo, shape)`` of ``kernel_dtype="mixed"`` (:func:`mixed_product`), or None."""
    return (data["low_blocks"], data["low_shape"]) if "low_blocks" in data else None


def _products(x, data, *, traced, has_test, carried=None, carried_test=None):
    """``x`` without sharding padding, ``Theta x`` in row layout ``(rows, A, C)`` and the
    test products ``Theta* x`` (``(M rps, A, C)``, or ``None``).  ``carried``: the agents'
    ``Theta alpha_q`` ``(Q, R, C)`` from a lifted state (:func:`_grad_lifted`); only the
    slots after them (the centralised reference) are multiplied; ``carried_test`` likewise
    the agents' ``Theta* alpha_q`` ``(Q, M rps, C)``."""
    n, k = data["y"].shape
    rows = n * (1 if traced else k)
    low = _low_args(data)
    u = _slot_products(x, lambda f: kernel_times(data["blocks"], f, low), carried)
    prod_t = None
    if has_test:
        low_t = None if low is None else (data["low_kernel_test"], low[1])
        prod_t = _slot_products(x, lambda f: mixed_product(
            partial(jnp.matmul, precision=EXACT), data["kernel_test"], f, low_t), carried_test)
    return x[:, :rows], u, prod_t


def _slot_products(x, product, carried=None):
    """``product`` (a kernel times ``(rows, S C)`` columns) of the slots of ``x``, in row
    layout ``(rows', A, C)``; with ``carried`` (``(Q, rows', C)``, a lifted state's) the
    first ``Q`` slots are those values and only the slots after them are multiplied."""
    a, rows_state, c = x.shape
    q = 0 if carried is None else carried.shape[0]
    parts = [] if carried is None else [jnp.transpose(carried, (1, 0, 2))]
    if a > q:
        rest = jnp.transpose(x[q:], (1, 0, 2)).reshape(rows_state, (a - q) * c)
        parts.append(product(rest).reshape(-1, a - q, c))
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)


#: the records computed from the training-set products ``Theta x`` of every slot (``2 R^2 A
#: C`` flops a record): ``NaN`` at every record but the last with ``train_records="final"``
#: (:func:`evolve`)
TRAIN_KEYS = ("train_loss", "objective", "local_loss", "train_acc", "param_dist",
              "consensus_dist", "central_dist", "mean_model_train_loss",
              "mean_model_train_acc", "train_outputs")


def _record(x, data, *, q_count, n_rates, traced, has_test, record_outputs, central=True,
            loss="mse", carried=None, carried_test=None, train=True):
    """The records of the state ``x``; ``train=False``: without the training-set product,
    the :data:`TRAIN_KEYS` ``NaN`` (the test records only, same shapes)."""
    if train:
        x, u, prod_t = _products(x, data, traced=traced, has_test=has_test, carried=carried,
                                 carried_test=carried_test)
    else:  # the test products alone (as _products makes them), no Theta x
        prod_t = None
        if has_test:
            low = _low_args(data)
            low_t = None if low is None else (data["low_kernel_test"], low[1])
            prod_t = _slot_products(x, lambda f: mixed_product(
                partial(jnp.matmul, precision=EXACT), data["kernel_test"], f, low_t),
                carried_test)
        n, k = data["y"].shape
        x = x[:, :n * (1 if traced else k)]
        u = jnp.zeros((x.shape[1], x.shape[0], x.shape[2]), x.dtype)
    rec = _metrics(x, u, prod_t, data, data["f0"], data["y"], data.get("f0_test"),
                   data.get("y_test"), q_count=q_count, n_rates=n_rates, traced=traced,
                   record_outputs=record_outputs, central=central, loss=loss)
    if not train:
        rec = {key: jnp.full_like(v, jnp.nan) if key in TRAIN_KEYS else v
               for key, v in rec.items()}
    return rec


def _metrics(x, u, prod_t, data, f0, y, f0t, yt, *, q_count, n_rates, traced, record_outputs,
             central=True, loss="mse"):
    """Recorded quantities from the state ``x`` ``(A, rows, C)``, ``u = Theta x`` and the
    test products (row layout ``(rows, A, C)``); ``f0``, ``f0t`` are ``(N, K)`` or, one per
    column group, ``(n_rates, N, K)``."""
    labels, shard_w = data["labels"], data["shard_weights"]
    scale = data.get("logit_scale", 1.0)

    def loss_acc(out, y, labels):
        return _loss_acc(out, y, labels, loss, scale)

    n, k = y.shape
    xs = _to_samples(x.transpose(1, 0, 2), n, k, n_rates, traced)
    us = _to_samples(u, n, k, n_rates, traced)
    out = f0 + us
    sq, acc = loss_acc(out, y, labels)
    local = sq @ shard_w  # (A, n_rates, Q)
    xa, ua = xs[:q_count], us[:q_count]
    xm, um = _agent_mean(xs, q_count), _agent_mean(us, q_count)

    def quad(dx, du):  # a contraction (XLA:CPU reduces over (N, K) far slower than it dots)
        return jnp.sqrt(jnp.maximum(jnp.einsum("...nk,...nk->...", dx, du, precision=EXACT),
                                    0.0))

    out_mean = _agent_mean(out, q_count)[None]
    sq_m, acc_m = loss_acc(out_mean, y, labels)
    rec = {
        "train_loss": sq.mean(axis=-1),
        "objective": local.mean(axis=-1),
        "local_loss": jnp.stack([local[q, :, q] for q in range(q_count)]),
        "train_acc": acc,
        "param_dist": quad(xs, us),
        "consensus_dist": quad(xa - xm, ua - um),
        "mean_model_train_loss": sq_m.mean(axis=-1)[0],
        "mean_model_train_acc": acc_m[0],
    }
    if central:
        rec["central_dist"] = quad(xa - xs[q_count], ua - us[q_count])
    if record_outputs:
        rec["train_outputs"] = out
    if prod_t is not None:
        lt = data["labels_test"]
        ut = _to_samples(prod_t, yt.shape[0], k, n_rates, traced)
        out_t = f0t + ut
        sqt, acct = loss_acc(out_t, yt, lt)
        sqt_m, acct_m = loss_acc(_agent_mean(out_t, q_count)[None], yt, lt)
        rec.update(test_loss=sqt.mean(axis=-1), test_acc=acct,
                   mean_model_test_loss=sqt_m.mean(axis=-1)[0], mean_model_test_acc=acct_m[0])
        if record_outputs:
            rec["test_outputs"] = out_t
    return rec


def _agent_mean(v, q_count: int):
    """Mean of ``v[:q_count]`` over the leading (slot) axis, as a product with the weights
    ``1/Q`` (a reduction over the slot axis is an order of magnitude slower on XLA:CPU)."""
    w = jnp.zeros(v.shape[0], v.dtype).at[:q_count].set(1.0 / q_count)
    return jnp.tensordot(w, v, axes=1, precision=EXACT)


def network_columns(k: int, networks: int) -> np.ndarray:
    """``(P, K)`` response column of output ``k`` of sampled network ``s``: ``(s + k) mod P``.

    Every network uses ``K`` distinct columns (``P >= K``), so each is exactly one draw of
    a random network; networks less than ``K`` apart share columns
    (:mod:`ntkdyn.dynamics.random_init`)."""
    return (np.arange(networks)[:, None] + np.arange(k)[None, :]) % networks


def _record_networks(x, data, *, q_count, n_rates, has_test, central, networks,
                     record_outputs=False, carried=None, carried_test=None):
    """Records of the mean network and of ``P = networks`` sampled random networks.

    Each rate's ``K + P`` columns hold the mean network (``K`` columns, residual ``-Y``)
    and ``P`` responses to sampled initial outputs (residual ``f_0 = g_j``, target 0).
    Network ``s``'s output ``k`` is the mean's column ``k`` plus response column
    ``j = (s + k) mod P`` (:func:`network_columns`): the dynamics are affine in ``f_0``,
    so its state, ``Theta x`` and outputs are these sums (traced kernels only).  Every
    recorded quadratic form of a network (losses, distances) is then
    ``sum_k (a_k + b_j)^T W (c_k + d_j)``: a ``K x P`` table of inner products gathered
    along the cyclic index, never the ``P K`` columns of all networks; only the accuracy
    (an argmax over each network's ``K`` outputs) reads ``(rows, P, K)``.  Returns the mean
    network's records (``n_rates`` groups; with ``record_outputs`` its outputs) and, under
    ``"networks/..."``, the networks' (``n_rates P`` groups, index ``r P + s``), as
    :func:`_metrics` would give for the expanded columns.
    """
    k = data["y"].shape[1] - networks
    x, u, prod_t = _products(x, data, traced=True, has_test=has_test, carried=carried,
                             carried_test=carried_test)
    alg = _NetworkColumns(k, networks, n_rates)
    a = x.shape[0]
    xm, xr = alg.split(x)
    um, ur = alg.split(jnp.transpose(u, (1, 0, 2)))
    nets = _network_distances(alg, xm, xr, um, ur, q_count=q_count, central=central)
    y = data["y"][:, :k]
    nets.update(_network_losses(alg, data["f0"], y, um, ur, data["labels"], q_count,
                                data["shard_weights"], "train"))
    f0t_m = yt = t_m = None
    if has_test:
        yt = data["y_test"][:, :k]
        tm, tr = alg.split(jnp.transpose(prod_t, (1, 0, 2)))
        nets.update(_network_losses(alg, data["f0_test"], yt, tm, tr, data["labels_test"],
                                    q_count, None, "test"))
        t_m = tm.reshape(a, -1, n_rates * k).transpose(1, 0, 2)
        f0t_m = jnp.tile(data["f0_test"], (1, n_rates)).reshape(-1, n_rates, k + networks)
        f0t_m = f0t_m[..., :k].transpose(1, 0, 2)
    # the mean network: the K first columns of each rate, through the plain metrics
    f0_m = jnp.tile(data["f0"], (1, n_rates)).reshape(-1, n_rates, k + networks)
    rec = _metrics(xm.reshape(a, -1, n_rates * k), um.reshape(a, -1, n_rates * k)
                   .transpose(1, 0, 2), t_m, data, f0_m[..., :k].transpose(1, 0, 2), y,
                   f0t_m, yt, q_count=q_count, n_rates=n_rates, traced=True,
                   record_outputs=record_outputs, central=central)
    rec.update({f"networks/{key}": v for key, v in nets.items()})
    return rec


class _NetworkColumns:
    """The algebra of :func:`_record_networks`: ``n`` rate groups of ``K + P`` columns,
    network ``s``'s output ``k`` = mean column ``k`` + response column ``(s + k) mod P``."""

    def __init__(self, k: int, networks: int, n_rates: int):
        self.k, self.p, self.n = k, networks, n_rates
        self.idx = jnp.asarray(network_columns(k, networks))
        self.kk = jnp.arange(k)[None, :]

    def split(self, v):  # (A, rows, n (K + P)) -> (A, rows, n, K), (A, rows, n, P)
        v = v.reshape(v.shape[:2] + (self.n, self.k + self.p))
        return v[..., :self.k], v[..., self.k:]

    def bilinear(self, xm, xr, um, ur, w):
        """``sum_rows w_rg sum_k (xm_k + xr_j)(um_k + ur_j)`` -> (A, G, n, P): a ``K x P``
        table of inner products gathered along the cyclic index ``j = (s + k) mod P``."""
        t0 = jnp.einsum("arnk,arnk,rg->agn", xm, um, w, precision=EXACT)
        t1 = (jnp.einsum("arnk,arnj,rg->agnkj", xm, ur, w, precision=EXACT)
              + jnp.einsum("arnj,arnk,rg->agnkj", xr, um, w, precision=EXACT))
        t3 = jnp.einsum("arnj,arnj,rg->agnj", xr, ur, w, precision=EXACT)
        return t0[..., None] + t1[..., self.kk, self.idx].sum(-1) + t3[..., self.idx].sum(-1)

    def accuracy(self, dm, er, labels):  # outputs (.., rows, n, P, K): argmax vs labels
        out = dm[..., None, :] + er[..., self.idx]
        hit = jnp.argmax(out, axis=-1) == labels[None, :, None, None]
        return jnp.mean(hit.astype(dm.dtype), axis=1)  # (A, n, P)

    def flat(self, v):  # (..., n, P) -> (..., n P)
        return v.reshape(v.shape[:-2] + (self.n * self.p,))

    def outputs(self, f0, y, ym, yr):
        """Residual of the mean part ``d = f0 + u - y`` and the responses ``e``."""
        f0 = jnp.tile(f0, (1, self.n)).reshape(f0.shape[0], self.n, self.k + self.p)
        return f0[None, ..., :self.k] + ym - y[None, :, None, :], f0[None, ..., self.k:] + yr


def _network_distances(alg: _NetworkColumns, xm, xr, um, ur, *, q_count: int,
                       central: bool) -> dict:
    """Every network's ``||theta_q - theta_0||``, consensus and centralised distances
    (``theta^T theta = x^T Theta x`` as sums over the cyclic columns)."""
    ones = jnp.ones((xm.shape[1], 1), xm.dtype)

    def norm(dxm, dxr, dum, dur):
        return alg.flat(jnp.sqrt(jnp.maximum(alg.bilinear(dxm, dxr, dum, dur, ones)[:, 0],
                                             0.0)))

    def dist(ref):  # ||theta_q - ref|| for the first Q slots
        return norm(*(v[:q_count] - r for v, r in zip((xm, xr, um, ur), ref, strict=True)))

    nets = {"param_dist": norm(xm, xr, um, ur),
            "consensus_dist": dist([v[:q_count].mean(axis=0) for v in (xm, xr, um, ur)])}
    if central:
        nets["central_dist"] = dist([v[q_count] for v in (xm, xr, um, ur)])
    return nets


def _network_losses(alg: _NetworkColumns, f0, y, ym, yr, labels, q_count: int,
                    shard_weights, name: str) -> dict:
    """Every network's losses and accuracies on one set (``name`` is ``"train"`` or
    ``"test"``: keys ``{name}_loss``, ``mean_model_{name}_acc``, ...; with
    ``shard_weights`` also the local losses and the objective)."""
    dm, er = alg.outputs(f0, y, ym, yr)
    ones = jnp.ones((y.shape[0], 1), dm.dtype) / y.shape[0]

    def losses(d, e, w):
        return 0.5 * alg.bilinear(d, e, d, e, w)

    out = {f"{name}_loss": alg.flat(losses(dm, er, ones)[:, 0]),
           f"{name}_acc": alg.flat(alg.accuracy(dm + y[None, :, None, :], er, labels))}
    if shard_weights is not None:
        local = losses(dm, er, shard_weights)  # (A, Q, n, P)
        out["objective"] = alg.flat(local.mean(axis=1))
        out["local_loss"] = alg.flat(jnp.stack([local[q, q] for q in range(q_count)]))
    mm_d, mm_e = dm[:q_count].mean(axis=0)[None], er[:q_count].mean(axis=0)[None]
    out[f"mean_model_{name}_loss"] = alg.flat(losses(mm_d, mm_e, ones)[0, 0])
    out[f"mean_model_{name}_acc"] = alg.flat(alg.accuracy(mm_d + y[None, :, None, :], mm_e,
                                                        labels)[0])
    return out


#: :func:`_record` compiled once per shape (an eager call compiles every operation)
record_jit = jax.jit(_record, static_argnames=("q_count", "n_rates", "traced", "has_test",
                                                "record_outputs", "central", "loss"))


# --------------------------------------------------------------------------- evolution
def _divergence_check(x, diverged, div_at, step_no, limit_per_step, c0):
    """Flag rates whose state left ``limit_per_step * (step + 1)`` or became non-finite."""
    mag = jnp.max(jnp.abs(x), axis=(0, 1)).reshape(-1, c0).max(axis=1)
    bad = ~jnp.isfinite(mag) | (mag > limit_per_step * (step_no + 1.0))
    div_at = jnp.where(bad & ~diverged, step_no, div_at)
    return diverged | bad, div_at


def _as_algorithm(algorithm) -> Algorithm:
    """An :class:`Algorithm`, or a bare ``step(x, ops)`` function wrapped in one."""
    return algorithm if isinstance(algorithm, Algorithm) else Algorithm("custom", algorithm)


def _mixing_at(data, t, *, sampler, mixes_per_step):
    """The mixing argument of :func:`kernel_operators` for the step starting at time ``t``:
    the static matrix, or :func:`~ntkdyn.graphs.sequences.groups_mixing_at` of a sequence."""
    if sampler is None:
        return data.get("mixing_sparse", data["mixing"])
    return groups_mixing_at(data, t, sampler=sampler, mixes_per_step=mixes_per_step)


def _batch_at(data, t, *, batcher, grads_per_step, rows_per_sample, columns):
    """The ``batch`` argument of :func:`kernel_operators` for the step starting at ``t``:
    ``j -> (R, C)`` weights of draw ``t grads_per_step + j`` of every sampled sequence (one
    column group each), then the full batch's ``1/N_q`` for the expected groups if any."""
    if batcher is None:
        return None
    k = jnp.round(t).astype(jnp.int64)
    keys = data["batch_keys"]

    def at(j):
        d = k * grads_per_step + j
        w = jax.vmap(lambda key: batcher.row_weights(key, d))(keys)  # (S, N)
        if "batch_full" in data:
            w = jnp.concatenate([w, data["batch_full"]], axis=0)
        w = jnp.repeat(w.T, rows_per_sample, axis=0)  # (R, G)
        return jnp.repeat(w, columns // w.shape[1], axis=1)

    return at


@partial(jax.jit, static_argnames=("algorithm", "offsets", "traced", "n_rates", "continuous",
                                   "has_test", "record_outputs", "central", "sampler", "loss",
                                   "batcher", "networks", "lifted"))
def _init_state(x0, data, *, algorithm, offsets, traced, n_rates, continuous, has_test,
                record_outputs, central, sampler=None, loss="mse", batcher=None, networks=0,
                lifted=False):
    """The algorithm's initial (augmented) state from the parameters ``x0`` (``alpha = 0``;
    mini-batch draws of step 0)."""
    rps = 1 if traced else data["y"].shape[1]
    t0 = jnp.asarray(0.0)
    ops = kernel_operators(data["blocks"], data["residual"],
                           _mixing_at(data, t0, sampler=sampler,
                                      mixes_per_step=algorithm.mixes_per_step),
                           data["lr_cols"], offsets=offsets, rows_per_sample=rps,
                           central=central, reference=_reference_args(data),
                           loss=_loss_args(data, loss),
                           batch=_batch_at(data, t0, batcher=batcher,
                                           grads_per_step=algorithm.grads_per_step,
                                           rows_per_sample=rps, columns=x0.shape[-1]),
                           low=_low_args(data), lifted=lifted,
                           test_blocks=data.get("test_blocks"))
    return algorithm.initial_state(x0, ops)


def _loss_args(data, loss: str):
    """The ``loss`` argument of :func:`kernel_operators` (``None`` for the squared loss)."""
    if loss == "mse":
        return None
    return data["targets"], data["logit_scale"], data["y"].shape[1]


def _reference_args(data, linear: bool = False):
    """``(lam, b)`` of the eigenbasis reference (``b = 0`` for the linear part), or None."""
    if "ref_lam" not in data:
        return None
    b = data["ref_b"]
    return data["ref_lam"], (jnp.zeros_like(b) if linear else b)


def _reference_to_alpha(x, data, q_count):
    """Slot ``q_count`` of ``x`` from eigenbasis coordinates ``w`` to ``alpha = T w``."""
    if "ref_basis" not in data:
        return x
    alpha = jnp.matmul(data["ref_basis"], x[q_count], precision=EXACT)
    return jnp.concatenate([x[:q_count], alpha[None]], axis=0)


def taylor_flow(algorithm: Algorithm, x, h, ops: Operators, ops_lin: Operators):
    r"""One step of length ``h`` of the flow ``dx/dt = step(x) - x`` with the step's
    operators frozen over it: ``x + sum_{j=1}^{J} (h^j / j!) M^{j-1} (step(x) - x)``,
    ``M = step_lin - I`` the step's linear part (``ops_lin``: zero residual), ``J =``
    :data:`TAYLOR_TERMS` (exact for an affine step as ``J -> infinity``)."""
    term = jax.tree.map(lambda u, v: h * (u - v), algorithm.step(x, ops), x)

    def taylor(j, ta):
        term, acc = ta
        term = jax.tree.map(lambda u, v: (h / j) * (u - v), algorithm.step(term, ops_lin), term)
        return term, jax.tree.map(jnp.add, acc, term)

    _, new = jax.lax.fori_loop(2, TAYLOR_TERMS + 1, taylor,
                               (term, jax.tree.map(jnp.add, x, term)))
    return new


def _record_state(x, data, *, q_count, n_rates, traced, has_test, record_outputs, central,
                  loss, networks, lifted=False, train=True):
    """The records of one state: the centralised slot mapped back to ``alpha`` first,
    then per sampled network (:func:`_record_networks`) or per column group
    (:func:`_record`, without the training-set product where not ``train``); a lifted
    state gives the agents' ``Theta alpha`` it carries."""
    carried = carried_test = None
    if lifted:
        rows = data["residual"].shape[0]
        x, carried, carried_test = (x[:, :rows], x[:q_count, rows:2 * rows],
                                    x[:q_count, 2 * rows:] if "test_blocks" in data else None)
    if central:
        x = _reference_to_alpha(x, data, q_count)
    if networks:
        return _record_networks(x, data, q_count=q_count, n_rates=n_rates, has_test=has_test,
                                central=central, networks=networks,
                                record_outputs=record_outputs, carried=carried,
                                carried_test=carried_test)
    return _record(x, data, q_count=q_count, n_rates=n_rates, traced=traced,
                   has_test=has_test, record_outputs=record_outputs, central=central,
                   loss=loss, carried=carried, carried_test=carried_test, train=train)


@partial(jax.jit, static_argnames=("algorithm", "q_count", "n_rates", "traced", "has_test",
                                   "record_outputs", "central", "loss"))
def _final_record(state, data, *, algorithm, **static):
    """:func:`_record_state` of the algorithm's final state, every record (the training
    records of ``train_records="final"``)."""
    return _record_state(algorithm.parameters(state), data, networks=0, **static)


def _operators_at(data, t, linear=False, *, algorithm, batcher, sampler, loss, columns,
                  offsets, rows_per_sample, central, lifted=False) -> Operators:
    """The step's operators at step ``t``: mixing matrices of the sequence, the mini-batch
    of the step, the loss's output gradient; ``linear=True``: the linear part (zero
    residual, no reference offset, squared-loss gradient), for the flow's Taylor terms."""
    residual = jnp.zeros_like(data["residual"]) if linear else data["residual"]
    batch = _batch_at(data, t, batcher=batcher, grads_per_step=algorithm.grads_per_step,
                      rows_per_sample=rows_per_sample, columns=columns)
    return kernel_operators(
        data["blocks"], residual,
        _mixing_at(data, t, sampler=sampler, mixes_per_step=algorithm.mixes_per_step),
        data["lr_cols"], reference=_reference_args(data, linear),
        loss=None if linear else _loss_args(data, loss), batch=batch, offsets=offsets,
        rows_per_sample=rows_per_sample, central=central, low=_low_args(data),
        lifted=lifted, test_blocks=data.get("test_blocks"))


# long unit: the compiled body of one chunk; its five inner functions share the step's
# operators and the divergence state, and as module functions each would take ten arguments
@partial(jax.jit, static_argnames=("algorithm", "offsets", "traced", "n_rates", "continuous",
                                   "has_test", "record_outputs", "central", "sampler", "loss",
                                   "batcher", "networks", "lifted", "train"))
def _run_chunk(carry, schedule, data, *, algorithm, offsets, traced, n_rates, continuous,
               has_test, record_outputs, central, sampler=None, loss="mse", batcher=None,
               networks=0, lifted=False, train=True):
    """Advance through a chunk of records; returns the new carry and the records.

    The kernel-space instance of :func:`ntkdyn.engine.scan_records` (the loop real
    training runs too): ``carry = (state, t, diverged, diverged_at)``; ``state`` is the
    algorithm's (augmented) state, a pytree of ``(A, R, C)`` arrays; flags per rate.
    Steps are checked for divergence in blocks of :data:`CHECK_BLOCK` (replayed step by
    step when a block fails) and flows advance by a Taylor series.  A schedule with several
    phases is recorded after each phase of the last step before a record (records
    ``(P, ...)`` per entry of ``schedule``).
    """
    q_count = len(offsets) - 1
    y = data["y"]
    k = y.shape[1]
    rps = 1 if traced else k
    c0 = k if traced else 1
    operators = partial(_operators_at, data, algorithm=algorithm, batcher=batcher,
                        sampler=sampler, loss=loss, columns=n_rates * c0, offsets=offsets,
                        rows_per_sample=rps, central=central, lifted=lifted)
    cols_rate = jnp.arange(n_rates * c0) // c0
    limit = data["limit_per_step"]
    params = algorithm.parameters

    def alpha(x):  # the divergence bound is on alpha, not on the carried outputs
        return x[:, :data["residual"].shape[0]] if lifted else x

    def guarded(x, new, diverged):
        keep = diverged[cols_rate]
        return jax.tree.map(lambda a, b: jnp.where(keep, a, b), x, new)

    def checked(st, new, t_new):
        x, _, diverged, div_at = st
        diverged, div_at = _divergence_check(alpha(params(new)), diverged, div_at, t_new,
                                             limit, c0)
        return guarded(x, new, diverged), t_new, diverged, div_at

    def step_checked(i, st):
        return checked(st, algorithm.step(st[0], operators(st[1])), st[1] + 1.0)

    def block(i, st):
        """``CHECK_BLOCK`` steps with one divergence check at the end; a block that ends
        outside the bound of its first step (or non-finite) is replayed step by step, so
        ``diverged_at`` and the frozen states are those of a check after every step."""
        x, t, diverged, div_at = st

        def plain(j, xt):
            return algorithm.step(xt[0], operators(xt[1])), xt[1] + 1.0

        new, t_new = jax.lax.fori_loop(0, CHECK_BLOCK, plain, (x, t))
        mag = jnp.max(jnp.abs(alpha(params(new))), axis=(0, 1)).reshape(-1, c0).max(axis=1)
        out = (~jnp.isfinite(mag) | (mag > limit * (t + 1.0))) & ~diverged
        return jax.lax.cond(
            jnp.any(out),
            lambda: jax.lax.fori_loop(0, CHECK_BLOCK, step_checked, st),
            lambda: (guarded(x, new, diverged), t_new, diverged, div_at))

    def advance(state, n_sub, entry):
        if not continuous:  # blocks of CHECK_BLOCK steps, then the remainder step by step
            blocks = n_sub // CHECK_BLOCK
            state = jax.lax.fori_loop(0, blocks, block, state)
            return jax.lax.fori_loop(0, n_sub - blocks * CHECK_BLOCK, step_checked, state)

        def body(i, st):
            new = taylor_flow(algorithm, st[0], entry[1], operators(st[1]),
                              operators(st[1], linear=True))
            return checked(st, new, st[1] + entry[1])

        return jax.lax.fori_loop(0, n_sub, body, state)

    def record(st, x):
        rec = _record_state(params(x), data, q_count=q_count, n_rates=n_rates, traced=traced,
                            has_test=has_test, record_outputs=record_outputs,
                            central=central, loss=loss, networks=networks, lifted=lifted,
                            train=train)
        rec["diverged"] = st[2]
        return st, rec

    return scan_records(carry, schedule, algorithm=algorithm, operators=operators,
                        check=checked, record=record, count=lambda entry: entry[0],
                        advance=advance)


def operator_norm_estimate(problem: KernelProblem, step_fn, lrs: np.ndarray,
                           iterations: int = 40, seed: int = 0) -> float:
    """Estimate ``||A - I||_2`` of the linear part of one step (power iteration on ``M^T M``).

    ``step_fn`` is an :class:`~ntkdyn.algorithms.Algorithm` or a bare ``step(x, ops)``;
    an augmented state is handled as one vector.
    """
    algorithm = _as_algorithm(step_fn)
    data = device_data(problem, lrs, for_records=False)
    c0 = problem.num_outputs if problem.traced else 1
    shape = (problem.num_agents + 1, problem.kernel.shape[0], lrs.shape[0] * c0)
    power = _power_iteration(algorithm, problem.offsets, problem.rows_per_sample, shape,
                             int(iterations))
    return float(power(data["blocks"], data["residual"], data["mixing"], data["lr_cols"],
                       jax.random.PRNGKey(seed)))


@lru_cache(maxsize=16)
def _power_iteration(algorithm: Algorithm, offsets: tuple, rps: int, shape: tuple,
                     iterations: int):
    """A compiled power iteration on ``M^T M``, ``M = step - I`` (linear part: zero
    residual), returning ``||M v||`` for the converged unit ``v``; cached per schedule and
    shape, so repeated estimates (every prediction with a sweep or a stability note)
    compile once."""

    def power(blocks, residual, mixing, lr_cols, key):
        ops = kernel_operators(blocks, jnp.zeros_like(residual), mixing, lr_cols,
                               offsets=offsets, rows_per_sample=rps, central=True)
        template = jax.eval_shape(lambda: algorithm.initial_state(jnp.zeros(shape), ops))
        flat0, unravel = jax.flatten_util.ravel_pytree(
            jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), template))

        def m(v):
            x = unravel(v)
            return jax.flatten_util.ravel_pytree(
                jax.tree.map(jnp.subtract, algorithm.step(x, ops), x))[0]

        v0 = jax.random.normal(key, flat0.shape, flat0.dtype)
        mt = jax.linear_transpose(m, v0)

        def body(_, v):
            w = mt(m(v))[0]
            return w / jnp.linalg.norm(w)
        v = jax.lax.fori_loop(0, iterations, body, v0 / jnp.linalg.norm(v0))
        return jnp.linalg.norm(m(v))

    return jax.jit(power)


def device_data(problem: KernelProblem, lrs: np.ndarray, for_records: bool = True,
                central: bool = True, kernel_dtype: str = "float64", mesh=None,
                reference: str = "carried", networks: int = 0, group_f0=None) -> dict:
    """Arrays on the device(s); with a ``mesh`` the kernels' columns (the contraction
    axis) are sharded and padded to a multiple of the device count.  With
    ``central`` and ``reference="eigen"`` the eigenbasis of the centralised reference
    (:func:`reference_basis`): ``ref_lam`` ``(R, 1)``, ``ref_b`` ``(R, C)``,
    ``ref_basis`` ``T`` ``(R, R)``.  ``kernel_dtype="mixed"`` (``networks = P > 0``): the
    kernels in float64 plus float32 copies for the ``P`` response columns of each rate
    (``low_blocks``, ``low_kernel_test``, ``low_shape`` of shape ``(K + P, P)``).

    ``group_f0 = (train (G, N, K), test (G, M, K) or None)``: column group ``g`` (rates
    ``g n + r`` of the ``G n`` rows of ``lrs``) starts from its own initial outputs
    (independent sampled networks, :mod:`ntkdyn.dynamics.random_init`): the residual and
    the recorded ``f0`` / ``f0_test`` (``(G n, N, K)``) are per group."""
    mixed = kernel_dtype == "mixed"
    if mixed:
        kernel_dtype = "float64"
    n_rates = lrs.shape[0]
    k = problem.num_outputs
    c0 = k if problem.traced else 1
    residual = np.tile(problem.residual0, (1, n_rates))
    f0_rows = None
    if group_f0 is not None:
        f0_rows = tuple(None if g is None else g[np.arange(n_rates) * len(g) // n_rates]
                        for g in group_f0)  # (n_rates, N, K): rate row i's group's f0
        residual = np.concatenate(list(f0_rows[0] - problem.y_train), axis=1)
    counts = problem.counts
    q_count = problem.num_agents
    shard_w = np.zeros((problem.num_train, q_count))
    for q in range(q_count):
        shard_w[problem.offsets[q]:problem.offsets[q + 1], q] = 1.0 / counts[q]
    lr_max = lrs.max(axis=1)
    res_max = max(float(np.max(np.abs(residual))), 1e-300)
    if problem.loss == "cross_entropy":  # |s (softmax(s f) - y)| <= s
        res_max = problem.logit_scale
    data = {
        "blocks": row_blocks(problem.kernel, problem.offsets, problem.rows_per_sample,
                             dtype=jnp.dtype(kernel_dtype), mesh=mesh),
        "residual": jnp.asarray(residual),
        "mixing": jnp.asarray(problem.mixing),
        "lr_cols": jnp.asarray(lr_columns(lrs, c0, central=central)),
        **_sparse_entry(problem),
        "limit_per_step": jnp.asarray(DIVERGENCE_FACTOR * lr_max * res_max / counts.min()),
    }
    if mixed:
        data.update(low_blocks=row_blocks(problem.kernel, problem.offsets,
                                          problem.rows_per_sample, dtype=jnp.float32),
                    low_shape=jnp.zeros((problem.num_outputs, int(networks))))
        if for_records and problem.has_test:
            data["low_kernel_test"] = jnp.asarray(problem.kernel_test, dtype=jnp.float32)
    if problem.loss == "cross_entropy":
        rows = problem.kernel.shape[0]
        y_rows = problem.y_train.reshape(rows, -1)
        data.update(targets=jnp.asarray(np.tile(y_rows, (1, n_rates))),
                    logit_scale=jnp.asarray(problem.logit_scale))
    if central and reference == "eigen":
        if problem.loss != "mse":
            raise ValueError("reference: the eigenbasis reference is for loss='mse' only; use "
                             "reference='carried'")
        lam, basis = reference_basis(problem)
        data.update(ref_lam=jnp.asarray(lam[:, None]), ref_b=jnp.asarray(basis.T @ residual),
                    ref_basis=jnp.asarray(basis))
    if for_records:
        data.update(f0=jnp.asarray(problem.f0_train if f0_rows is None else f0_rows[0]),
                    y=jnp.asarray(problem.y_train),
                    logit_scale=jnp.asarray(problem.logit_scale),
                    labels=jnp.asarray(problem.labels_train), shard_weights=jnp.asarray(shard_w))
        if problem.has_test:
            data.update(kernel_test=_place_columns(problem.kernel_test, kernel_dtype, mesh),
                        f0_test=jnp.asarray(problem.f0_test if f0_rows is None else
                                            f0_rows[1]),
                        y_test=jnp.asarray(problem.y_test),
                        labels_test=jnp.asarray(problem.labels_test))
    return data


def _sparse_entry(problem: KernelProblem) -> dict:
    """``{"mixing_sparse": (neighbours, weights)}`` for a static sparse ``W``, else ``{}``."""
    if problem.process is not None:
        return {}
    pair = sparse_mixing(problem.mixing)
    return {} if pair is None else {"mixing_sparse": (jnp.asarray(pair[0], jnp.int32),
                                                      jnp.asarray(pair[1]))}


def mixing_groups(problem: KernelProblem, samples: int | None,
                  batch_size: int = 0) -> tuple[int, bool]:
    """``(G, expected)``: column groups the sampled sequences need, and whether the last
    group is the exact mean-state recursion.

    Static mixing: ``(1, False)``; periodic: ``(1, False)``; random: ``samples``
    sampled sequences plus the ``E[W]`` one.  Mini-batch SGD (``batch_size > 0``):
    ``samples`` sampled batch sequences (sequence ``s`` also draws mixing sequence ``s``
    when the mixing is random), plus, for the squared loss (or random mixing), the
    expected group: full batch (and ``E[W]``), exact for the mean state of the squared
    loss (``theory/minibatch_sgd.md``).
    """
    process = problem.process
    random_mixing = process is not None and process.random
    if batch_size:
        expected = random_mixing or problem.loss == "mse"
        return int(samples) + int(expected), expected
    if not random_mixing:
        return 1, False
    return int(samples) + 1, True


def _add_batches(data: dict, problem: KernelProblem, samples: int | None, batch_size: int,
                 seed: int, expected: bool, sampling: str = "epoch", copies: int = 1,
                 expected_groups: int = 1):
    """Put the mini-batch sequences' keys (and the expected groups' full-batch weights,
    ``(expected_groups, N)``) into ``data``; returns the (static)
    :class:`~ntkdyn.minibatch.BatchSequence`.  ``copies``: the ``samples`` sequences
    repeated that many times, side by side."""
    if not batch_size:
        return None
    from ntkdyn.minibatch import BatchSequence

    batcher = BatchSequence(tuple(int(c) for c in problem.counts), int(batch_size), int(seed),
                            sampling)
    data["batch_keys"] = jnp.stack([batcher.key(s) for s in range(int(samples))] * copies)
    if expected:
        full = np.repeat(1.0 / problem.counts, problem.counts)
        data["batch_full"] = jnp.asarray(np.tile(full, (int(expected_groups), 1)))
    import dataclasses

    return dataclasses.replace(batcher, seed=0)  # static: the seed lives in the keys


def _add_mixing(data: dict, problem: KernelProblem, samples: int | None, copies: int = 1,
                expected_groups: int = 1):
    """Put the mixing sequence's arrays into ``data``
    (:func:`~ntkdyn.graphs.sequences.process_arrays`); returns the (static) sampler."""
    if problem.process is None:
        return None
    data.update(process_arrays(problem.process, samples, copies, expected_groups))
    return supported_sampler(problem.process)


def _flow_substeps(deltas: np.ndarray, times: np.ndarray, beta: float) -> np.ndarray:
    """Taylor substeps of the flow between records (``beta * delta / TAYLOR_THETA``, at
    least one, none for a repeated time); refused beyond
    :data:`ntkdyn._utils.checks.MAX_STEP` in all (they run one by one, as discrete steps:
    a time of 10^12 ran for ever)."""
    n_sub = np.maximum(1, np.ceil(beta * deltas / TAYLOR_THETA)).astype(np.int64)
    n_sub[deltas == 0] = 0
    total = int(np.sum(n_sub))
    if total > MAX_STEP:
        reach = MAX_STEP * TAYLOR_THETA / beta
        raise ValueError(f"times: the gradient flow to t = {float(times[-1]):.3g} needs "
                         f"{total:,} Taylor substeps, more than {MAX_STEP:,} (about "
                         f"t = {reach:.3g} here); for the long-time limit use nd.fixed_point")
    return n_sub


def evolve(
    problem: KernelProblem,
    algorithm: Algorithm,
    lrs: np.ndarray,
    steps: np.ndarray,
    *,
    continuous: bool = False,
    record_outputs: bool = False,
    chunk: int = 25,
    progress: bool = False,
    central: bool = True,
    kernel_dtype: str = "float64",
    mesh=None,
    samples: int | None = None,
    reference: str = "auto",
    batch_size: int = 0,
    seed: int = 0,
    batch_sampling: str = "epoch",
    networks: int = 0,
    group_f0=None,
    copies: int = 1,
    expected_groups: int = 1,
    carry_outputs: bool | None = None,
    train_records: str = "all",
) -> dict[str, np.ndarray]:
    """Run the kernel-space recursion (or flow) and record at ``steps``.

    Parameters
    ----------
    problem : KernelProblem
    algorithm : Algorithm
    lrs : (n_rates, Q) array
        One row of per-agent learning rates per prediction sharing the kernel.
    steps : (T,) non-decreasing
        Iteration numbers (discrete) or times in steps (``continuous=True``).
    central : bool
        Also run the centralised reference (one more slot).
    reference : "auto", "eigen" or "carried"
        How the reference runs: in the eigenbasis of its own operator (``O(R C)`` per
        step after one ``eigh``; the default where :func:`use_eigen_reference`), or
        carried along each kernel pass (twice the columns in every product).
    kernel_dtype : "float64", "float32" or "mixed"
        Storage of the kernels; float32 halves memory and bandwidth (the state and
        its accumulation stay float64; the products are formed in float32).
        ``"mixed"`` (with ``networks``): the mean network's columns in float64, the
        sampled networks' response columns through float32 copies of the kernels.
    mesh : jax.sharding.Mesh, optional
        Shard the kernels and the state over the mesh's devices
        (:mod:`ntkdyn.dynamics.sharding`); the answer is the same as on one device.
    samples : int, optional
        For a random mixing sequence (``problem.process``): the number of sampled
        sequences, run side by side as column groups sharing every kernel pass, plus
        one group running the exact mean-state recursion with ``E[W]``.  With
        ``batch_size``: the number of sampled mini-batch sequences.
    batch_size : int
        ``0`` (default): full-batch gradients; ``B > 0``: mini-batch SGD
        (:mod:`ntkdyn.minibatch`, sequences seeded by ``seed``, drawn as
        ``batch_sampling`` says: ``"epoch"`` or ``"independent"``), ``samples`` sequences as
        column groups plus the full-batch expected group (:func:`mixing_groups`); the
        centralised reference is then carried (it uses the union of the agents' batches).
    networks : int
        ``P > 0``: the problem's last ``P`` output columns are responses to sampled initial
        outputs (target 0) and its first ``K`` the mean network; the records are the mean
        network's and, under ``"networks/<metric>"`` with ``n_rates P`` columns, those of
        ``P`` sampled random networks (:func:`_record_networks`,
        :mod:`ntkdyn.dynamics.random_init`).
        Squared loss, traced kernel, static or periodic mixing; ``record_outputs`` records
        the mean network's outputs only.
    group_f0 : (train (G, N, K), test (G, M, K) or None), optional
        Independent sampled networks (:mod:`ntkdyn.dynamics.random_init`): ``G`` column
        groups, each from its own initial outputs (:func:`device_data`); with a random
        mixing sequence or mini-batch SGD, ``G = copies * samples + 1``: the ``samples``
        sequences ``copies`` times side by side, then ``expected_groups`` expected groups
        (``E[W]``, full batch; also for cross-entropy; more than one: the expected dynamics
        from several initial outputs, the band over initialisations of
        :mod:`ntkdyn.dynamics.random_init`).  Otherwise ``G`` groups of the static or
        periodic mixing.
    carry_outputs : bool, optional
        Carry the agents' training outputs ``Theta alpha_q`` in the state
        (:func:`_grad_lifted`: the same flops per step, twice the state, and records
        without a training-set product); ``None`` (default): where
        :func:`carries_outputs` says it saves work.  Same results to round-off.
    train_records : "all" or "final"
        ``"final"``: the records that need the training-set product ``Theta x`` of every
        slot (:data:`TRAIN_KEYS`: training loss and accuracy, parameter, consensus and
        centralised distances; ``2 R^2 A C`` flops a record, about twice a step's) are
        ``NaN`` at every record but the last, which is computed from the final state
        after the run; the test records are all there.  For callers that read the
        training figures at the horizon only (``ntkdyn check``'s sweep); a column group
        that diverged keeps ``NaN`` (its last record is dropped).  Where the records need
        no product of their own (carried outputs) or come per sampled network
        (``networks``), every record is computed as with ``"all"``.

    Returns
    -------
    dict
        Arrays of shape ``(T', A, G n_rates)`` (``A = Q + 1`` slots, the last being
        the centralised reference, or ``Q`` without it; column group ``g`` of rate
        ``r`` at index ``g n_rates + r``, ``G`` from :func:`mixing_groups`) or
        ``(T', G n_rates)`` for ``mean_model_*``; ``T' = T P`` for a schedule
        recorded after each of its ``P`` phases (rows ``t P + p``);
        ``diverged`` ``(T', G n_rates)`` flags and ``diverged_at`` ``(G n_rates,)``
        (``-1`` when the run stayed bounded).
    """
    algorithm = _as_algorithm(algorithm)
    if train_records not in ("all", "final"):
        raise ValueError(f"train_records: expected 'all' or 'final', got {train_records!r}")
    lrs = np.atleast_2d(np.asarray(lrs, dtype=np.float64))
    groups, with_expected = mixing_groups(problem, samples, batch_size)
    if group_f0 is not None:
        groups = len(group_f0[0])
        with_expected = with_expected or bool(batch_size)
        if (with_expected and groups != copies * int(samples) + expected_groups) or \
                not problem.traced:
            raise ValueError(f"group_f0: expected {copies} x {samples} + {expected_groups} "
                             f"groups of a traced kernel, got {groups}")
    reference = _checked_reference(problem, algorithm, reference, samples=samples,
                                   batch_size=batch_size, continuous=continuous, mesh=mesh,
                                   kernel_dtype=kernel_dtype, networks=networks)
    lrs = np.tile(lrs, (groups, 1))
    n_rates = lrs.shape[0]
    data = device_data(problem, lrs, central=central, kernel_dtype=kernel_dtype, mesh=mesh,
                       reference=reference, networks=networks, group_f0=group_f0)
    if batch_size:  # a batch weight 1/B > 1/N_q: the bound per step grows with it
        data["limit_per_step"] = data["limit_per_step"] * float(problem.counts.min()) / batch_size
    sampler = _add_mixing(data, problem, samples, copies, expected_groups)
    batcher = _add_batches(data, problem, samples, batch_size, seed, with_expected,
                           batch_sampling, copies, expected_groups)
    deltas = np.diff(np.concatenate([[0], np.asarray(steps)])).astype(np.float64)
    if continuous:
        beta = operator_norm_estimate(problem, algorithm, lrs) * 1.25 + 1e-12
        n_sub = _flow_substeps(deltas, steps, beta)
        h = np.where(n_sub > 0, deltas / np.maximum(n_sub, 1), 0.0)
    else:
        n_sub, h = deltas.astype(np.int64), np.ones_like(deltas)
    lifted = carries_outputs(problem, len(steps) * algorithm.records_per_step,
                             int(np.sum(n_sub)), mixes_per_step=algorithm.mixes_per_step,
                             central=central, continuous=continuous, mesh=mesh,
                             choice=carry_outputs)
    if lifted and problem.has_test and kernel_dtype != "mixed":  # carry the test outputs too
        data["test_blocks"] = row_blocks(np.asarray(problem.kernel_test).T, problem.offsets,
                                         problem.rows_per_sample, dtype=_blocks_dtype(
                                             data["blocks"]))
    x0 = zero_state(problem, n_rates, central, mesh, lifted=lifted,
                    test_rows="test_blocks" in data)
    final = train_records == "final" and not networks and not lifted
    static = dict(algorithm=algorithm, offsets=problem.offsets, traced=problem.traced,
                  n_rates=n_rates, continuous=continuous, has_test=problem.has_test,
                  record_outputs=record_outputs, central=central, sampler=sampler,
                  loss=problem.loss, batcher=batcher, networks=int(networks), lifted=lifted)
    state0 = x0 if algorithm.init is None else _init_state(x0, data, **static)
    carry = (state0, jnp.asarray(0.0), jnp.zeros(n_rates, bool), jnp.full(n_rates, -1.0))
    out, carry = _run_chunks(carry, data, dict(static, train=not final), n_sub, h, deltas,
                             chunk=chunk, desc=f"predict {algorithm.name}" if progress else None)
    if final and len(out["diverged"]):  # the training records of the last one
        last = _final_record(carry[0], data, algorithm=algorithm, q_count=len(problem.offsets)
                             - 1, n_rates=n_rates, traced=problem.traced,
                             has_test=problem.has_test, record_outputs=record_outputs,
                             central=central, loss=problem.loss)
        for key in TRAIN_KEYS:
            if key in out:
                out[key][-1] = np.asarray(last[key])
    return out


#: cost of the state-sized passes a lifted step adds (the transposed product's output, the
#: assembly, the combine's extra rows: about 6 passes of 16 bytes per entry) in flops per
#: entry at ~7 flops per byte read (gemm rate / bandwidth on the 2-core CPUs measured);
#: :func:`carries_outputs`
LIFT_PASSES = 336


def carries_outputs(problem: KernelProblem, n_records: int, n_steps: int, *,
                    mixes_per_step: int = 1, central: bool = True, continuous: bool = False,
                    mesh=None, choice: bool | None = None) -> bool:
    r"""Whether :func:`evolve` carries the agents' training outputs in its state.

    Without them every record multiplies the kernel by all ``A`` slots (``2 R^2 A C``
    flops); with them (:func:`_grad_lifted`) a step costs one more combine of the state
    (``2 Q^2 R C`` per mixing with a dense ``W``) and a few more passes over it.  So
    ``None`` (auto) carries them where ``n_records R A > n_steps (m Q^2 + LIFT_PASSES A)``
    (``m`` mixings per step) -- many agents and records -- on one device, for discrete
    steps; ``True`` / ``False`` force the choice (``True`` where it does not apply is a
    ``ValueError`` naming ``carry_outputs``)."""
    eligible = mesh is None and not continuous
    if choice is not None:
        if choice and not eligible:
            raise ValueError("carry_outputs: carried outputs need one device and discrete "
                             "steps; use carry_outputs=None or False")
        return bool(choice)
    if not eligible:
        return False
    q = problem.num_agents
    a = q + int(central)
    return n_records * problem.kernel.shape[0] * a > n_steps * (mixes_per_step * q * q
                                                                 + LIFT_PASSES * a)


def zero_state(problem: KernelProblem, n_rates: int, central: bool, mesh=None,
               lifted: bool = False, test_rows: bool = False):
    """Zeros of the state's shape ``(A, rows, n_rates c0)`` (``A = Q + central``,
    ``c0 = K`` for a traced kernel, else 1): on the default device, or row-sharded over
    ``mesh`` with the rows zero-padded as :func:`device_data` pads them; ``lifted``:
    ``2 rows`` (``[alpha; Theta alpha]``, :func:`_grad_lifted`), and with ``test_rows``
    the test rows after them (``Theta* alpha``)."""
    c0 = problem.num_outputs if problem.traced else 1
    rows = problem.kernel.shape[0] if mesh is None else sharding.padded(problem.kernel.shape[0],
                                                                         mesh)
    rows = rows * (1 + int(lifted)) + (problem.kernel_test.shape[0] if test_rows else 0)
    shape = (problem.num_agents + int(central), rows, n_rates * c0)
    return jnp.zeros(shape) if mesh is None else jax.device_put(jnp.zeros(shape),
                                                                sharding.state_sharding(mesh))


def _checked_reference(problem: KernelProblem, algorithm: Algorithm, reference: str, *,
                       samples, batch_size: int, continuous: bool, mesh, kernel_dtype: str,
                       networks: int) -> str:
    """Check the options of :func:`evolve` against each other and the problem (a
    ``ValueError`` names the option) and resolve ``reference="auto"``: the eigenbasis
    reference where it applies (squared loss, full batch, one device), else carried."""
    if problem.process is not None and problem.process.random and not samples:
        raise ValueError("samples: a random mixing sequence needs samples >= 1")
    if batch_size and not samples:
        raise ValueError("samples: mini-batch SGD needs samples >= 1")
    if batch_size:
        if continuous:
            raise ValueError("continuous: the gradient flow is for full-batch gradients; "
                             "mini-batch SGD (batch_size > 0) runs discrete steps")
        if reference == "eigen":
            raise ValueError("reference: 'eigen' is for full-batch gradients; mini-batch SGD "
                             "carries the reference")
        if mesh is not None:
            raise ValueError("mesh: mini-batch SGD runs on one device for now")
        reference = "carried"
    if kernel_dtype not in ("float64", "float32", "mixed"):
        raise ValueError(f"kernel_dtype: expected 'float64', 'float32' or 'mixed', got "
                         f"{kernel_dtype!r}")
    if kernel_dtype == "mixed" and (not networks or mesh is not None):
        raise ValueError("kernel_dtype: 'mixed' (float32 products for the sampled networks' "
                         "response columns) needs sampled random networks (f0='random') on "
                         "one device")
    if continuous and (algorithm.records_per_step > 1 or problem.process is not None):
        raise ValueError("continuous: the gradient flow is defined for single-phase schedules "
                         "with a static mixing matrix")
    if reference not in ("auto", "eigen", "carried"):
        raise ValueError(f"reference: expected 'auto', 'eigen' or 'carried', got {reference!r}")
    if reference == "eigen" and mesh is not None:
        raise ValueError("reference: 'eigen' runs on one device; use 'carried' with a mesh")
    if problem.loss != "mse":
        if continuous:
            raise ValueError(f"continuous: this closed-form flow is for loss='mse' only, got "
                             f"loss={problem.loss!r}; the cross-entropy flow is integrated by "
                             "ntkdyn.dynamics.flow.evolve (run_problem chooses it)")
        if reference == "eigen":
            raise ValueError("reference: 'eigen' is for loss='mse' only (the cross-entropy "
                             "reference is not affine); use 'carried' or 'auto'")
        reference = "carried"
    if networks and (problem.loss != "mse" or not problem.traced
                     or (problem.process is not None and problem.process.random)):
        raise ValueError("networks: sampled random networks need the squared loss, a traced "
                         "kernel and a static or periodic mixing")
    if reference == "auto":
        reference = "eigen" if use_eigen_reference(problem, mesh) else "carried"
    return reference


def _run_chunks(carry, data: dict, static: dict, n_sub: np.ndarray, h: np.ndarray,
                deltas: np.ndarray, *, chunk: int, desc: str | None) -> tuple[dict, tuple]:
    """Run the schedule ``chunk`` records per compiled call (:func:`_run_chunk`), with a
    progress bar when ``desc`` is given; stops early once every rate has diverged.  Returns
    the records and the last carry."""
    algorithm = static["algorithm"]
    chunk = balanced_chunk(len(n_sub), chunk)  # fewest padded records
    pieces = []
    bar = None
    if desc is not None:
        from tqdm.auto import tqdm
        bar = tqdm(total=int(np.sum(deltas)), unit="t" if static["continuous"] else "step",
                   desc=desc)
    for sl, sched, pad in padded_chunks((n_sub, h), chunk):
        carry, recs = _run_chunk(carry, sched, data, **static)
        pieces.append(trim(recs, pad, algorithm.records_per_step))
        if bar is not None:
            bar.update(int(np.sum(deltas[sl])))
        if bool(np.all(np.asarray(carry[2]))):
            break  # every rate diverged: nothing left to compute
    if bar is not None:
        bar.close()
    out = concatenate(pieces)
    out["diverged_at"] = np.asarray(carry[3])
    return out, carry


#: public names of two helpers, for the adaptive gradient flow (:mod:`ntkdyn.dynamics.flow`)
as_algorithm = _as_algorithm
loss_arguments = _loss_args

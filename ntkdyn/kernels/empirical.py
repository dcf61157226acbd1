r"""Empirical (finite-width) neural tangent kernels ``Theta = J J^T``.

For a network ``f(x; theta)`` with ``K`` outputs and Jacobian
``J[(x, k), p] = d f_k(x) / d theta_p`` at the given parameters,

.. math::  \Theta[(x, k), (x', k')] = \sum_p J[(x, k), p]\, J[(x', k'), p].

Two layouts (sample-major, outputs last):

* **full**: ``(N1 K, N2 K)``, row index ``i K + k``;
* **traced**: ``(N1, N2)``, ``(1/K) sum_k Theta[(x, k), (x', k)]`` -- the
  *mean* over outputs (neural-tangents' ``trace_axes=(-1,)`` convention), which
  converges to the analytic traced kernel as width grows.

:func:`empirical_ntk` works for any ``apply(params, x) -> (B, K)`` with pytree
params: per-sample Jacobians (``jax.jacrev``, vmapped) of one batch of samples
at a time, contracted leaf by leaf; at most two Jacobian batches exist at once.

:func:`mlp_empirical_ntk` uses the structure of :class:`ntkdyn.models.MLP`
(DESIGN.md section 5; Novak et al. 2022, "Fast finite width neural tangent
kernel"): with ``z_l = (W_std/sqrt(n_{l-1})) h_{l-1} W_l + b_std b_l``,
``df_k/dW_l = (W_std/sqrt(n_{l-1})) h_{l-1} (x) delta_{l,k}`` and
``df_k/db_l = b_std delta_{l,k}`` with ``delta_{l,k} = df_k/dz_l``, so

.. math::  \Theta[(x,k),(x',k')] = \sum_{l=1}^{L+1}
           \Big(\frac{W_{std}^2}{n_{l-1}} h_{l-1}(x)\cdot h_{l-1}(x') + b_{std}^2\Big)
           \big(\delta_{l,k}(x)\cdot\delta_{l,k'}(x')\big),

with the backward recursion ``delta_{L+1,k} = e_k`` and
``delta_{l,k} = (W_std/sqrt(n_l)) (W_{l+1} delta_{l+1,k}) * phi'(z_l)``:
two Gram matrices per layer, no Jacobian.

Both compute in float64 whatever the dtype of ``params``, in blocks of
``batch_size`` samples, and check the output's size against the available
memory (:func:`ntkdyn._utils.memory.ensure_fits`) before allocating it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from ntkdyn._utils.checks import as_float_array
from ntkdyn._utils.memory import ensure_fits

if TYPE_CHECKING:  # annotations only: models sits above kernels (MLP.kernel uses them)
    from ntkdyn.models import MLP

#: what :func:`mlp_empirical_ntk` reads of an :class:`~ntkdyn.models.MLP` (checked by
#: attribute, so that this module need not import the models above it)
_MLP_FIELDS = ("hidden", "out", "act", "W_std", "b_std", "init", "apply")

__all__ = ["check_mlp_params", "empirical_ntk", "mlp_empirical_ntk", "ntk_memory_bytes",
           "mlp_batch_plan", "generic_batch_plan", "jacobian_leaves", "to_float64"]

#: Bytes allowed for one batch of Jacobians / per-layer features.
BATCH_BUDGET_BYTES = 256 * 2**20


def ntk_memory_bytes(n1: int, n2: int, out: int, traced: bool, dtype=np.float64) -> int:
    """Bytes of an empirical NTK: ``n1 n2 (1 if traced else out^2) itemsize``."""
    return int(n1) * int(n2) * (1 if traced else int(out) ** 2) * np.dtype(dtype).itemsize


def mlp_batch_plan(model: MLP, in_dim: int, n_max: int, traced: bool,
                   batch_size: int | None = None) -> tuple[int, int]:
    """``(bytes per sample of a feature batch, samples per batch)`` of
    :func:`mlp_empirical_ntk`."""
    fan_ins = list(model.widths(in_dim)[:-1])
    per_sample = 8 * (sum(fan_ins) + model.out * sum(fan_ins[1:]))
    return per_sample, _batch_size(batch_size, per_sample, n_max, model.out, traced)


def generic_batch_plan(outputs: int, n_params: int, n_max: int, traced: bool,
                       batch_size: int | None = None) -> tuple[int, int]:
    """``(bytes per sample of one Jacobian batch, samples per batch)`` of :func:`empirical_ntk`."""
    per_sample = 8 * int(outputs) * max(int(n_params), 1)
    return per_sample, _batch_size(batch_size, per_sample, n_max, int(outputs), traced)


# --------------------------------------------------------------------- generic


def empirical_ntk(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    x1: np.ndarray,
    x2: np.ndarray | None = None,
    *,
    traced: bool = True,
    batch_size: int | None = None,
) -> np.ndarray:
    """Empirical NTK ``J(x1) J(x2)^T`` of any network, batch by batch.

    Parameters
    ----------
    apply_fn : callable
        ``apply_fn(params, x) -> (B, K)``; must treat samples independently.
    params : pytree
        Parameters at which the Jacobian is taken (cast to float64).
    x1 : array_like, shape (N1, ...)
        Inputs; ``x2`` (shape ``(N2, ...)``) defaults to ``x1``.
    traced : bool
        ``True``: ``(N1, N2)``, mean over outputs of the diagonal output blocks.
        ``False``: ``(N1 K, N2 K)``, row ``i K + k``.
    batch_size : int, optional
        Samples per Jacobian batch; default fits ``B K P * 8`` bytes into
        :data:`BATCH_BUDGET_BYTES` (``P`` = number of parameters).

    Returns
    -------
    numpy.ndarray (float64)

    Examples
    --------
    >>> from ntkdyn.models import MLP
    >>> m = MLP(hidden=(32,), out=2)
    >>> p = m.init(jax.random.PRNGKey(0), 3)
    >>> empirical_ntk(m.apply, p, np.ones((4, 3))).shape
    (4, 4)
    """
    if not callable(apply_fn):
        raise ValueError(f"apply_fn: expected a callable, got {type(apply_fn).__name__}")
    x1, x2s, symmetric = _check_pair(x1, x2, ndim=None)
    params = to_float64(params)
    out = jax.eval_shape(apply_fn, params, jnp.asarray(x1[:1]))
    if len(out.shape) != 2 or out.shape[0] != 1:
        raise ValueError(f"apply_fn: expected outputs of shape (B, K), got {out.shape} for B = 1")
    k_out = int(out.shape[1])
    n_params = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))
    _, batch = generic_batch_plan(k_out, n_params, max(x1.shape[0], x2s.shape[0]), traced,
                                  batch_size)

    try:
        hash(apply_fn)
        jacobian = partial(jacobian_leaves, apply_fn)  # compiled once per apply_fn and shape
    except TypeError:  # unhashable callable: compile for this call only
        jacobian = jax.jit(partial(_jacobian_leaves_impl, apply_fn))
    contract = partial(_contract_jacobians, traced=traced, k_out=k_out)
    return _assemble(
        lambda xb: jacobian(params, xb), contract, x1, x2s, symmetric, batch,
        1 if traced else k_out,
    )  # fmt: skip


def _jacobian_leaves_impl(apply_fn, params, xb):
    """Per-leaf Jacobians of a batch, each reshaped to (B, K, leaf size).

    ``jax.jacrev`` of one sample at a time, vmapped over the batch: K reverse
    passes per sample (a jacrev of the whole batch would cost B times more).
    """

    def one_sample(x):
        return jax.jacrev(lambda p: apply_fn(p, x[None])[0])(params)  # leaves (K, *leaf.shape)

    jac = jax.vmap(one_sample)(xb)  # leaves (B, K, *leaf.shape)
    return [leaf.reshape(leaf.shape[0], leaf.shape[1], -1) for leaf in jax.tree.leaves(jac)]


#: per-leaf Jacobians of a batch (B, K, leaf size), compiled once per ``apply_fn``
jacobian_leaves = jax.jit(_jacobian_leaves_impl, static_argnums=0)


@partial(jax.jit, static_argnames=("traced", "k_out"))
def _contract_jacobians(ja, jb, *, traced: bool, k_out: int):
    """sum over leaves of J_a J_b^T: traced (mean over k) or full (B_a K, B_b K)."""
    return sum(_gram(a, b, traced) for a, b in zip(ja, jb, strict=True)) / (k_out if traced else 1)


def _gram(a: jax.Array, b: jax.Array, traced: bool) -> jax.Array:
    """Contract (A, K, n) with (B, K, n) as one matrix product.

    traced: ``sum_{k, p} a[i, k, p] b[j, k, p]`` -> (A, B);
    full: ``sum_p a[i, k, p] b[j, l, p]`` -> (A K, B K), row ``i K + k``.
    """
    if traced:
        return a.reshape(a.shape[0], -1) @ b.reshape(b.shape[0], -1).T
    return a.reshape(-1, a.shape[-1]) @ b.reshape(-1, b.shape[-1]).T


# ------------------------------------------------------------------------ MLP


def mlp_empirical_ntk(
    model: MLP,
    params: Any,
    x1: np.ndarray,
    x2: np.ndarray | None = None,
    *,
    traced: bool = True,
    batch_size: int | None = None,
) -> np.ndarray:
    """Empirical NTK of an :class:`~ntkdyn.models.MLP` by the Gram-matrix formula.

    Implements the sum over layers in the module docstring (no Jacobian);
    equal to :func:`empirical_ntk` ``(model.apply, params, ...)`` to round-off.

    Parameters
    ----------
    model : MLP
        Architecture (widths, activation, ``W_std``, ``b_std``).
    params : tuple of (W, b)
        As returned by ``model.init`` (cast to float64).
    x1, x2, traced, batch_size
        As in :func:`empirical_ntk`; inputs are 2-D ``(N, d)``. The default
        batch keeps one batch's features, ``B (sum_l n_{l-1} + K sum_l n_l)``
        floats, within :data:`BATCH_BUDGET_BYTES`.

    Returns
    -------
    numpy.ndarray (float64)
        ``(N1, N2)`` traced (mean over outputs) or ``(N1 K, N2 K)`` full.
    """
    if isinstance(model, type) or not all(hasattr(model, f) for f in _MLP_FIELDS):
        raise ValueError(f"model: expected an ntkdyn.models.MLP, got {type(model).__name__}")
    x1, x2s, symmetric = _check_pair(x1, x2, ndim=2)
    params = check_mlp_params(model, params, x1.shape[1])
    k_out = model.out
    _, batch = mlp_batch_plan(model, x1.shape[1], max(x1.shape[0], x2s.shape[0]), traced,
                              batch_size)
    contract = partial(_mlp_contract, model=model, traced=traced)
    return _assemble(
        lambda xb: _mlp_features(model, params, xb), contract, x1, x2s, symmetric, batch,
        1 if traced else k_out,
    )  # fmt: skip


@partial(jax.jit, static_argnums=0)
def _mlp_features(model: MLP, params, xb):
    """Inputs ``h_{l-1}`` (B, n_{l-1}), l <= L+1, and deltas ``delta_l`` (B, K, n_l), l <= L.

    ``delta_L[k] = (W_std/sqrt(n_L)) W_{L+1}[:, k] * phi'(z_L)`` and
    ``delta_l = (W_std/sqrt(n_l)) (delta_{l+1} W_{l+1}^T) * phi'(z_l)``.
    """
    act, w_std, b_std = model.act, model.W_std, model.b_std
    hs, slopes = [xb], []
    for W, b in params[:-1]:
        z = (w_std / np.sqrt(W.shape[0])) * (hs[-1] @ W) + b_std * b
        h, dh = act.value_and_derivative(z)
        hs.append(h)
        slopes.append(dh)
    deltas = []
    delta = None  # delta_{L+1} = identity over outputs
    for layer in range(len(params) - 1, 0, -1):  # W_{l+1} = params[l][0], phi'(z_l)
        W_next = params[layer][0]
        back = W_next.T[None] if delta is None else delta @ W_next.T  # (B or 1, K, n_l)
        delta = (w_std / np.sqrt(W_next.shape[0])) * back * slopes[layer - 1][:, None, :]
        deltas.append(delta)
    return hs, deltas[::-1]


@partial(jax.jit, static_argnames=("model", "traced"))
def _mlp_contract(fa, fb, *, model: MLP, traced: bool):
    """Sum over layers of (W_std^2/n h.h' + b_std^2) * (delta . delta')."""
    (ha, da), (hb, db) = fa, fb
    k_out, w2, b2 = model.out, model.W_std**2, model.b_std**2
    grams = [(w2 / a.shape[1]) * (a @ b.T) + b2 for a, b in zip(ha, hb, strict=True)]
    if traced:
        total = grams[-1]
        for g, a, b in zip(grams[:-1], da, db, strict=True):
            total = total + g * _gram(a, b, traced=True) / k_out
        return total
    total = jnp.kron(grams[-1], jnp.eye(k_out))  # readout: delta_k . delta_k' = [k = k']
    for g, a, b in zip(grams[:-1], da, db, strict=True):
        total = total + jnp.repeat(jnp.repeat(g, k_out, axis=0), k_out, axis=1) * _gram(a, b, False)
    return total


# -------------------------------------------------------------------- helpers


def _assemble(
    features: Callable[[jax.Array], Any],
    contract: Callable[[Any, Any], jax.Array],
    x1: np.ndarray,
    x2: np.ndarray,
    symmetric: bool,
    batch: int,
    rows_per_sample: int,
) -> np.ndarray:
    """Fill the kernel block by block; at most two feature batches are alive.

    Every batch is padded to ``batch`` samples (repeating its last sample) so
    the jitted functions compile once; padded rows are discarded.
    """
    n1, n2, r = x1.shape[0], x2.shape[0], rows_per_sample
    needed = ntk_memory_bytes(n1, n2, r, traced=r == 1)
    ensure_fits(needed, f"the ({n1 * r}, {n2 * r}) float64 empirical NTK")
    result = np.empty((n1 * r, n2 * r))
    for s1 in range(0, n1, batch):
        e1 = min(s1 + batch, n1)
        fa = features(_padded(x1, s1, e1, batch))
        for s2 in range(s1 if symmetric else 0, n2, batch):
            e2 = min(s2 + batch, n2)
            fb = fa if symmetric and s2 == s1 else features(_padded(x2, s2, e2, batch))
            block = np.asarray(contract(fa, fb))[: (e1 - s1) * r, : (e2 - s2) * r]
            if symmetric and s2 == s1:
                block = (block + block.T) / 2  # exact symmetry despite round-off
            result[s1 * r : e1 * r, s2 * r : e2 * r] = block
            if symmetric and s2 != s1:
                result[s2 * r : e2 * r, s1 * r : e1 * r] = block.T
            del fb
    return result


def _padded(x: np.ndarray, start: int, stop: int, batch: int) -> jax.Array:
    rows = x[start:stop]
    if rows.shape[0] < batch:
        rows = np.concatenate([rows, np.repeat(rows[-1:], batch - rows.shape[0], axis=0)])
    return jnp.asarray(rows)


def _batch_size(batch_size, per_sample: int, n_max: int, k_out: int, traced: bool) -> int:
    if batch_size is not None:
        valid = isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool)
        if not valid or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        return int(min(batch_size, n_max))
    b = BATCH_BUDGET_BYTES // per_sample
    if not traced:  # the (B, K, B, K) block itself
        b = min(b, int(np.sqrt(BATCH_BUDGET_BYTES / 8)) // k_out)
    return int(max(1, min(b, n_max)))


def _check_pair(x1, x2, ndim: int | None) -> tuple[np.ndarray, np.ndarray, bool]:
    x1 = as_float_array("x1", x1, ndim=ndim)
    if x1.ndim < 1 or x1.shape[0] == 0:
        raise ValueError(f"x1: expected at least one sample, got shape {x1.shape}")
    if x2 is None:
        return x1, x1, True
    x2 = as_float_array("x2", x2, ndim=ndim)
    if x2.ndim < 1 or x2.shape[0] == 0:
        raise ValueError(f"x2: expected at least one sample, got shape {x2.shape}")
    if x2.shape[1:] != x1.shape[1:]:
        raise ValueError(f"x2: per-sample shape {x2.shape[1:]} differs from x1's {x1.shape[1:]}")
    return x1, x2, False


def to_float64(params: Any) -> Any:
    def cast(leaf):
        leaf = jnp.asarray(leaf)
        return leaf.astype(jnp.float64) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

    return jax.tree.map(cast, params)


def check_mlp_params(model: MLP, params: Any, in_dim: int, name: str = "params") -> tuple:
    """``params`` as float64 ``(W, b)`` pairs if their shapes are ``model``'s on inputs of
    dimension ``in_dim``, else ``ValueError`` naming ``name``, the layer and both shapes
    (the prediction's ``params`` and the trainer's ``params0``)."""
    widths = model.widths(in_dim)
    try:
        pairs = tuple((jnp.asarray(W), jnp.asarray(b)) for W, b in params)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a sequence of (W, b) pairs") from None
    if len(pairs) != len(widths) - 1:
        raise ValueError(f"{name}: expected {len(widths) - 1} (W, b) pairs for "
                         f"hidden={tuple(model.hidden)}, got {len(pairs)}")
    shapes = zip(widths[:-1], widths[1:], strict=True)
    for layer, ((W, b), (fan_in, fan_out)) in enumerate(zip(pairs, shapes, strict=True)):
        if W.shape != (fan_in, fan_out) or b.shape != (fan_out,):
            raise ValueError(
                f"{name}: layer {layer} has W {W.shape}, b {b.shape}; "
                f"expected ({fan_in}, {fan_out}) and ({fan_out},)"
            )
    return to_float64(pairs)

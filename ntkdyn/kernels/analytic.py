r"""Infinite-width NNGP and NTK of fully connected networks (NTK parameterisation).

The network is ``L`` hidden layers of ``Dense -> phi`` followed by a ``Dense``
readout, each ``Dense`` computing ``z = (W_std / sqrt(fan_in)) h W + b_std b``
with ``W, b ~ N(0, 1)`` (neural-tangents' ``parameterization='ntk'``). As all
widths go to infinity the kernels of the pre-activations ``z_{l+1}`` of Dense
layer ``l + 1`` obey (Jacot et al. 2018; Lee et al. 2019):

.. math::

    K^0(x, x') &= W_{std}^2\, x \cdot x' / d + b_{std}^2, \qquad \Theta^0 = K^0, \\
    K^l &= W_{std}^2\, E[\phi(u)\phi(v)] + b_{std}^2, \\
    \Theta^l &= K^l + W_{std}^2\, E[\phi'(u)\phi'(v)]\, \Theta^{l-1},
    \qquad (u, v) \sim \mathcal N(0, K^{l-1}|_{\{x, x'\}}),

for ``l = 1, ..., L``. ``K^0`` is the first Dense layer; step ``l`` is
``phi`` followed by Dense layer ``l + 1``, so step ``L`` is the readout. The
output NNGP is ``K^L`` and the NTK ``Theta^L`` (``L = 0`` is the linear model
``Theta = K^0``). Both are *traced* kernels: the kernel of the K-output
network is ``Theta (x) I_K``. The Gaussian expectations are the duals of
:func:`ntkdyn.activations.dual` (closed forms where known, Gauss--Hermite
quadrature otherwise).

Implementation: the diagonals ``K^l(x, x)`` of both input sets are propagated
first (O(N) work), then the ``(N1, N2)`` kernel is built in row blocks of
``block_size`` rows, so peak memory is a few ``block_size x N2`` arrays
besides the output.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ntkdyn._utils.checks import as_float_array, is_real
from ntkdyn.activations import Activation, dual, get_activation

__all__ = ["analytic_kernels", "analytic_ntk", "analytic_nngp", "check_architecture"]

_BLOCK_ELEMENTS = 2**20  # default rows per block: about this many kernel entries
#: On an accelerator: larger blocks (a few GB of float64 temporaries), since each block is
#: one compiled call whose cost is mostly its transfer back to the host.
_DEVICE_BLOCK_ELEMENTS = 2**25


def check_architecture(hidden_layers, activation, W_std, b_std):
    """The resolved activation if ``hidden_layers`` (an int >= 0), ``W_std`` (finite > 0),
    ``b_std`` (finite >= 0) and ``activation`` are valid, else ``ValueError`` naming the
    first that is not (shared by :func:`analytic_kernels` and the low-rank path's
    ``AnalyticColumns``, which checks when it is built, not at its first column)."""
    if isinstance(hidden_layers, bool) or not isinstance(hidden_layers, (int, np.integer)):
        raise ValueError(f"hidden_layers: expected an int, got {hidden_layers!r}")
    if hidden_layers < 0:
        raise ValueError(f"hidden_layers: expected >= 0, got {hidden_layers}")
    if not (is_real(W_std) and math.isfinite(W_std) and W_std > 0):
        raise ValueError(f"W_std: expected a finite value > 0, got {W_std!r}")
    if not (is_real(b_std) and math.isfinite(b_std) and b_std >= 0):
        raise ValueError(f"b_std: expected a finite value >= 0, got {b_std!r}")
    return resolve_activation(activation)


def analytic_kernels(
    x1: np.ndarray,
    x2: np.ndarray | None = None,
    *,
    hidden_layers: int,
    activation: str | Activation = "relu",
    W_std: float = 1.4,
    b_std: float = 0.1,
    block_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """NNGP and NTK of an infinitely wide fully connected network.

    Implements the recursion in the module docstring (``L = hidden_layers``
    steps after ``K^0``); matches
    ``neural_tangents.stax.serial(*[Dense(w, W_std, b_std, parameterization='ntk'),
    Act()] * hidden_layers, Dense(out, W_std, b_std, parameterization='ntk'))``
    ``kernel_fn(x1, x2, ('nngp', 'ntk'))``.

    Parameters
    ----------
    x1 : array_like, shape (N1, d)
        Inputs (rows are samples).
    x2 : array_like, shape (N2, d), optional
        Second set of inputs; ``None`` means ``x1`` (symmetric kernel).
    hidden_layers : int
        Number ``L >= 0`` of hidden ``Dense -> activation`` layers.
    activation : str or Activation
        Registry name (see :func:`ntkdyn.activations.get_activation`) or an
        :class:`~ntkdyn.activations.Activation`.
    W_std, b_std : float
        Weight and bias standard deviations (``W_std > 0``, ``b_std >= 0``).
    block_size : int, optional
        Rows of ``x1`` per block; default keeps a block near 2^20 entries.

    Returns
    -------
    (nngp, ntk) : tuple of numpy.ndarray
        ``K^L`` and ``Theta^L``, each of shape ``(N1, N2)``, float64; the
        traced kernels (the kernel of a K-output network is this ``(x) I_K``).

    Raises
    ------
    ValueError
        On non-2-D or non-finite inputs, mismatched feature dimensions,
        ``hidden_layers < 0``, ``W_std <= 0``, ``b_std < 0`` or ``block_size < 1``.

    Examples
    --------
    >>> x = np.eye(3)
    >>> nngp, ntk = analytic_kernels(x, hidden_layers=1)
    >>> ntk.shape
    (3, 3)
    """
    x1 = _check_inputs(x1, "x1")
    x2s = x1 if x2 is None else _check_inputs(x2, "x2")
    if x2s.shape[1] != x1.shape[1]:
        raise ValueError(f"x2: feature dimension {x2s.shape[1]} differs from x1's {x1.shape[1]}")
    act = check_architecture(hidden_layers, activation, W_std, b_std)
    n2 = x2s.shape[0]
    if block_size is None:
        elements = _BLOCK_ELEMENTS if jax.default_backend() == "cpu" else _DEVICE_BLOCK_ELEMENTS
        block_size = max(1, elements // max(n2, 1))
    elif isinstance(block_size, bool) or int(block_size) != block_size or block_size < 1:
        raise ValueError(f"block_size: expected a positive int, got {block_size!r}")
    block_size = int(block_size)

    w2, b2 = float(W_std) ** 2, float(b_std) ** 2
    d = x1.shape[1]
    diag1 = _diagonal_nngps(np.einsum("ij,ij->i", x1, x1) / d, act, hidden_layers, w2, b2)
    diag2 = (
        diag1
        if x2 is None
        else _diagonal_nngps(np.einsum("ij,ij->i", x2s, x2s) / d, act, hidden_layers, w2, b2)
    )

    blocks = _closed_form_blocks if act.dual is not None else _quadrature_blocks
    nngp, ntk = blocks(act, hidden_layers, x1, x2s, x2 is None, diag1, diag2, block_size,
                       w2, b2)
    if x2 is None:  # remove round-off asymmetry of the blockwise evaluation
        nngp = (nngp + nngp.T) / 2
        ntk = (ntk + ntk.T) / 2
    return nngp, ntk


def _closed_form_blocks(act, hidden_layers, x1, x2s, same, diag1, diag2, block_size, w2, b2):
    """Row blocks of both kernels for a closed-form dual: one compiled call per block
    (:func:`_closed_form_block`), ``x2`` and its diagonals kept on the device."""
    n1, n2 = x1.shape[0], x2s.shape[0]
    nngp, ntk = np.empty((n1, n2)), np.empty((n1, n2))
    x2j, d2 = jnp.asarray(x2s), [jnp.asarray(a) for a in diag2]
    for start in range(0, n1, block_size):
        stop = min(start + block_size, n1)
        k, theta = _closed_form_block(
            act.dual, hidden_layers, same, jnp.asarray(x1[start:stop]), x2j,
            [jnp.asarray(a[start:stop]) for a in diag1], d2, start, w2, b2)
        nngp[start:stop], ntk[start:stop] = np.asarray(k), np.asarray(theta)
    return nngp, ntk


def _quadrature_blocks(act, hidden_layers, x1, x2s, same, diag1, diag2, block_size, w2, b2):
    """Row blocks of both kernels for an activation without a closed-form dual (the duals by
    quadrature, :func:`ntkdyn.activations.dual`)."""
    n1, n2, d = x1.shape[0], x2s.shape[0], x1.shape[1]
    nngp, ntk = np.empty((n1, n2)), np.empty((n1, n2))
    for start in range(0, n1, block_size):
        stop = min(start + block_size, n1)
        k = w2 * (x1[start:stop] @ x2s.T) / d + b2
        theta = k
        rows = np.arange(stop - start)
        for layer in range(hidden_layers):  # phi, then Dense layer + 2
            k11 = diag1[layer][start:stop, None]
            k22 = diag2[layer][None, :]
            if same:
                # Make K(x, x) bitwise equal to the propagated variance: the
                # arc-cosine angle is ill-conditioned at correlation 1, where a
                # round-off of 1e-16 would otherwise cost 1e-8 in the angle.
                k[rows, start + rows] = diag1[layer][start:stop]
            e_phi, e_dphi = dual(act, k11, jnp.asarray(k), k22)
            k = w2 * np.asarray(e_phi) + b2
            theta = k + w2 * np.asarray(e_dphi) * theta
        nngp[start:stop] = k
        ntk[start:stop] = theta
    return nngp, ntk


@partial(jax.jit, static_argnums=(0, 1, 2))
def _closed_form_block(closed, hidden_layers: int, same: bool, x1b, x2, diag1, diag2, start,
                       w2, b2):
    r"""Rows ``start..start+len(x1b)`` of ``(K^L, Theta^L)`` for an activation with a closed-form
    dual, as one compiled computation (the recursion of the module docstring):
    ``K^0 = w2 x1b x2^T / d + b2``, ``Theta^0 = K^0``, then per layer
    ``K^l = w2 E[phi phi] + b2``, ``Theta^l = K^l + w2 E[phi' phi'] Theta^{l-1}``.

    With ``same`` (``x2`` is ``x1``) the block's diagonal entries of each ``K^{l-1}`` are set
    to the propagated variances ``diag1[l-1]`` before the dual (and of ``Theta^0`` too), so
    ``K(x, x)`` equals the variance bitwise and the arc-cosine angle sees correlation 1
    exactly.
    """
    d = x1b.shape[1]
    k = w2 * (x1b @ x2.T) / d + b2
    rows = jnp.arange(x1b.shape[0])
    if same and hidden_layers:
        k = k.at[rows, start + rows].set(diag1[0])
    theta = k
    for layer in range(hidden_layers):
        if same and layer:
            k = k.at[rows, start + rows].set(diag1[layer])
        e_phi, e_dphi = closed(diag1[layer][:, None], k, diag2[layer][None, :])
        k = w2 * e_phi + b2
        theta = k + w2 * e_dphi * theta
    return k, theta


def analytic_ntk(
    x1: np.ndarray,
    x2: np.ndarray | None = None,
    *,
    hidden_layers: int,
    activation: str | Activation = "relu",
    W_std: float = 1.4,
    b_std: float = 0.1,
    block_size: int | None = None,
) -> np.ndarray:
    """Infinite-width NTK ``Theta^L`` only; see :func:`analytic_kernels`."""
    return analytic_kernels(
        x1, x2, hidden_layers=hidden_layers, activation=activation,
        W_std=W_std, b_std=b_std, block_size=block_size,
    )[1]  # fmt: skip


def analytic_nngp(
    x1: np.ndarray,
    x2: np.ndarray | None = None,
    *,
    hidden_layers: int,
    activation: str | Activation = "relu",
    W_std: float = 1.4,
    b_std: float = 0.1,
    block_size: int | None = None,
) -> np.ndarray:
    """Infinite-width NNGP ``K^L`` only; see :func:`analytic_kernels`."""
    return analytic_kernels(
        x1, x2, hidden_layers=hidden_layers, activation=activation,
        W_std=W_std, b_std=b_std, block_size=block_size,
    )[0]  # fmt: skip


def resolve_activation(activation: str | Activation) -> Activation:
    """An :class:`~ntkdyn.activations.Activation` from itself or its name (``ValueError``
    naming ``activation`` otherwise)."""
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str):
        try:
            return get_activation(activation)
        except ValueError as err:
            raise ValueError(f"activation: {err}") from None
    raise ValueError(f"activation: expected a name or an Activation, got {activation!r}")


def _check_inputs(x, name: str) -> np.ndarray:
    """2-D finite float64 array, else ``ValueError`` naming ``name``."""
    return as_float_array(name, x, ndim=2)


def _diagonal_nngps(
    sq_norms: np.ndarray, act: Activation, hidden_layers: int, w2: float, b2: float
) -> list[np.ndarray]:
    """``[K^0(x,x), ..., K^{L-1}(x,x)]``: the variances fed to each dual."""
    k = w2 * sq_norms + b2
    diags = [k]
    for _ in range(hidden_layers - 1):
        e_phi, _ = dual(act, k, k, k)
        k = w2 * np.asarray(e_phi) + b2
        diags.append(k)
    return diags
